//! The controllers: PluginInstall (runs plugins), Plugin and PluginVersion (their status).
//! Each reconcile is fetch → plan (pure) → apply → status; only the Lease holder reconciles.
pub mod apply;
pub mod build;
pub mod catalog;
pub mod events;
pub mod install;

use std::{future::Future, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::{
    Client, Resource, ResourceExt,
    runtime::{
        Controller,
        controller::{self, Action},
        reflector::ObjectRef,
    },
};

use crate::{
    resources::{Plugin, PluginInstall, PluginVersion},
    runtime::{cache, leader::LeaderState, metrics::Metrics},
};

/// Every API call of a reconcile gives up after this long.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);

/// What the reconcilers share.
pub struct Context {
    pub client: Client,
    pub caches: cache::Caches,
    pub catalog_namespace: String,
    pub leader: LeaderState,
    pub events: events::Events,
    pub metrics: Metrics,
    pub clock: Clock,
    pub health_checker: HealthChecker,
    pub recent: RecentWrites,
}

/// What the reconcilers just wrote, per kind (see [`cache::Recent`]).
#[derive(Default)]
pub struct RecentWrites {
    pub installs: cache::Recent<PluginInstall>,
    pub plugins: cache::Recent<Plugin>,
    pub versions: cache::Recent<PluginVersion>,
}

/// The reconcilers' errors: all of them are transient (the API server did not answer, or
/// refused a write) and are retried with backoff. Permanent problems of user input are not
/// errors: they are written to status conditions and wait for a change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("API request timed out after {0:?}")]
    Timeout(Duration),
}

impl Error {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(_)) => "api",
            Self::Kube(_) => "client",
            Self::Timeout(_) => "timeout",
        }
    }
}

/// Runs an API call with [`API_TIMEOUT`].
pub async fn with_timeout<T>(
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(API_TIMEOUT, call).await {
        Ok(result) => result.map_err(Error::Kube),
        Err(_) => Err(Error::Timeout(API_TIMEOUT)),
    }
}

/// The time, in whole seconds (what `metav1.Time` keeps), so that a status built from it
/// compares equal to the one read back. Injected so tests can fix it.
#[derive(Clone, Copy)]
pub struct Clock(pub fn() -> Timestamp);

impl Default for Clock {
    fn default() -> Self {
        Self(|| {
            Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH)
        })
    }
}

impl Clock {
    pub fn now(&self) -> Timestamp {
        (self.0)()
    }
}

/// Checks an external plugin's endpoint.
#[derive(Clone)]
pub struct HealthChecker {
    http: reqwest::Client,
}

impl Default for HealthChecker {
    fn default() -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .unwrap_or_default();
        Self { http }
    }
}

impl HealthChecker {
    /// A 2xx or 3xx answer counts as healthy.
    pub async fn check(&self, endpoint: &str) -> Result<(), String> {
        match self.http.get(endpoint).send().await {
            Ok(response)
                if response.status().is_success() || response.status().is_redirection() =>
            {
                Ok(())
            }
            Ok(response) => Err(format!("{endpoint} answered {}", response.status())),
            Err(err) => Err(format!("{endpoint} did not answer: {}", without_url(&err))),
        }
    }
}

fn without_url(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "timed out".into()
    } else if err.is_connect() {
        "connection refused".into()
    } else {
        "request failed".into()
    }
}

/// Transient errors are retried with a growing delay (per object, capped).
fn error_policy<K: Resource<DynamicType = ()>>(
    object: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics
        .reconcile_failed(K::kind(&()).as_ref(), error.metric_label());
    tracing::warn!(object = %object.name_any(), namespace = ?object.namespace(), %error, "reconcile failed; will retry");
    Action::requeue(Duration::from_secs(5))
}

/// Runs the three controllers until the process stops. They follow the shared caches; only the
/// Lease holder acts (the reconcilers check [`LeaderState`]), and on gaining the lease every
/// object is reconciled.
pub async fn run(ctx: Arc<Context>, subscriptions: cache::Subscriptions) {
    let cache::Subscriptions {
        mut installs,
        mut plugins,
        mut versions,
        deployments,
        pods,
    } = subscriptions;
    let caches = ctx.caches.clone();
    let config = controller::Config::default()
        .concurrency(8)
        .debounce(Duration::from_millis(200));

    let install_index = caches.installs.clone();
    let installs_of_plugin = move |namespace: String, plugin: String, catalog: String| {
        install_index
            .state()
            .into_iter()
            .filter(|i| {
                let own = i.namespace().unwrap_or_default();
                i.spec.plugin.name() == plugin
                    && i.spec.plugin.namespace_or(&own) == namespace
                    && (namespace == own || namespace == catalog)
            })
            .map(|i| ObjectRef::from_obj(&*i))
            .collect::<Vec<_>>()
    };
    let by_plugin = installs_of_plugin.clone();
    let catalog = ctx.catalog_namespace.clone();
    let catalog2 = catalog.clone();
    let install_controller =
        Controller::for_shared_stream(pop(&mut installs), caches.installs.clone())
            .with_config(config.clone())
            .owns_shared_stream(deployments)
            .watches_shared_stream(pods, |pod: Arc<k8s_openapi::api::core::v1::Pod>| {
                let install = pod.labels().get(build::labels::INSTALL).cloned();
                install
                    .map(|name| ObjectRef::new(&name).within(&pod.namespace().unwrap_or_default()))
            })
            .watches_shared_stream(pop(&mut versions), move |v: Arc<PluginVersion>| {
                by_plugin(
                    v.namespace().unwrap_or_default(),
                    v.spec.plugin.clone(),
                    catalog.clone(),
                )
            })
            .watches_shared_stream(pop(&mut plugins), move |p: Arc<Plugin>| {
                installs_of_plugin(
                    p.namespace().unwrap_or_default(),
                    p.name_any(),
                    catalog2.clone(),
                )
            })
            .reconcile_all_on(ctx.leader.gained())
            .run(
                timed(install::reconcile, "PluginInstall"),
                error_policy::<PluginInstall>,
                ctx.clone(),
            )
            .for_each(|_| futures::future::ready(()));

    let version_index = caches.versions.clone();
    let plugin_controller =
        Controller::for_shared_stream(pop(&mut plugins), caches.plugins.clone())
            .with_config(config.clone())
            .watches_shared_stream(pop(&mut versions), |v: Arc<PluginVersion>| {
                Some(
                    ObjectRef::<Plugin>::new(&v.spec.plugin)
                        .within(&v.namespace().unwrap_or_default()),
                )
            })
            .watches_shared_stream(pop(&mut installs), {
                let catalog = ctx.catalog_namespace.clone();
                move |i: Arc<PluginInstall>| {
                    let own = i.namespace().unwrap_or_default();
                    let ns = i.spec.plugin.namespace_or(&own).to_owned();
                    (ns == own || ns == catalog)
                        .then(|| ObjectRef::<Plugin>::new(i.spec.plugin.name()).within(&ns))
                }
            })
            .reconcile_all_on(ctx.leader.gained())
            .run(
                timed(catalog::reconcile_plugin, "Plugin"),
                error_policy::<Plugin>,
                ctx.clone(),
            )
            .for_each(|_| futures::future::ready(()));

    let version_controller =
        Controller::for_shared_stream(pop(&mut versions), caches.versions.clone())
            .with_config(config)
            .watches_shared_stream(pop(&mut plugins), move |p: Arc<Plugin>| {
                let ns = p.namespace().unwrap_or_default();
                let name = p.name_any();
                version_index
                    .state()
                    .into_iter()
                    .filter(|v| cache::in_namespace(&**v, &ns) && v.spec.plugin == name)
                    .map(|v| ObjectRef::from_obj(&*v))
                    .collect::<Vec<_>>()
            })
            .reconcile_all_on(ctx.leader.gained())
            .run(
                timed(catalog::reconcile_version, "PluginVersion"),
                error_policy::<PluginVersion>,
                ctx.clone(),
            )
            .for_each(|_| futures::future::ready(()));

    tokio::join!(install_controller, plugin_controller, version_controller);
}

/// Number of subscriptions of each custom kind [`run`] uses.
pub const SUBSCRIBERS: usize = 3;

fn pop<K: Clone>(subs: &mut Vec<K>) -> K {
    // `Caches::new` made SUBSCRIBERS handles of each kind; running out is a bug here, not input.
    #[allow(clippy::expect_used)]
    subs.pop()
        .expect("enough subscriptions for every controller")
}

type ReconcileFuture = std::pin::Pin<Box<dyn Future<Output = Result<Action, Error>> + Send>>;

/// Wraps a reconciler with its metrics.
fn timed<K, F, Fut>(
    reconcile: F,
    kind: &'static str,
) -> impl Fn(Arc<K>, Arc<Context>) -> ReconcileFuture
where
    K: Send + Sync + 'static,
    F: Fn(Arc<K>, Arc<Context>) -> Fut + Send + Sync + Copy + 'static,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    move |object, ctx| {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let result = reconcile(object, ctx.clone()).await;
            ctx.metrics.reconciled(kind, started.elapsed());
            result
        })
    }
}
