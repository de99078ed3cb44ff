//! Shared by the operator's end-to-end tests: the CRDs installed, one operator running for the
//! whole test binary (cargo runs test binaries one after another, so two never compete), and
//! helpers to create plugins and wait for an install's state.
#![allow(dead_code)] // each test binary uses a different part of it

pub mod replica;

use std::{
    net::{SocketAddr, TcpListener},
    sync::OnceLock,
    time::Duration,
};

use devtools::testkit::{self, wait_until};
use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Pod},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use plugin_operator::{
    cli::RunArgs,
    resources::{self, Phase, Plugin, PluginInstall, PluginVersion},
};
use serde_json::{Value, json};

/// Time a plugin gets to reach a state in these tests (the simulator answers within seconds).
pub const DEADLINE: Duration = Duration::from_secs(60);

pub struct Operator {
    pub admin_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub catalog_namespace: String,
    /// Its name in the Lease.
    pub identity: String,
    /// Where the test binary's operators log.
    pub log_path: std::path::PathBuf,
}

static OPERATOR: OnceLock<Operator> = OnceLock::new();

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr")
}

/// A port on 127.0.0.1 that nothing listens on now.
pub fn free_port() -> u16 {
    free_addr().port()
}

/// Every event of the local cluster's audit log (`logs/audit*.log`, rotated files included),
/// one JSON value per line.
pub fn audit_events() -> Vec<Value> {
    let logs = testkit::local_kubeconfig_path()
        .parent()
        .expect("the kubeconfig is in the cluster's directory")
        .join("logs");
    std::fs::read_dir(&logs)
        .expect("the cluster's logs")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("audit"))
        .flat_map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Installs the CRDs and starts the operator (once per test binary), then returns a client.
/// The token route's rate limits are raised far above what a test binary asks for (the tests
/// of the limits set their own).
pub async fn setup() -> Client {
    setup_with_flags(&[
        "--token-burst-per-client=1000",
        "--token-burst-per-peer=10000",
    ])
    .await
}

/// [`setup`] with more flags of `plugin-operator run` for the binary's operator (the first
/// caller's count; a test binary should pass the same everywhere).
pub async fn setup_with_flags(flags: &[&str]) -> Client {
    let client = testkit::client().await;
    install_crds(&client).await;
    let operator = OPERATOR.get_or_init(|| {
        let mut all = vec!["--no-leader-election"];
        all.extend_from_slice(flags);
        spawn_operator(&all)
    });
    wait_ready(operator).await;
    client
}

/// Waits until the operator's /readyz answers 200.
pub async fn wait_ready(operator: &Operator) {
    wait_until("the operator to be ready", DEADLINE, || async {
        let url = format!("http://{}/readyz", operator.admin_addr);
        match reqwest::get(&url).await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("readyz answered {}", r.status())),
            Err(e) => Err(format!("readyz: {e}")),
        }
    })
    .await;
}

pub fn operator() -> &'static Operator {
    OPERATOR.get().expect("setup() ran first")
}

pub async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in resources::crds() {
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply("plugin-operator-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("apply CRD");
        wait_until(&format!("CRD {name} established"), DEADLINE, || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let crd = api.get(&name).await.map_err(|e| e.to_string())?;
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                if established {
                    Ok(())
                } else {
                    Err("not established".into())
                }
            }
        })
        .await;
    }
}

/// Runs an operator in this process on its own threads, as `plugin-operator run` would, with
/// `flags` (each at most once), its own addresses and identity, its log in
/// target/local-cluster/logs/operator-<test binary>.log (the logs of `LOCAL_CLUSTER_DIR` when
/// set; the first operator of a binary sets the process's log, later ones log there too).
pub fn spawn_operator(flags: &[&str]) -> Operator {
    let admin_addr = free_addr();
    let api_addr = free_addr();
    let catalog_namespace = "plugin-catalog".to_owned();
    let binary = std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "tests".into());
    let cluster_dir = std::env::var("LOCAL_CLUSTER_DIR").unwrap_or("target/local-cluster".into());
    let log_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(cluster_dir)
        .join("logs");
    let _ = std::fs::create_dir_all(&log_dir);
    let log_path = log_dir.join(format!("operator-{binary}.log"));
    let log_file = log_path.clone();
    static SPAWNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let spawned = SPAWNED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let identity = match spawned {
        0 => format!("tests-{binary}"),
        n => format!("tests-{binary}-{n}"),
    };
    let (api, admin) = (api_addr.to_string(), admin_addr.to_string());
    let identity_flag = identity.clone();
    let args = RunArgs::from_flags(
        [
            "--api-addr",
            api.as_str(),
            "--admin-addr",
            admin.as_str(),
            "--catalog-namespace",
            catalog_namespace.as_str(),
            "--identity",
            identity_flag.as_str(),
        ]
        .into_iter()
        .chain(flags.iter().copied()),
    )
    .expect("the operator's flags");
    std::thread::spawn(move || {
        if spawned == 0 {
            let file = std::fs::File::create(&log_file).expect("create operator log");
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(
                    "info,plugin_operator=debug",
                ))
                .with_writer(std::sync::Mutex::new(file))
                .with_ansi(false)
                .finish();
            let _ = tracing::subscriber::set_global_default(subscriber);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        if let Err(err) = runtime.block_on(plugin_operator::run(args)) {
            panic!("operator stopped: {err}");
        }
    });
    Operator {
        admin_addr,
        api_addr,
        catalog_namespace,
        identity,
        log_path,
    }
}

/// Creates a namespace whose `default` ServiceAccount exists (pods are refused before it does).
pub async fn namespace(client: &Client, prefix: &str) -> testkit::TestNamespace {
    let ns = testkit::TestNamespace::create(client, prefix).await;
    ready_namespace(client, &ns.name).await;
    ns
}

pub async fn ready_namespace(client: &Client, name: &str) {
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), name);
    wait_until("the default ServiceAccount", DEADLINE, || {
        let sas = sas.clone();
        async move {
            match sas.get_opt("default").await.map_err(|e| e.to_string())? {
                Some(_) => Ok(()),
                None => Err("no default ServiceAccount yet".into()),
            }
        }
    })
    .await;
}

pub async fn create<K>(client: &Client, namespace: &str, object: Value) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let object: K = serde_json::from_value(object).expect("valid object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("create object")
}

pub async fn plugin(client: &Client, namespace: &str, name: &str) -> Plugin {
    create(
        client,
        namespace,
        json!({
            "apiVersion": "plugin-operator.dev/v1alpha1", "kind": "Plugin",
            "metadata": {"name": name},
            "spec": {"displayName": name, "type": "OplogProcessor"}
        }),
    )
    .await
}

pub async fn external_plugin(
    client: &Client,
    namespace: &str,
    name: &str,
    endpoint: &str,
) -> Plugin {
    create(
        client,
        namespace,
        json!({
            "apiVersion": "plugin-operator.dev/v1alpha1", "kind": "Plugin",
            "metadata": {"name": name},
            "spec": {"displayName": name, "connection": {"mode": "external", "endpoint": endpoint}}
        }),
    )
    .await
}

/// A formal Container version whose pods behave as `behavior` (the simulator's SIM_BEHAVIOR).
pub async fn version(
    client: &Client,
    namespace: &str,
    plugin: &str,
    version: &str,
    behavior: &str,
) -> PluginVersion {
    version_with(client, namespace, plugin, version, behavior, json!({})).await
}

pub async fn version_with(
    client: &Client,
    namespace: &str,
    plugin: &str,
    version: &str,
    behavior: &str,
    extra_spec: Value,
) -> PluginVersion {
    let mut spec = json!({
        "plugin": plugin,
        "version": version,
        "execution": {
            "image": format!("registry.example.com/{plugin}:{version}"),
            "env": [{"name": "SIM_BEHAVIOR", "value": behavior}],
            "healthPath": "/healthz"
        }
    });
    merge(&mut spec, extra_spec);
    create(
        client,
        namespace,
        json!({
            "apiVersion": "plugin-operator.dev/v1alpha1", "kind": "PluginVersion",
            "metadata": {"name": format!("{plugin}-{version}")},
            "spec": spec
        }),
    )
    .await
}

pub async fn install(client: &Client, namespace: &str, name: &str, spec: Value) -> PluginInstall {
    create(
        client,
        namespace,
        json!({
            "apiVersion": "plugin-operator.dev/v1alpha1", "kind": "PluginInstall",
            "metadata": {"name": name},
            "spec": spec
        }),
    )
    .await
}

pub async fn patch_install(client: &Client, namespace: &str, name: &str, patch: Value) {
    let api: Api<PluginInstall> = Api::namespaced(client.clone(), namespace);
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch install");
}

fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(base), Value::Object(extra)) => {
            for (k, v) in extra {
                merge(base.entry(k).or_insert(Value::Null), v);
            }
        }
        (base, extra) => *base = extra,
    }
}

pub async fn get_install(client: &Client, namespace: &str, name: &str) -> PluginInstall {
    let api: Api<PluginInstall> = Api::namespaced(client.clone(), namespace);
    api.get(name).await.expect("get install")
}

pub fn phase_of(install: &PluginInstall) -> Option<Phase> {
    install.status.as_ref().and_then(|s| s.phase)
}

/// Waits until the install is in `phase`, then returns it.
pub async fn wait_phase(
    client: &Client,
    namespace: &str,
    name: &str,
    phase: Phase,
) -> PluginInstall {
    wait_install(client, namespace, name, &format!("phase {phase}"), |i| {
        phase_of(i) == Some(phase)
    })
    .await
}

/// Waits until `check` holds for the install.
pub async fn wait_install(
    client: &Client,
    namespace: &str,
    name: &str,
    what: &str,
    check: impl Fn(&PluginInstall) -> bool,
) -> PluginInstall {
    let api: Api<PluginInstall> = Api::namespaced(client.clone(), namespace);
    wait_until(
        &format!("install {namespace}/{name}: {what}"),
        DEADLINE,
        || {
            let api = api.clone();
            let check = &check;
            async move {
                let install = api.get(name).await.map_err(|e| e.to_string())?;
                if check(&install) {
                    Ok(install)
                } else {
                    Err(format!(
                        "status: {}",
                        serde_json::to_string(&install.status).unwrap_or_default()
                    ))
                }
            }
        },
    )
    .await
}

pub async fn deployment(client: &Client, namespace: &str, name: &str) -> Option<Deployment> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    api.get_opt(name).await.expect("get deployment")
}

pub async fn pods_of(client: &Client, namespace: &str, install: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let lp = ListParams::default().labels(&format!("plugin-operator.dev/install={install}"));
    api.list(&lp).await.expect("list pods").items
}

/// The reasons of the Events about an install, oldest first.
pub async fn event_reasons(client: &Client, namespace: &str, install: &str) -> Vec<String> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), namespace);
    let mut events: Vec<_> = api
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(install))
        .collect();
    events.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    events.into_iter().filter_map(|e| e.action).collect()
}

/// Sets the simulator's behavior for pods of `install` started from now on.
pub async fn sim_behavior(client: &Client, namespace: &str, install: &str, behavior: &str) {
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), namespace);
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "plugin-sim"}, "data": {install: behavior}});
    api.patch(
        "plugin-sim",
        &PatchParams::apply("plugin-operator-tests"),
        &Patch::Apply(&cm),
    )
    .await
    .expect("apply plugin-sim");
}

/// Crashes the running pods of an install once (the simulator's crash annotation).
pub async fn crash_pods(client: &Client, namespace: &str, install: &str) {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    for pod in pods_of(client, namespace, install).await {
        let patch = json!({"metadata": {"annotations": {"sim.plugin-operator.dev/crash": "true"}}});
        api.patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .expect("annotate pod");
    }
}

pub fn condition<'a>(
    install: &'a PluginInstall,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    install
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// Waits until the install's Event actions, oldest first, satisfy `check` (an Event is
/// published just after the status it announces).
pub async fn wait_events(
    client: &Client,
    namespace: &str,
    install: &str,
    what: &str,
    check: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    wait_until(
        &format!("events of {namespace}/{install}: {what}"),
        DEADLINE,
        || {
            let check = &check;
            async move {
                let events = event_reasons(client, namespace, install).await;
                if check(&events) {
                    Ok(events)
                } else {
                    Err(format!("{events:?}"))
                }
            }
        },
    )
    .await
}

/// The events from the first `from` on.
pub fn events_from<'a>(events: &'a [String], from: &str) -> Vec<&'a str> {
    events
        .iter()
        .map(String::as_str)
        .skip_while(|a| *a != from)
        .collect()
}

/// Waits until the named object no longer exists.
pub async fn wait_gone<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    wait_until(&format!("{name} to be gone"), DEADLINE, || async move {
        match api.get_opt(name).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".into()),
        }
    })
    .await;
}
