//! Helpers for end-to-end tests against the local control plane (`just cluster-up`).
//!
//! Each test gets its own namespace ([`TestNamespace`]) and waits for states with a deadline
//! ([`wait_until`]); nothing sleeps in place of a condition.
use std::{future::Future, path::PathBuf, time::Duration};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, Config,
    api::{DeleteParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

/// Where `just cluster-up` writes the admin kubeconfig.
pub fn local_kubeconfig_path() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    if let Ok(path) = std::env::var("KUBECONFIG") {
        let path = PathBuf::from(path);
        // `cargo test` runs in the crate's directory; a relative path that does not resolve
        // from there is taken from the workspace root, where `KUBECONFIG=target/...` is typed.
        if path.is_relative() && !path.exists() && root.join(&path).exists() {
            return root.join(path);
        }
        return path;
    }
    root.join("target/local-cluster/kubeconfig")
}

/// An admin client for the local control plane; panics with a hint when it is not up.
pub async fn client() -> Client {
    let path = local_kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|err| {
        panic!(
            "no local cluster kubeconfig at {} ({err}); run `just cluster-up`",
            path.display()
        )
    });
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is valid");
    Client::try_from(config).expect("client builds")
}

/// A namespace created for one test and deleted when the guard drops.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    /// Creates `<prefix>-<random>`.
    pub async fn create(client: &Client, prefix: &str) -> Self {
        let name = format!("{prefix}-{}", random_suffix());
        let api: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &ns)
            .await
            .expect("create test namespace");
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // A task spawned on the test's runtime would not run: a #[tokio::test] stops its runtime
        // right after the test (and this guard) ends, also when it panics. The test's client
        // cannot be used while its runtime is blocked here either. So delete from a thread of
        // our own, with a client of its own, and wait for the request only: the namespace
        // controller finishes the deletion.
        let name = self.name.clone();
        let deleter = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let api: Api<Namespace> = Api::all(client().await);
                let params = DeleteParams::background();
                let delete = api.delete(&name, &params);
                let _ = tokio::time::timeout(Duration::from_secs(10), delete).await;
            });
        });
        let _ = deleter.join();
    }
}

fn random_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{:x}{:x}{count}",
        std::process::id() % 0xfff,
        nanos % 0xfffff
    )
}

static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Polls `check` every 200 ms until it yields `Ok`, or panics after `deadline` with the last
/// observation (the `Err` text) it gave.
pub async fn wait_until<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = tokio::time::Instant::now();
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(observed) => observed,
        };
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
