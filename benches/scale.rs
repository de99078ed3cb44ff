//! `just bench`: the operator measured on the local control plane, each figure beside its
//! yardstick from the same run (these machines are shared and noisy, so only ratios of one run
//! mean much). Not a test: it prints a table and writes `target/bench/report.json` and
//! `target/bench/report.svg`, which `docs/benchmarks.md` shows.
//!
//! - **P1 reaction**: installs created at `RATE`/s for `RATE_SECONDS` s; create → Deployment
//!   (seen by a watch) and create → Active, beside kube-controller-manager's Deployment →
//!   ReplicaSet for the same Deployments (seen by the same kind of watch).
//! - **P2 bulk**: `N` installs created at once until all are Active, beside a plain client that
//!   creates the same five children for `N` names and waits until every Deployment is available.
//! - **P3 quiet**: mutating requests of the operator (audit log, by its user agent) in 60 s idle,
//!   over a resync of every install (`--resync-seconds` shortened), and after a restart.
//! - **P4 memory**: resident memory at 0 installs and after P1 and P2; bytes per install.
//! - **P5 API**: `cargo bench --bench api` writes `target/bench/api.json`, folded in here.
//! - CPU seconds of the operator per install brought to Active in P2.
//!
//! Needs the local cluster (`just cluster-up`), the CRDs applied and a release build of the
//! operator (`just bench` does all three). Knobs: `N` (1000), `RATE` (20), `RATE_SECONDS` (30),
//! `IDLE_SECONDS` (60), `RESYNC_SECONDS` (90), `CONCURRENCY` of the creating clients (64);
//! `P1_ONLY=1` stops after P1 (for tuning the reaction); `OPERATOR_LOG` is the operator's
//! `RUST_LOG` (`warn`), its log `target/bench/operator.log`; `RECONCILE_CONCURRENCY` its
//! `--reconcile-concurrency` (its default).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, ReplicaSet},
        core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use plugin_operator::resources::{Phase, PluginInstall};
use serde::Serialize;
use serde_json::{Value, json};

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const IDENTITY: &str = "bench";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn out_dir() -> PathBuf {
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir).expect("target/bench");
    dir
}

// --- the operator process -------------------------------------------------------------------

struct Operator {
    child: Child,
    admin: String,
}

impl Operator {
    fn start(resync_seconds: u64, log: &Path) -> Self {
        let bin = root().join("target/release/plugin-operator");
        assert!(
            bin.exists(),
            "{} is missing: cargo build --release --bin plugin-operator",
            bin.display()
        );
        let port = |listener: std::net::TcpListener| {
            listener.local_addr().expect("addr").port().to_string()
        };
        let api = port(std::net::TcpListener::bind("127.0.0.1:0").expect("port"));
        let admin = port(std::net::TcpListener::bind("127.0.0.1:0").expect("port"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("operator log");
        let child = Command::new(bin)
            .args([
                "run",
                "--no-leader-election",
                "--identity",
                IDENTITY,
                "--api-addr",
                &format!("127.0.0.1:{api}"),
                "--admin-addr",
                &format!("127.0.0.1:{admin}"),
                "--resync-seconds",
                &resync_seconds.to_string(),
            ])
            .args(
                std::env::var("RECONCILE_CONCURRENCY")
                    .map(|c| vec!["--reconcile-concurrency".to_owned(), c])
                    .unwrap_or_default(),
            )
            .env(
                "RUST_LOG",
                std::env::var("OPERATOR_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start the operator");
        Self {
            child,
            admin: format!("127.0.0.1:{admin}"),
        }
    }

    async fn ready(&self) {
        let url = format!("http://{}/readyz", self.admin);
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the operator was not ready within 120 s");
    }

    /// Resident memory, from /proc.
    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// CPU seconds (user + system), from /proc.
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).expect("/proc stat");
        // Fields after the command name (which may hold spaces) start at ") ".
        let rest = &stat[stat.rfind(')').expect("stat") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
        ticks as f64 / 100.0
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The operator's own counts of its work so far.
    async fn work(&self) -> Work {
        let kind = "{kind=\"PluginInstall\"}";
        Work {
            reconciles: self
                .metric(&format!("plugin_operator_reconciles_total{kind}"))
                .await,
            seconds: self
                .metric(&format!(
                    "plugin_operator_reconcile_duration_seconds_sum{kind}"
                ))
                .await,
            failures: self
                .metric("plugin_operator_reconcile_failures_total")
                .await,
            writes: self.metric("plugin_operator_writes_total").await,
        }
    }

    fn stop(mut self) {
        // SIGTERM: the operator shuts down as in a rollout.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Counters of the operator's metrics endpoint.
struct Work {
    reconciles: f64,
    seconds: f64,
    failures: f64,
    writes: f64,
}

impl Work {
    fn since(&self, before: &Work, installs: usize) -> String {
        let reconciles = self.reconciles - before.reconciles;
        format!(
            "{reconciles:.0} install reconciles ({:.1} per install, {:.0} ms each on average), {:.0} failed, {:.0} writes ({:.1} per install)",
            reconciles / installs as f64,
            (self.seconds - before.seconds) * 1000.0 / reconciles.max(1.0),
            self.failures - before.failures,
            self.writes - before.writes,
            (self.writes - before.writes) / installs as f64,
        )
    }
}

// --- the audit log ----------------------------------------------------------------------------

/// Mutating requests of the operator (its user agent names `IDENTITY`) received in
/// `[from, to]`, by verb and resource.
fn operator_writes(from: Timestamp, to: Timestamp) -> BTreeMap<String, u64> {
    let logs = root().join("target/local-cluster/logs");
    let mut writes = BTreeMap::new();
    let agent = format!("({IDENTITY})");
    for entry in std::fs::read_dir(&logs).expect("cluster logs").flatten() {
        if !entry.file_name().to_string_lossy().starts_with("audit") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains(&agent)) {
            let Ok(event) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if event["stage"] != "ResponseComplete" {
                continue;
            }
            let verb = event["verb"].as_str().unwrap_or_default();
            if !matches!(
                verb,
                "create" | "update" | "patch" | "delete" | "deletecollection"
            ) {
                continue;
            }
            let at: Option<Timestamp> = event["requestReceivedTimestamp"]
                .as_str()
                .and_then(|t| t.parse().ok());
            if at.is_some_and(|at| at >= from && at <= to) {
                let resource = event["objectRef"]["resource"].as_str().unwrap_or_default();
                let sub = event["objectRef"]["subresource"]
                    .as_str()
                    .unwrap_or_default();
                let key = if sub.is_empty() {
                    format!("{verb} {resource}")
                } else {
                    format!("{verb} {resource}/{sub}")
                };
                *writes.entry(key).or_default() += 1;
            }
        }
    }
    writes
}

// --- objects ------------------------------------------------------------------------------------

/// The namespaces of the bench, each holding one of its measurements.
const NAMESPACES: [&str; 3] = ["bench-reaction", "bench-plain", "bench-bulk"];

/// Deletes the bench's namespaces and waits until they are gone, with an operator running (its
/// PluginVersions keep an in-use finalizer the operator removes), so that a run starts from a
/// cluster without an earlier run's objects and leaves none behind.
async fn remove_namespaces(client: &Client) {
    let api: Api<Namespace> = Api::all(client.clone());
    for name in NAMESPACES {
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(900);
    for name in NAMESPACES {
        while api.get_opt(name).await.expect("namespace").is_some() {
            assert!(Instant::now() < deadline, "namespace {name} did not go");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

async fn namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::default()).await;
    // A namespace of an earlier run may still be terminating.
    let deadline = Instant::now() + Duration::from_secs(300);
    while api.get_opt(name).await.expect("namespace").is_some() {
        assert!(Instant::now() < deadline, "namespace {name} did not go");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace"),
    )
    .await
    .expect("create namespace");
    // Pods are admitted once the default ServiceAccount exists.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    while accounts.get_opt("default").await.expect("sa").is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create_dynamic(client: &Client, namespace: &str, object: Value) {
    let gvk = (
        object["apiVersion"].as_str().unwrap_or_default().to_owned(),
        object["kind"].as_str().unwrap_or_default().to_owned(),
    );
    let (group, version) = gvk.0.split_once('/').unwrap_or(("", &gvk.0));
    let resource = kube::discovery::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
        group, version, &gvk.1,
    ));
    let api: Api<kube::core::DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &resource);
    let object: kube::core::DynamicObject = serde_json::from_value(object).expect("object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("create");
}

/// A plugin `bench` with one formal version whose pods become ready.
async fn plugin(client: &Client, namespace: &str) {
    create_dynamic(
        client,
        namespace,
        json!({"apiVersion": "plugin-operator.dev/v1alpha1", "kind": "Plugin",
               "metadata": {"name": "bench"}, "spec": {"displayName": "bench"}}),
    )
    .await;
    create_dynamic(
        client,
        namespace,
        json!({"apiVersion": "plugin-operator.dev/v1alpha1", "kind": "PluginVersion",
               "metadata": {"name": "bench-1.0.0"},
               "spec": {"plugin": "bench", "version": "1.0.0",
                        "execution": {"image": "registry.example.com/bench:1.0.0", "healthPath": "/healthz"}}}),
    )
    .await;
    // Versions are accepted before installs start (a first install waits for pending ones).
    let api: Api<plugin_operator::resources::PluginVersion> =
        Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = api.get("bench-1.0.0").await.expect("version");
        if v.status
            .iter()
            .flat_map(|s| &s.conditions)
            .any(|c| c.type_ == "Accepted" && c.status == "True")
        {
            return;
        }
        assert!(Instant::now() < deadline, "version not accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn install_object(name: &str) -> PluginInstall {
    serde_json::from_value(json!({
        "apiVersion": "plugin-operator.dev/v1alpha1", "kind": "PluginInstall",
        "metadata": {"name": name},
        "spec": {"plugin": "bench"}
    }))
    .expect("install")
}

/// When each object of a kind in `namespace` was first seen by a watch, and when (if) it first
/// met `done`.
#[derive(Default)]
struct Seen {
    first: BTreeMap<String, Instant>,
    done: BTreeMap<String, Instant>,
}

fn watch_seen<K>(api: Api<K>, done: impl Fn(&K) -> bool + Send + 'static) -> Arc<Mutex<Seen>>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects();
        let mut stream = std::pin::pin!(stream);
        while let Ok(Some(object)) = stream.try_next().await {
            let now = Instant::now();
            let name = object.name_any();
            let mut seen = record.lock().expect("seen");
            seen.first.entry(name.clone()).or_insert(now);
            if done(&object) {
                seen.done.entry(name).or_insert(now);
            }
        }
    });
    seen
}

fn active(install: &PluginInstall) -> bool {
    install.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active)
}

fn available(deployment: &Deployment) -> bool {
    deployment
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
        >= 1
}

async fn until_done(seen: &Arc<Mutex<Seen>>, count: usize, what: &str, limit: Duration) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        {
            let seen = seen.lock().expect("seen");
            if seen.done.len() >= count {
                return *seen.done.values().max().expect("done");
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {} of {count} done within {limit:?}",
                seen.done.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// --- figures --------------------------------------------------------------------------------------

#[derive(Serialize, Clone, Copy, Default)]
struct Distribution {
    count: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

fn distribution(mut seconds: Vec<f64>) -> Distribution {
    if seconds.is_empty() {
        return Distribution::default();
    }
    seconds.sort_by(f64::total_cmp);
    let at = |q: f64| seconds[((seconds.len() as f64 - 1.0) * q).round() as usize];
    Distribution {
        count: seconds.len(),
        p50: at(0.5),
        p99: at(0.99),
        max: *seconds.last().expect("max"),
    }
}

#[derive(Serialize)]
struct Reaction {
    rate_per_second: u64,
    seconds: u64,
    create_to_deployment: Distribution,
    create_to_active: Distribution,
    kcm_deployment_to_replicaset: Distribution,
    /// p99 of create → Deployment over kube-controller-manager's p99.
    p99_ratio: f64,
    /// The samples, for the picture.
    #[serde(skip)]
    samples: (Vec<f64>, Vec<f64>),
}

#[derive(Serialize)]
struct Bulk {
    installs: usize,
    operator_seconds: f64,
    plain_client_seconds: f64,
    ratio: f64,
    operator_cpu_seconds: f64,
    cpu_ms_per_install: f64,
    reconciles_per_install: f64,
}

#[derive(Serialize)]
struct Quiet {
    idle_seconds: u64,
    idle_writes: BTreeMap<String, u64>,
    resync_seconds: u64,
    resync_window_seconds: f64,
    resync_reconciles: f64,
    resync_writes: BTreeMap<String, u64>,
    restart_window_seconds: u64,
    restart_writes: BTreeMap<String, u64>,
}

#[derive(Serialize, Clone, Copy)]
struct Memory {
    installs: usize,
    resident_mib: f64,
}

#[derive(Serialize)]
struct Report {
    when: String,
    machine: String,
    reaction: Reaction,
    bulk: Bulk,
    quiet: Quiet,
    memory: Vec<Memory>,
    bytes_per_install: f64,
    api: Option<Value>,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0 / 1024.0
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0.0, |kb| kb as f64 / 1024.0 / 1024.0);
    format!("{cores} cores ({cpu}), {memory:.0} GiB")
}

// --- the phases -----------------------------------------------------------------------------------

async fn reaction(client: &Client, rate: u64, seconds: u64) -> Reaction {
    let ns = NAMESPACES[0];
    namespace(client, ns).await;
    plugin(client, ns).await;
    let installs: Api<PluginInstall> = Api::namespaced(client.clone(), ns);
    let deployments = watch_seen(Api::<Deployment>::namespaced(client.clone(), ns), |_| true);
    let sets = watch_seen(Api::<ReplicaSet>::namespaced(client.clone(), ns), |_| true);
    let actives = watch_seen(installs.clone(), active);
    // Let the watches list (empty) before the first create.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let count = (rate * seconds) as usize;
    let sent = Arc::new(Mutex::new(BTreeMap::new()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..count {
        let at = start + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(at.into()).await;
        let name = format!("r-{i:05}");
        sent.lock()
            .expect("sent")
            .insert(name.clone(), Instant::now());
        let api = installs.clone();
        tasks.push(tokio::spawn(async move {
            api.create(&PostParams::default(), &install_object(&name))
                .await
                .expect("create install");
        }));
    }
    for task in tasks {
        task.await.expect("create");
    }
    until_done(
        &actives,
        count,
        "P1 installs Active",
        Duration::from_secs(600),
    )
    .await;
    let sent = sent.lock().expect("sent").clone();
    let deployments = deployments.lock().expect("seen");
    let sets = sets.lock().expect("seen");
    let actives = actives.lock().expect("seen");
    let mut to_deployment = Vec::new();
    let mut to_active = Vec::new();
    let mut kcm = Vec::new();
    for (name, at) in &sent {
        if let Some(d) = deployments.first.get(name) {
            to_deployment.push(d.duration_since(*at).as_secs_f64());
            // A ReplicaSet is named after its Deployment: `<name>-<hash>`.
            if let Some(rs) = sets
                .first
                .iter()
                .find(|(rs, _)| rs.rsplit_once('-').map(|(d, _)| d) == Some(name.as_str()))
                .map(|(_, t)| t)
            {
                kcm.push(rs.saturating_duration_since(*d).as_secs_f64());
            }
        }
        if let Some(a) = actives.done.get(name) {
            to_active.push(a.duration_since(*at).as_secs_f64());
        }
    }
    let create_to_deployment = distribution(to_deployment.clone());
    let kcm_deployment_to_replicaset = distribution(kcm.clone());
    Reaction {
        rate_per_second: rate,
        seconds,
        create_to_deployment,
        create_to_active: distribution(to_active),
        p99_ratio: create_to_deployment.p99 / kcm_deployment_to_replicaset.p99.max(0.001),
        kcm_deployment_to_replicaset,
        samples: (to_deployment, kcm),
    }
}

/// The plain client: the five children of an install for `n` names, `concurrency` names at a
/// time, each name's objects one after the other; done when every Deployment is available.
async fn plain_client(client: &Client, n: usize, concurrency: usize) -> f64 {
    let ns = NAMESPACES[1];
    namespace(client, ns).await;
    let deployments = watch_seen(Api::<Deployment>::namespaced(client.clone(), ns), available);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(concurrency, |i| {
            let client = client.clone();
            async move {
                let name = format!("p-{i:05}");
                let pp = PostParams::default();
                let labels = json!({"app": name.clone()});
                let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).expect("sa");
                Api::<ServiceAccount>::namespaced(client.clone(), ns).create(&pp, &sa).await.expect("sa");
                let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": format!("{name}-config")}, "data": {"config.json": "{}"}})).expect("cm");
                Api::<ConfigMap>::namespaced(client.clone(), ns).create(&pp, &cm).await.expect("cm");
                let secret: Secret = serde_json::from_value(json!({"metadata": {"name": format!("{name}-credentials")}, "stringData": {"client_id": name.clone(), "client_secret": "x".repeat(32)}})).expect("secret");
                Api::<Secret>::namespaced(client.clone(), ns).create(&pp, &secret).await.expect("secret");
                let service: Service = serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"selector": labels, "ports": [{"port": 8080}]}})).expect("svc");
                Api::<Service>::namespaced(client.clone(), ns).create(&pp, &service).await.expect("svc");
                let deployment: Deployment = serde_json::from_value(json!({
                    "metadata": {"name": name},
                    "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                             "template": {"metadata": {"labels": labels},
                                          "spec": {"serviceAccountName": name,
                                                   "containers": [{"name": "plugin", "image": "registry.example.com/bench:1.0.0",
                                                                   "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}}}]}}}
                }))
                .expect("deployment");
                Api::<Deployment>::namespaced(client.clone(), ns).create(&pp, &deployment).await.expect("deployment");
            }
        })
        .await;
    let last = until_done(
        &deployments,
        n,
        "plain client Deployments available",
        Duration::from_secs(1800),
    )
    .await;
    last.duration_since(start).as_secs_f64()
}

async fn bulk(
    client: &Client,
    operator: &Operator,
    n: usize,
    concurrency: usize,
) -> (f64, f64, f64) {
    let ns = NAMESPACES[2];
    namespace(client, ns).await;
    plugin(client, ns).await;
    let installs: Api<PluginInstall> = Api::namespaced(client.clone(), ns);
    let actives = watch_seen(installs.clone(), active);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = operator.cpu_seconds();
    let reconciles = operator
        .metric("plugin_operator_reconciles_total{kind=\"PluginInstall\"}")
        .await;
    let start = Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(concurrency, |i| {
            let api = installs.clone();
            async move {
                api.create(
                    &PostParams::default(),
                    &install_object(&format!("b-{i:05}")),
                )
                .await
                .expect("create install");
            }
        })
        .await;
    let last = until_done(&actives, n, "P2 installs Active", Duration::from_secs(3600)).await;
    let reconciled = operator
        .metric("plugin_operator_reconciles_total{kind=\"PluginInstall\"}")
        .await
        - reconciles;
    (
        last.duration_since(start).as_secs_f64(),
        operator.cpu_seconds() - cpu,
        reconciled,
    )
}

// --- the picture ------------------------------------------------------------------------------------

/// Two panels, drawn by hand (a few lines of SVG need no plotting library): the latency
/// distributions of P1 (operator create → Deployment, kube-controller-manager Deployment →
/// ReplicaSet) as empirical CDFs on a log time axis, and resident memory against installs.
fn svg(reaction: &Reaction, memory: &[Memory]) -> String {
    let (w, h, pad) = (440.0, 300.0, 50.0);
    let mut out = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n",
        w * 2.0 + 20.0,
        h
    );
    // Panel 1: CDFs on log10 seconds from 1 ms to 100 s.
    let x = |s: f64| pad + (s.max(0.001).log10() + 3.0) / 5.0 * (w - pad - 10.0);
    let y = |q: f64| h - pad - q * (h - pad - 20.0);
    out.push_str(&format!(
        "<text x='{pad}' y='15'>P1: time to react (CDF, log scale)</text>\n"
    ));
    for (s, label) in [
        (0.001, "1ms"),
        (0.01, "10ms"),
        (0.1, "0.1s"),
        (1.0, "1s"),
        (10.0, "10s"),
        (100.0, "100s"),
    ] {
        out.push_str(&format!(
            "<line x1='{0:.1}' y1='{1:.1}' x2='{0:.1}' y2='{2:.1}' stroke='#ddd'/><text x='{0:.1}' y='{3:.1}' text-anchor='middle'>{label}</text>\n",
            x(s), y(0.0), y(1.0), h - pad + 15.0
        ));
    }
    for (samples, colour, label, row) in [
        (
            &reaction.samples.0,
            "#d62728",
            "operator: create → Deployment",
            0.0,
        ),
        (
            &reaction.samples.1,
            "#1f77b4",
            "kube-controller-manager: Deployment → ReplicaSet",
            1.0,
        ),
    ] {
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let points: Vec<String> = sorted
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!(
                    "{:.1},{:.1}",
                    x(*s),
                    y((i + 1) as f64 / sorted.len() as f64)
                )
            })
            .collect();
        out.push_str(&format!(
            "<polyline fill='none' stroke='{colour}' stroke-width='2' points='{}'/>\n<text x='{pad}' y='{:.1}' fill='{colour}'>{label}</text>\n",
            points.join(" "),
            32.0 + row * 14.0
        ));
    }
    // Panel 2: memory against installs.
    let ox = w + 20.0;
    let max_n = memory.iter().map(|m| m.installs).max().unwrap_or(1).max(1) as f64;
    let max_m = memory.iter().map(|m| m.resident_mib).fold(1.0, f64::max) * 1.1;
    let mx = |n: f64| ox + pad + n / max_n * (w - pad - 10.0);
    let my = |m: f64| h - pad - m / max_m * (h - pad - 20.0);
    out.push_str(&format!(
        "<text x='{:.1}' y='15'>P4: resident memory (MiB) against installs</text>\n",
        ox + pad
    ));
    out.push_str(&format!(
        "<line x1='{0:.1}' y1='{1:.1}' x2='{2:.1}' y2='{1:.1}' stroke='black'/><line x1='{0:.1}' y1='{1:.1}' x2='{0:.1}' y2='20' stroke='black'/>\n",
        mx(0.0), my(0.0), mx(max_n)
    ));
    let points: Vec<String> = memory
        .iter()
        .map(|m| format!("{:.1},{:.1}", mx(m.installs as f64), my(m.resident_mib)))
        .collect();
    out.push_str(&format!(
        "<polyline fill='none' stroke='#2ca02c' stroke-width='2' points='{}'/>\n",
        points.join(" ")
    ));
    for m in memory {
        out.push_str(&format!(
            "<circle cx='{:.1}' cy='{:.1}' r='3' fill='#2ca02c'/><text x='{:.1}' y='{:.1}'>{} · {:.0}</text>\n",
            mx(m.installs as f64), my(m.resident_mib), mx(m.installs as f64) + 4.0, my(m.resident_mib) - 6.0, m.installs, m.resident_mib
        ));
    }
    out.push_str("</svg>\n");
    out
}

// --- main -------------------------------------------------------------------------------------------

fn main() {
    let n = knob("N", 1000) as usize;
    let rate = knob("RATE", 20);
    let rate_seconds = knob("RATE_SECONDS", 30);
    let idle = knob("IDLE_SECONDS", 60);
    let resync = knob("RESYNC_SECONDS", 90);
    let concurrency = knob("CONCURRENCY", 64) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let client = devtools::testkit::client().await;
        let log = out_dir().join("operator.log");
        let _ = std::fs::remove_file(&log);
        println!(
            "plugin-operator scale bench on {}; N={n}, P1 {rate}/s for {rate_seconds} s",
            machine()
        );

        // An earlier run's objects go first, with an operator of their own, so that the one
        // measured starts on an empty cluster (its memory at 0 installs included).
        let cleaner = Operator::start(resync, &log);
        cleaner.ready().await;
        remove_namespaces(&client).await;
        cleaner.stop();
        let operator = Operator::start(resync, &log);
        operator.ready().await;
        let mut memory = vec![Memory {
            installs: 0,
            resident_mib: mib(operator.rss_bytes()),
        }];

        println!("P1: installs at {rate}/s for {rate_seconds} s…");
        let before = operator.work().await;
        let reaction = reaction(&client, rate, rate_seconds).await;
        let p1_count = (rate * rate_seconds) as usize;
        settle().await;
        println!("P1: {}", operator.work().await.since(&before, p1_count));
        if knob("P1_ONLY", 0) == 1 {
            let r = &reaction;
            println!(
                "P1 create → Deployment p50 {:.2} s, p99 {:.2} s; kube-controller-manager p99 {:.2} s (×{:.1}); create → Active p50 {:.2} s, p99 {:.2} s",
                r.create_to_deployment.p50,
                r.create_to_deployment.p99,
                r.kcm_deployment_to_replicaset.p99,
                r.p99_ratio,
                r.create_to_active.p50,
                r.create_to_active.p99
            );
            remove_namespaces(&client).await;
            operator.stop();
            return;
        }
        memory.push(Memory {
            installs: p1_count,
            resident_mib: mib(operator.rss_bytes()),
        });

        println!("P2: the plain client, {n} names…");
        let plain = plain_client(&client, n, concurrency).await;
        println!("P2: the operator, {n} installs…");
        let (bulk_seconds, cpu, reconciled) = bulk(&client, &operator, n, concurrency).await;
        let bulk = Bulk {
            installs: n,
            operator_seconds: bulk_seconds,
            plain_client_seconds: plain,
            ratio: bulk_seconds / plain,
            operator_cpu_seconds: cpu,
            cpu_ms_per_install: cpu * 1000.0 / n as f64,
            reconciles_per_install: reconciled / n as f64,
        };
        settle().await;
        let total = p1_count + n;
        memory.push(Memory {
            installs: total,
            resident_mib: mib(operator.rss_bytes()),
        });

        println!("P3: {idle} s idle…");
        let from = Timestamp::now();
        tokio::time::sleep(Duration::from_secs(idle)).await;
        let idle_writes = operator_writes(from, Timestamp::now());
        println!("P3: a resync of every install ({resync} s)…");
        let reconciles = operator
            .metric("plugin_operator_reconciles_total{kind=\"PluginInstall\"}")
            .await;
        let from = Timestamp::now();
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(resync + 15)).await;
        let resync_writes = operator_writes(from, Timestamp::now());
        let resync_reconciles = operator
            .metric("plugin_operator_reconciles_total{kind=\"PluginInstall\"}")
            .await
            - reconciles;
        let resync_window = started.elapsed().as_secs_f64();
        memory.push(Memory {
            installs: total,
            resident_mib: mib(operator.rss_bytes()),
        });
        println!("P3: a restart…");
        operator.stop();
        let from = Timestamp::now();
        let operator = Operator::start(resync, &log);
        operator.ready().await;
        tokio::time::sleep(Duration::from_secs(idle)).await;
        let restart_writes = operator_writes(from, Timestamp::now());
        let after_restart = mib(operator.rss_bytes());
        println!("removing the bench's namespaces…");
        remove_namespaces(&client).await;
        operator.stop();

        let base = memory[0].resident_mib;
        let steady = memory[2].resident_mib;
        let bytes_per_install = (steady - base) * 1024.0 * 1024.0 / total as f64;
        let api = std::fs::read_to_string(out_dir().join("api.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok());
        let report = Report {
            when: Timestamp::now().to_string(),
            machine: machine(),
            reaction,
            bulk,
            quiet: Quiet {
                idle_seconds: idle,
                idle_writes,
                resync_seconds: resync,
                resync_window_seconds: resync_window,
                resync_reconciles,
                resync_writes,
                restart_window_seconds: idle,
                restart_writes,
            },
            memory: memory.clone(),
            bytes_per_install,
            api,
        };
        print_table(&report, after_restart);
        std::fs::write(
            out_dir().join("report.json"),
            serde_json::to_string_pretty(&report).expect("json"),
        )
        .expect("report.json");
        std::fs::write(out_dir().join("report.svg"), svg(&report.reaction, &memory))
            .expect("report.svg");
        println!("\nwrote target/bench/report.json and target/bench/report.svg");
    });
}

/// Lets the last status writes of a phase land before the next measurement.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(5)).await;
}

fn writes(w: &BTreeMap<String, u64>) -> String {
    let total: u64 = w.values().sum();
    if total == 0 {
        "0".to_owned()
    } else {
        format!(
            "{total} ({})",
            w.iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

fn print_table(r: &Report, after_restart: f64) {
    let p1 = &r.reaction;
    println!("\n| figure | operator | yardstick (same run) | ratio |");
    println!("| --- | --- | --- | --- |");
    let d =
        |x: &Distribution| format!("p50 {:.2} s, p99 {:.2} s, max {:.2} s", x.p50, x.p99, x.max);
    println!(
        "| P1 reaction, {} installs at {}/s: create → Deployment | {} | kube-controller-manager Deployment → ReplicaSet: {} | p99 ×{:.1} |",
        p1.create_to_deployment.count,
        p1.rate_per_second,
        d(&p1.create_to_deployment),
        d(&p1.kcm_deployment_to_replicaset),
        p1.p99_ratio
    );
    println!("| P1 create → Active | {} | | |", d(&p1.create_to_active));
    let b = &r.bulk;
    println!(
        "| P2 bulk, {} installs at once until all Active | {:.1} s | plain client, 5 children × {}, all Deployments available: {:.1} s | ×{:.2} |",
        b.installs, b.operator_seconds, b.installs, b.plain_client_seconds, b.ratio
    );
    println!(
        "| P2 CPU of the operator | {:.1} s ({:.1} ms per install), {:.1} reconciles per install | | |",
        b.operator_cpu_seconds, b.cpu_ms_per_install, b.reconciles_per_install
    );
    let q = &r.quiet;
    println!(
        "| P3 writes in {} s idle | {} | 0 | |",
        q.idle_seconds,
        writes(&q.idle_writes)
    );
    println!(
        "| P3 writes over a resync ({:.0} s window, {:.0} reconciles) | {} | 0 | |",
        q.resync_window_seconds,
        q.resync_reconciles,
        writes(&q.resync_writes)
    );
    println!(
        "| P3 writes in {} s after a restart | {} | 0 | |",
        q.restart_window_seconds,
        writes(&q.restart_writes)
    );
    let m: Vec<String> = r
        .memory
        .iter()
        .map(|m| format!("{} installs: {:.1} MiB", m.installs, m.resident_mib))
        .collect();
    println!(
        "| P4 resident memory | {}; after a restart {:.1} MiB | goal 40 MiB + 8 KiB per install | {:.1} KiB per install |",
        m.join(", "),
        after_restart,
        r.bytes_per_install / 1024.0
    );
    if let Some(api) = &r.api {
        for row in api["ratios"].as_array().into_iter().flatten() {
            println!(
                "| P5 get-endpoint at {} connections | {:.0} req/s, p99 {:.2} ms | GET /noop: {:.0} req/s, p99 {:.2} ms | throughput ×{:.2}, p99 ×{:.2} |",
                row["connections"],
                row["get_endpoint_rps"].as_f64().unwrap_or(0.0),
                row["get_endpoint_p99_ms"].as_f64().unwrap_or(0.0),
                row["noop_rps"].as_f64().unwrap_or(0.0),
                row["noop_p99_ms"].as_f64().unwrap_or(0.0),
                row["throughput_ratio"].as_f64().unwrap_or(0.0),
                row["p99_ratio"].as_f64().unwrap_or(0.0)
            );
        }
    } else {
        println!(
            "| P5 API | (target/bench/api.json missing: run cargo bench --bench api first) | | |"
        );
    }
}
