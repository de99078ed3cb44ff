//! Throughput and latency of `POST /plugin/v1/plugin/{id}/get-endpoint` with cached
//! authentication, beside trivial routes of the same server: `GET /noop` (added here: a
//! constant answer, the cost of HTTP alone; the yardstick), `GET /openapi.json` (a precomputed
//! document) and `POST /echo` (added here: a body like get-endpoint's in, a constant answer of
//! the size of get-endpoint's out; what the payloads alone cost, for the difference).
//!
//! Run with `cargo bench --bench api` (not part of `just test`). In-process: the real router and
//! handlers on 127.0.0.1, fed by reflector stores filled here (no cluster), with a backend that
//! accepts the token, allows every access and issues a fixed access token. After the first
//! request every answer comes from the caches, as in a cluster: the backend's call counts are
//! printed to show it. The load generator runs in the same process (its own runtime), one
//! keep-alive connection per client, so the two share the machine's cores.
//!
//! The server is built as `plugin-operator run` builds it (`api::server::app` and `serve`: the
//! default limits, access log and metrics); the access log goes nowhere here (no subscriber).
//! The default concurrency limit (256) is above the 64 connections of the largest case.
//!
//! `BENCH_CONNECTIONS` (default `1,16,64`) the connection counts, `BENCH_SECONDS` (default 3)
//! how long each turn runs, `BENCH_ROUNDS` (default 5) how
//! many turns get-endpoint and `/noop` take, alternately. The CPU per request is the whole
//! process's (server and load generator together).
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use k8s_openapi::{
    api::core::v1::{ConfigMap, Secret, Service, ServiceAccount},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    core::PartialObjectMeta,
    runtime::{reflector, watcher},
};
use plugin_operator::{
    api::{
        self, ApiState,
        backend::{Access, Backend, IssuedToken, User},
        error::ApiError,
        server::{self, Limits},
    },
    resources::{Plugin, PluginInstall, PluginVersion},
    runtime::{
        cache::{Caches, Indexes},
        clock::Clock,
        metrics::HttpMetrics,
    },
};
use serde_json::json;

/// Turns each of get-endpoint and `GET /noop` takes per connection count (`BENCH_ROUNDS`).
static ROUNDS: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
});

/// The connection counts measured (`BENCH_CONNECTIONS`, comma-separated; 1, 16 and 64).
static CONNECTIONS: std::sync::LazyLock<Vec<usize>> = std::sync::LazyLock::new(|| {
    std::env::var("BENCH_CONNECTIONS")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|c: &Vec<usize>| !c.is_empty())
        .unwrap_or_else(|| vec![1, 16, 64])
});

/// Namespaces (tenants) and installs per namespace in the stores.
const NAMESPACES: usize = 50;
const INSTALLS_PER_NAMESPACE: usize = 10;

#[derive(Default)]
struct Fake {
    token_reviews: AtomicUsize,
    access_reviews: AtomicUsize,
    token_requests: AtomicUsize,
}

impl Backend for Fake {
    fn review_token<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<User>, ApiError>> {
        self.token_reviews.fetch_add(1, Ordering::Relaxed);
        Box::pin(async {
            Ok(Some(User {
                username: "system:serviceaccount:bench:supervisor".into(),
                ..Default::default()
            }))
        })
    }

    fn review_access<'a>(
        &'a self,
        _: &'a User,
        _: &'a Access,
    ) -> BoxFuture<'a, Result<bool, ApiError>> {
        self.access_reviews.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Ok(true) })
    }

    fn request_token<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a str,
        seconds: i64,
    ) -> BoxFuture<'a, Result<IssuedToken, ApiError>> {
        self.token_requests.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            Ok(IssuedToken {
                token: "x".repeat(900),
                expires: Timestamp::now() + SignedDuration::from_secs(seconds),
            })
        })
    }
}

fn filled<K>(objects: impl IntoIterator<Item = K>) -> reflector::Store<K>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    store
}

fn parse<K: serde::de::DeserializeOwned>(value: serde_json::Value) -> K {
    serde_json::from_value(value).expect("a valid object")
}

fn caches() -> Caches {
    let namespaces: Vec<String> = (0..NAMESPACES).map(|n| format!("tenant-{n}")).collect();
    let plugins = namespaces.iter().map(|ns| {
        parse::<Plugin>(json!({
            "apiVersion": "plugin-operator.dev/v1alpha1", "kind": "Plugin",
            "metadata": {"name": "echo", "namespace": ns, "uid": format!("p-{ns}")},
            "spec": {"type": "OplogProcessor"}
        }))
    });
    let versions = namespaces.iter().map(|ns| {
        parse::<PluginVersion>(json!({
            "apiVersion": "plugin-operator.dev/v1alpha1", "kind": "PluginVersion",
            "metadata": {"name": "echo-1.0.0", "namespace": ns},
            "spec": {"plugin": "echo", "version": "1.0.0", "execution": {"image": "echo:1"}}
        }))
    });
    let mut installs = Vec::new();
    let mut accounts = Vec::new();
    for ns in &namespaces {
        for i in 0..INSTALLS_PER_NAMESPACE {
            let name = format!("echo-{i}");
            installs.push(parse::<PluginInstall>(json!({
                "apiVersion": "plugin-operator.dev/v1alpha1", "kind": "PluginInstall",
                "metadata": {"name": name, "namespace": ns, "uid": format!("{ns}-{i}"),
                             "labels": {"shard": i.to_string()}},
                "spec": {"plugin": "echo", "version": "^1"},
                "status": {"phase": "Active", "version": "1.0.0",
                           "endpoint": format!("http://{name}.{ns}.svc:8080"),
                           "availableVersion": "1.1.0"}
            })));
            accounts.push(parse::<PartialObjectMeta<ServiceAccount>>(json!({
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": ns, "uid": format!("sa-{ns}-{i}")}
            })));
        }
    }
    let caches = Caches {
        installs: filled(installs),
        plugins: filled(plugins),
        versions: filled(versions),
        deployments: filled(Vec::new()),
        pods: filled(Vec::new()),
        services: filled(Vec::<PartialObjectMeta<Service>>::new()),
        service_accounts: filled(accounts),
        config_maps: filled(Vec::<PartialObjectMeta<ConfigMap>>::new()),
        secrets: filled(Vec::<PartialObjectMeta<Secret>>::new()),
        freshness: Default::default(),
        indexes: std::sync::Arc::new(Indexes::new("plugin-catalog")),
    };
    caches.reindex();
    caches
}

/// Starts the server on its own runtime; returns its address and the backend's counters.
fn serve() -> (std::net::SocketAddr, Arc<Fake>) {
    let backend = Arc::new(Fake::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let fake = backend.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            // Writes are not benchmarked: the client points nowhere.
            let config = kube::Config::new("http://127.0.0.1:9".parse().expect("url"));
            let client = kube::Client::try_from(config).expect("client");
            let state = ApiState::with_backend(
                client,
                caches(),
                "plugin-catalog".into(),
                fake,
                Clock::system(),
            );
            state.set_ready(true);
            // `POST /echo`: get-endpoint's payloads without its work.
            let answer = json!({"endpoint": "http://echo.tenant-0.svc:8080",
                                "access_token": "x".repeat(900), "updated_version": "1.0.0"})
            .to_string();
            let router = api::router(state)
                .route("/noop", axum::routing::get(|| async { "ok" }))
                .route(
                    "/echo",
                    axum::routing::post(move |body: axum::body::Bytes| {
                        let answer = answer.clone();
                        async move {
                            let _ = body;
                            (
                                [(axum::http::header::CONTENT_TYPE, "application/json")],
                                answer,
                            )
                        }
                    }),
                );
            // Behind the same layers as `plugin-operator run` (default limits), the metrics
            // counted as there (a registry nobody reads).
            let limits = Limits::default();
            let mut registry = prometheus_client::registry::Registry::default();
            let app = server::app(router, &limits, HttpMetrics::register(&mut registry));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("addr"))
                .expect("send the address");
            server::serve(
                listener,
                app,
                limits.header_read_timeout,
                std::future::pending(),
            )
            .await
            .expect("serve");
        });
    });
    (rx.recv().expect("the server's address"), backend)
}

#[derive(Clone, Copy)]
enum Route {
    GetEndpoint,
    OpenApi,
    Noop,
    PostEcho,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Self::GetEndpoint => "POST get-endpoint",
            Self::OpenApi => "GET /openapi.json",
            Self::Noop => "GET /noop",
            Self::PostEcho => "POST /echo",
        }
    }
}

struct Outcome {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// CPU seconds the whole process (server and load generator) spent.
    cpu: f64,
}

impl Outcome {
    /// Another turn of the same case.
    fn add(&mut self, other: Outcome) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.cpu += other.cpu;
    }

    fn cpu_micros_per_request(&self) -> f64 {
        self.cpu * 1e6 / self.requests.max(1) as f64
    }

    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        self.latencies[index]
    }
}

async fn run(
    addr: std::net::SocketAddr,
    route: Route,
    connections: usize,
    time: Duration,
) -> Outcome {
    let until = Instant::now() + time;
    let mut tasks = Vec::new();
    for c in 0..connections {
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .http1_only()
                .build()
                .expect("client");
            // What each request sends is built once: the load generator shares the cores with
            // the server, and its own cost (parsing a URL, serializing a body) is not the
            // route's.
            let path = match route {
                Route::GetEndpoint => "/plugin/v1/plugin/echo/get-endpoint",
                Route::OpenApi => "/openapi.json",
                Route::Noop => "/noop",
                Route::PostEcho => "/echo",
            };
            let url = reqwest::Url::parse(&format!("http://{addr}{path}")).expect("url");
            let namespace = format!("tenant-{}", c % NAMESPACES);
            let body = bytes::Bytes::from(
                json!({"plugin_id": "echo", "domain_id": namespace,
                       "labels": {"shard": (c % INSTALLS_PER_NAMESPACE).to_string()}})
                .to_string(),
            );
            let mut latencies = Vec::new();
            let mut errors = 0;
            while Instant::now() < until {
                let started = Instant::now();
                let request = match route {
                    Route::GetEndpoint | Route::PostEcho => http
                        .post(url.clone())
                        .header(reqwest::header::AUTHORIZATION, "Bearer bench-token")
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body.clone()),
                    Route::OpenApi | Route::Noop => http.get(url.clone()),
                };
                match request.send().await {
                    Ok(response) if response.status().is_success() => {
                        let _ = response.bytes().await;
                        latencies.push(started.elapsed());
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (mut l, e) = task.await.expect("client task");
        latencies.append(&mut l);
        errors += e;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Outcome {
        requests: latencies.len(),
        errors,
        elapsed,
        latencies,
        cpu: 0.0,
    }
}

/// CPU seconds (user and system) this process has spent, from `/proc/self/stat` (in clock
/// ticks of 1/100 s, as Linux reports them to processes).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are the 14th and 15th fields; the 3rd (state) is the first here.
    (ticks(11) + ticks(12)) / 100.0
}

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let seconds = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3u64);
    let (addr, backend) = serve();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "get-endpoint vs trivial routes, in-process, {NAMESPACES} namespaces × {INSTALLS_PER_NAMESPACE} installs in the stores, {} turns of {seconds} s per case, {} cores",
        *ROUNDS,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<20} {:>5} {:>10} {:>10} {:>10} {:>12} {:>8}",
        "route", "conns", "req/s", "p50", "p99", "CPU µs/req", "errors"
    );
    let mut table = Vec::new();
    for &connections in CONNECTIONS.iter() {
        // get-endpoint and its yardstick take turns, `ROUNDS` times each, so that the noise of
        // a shared machine falls on both alike; `/openapi.json` once, for reference.
        let mut turns = Vec::new();
        for _ in 0..*ROUNDS {
            turns.extend([Route::GetEndpoint, Route::Noop]);
        }
        turns.push(Route::OpenApi);
        turns.push(Route::PostEcho);
        let mut outcomes: Vec<(Route, Outcome)> = Vec::new();
        for route in turns {
            // Warm up: connections open, caches filled.
            runtime.block_on(run(addr, route, connections, Duration::from_millis(300)));
            let cpu = cpu_seconds();
            let mut outcome =
                runtime.block_on(run(addr, route, connections, Duration::from_secs(seconds)));
            outcome.cpu = cpu_seconds() - cpu;
            match outcomes.iter_mut().find(|(r, _)| r.name() == route.name()) {
                Some((_, total)) => total.add(outcome),
                None => outcomes.push((route, outcome)),
            }
        }
        for (route, mut outcome) in outcomes {
            outcome.latencies.sort();
            println!(
                "{:<20} {:>5} {:>10.0} {:>10} {:>10} {:>12.1} {:>8}",
                route.name(),
                connections,
                outcome.per_second(),
                micros(outcome.percentile(0.5)),
                micros(outcome.percentile(0.99)),
                outcome.cpu_micros_per_request(),
                outcome.errors
            );
            table.push((route.name(), connections, outcome));
        }
    }
    println!();
    println!("get-endpoint relative to GET /noop (throughput ratio, p50 ratio, p99 ratio):");
    let mut ratios = Vec::new();
    for &connections in CONNECTIONS.iter() {
        let find = |name: &str| {
            table
                .iter()
                .find(|(n, c, _)| *n == name && *c == connections)
                .map(|(_, _, o)| o)
        };
        if let (Some(endpoint), Some(noop)) = (find("POST get-endpoint"), find("GET /noop")) {
            let ms = |o: &Outcome, q: f64| o.percentile(q).as_secs_f64() * 1000.0;
            let (throughput, p50, p99) = (
                endpoint.per_second() / noop.per_second(),
                ms(endpoint, 0.5) / ms(noop, 0.5),
                ms(endpoint, 0.99) / ms(noop, 0.99),
            );
            println!(
                "  {connections:>2} connections: {throughput:.2}× the throughput, {p50:.2}× the p50, {p99:.2}× the p99"
            );
            ratios.push(serde_json::json!({
                "connections": connections,
                "get_endpoint_rps": endpoint.per_second(),
                "get_endpoint_p50_ms": ms(endpoint, 0.5),
                "get_endpoint_p99_ms": ms(endpoint, 0.99),
                "noop_rps": noop.per_second(),
                "noop_p50_ms": ms(noop, 0.5),
                "noop_p99_ms": ms(noop, 0.99),
                "get_endpoint_cpu_us": endpoint.cpu_micros_per_request(),
                "noop_cpu_us": noop.cpu_micros_per_request(),
                "throughput_ratio": throughput,
                "p50_ratio": p50,
                "p99_ratio": p99,
            }));
        }
    }
    // For `just bench`, which folds these figures into its report.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(
            dir.join("api.json"),
            serde_json::to_string_pretty(
                &serde_json::json!({"seconds_per_case": seconds, "rounds": *ROUNDS, "ratios": ratios}),
            )
            .unwrap_or_default(),
        );
    }
    println!(
        "backend calls over the whole run: {} TokenReview, {} SubjectAccessReview, {} TokenRequest",
        backend.token_reviews.load(Ordering::Relaxed),
        backend.access_reviews.load(Ordering::Relaxed),
        backend.token_requests.load(Ordering::Relaxed)
    );
}
