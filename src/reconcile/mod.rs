//! The controllers: PluginInstall (runs plugins), Plugin and PluginVersion (their status).
//! An install's reconcile is observe → plan (pure) → apply → status ([`install`]); a Plugin's
//! and a PluginVersion's read the caches, compute their status with pure functions
//! ([`catalog`]) and write it. Only the Lease holder reconciles. This layer is used by the
//! wiring (`operator.rs`) alone.
pub mod apply;
pub mod build;
pub mod catalog;
pub mod events;
pub mod install;
pub mod jobs;
pub mod service_creates;

use std::{future::Future, sync::Arc, time::Duration};

use futures::StreamExt;
use kube::{
    Client, Resource, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        predicates,
        reflector::{ObjectRef, Store},
        utils::{Predicate, PredicateConfig},
    },
};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};

use crate::{
    lifecycle::{access, versions},
    resources::{Plugin, PluginInstall, PluginVersion, names::labels},
    runtime::{
        backoff::Backoffs,
        cache,
        call::{ApiRefusal, CallError},
        clock::Clock,
        leader::LeaderState,
        metrics::Metrics,
        random::RandomError,
        watch::Fresh,
    },
};

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
    /// Failures in a row per object, for the growing retry delays.
    pub backoffs: Backoffs,
    /// New installs' Services, created in the background.
    pub service_creates: service_creates::ServiceCreates,
    /// How long a settled object waits for its next reconcile without a change
    /// (`--resync-seconds`; [`install::RESYNC`] by default).
    pub resync: Duration,
}

impl Context {
    /// The plans' requeue with the configured resync in place of the default one.
    pub fn requeue(&self, requeue: Duration) -> Action {
        Action::requeue(if requeue == install::RESYNC {
            self.resync
        } else {
            requeue
        })
    }
}

/// What the reconcilers just wrote, per kind (see [`cache::Recent`]).
#[derive(Default)]
pub struct RecentWrites {
    pub installs: cache::Recent<PluginInstall>,
    pub plugins: cache::Recent<Plugin>,
    pub versions: cache::Recent<PluginVersion>,
}

/// The reconcilers' errors: an API call failed or timed out (a write of one object, named, or
/// another call), the OS gave no random numbers, or a child could not be serialized (a bug).
/// Each is counted, logged and retried with a growing delay (`error_policy`); a write the API
/// server refused is also reported in the install's status and an Event. Problems of user input
/// are not errors: they are written to status conditions and wait for a change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("{what}: {source}")]
    Write {
        /// The object written, e.g. `Service team-a/billing`.
        what: String,
        #[source]
        source: CallError,
    },
    #[error(transparent)]
    Random(#[from] RandomError),
    #[error(transparent)]
    Build(#[from] build::BuildError),
    /// A child's name is taken by an object the install does not own (reported in status).
    #[error("name conflict: {0}")]
    NameConflict(String),
}

impl Error {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Call(call) | Self::Write { source: call, .. } => call.metric_label(),
            Self::Random(_) => "random",
            Self::Build(_) => "build",
            Self::NameConflict(_) => "name_conflict",
        }
    }

    /// The API server's refusal, when a retry alone cannot help.
    pub fn refusal(&self) -> Option<ApiRefusal> {
        match self {
            Self::Call(call) | Self::Write { source: call, .. } => call.refusal(),
            Self::Random(_) | Self::Build(_) | Self::NameConflict(_) => None,
        }
    }

    /// Whether only a change by someone else can help (a refusal, a name conflict): retried
    /// from the longer first delay.
    pub fn permanent(&self) -> bool {
        self.refusal().is_some() || matches!(self, Self::NameConflict(_))
    }

    /// What to tell a user: the object, then the API server's own words.
    pub fn user_message(&self) -> String {
        match self {
            Self::Write { what, source } => format!("writing {what}: {}", source.message()),
            Self::Call(call) => call.message(),
            other => other.to_string(),
        }
    }
}

/// Checks an external plugin's endpoint.
#[derive(Clone)]
pub struct HealthChecker {
    http: reqwest::Client,
}

impl HealthChecker {
    /// Each check gives up after 3 s. Fails when the HTTP client cannot be built (no TLS
    /// roots): then the operator does not start, rather than check without a timeout.
    pub fn new() -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()?;
        Ok(Self { http })
    }

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

/// A failed reconcile is counted, logged and tried again after a delay that grows with each
/// failure in a row of that object ([`Backoffs`]): from 1 s for what may pass on the next try
/// (timeouts, conflicts, 429, 5xx), from 5 s for what the API server refused (the reconcile has
/// already reported it in status), doubling up to 5 minutes, with jitter. A success resets it
/// (see `timed`). After a refusal the object is held until its delay is over: the events of
/// its own making (its pods, its status) do not bring the retry forward, a change of what the
/// user set does.
fn error_policy<K: Resource<DynamicType = ()>>(
    object: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let kind = K::kind(&());
    ctx.metrics
        .reconcile_failed(kind.as_ref(), error.metric_label());
    let key = backoff_key(&*object);
    let delay = ctx.backoffs.failed(&key, error.permanent());
    if error.permanent() {
        ctx.backoffs.hold(
            &key,
            user_input(&*object),
            std::time::Instant::now() + delay,
        );
    }
    tracing::warn!(object = %object.name_any(), namespace = ?object.namespace(), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

pub(crate) fn backoff_key<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// What a user sets of an object, hashed: its spec (generation), labels and annotations, and
/// its deletion.
fn user_input<K: Resource>(object: &K) -> u64 {
    let meta = object.meta();
    install::views::fingerprint((
        meta.generation,
        &meta.labels,
        &meta.annotations,
        meta.deletion_timestamp.is_some(),
    ))
}

/// Which objects a change of another one concerns, read from the caches.
#[derive(Clone)]
struct Relations {
    caches: cache::Caches,
    catalog: String,
}

impl Relations {
    fn installs_of_plugin(&self, namespace: &str, plugin: &str) -> Vec<ObjectRef<PluginInstall>> {
        self.caches
            .installs_of(namespace, plugin)
            .iter()
            .map(|i| ObjectRef::from_obj(&**i))
            .collect()
    }

    fn plugin_of_install(&self, install: &PluginInstall) -> Option<ObjectRef<Plugin>> {
        let ns = access::plugin_namespace(install, &self.catalog).ok()?;
        Some(ObjectRef::new(install.spec.plugin.name()).within(ns))
    }

    fn versions_of_plugin(&self, namespace: &str, plugin: &str) -> Vec<ObjectRef<PluginVersion>> {
        self.caches
            .versions_of(namespace, plugin)
            .iter()
            .map(|v| ObjectRef::from_obj(&**v))
            .collect()
    }

    fn versions_of_install(&self, install: &PluginInstall) -> Vec<ObjectRef<PluginVersion>> {
        access::plugin_namespace(install, &self.catalog)
            .map(|ns| self.versions_of_plugin(ns, install.spec.plugin.name()))
            .unwrap_or_default()
    }
}

// What one controller reads of another's objects, hashed: the feeds carry every change, status
// writes included, and a change nothing reads must not wake anyone. Without these, every
// Plugin status write (an install count) and every PluginVersion status write (its InUse list)
// woke every install of the plugin: 1,000 new installs made 40 reconciles each.

/// Its spec, and whether the operator accepted it or is still deciding; not the installs its
/// status lists.
fn version_as_installs_see_it(version: &PluginVersion) -> Option<u64> {
    fingerprint((
        version.meta().generation,
        version.meta().deletion_timestamp.is_some(),
        versions::is_accepted(version),
        versions::is_pending(version),
    ))
}

/// Its spec; not its status (versions, install count).
fn plugin_as_installs_see_it(plugin: &Plugin) -> Option<u64> {
    fingerprint((
        plugin.meta().generation,
        plugin.meta().deletion_timestamp.is_some(),
    ))
}

fn deployment_as_installs_see_it(deployment: &Deployment) -> Option<u64> {
    Some(install::views::deployment_fingerprint(deployment))
}

fn pod_as_installs_see_it(pod: &Pod) -> Option<u64> {
    Some(install::views::pod_fingerprint(pod))
}

/// The Plugin it names (what a Plugin counts).
fn install_as_plugins_see_it(install: &PluginInstall) -> Option<u64> {
    fingerprint(install.spec.plugin.to_string())
}

/// The Plugin it names and the versions it runs or rolls out to (what a version's InUse lists).
fn install_as_versions_see_it(install: &PluginInstall) -> Option<u64> {
    let status = install.status.as_ref();
    fingerprint((
        install.spec.plugin.to_string(),
        status.and_then(|s| s.running()).map(|v| v.to_string()),
        status.and_then(|s| s.rolling_out()).map(|v| v.to_string()),
    ))
}

fn fingerprint(value: impl std::hash::Hash) -> Option<u64> {
    Some(install::views::fingerprint(value))
}

fn plugin_of_version(version: &PluginVersion) -> ObjectRef<Plugin> {
    ObjectRef::new(&version.spec.plugin).within(&version.namespace().unwrap_or_default())
}

fn install_of_child<K: Resource>(child: &K) -> Option<ObjectRef<PluginInstall>> {
    let name = child.labels().get(labels::INSTALL)?;
    Some(ObjectRef::new(name).within(&child.namespace().unwrap_or_default()))
}

/// The three controllers, subscribed to the caches' feeds now (so call it before the watches
/// start); the future runs them until the process stops. Only the Lease holder acts (the
/// reconcilers check [`LeaderState`]), and on gaining the lease every object is reconciled.
pub fn run(
    ctx: Arc<Context>,
    feeds: cache::Feeds,
    concurrency: u16,
) -> impl Future<Output = ()> + Send + 'static {
    let caches = ctx.caches.clone();
    let config = controller::Config::default()
        .concurrency(concurrency)
        .debounce(Duration::from_millis(200));
    let relations = Relations {
        caches: caches.clone(),
        catalog: ctx.catalog_namespace.clone(),
    };

    let install_controller = {
        let (r1, r2, r3, r4) = (
            relations.clone(),
            relations.clone(),
            relations.clone(),
            relations.clone(),
        );
        // An install is reconciled when what a user sets changes (spec, labels, annotations,
        // finalizers; a deletion bumps the generation), not when its status does: the status is
        // what a reconcile just wrote, and rereading it is a reconcile with nothing to do.
        let user_changes = predicates::generation
            .combine(predicates::annotations)
            .combine(predicates::labels)
            .combine(predicates::finalizers);
        let installs = feeds
            .installs
            .applied()
            .predicate_filter(user_changes, PredicateConfig::default());
        let deployments = feeds
            .deployments
            .applied()
            .predicate_filter(deployment_as_installs_see_it, PredicateConfig::default());
        let pods = feeds
            .pods
            .applied()
            .predicate_filter(pod_as_installs_see_it, PredicateConfig::default());
        let versions = feeds
            .versions
            .applied()
            .predicate_filter(version_as_installs_see_it, PredicateConfig::default());
        let plugins = feeds
            .plugins
            .applied()
            .predicate_filter(plugin_as_installs_see_it, PredicateConfig::default());
        Controller::for_stream(installs, caches.installs.clone())
            .with_config(config.clone())
            .owns_stream(deployments)
            .watches_stream(feeds.deployments.deleted(), |d: Deployment| {
                install_of_child(&d)
            })
            .watches_stream(pods, |pod: Pod| install_of_child(&pod))
            .watches_stream(feeds.pods.deleted(), |pod: Pod| install_of_child(&pod))
            .watches_stream(versions, move |v: PluginVersion| {
                r1.installs_of_plugin(&v.namespace().unwrap_or_default(), &v.spec.plugin)
            })
            .watches_stream(feeds.versions.deleted(), move |v: PluginVersion| {
                r2.installs_of_plugin(&v.namespace().unwrap_or_default(), &v.spec.plugin)
            })
            .watches_stream(plugins, move |p: Plugin| {
                r3.installs_of_plugin(&p.namespace().unwrap_or_default(), &p.name_any())
            })
            .watches_stream(feeds.plugins.deleted(), move |p: Plugin| {
                r4.installs_of_plugin(&p.namespace().unwrap_or_default(), &p.name_any())
            })
            .reconcile_on(ctx.service_creates.woken())
            .reconcile_all_on(ctx.leader.gained())
            .run(
                timed(install::reconcile, "PluginInstall", caches.installs.clone()),
                error_policy::<PluginInstall>,
                ctx.clone(),
            )
            .for_each(|_| futures::future::ready(()))
    };

    let plugin_controller = {
        let (r1, r2) = (relations.clone(), relations.clone());
        Controller::for_stream(feeds.plugins.applied(), caches.plugins.clone())
            .with_config(config.clone())
            .watches_stream(feeds.versions.applied(), |v: PluginVersion| {
                Some(plugin_of_version(&v))
            })
            .watches_stream(feeds.versions.deleted(), |v: PluginVersion| {
                Some(plugin_of_version(&v))
            })
            .watches_stream(
                feeds
                    .installs
                    .applied()
                    .predicate_filter(install_as_plugins_see_it, PredicateConfig::default()),
                move |i: PluginInstall| r1.plugin_of_install(&i),
            )
            .watches_stream(feeds.installs.deleted(), move |i: PluginInstall| {
                r2.plugin_of_install(&i)
            })
            .reconcile_all_on(ctx.leader.gained())
            .run(
                timed(catalog::reconcile_plugin, "Plugin", caches.plugins.clone()),
                error_policy::<Plugin>,
                ctx.clone(),
            )
            .for_each(|_| futures::future::ready(()))
    };

    let version_controller = {
        let (r1, r2, r3) = (relations.clone(), relations.clone(), relations.clone());
        Controller::for_stream(feeds.versions.applied(), caches.versions.clone())
            .with_config(config)
            .watches_stream(feeds.plugins.applied(), move |p: Plugin| {
                r1.versions_of_plugin(&p.namespace().unwrap_or_default(), &p.name_any())
            })
            // An install's versions changed, or it went: the versions it used may be freed.
            .watches_stream(
                feeds
                    .installs
                    .applied()
                    .predicate_filter(install_as_versions_see_it, PredicateConfig::default()),
                move |i: PluginInstall| r2.versions_of_install(&i),
            )
            .watches_stream(feeds.installs.deleted(), move |i: PluginInstall| {
                r3.versions_of_install(&i)
            })
            .reconcile_all_on(ctx.leader.gained())
            .run(
                timed(
                    catalog::reconcile_version,
                    "PluginVersion",
                    caches.versions.clone(),
                ),
                error_policy::<PluginVersion>,
                ctx.clone(),
            )
            .for_each(|_| futures::future::ready(()))
    };

    async move {
        tokio::join!(install_controller, plugin_controller, version_controller);
    }
}

/// How long a reconcile waits for stale caches before it gives its place back to the queue.
const STALE_CACHE_WAIT: Duration = Duration::from_secs(10);

type ReconcileFuture = std::pin::Pin<Box<dyn Future<Output = Result<Action, Error>> + Send>>;

/// Wraps a reconciler with its metrics.
fn timed<K, F, Fut>(
    reconcile: F,
    kind: &'static str,
    store: Store<K>,
) -> impl Fn(Arc<K>, Arc<Context>) -> ReconcileFuture
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    F: Fn(Arc<K>, Arc<Context>) -> Fut + Send + Sync + Copy + 'static,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    move |object, ctx| {
        let store = store.clone();
        Box::pin(async move {
            // No reconcile decides from caches that are not all current: before their first
            // full list a restart would count no installs and free versions in use, and write
            // that; after a watch was cut, an install deleted in the gap would still be cached
            // and get its children made again. Each waits until every watch is current.
            let object = match ctx
                .caches
                .freshness
                .current_version(&store, object, STALE_CACHE_WAIT)
                .await
            {
                Fresh::Current(object) => object,
                // Its deletion triggers what depends on it.
                Fresh::Gone => return Ok(Action::await_change()),
                Fresh::Stale => return Ok(Action::requeue(Duration::from_secs(1))),
            };
            let key = backoff_key(&*object);
            // After a refusal the next try waits out its delay, whatever woke it (its pods, a
            // status written), unless the user changed the object; not a success either.
            if let Some(held) =
                ctx.backoffs
                    .held(&key, user_input(&*object), std::time::Instant::now())
            {
                return Ok(Action::requeue(held));
            }
            let started = std::time::Instant::now();
            let result = reconcile(object, ctx.clone()).await;
            ctx.metrics.reconciled(kind, started.elapsed());
            if result.is_ok() {
                ctx.backoffs.succeeded(&key);
            }
            result
        })
    }
}
