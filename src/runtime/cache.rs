//! The watch caches the controllers and the HTTP API read. Every replica runs them; the
//! controllers subscribe to them for their triggers. `managedFields` is dropped from every cached
//! object (it is most of an object's size and nothing here reads it).
use std::{fmt::Debug, future::Future, pin::Pin, sync::Arc};

use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;

use super::{
    index::Index,
    namespaces,
    watch::{Freshness, Relist, Retry, Seen},
};
use crate::{
    lifecycle::access,
    resources::{Plugin, PluginInstall, PluginVersion, names},
};

/// Events a subscriber may lag behind before the watch waits for it.
/// Changes a controller may lag behind its feed before it loses some.
const FEED_BUFFER: usize = 4096;

/// Which namespaces the operator watches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Scope {
    #[default]
    AllNamespaces,
    /// These (at least one, each once, sorted).
    Namespaces(Vec<String>),
}

impl Scope {
    /// From `--namespace` (repeated or comma-separated): all namespaces when none is named.
    pub fn of(namespaces: &[String]) -> Self {
        let mut named: Vec<String> = namespaces
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        named.sort();
        named.dedup();
        if named.is_empty() {
            Self::AllNamespaces
        } else {
            Self::Namespaces(named)
        }
    }

    /// This scope and one more namespace (the catalog's, for Plugins and PluginVersions).
    pub fn and(&self, namespace: &str) -> Self {
        match self {
            Self::AllNamespaces => Self::AllNamespaces,
            Self::Namespaces(named) => {
                let mut with = named.clone();
                with.push(namespace.to_owned());
                Self::of(&with)
            }
        }
    }

    /// One API per watched namespace (one over the cluster for all), for a kind the shared
    /// caches do not hold.
    pub fn apis<K>(&self, client: &Client) -> Vec<Api<K>>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self {
            Self::AllNamespaces => vec![Api::all(client.clone())],
            Self::Namespaces(named) => named
                .iter()
                .map(|ns| Api::namespaced(client.clone(), ns))
                .collect(),
        }
    }

    /// The watch of kind `K` in this scope: one over the cluster, one namespace's, or one per
    /// namespace merged ([`namespaces::merge`]) for the reflector whose reader is `store`.
    fn watch<K>(
        &self,
        client: &Client,
        config: watcher::Config,
        store: Store<K>,
    ) -> futures::stream::BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>
    where
        K: Watchable,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    {
        // No backoff here: the caller starts a new watch after each failure ([`Watches`]).
        let one = |api: Api<K>| watcher(api, config.clone()).boxed();
        match self {
            Self::AllNamespaces => one(Api::all(client.clone())),
            Self::Namespaces(named) if named.len() == 1 => {
                one(Api::namespaced(client.clone(), &named[0]))
            }
            Self::Namespaces(named) => {
                let streams = named
                    .iter()
                    .map(|ns| (ns.clone(), one(Api::namespaced(client.clone(), ns))))
                    .collect();
                namespaces::merge(streams, store).boxed()
            }
        }
    }
}

/// Read-only views of the cluster.
#[derive(Clone)]
pub struct Caches {
    pub installs: Store<PluginInstall>,
    pub plugins: Store<Plugin>,
    pub versions: Store<PluginVersion>,
    pub deployments: Store<Deployment>,
    pub pods: Store<Pod>,
    pub services: Store<PartialObjectMeta<Service>>,
    pub service_accounts: Store<PartialObjectMeta<ServiceAccount>>,
    pub config_maps: Store<PartialObjectMeta<ConfigMap>>,
    /// The Secrets the operator made (credentials), metadata only: their data is never cached.
    pub secrets: Store<PartialObjectMeta<Secret>>,
    /// Whether every one of these stores is current (listed, its watch not broken since).
    pub freshness: Freshness,
    /// Lookups into the stores by what relates objects (see [`Indexes`]).
    pub indexes: Arc<Indexes>,
}

/// The indexes of the stores, kept from the same watch events.
pub struct Indexes {
    /// By [`Indexes::namespace`], [`Indexes::uid`] and [`Indexes::plugin`].
    pub installs: Index<PluginInstall>,
    /// By [`Indexes::plugin`] (the Plugin a version belongs to).
    pub versions: Index<PluginVersion>,
    /// By [`Indexes::install`] (the install label).
    pub pods: Index<Pod>,
}

impl Indexes {
    /// Indexes whose installs use Plugins of their namespace or of `catalog`.
    pub fn new(catalog: &str) -> Self {
        let catalog = catalog.to_owned();
        Self {
            installs: Index::new(move |install: &PluginInstall| {
                let mut keys = vec![Self::namespace(&install.namespace().unwrap_or_default())];
                if let Some(uid) = install.uid() {
                    keys.push(Self::uid(&uid));
                }
                if let Ok(namespace) = access::plugin_namespace(install, &catalog) {
                    keys.push(Self::plugin(namespace, install.spec.plugin.name()));
                }
                keys
            }),
            versions: Index::new(|version: &PluginVersion| {
                vec![Self::plugin(
                    &version.namespace().unwrap_or_default(),
                    &version.spec.plugin,
                )]
            }),
            pods: Index::new(|pod: &Pod| {
                pod.labels()
                    .get(names::labels::INSTALL)
                    .map(|install| Self::install(&pod.namespace().unwrap_or_default(), install))
                    .into_iter()
                    .collect()
            }),
        }
    }

    pub fn namespace(namespace: &str) -> String {
        format!("namespace:{namespace}")
    }

    pub fn uid(uid: &str) -> String {
        format!("uid:{uid}")
    }

    /// The Plugin `namespace/name`.
    pub fn plugin(namespace: &str, name: &str) -> String {
        format!("plugin:{namespace}/{name}")
    }

    /// The install `namespace/name`.
    pub fn install(namespace: &str, name: &str) -> String {
        format!("install:{namespace}/{name}")
    }
}

/// Change feeds of the cached kinds, for the controllers' triggers.
#[derive(Clone)]
pub struct Feeds {
    pub installs: Feed<PluginInstall>,
    pub plugins: Feed<Plugin>,
    pub versions: Feed<PluginVersion>,
    pub deployments: Feed<Deployment>,
    pub pods: Feed<Pod>,
}

/// The objects a watch saw change or go, as they were then.
///
/// kube's shared-store subscriptions (`ReflectHandle`) look each changed object up in the store
/// when they are polled; one that was deleted in between leaves the stream pending without a
/// wake-up, and the controller never hears from that kind again. A feed hands out the objects
/// themselves, and deletions too (a Plugin's install count drops, a version in use is freed, a
/// deleted Deployment is made again).
pub struct Feed<K> {
    applied: tokio::sync::broadcast::Sender<K>,
    deleted: tokio::sync::broadcast::Sender<K>,
}

impl<K> Clone for Feed<K> {
    fn clone(&self) -> Self {
        Self {
            applied: self.applied.clone(),
            deleted: self.deleted.clone(),
        }
    }
}

impl<K: Clone> Default for Feed<K> {
    fn default() -> Self {
        Self {
            applied: tokio::sync::broadcast::channel(FEED_BUFFER).0,
            deleted: tokio::sync::broadcast::channel(FEED_BUFFER).0,
        }
    }
}

impl<K: Clone + Send + 'static> Feed<K> {
    /// Objects created or changed from now on (the first list included, when subscribed before
    /// the watch starts, and every object again after a relist), as a controller's trigger
    /// stream.
    pub fn applied(&self) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
        Self::stream(self.applied.subscribe())
    }

    /// Objects deleted from now on, those a relist no longer finds included.
    pub fn deleted(&self) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
        Self::stream(self.deleted.subscribe())
    }

    fn stream(
        receiver: tokio::sync::broadcast::Receiver<K>,
    ) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
        tokio_stream::wrappers::BroadcastStream::new(receiver).filter_map(|received| {
            if received.is_err() {
                // Lagged: triggers were lost; the periodic resync of each object covers them.
                tracing::warn!("a controller fell behind its watch feed");
            }
            futures::future::ready(received.ok().map(Ok))
        })
    }

    /// Publishes what a watch event changed. The objects of a list are published when it is
    /// done (`InitDone`), once the store holds them (a controller looks each trigger up in the
    /// store, and would skip one the store does not have yet); with them, each object the store
    /// held before the list and the list no longer has is published as deleted: it went while
    /// the watch was down, and its dependents must hear of it.
    fn publish(&self, event: &watcher::Event<K>, store: &Store<K>, relist: &mut Relist<K>)
    where
        K: Resource,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    {
        // Nobody listening is fine: then nobody needs to know.
        match event {
            watcher::Event::Apply(object) => {
                let _ = self.applied.send(object.clone());
            }
            watcher::Event::Delete(object) => {
                let _ = self.deleted.send(object.clone());
            }
            watcher::Event::Init => relist.begin(store.state()),
            watcher::Event::InitApply(_) => {}
            watcher::Event::InitDone => {
                let listed = store.state();
                let gone = relist.finish(&listed);
                if !gone.is_empty() {
                    let kind = K::kind(&K::DynamicType::default()).into_owned();
                    tracing::info!(%kind, deleted = gone.len(), "a relist found objects deleted while the watch was down");
                }
                for object in gone {
                    let _ = self.deleted.send((*object).clone());
                }
                for object in listed {
                    let _ = self.applied.send((*object).clone());
                }
            }
        }
    }
}

/// The futures that keep the caches filled; they run until the process stops.
pub type Drivers = Vec<Pin<Box<dyn Future<Output = ()> + Send>>>;

impl Caches {
    /// Starts nothing by itself: returns the caches, their change feeds and the drivers to
    /// spawn (subscribe to the feeds before spawning them, to see the first lists too).
    /// Plugins and PluginVersions are watched in `scope` and in the catalog namespace.
    pub fn new(client: &Client, scope: &Scope, catalog: &str) -> (Self, Feeds, Drivers) {
        let owned = watcher::Config::default().labels(&names::managed_selector());
        let all = watcher::Config::default();
        let catalog_scope = scope.and(catalog);
        let mut watches = Watches {
            drivers: Vec::new(),
            freshness: Freshness::default(),
            answered: Arc::default(),
        };
        let watched = |scope: &Scope, config: &watcher::Config| Watched {
            client: client.clone(),
            scope: scope.clone(),
            config: config.clone(),
        };

        let indexes = Arc::new(Indexes::new(catalog));
        let (installs, install_feed) = watches.shared(
            watched(scope, &all),
            Some(indexes.clone()).map(|i| move |e: &_, s: &_| index(&i.installs, e, s)),
        );
        let (plugins, plugin_feed) = watches.shared(watched(&catalog_scope, &all), no_index());
        let (versions, version_feed) = watches.shared(
            watched(&catalog_scope, &all),
            Some(indexes.clone()).map(|i| move |e: &_, s: &_| index(&i.versions, e, s)),
        );
        let (deployments, deployment_feed) = watches.shared(watched(scope, &owned), no_index());
        let (pods, pod_feed) = watches.shared(
            watched(scope, &owned),
            Some(indexes.clone()).map(|i| move |e: &_, s: &_| index(&i.pods, e, s)),
        );
        let services = watches.metadata_only::<Service>(watched(scope, &owned));
        let service_accounts = watches.metadata_only::<ServiceAccount>(watched(scope, &owned));
        let config_maps = watches.metadata_only::<ConfigMap>(watched(scope, &owned));
        let secrets = watches.metadata_only::<Secret>(watched(scope, &owned));

        let caches = Self {
            installs,
            plugins,
            versions,
            deployments,
            pods,
            services,
            service_accounts,
            config_maps,
            secrets,
            freshness: watches.freshness,
            indexes,
        };
        let feeds = Feeds {
            installs: install_feed,
            plugins: plugin_feed,
            versions: version_feed,
            deployments: deployment_feed,
            pods: pod_feed,
        };
        (caches, feeds, watches.drivers)
    }

    /// Makes the indexes anew from the stores (for stores filled by hand, as in benches).
    pub fn reindex(&self) {
        self.indexes.installs.rebuild(&self.installs.state());
        self.indexes.versions.rebuild(&self.versions.state());
        self.indexes.pods.rebuild(&self.pods.state());
    }

    /// Resolves once every cache has had its first full list (the freshness the reconcilers
    /// wait for: every watch starts listing).
    pub async fn ready(&self) -> bool {
        loop {
            if self
                .freshness
                .wait(std::time::Duration::from_secs(3600))
                .await
            {
                return true;
            }
        }
    }
}

/// Keeps `index` up with a watch event its store has applied.
fn index<K>(index: &Index<K>, event: &watcher::Event<K>, store: &Store<K>)
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    match event {
        watcher::Event::Apply(object) => index.applied(object, store),
        watcher::Event::Delete(object) => index.deleted(object),
        // The store swaps in the new list at its end; so does the index.
        watcher::Event::InitDone => index.rebuild(&store.state()),
        watcher::Event::Init | watcher::Event::InitApply(_) => {}
    }
}

/// A store without an index.
type IndexHook<K> = fn(&watcher::Event<K>, &Store<K>);

fn no_index<K>() -> Option<IndexHook<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    None
}

fn drop_managed_fields<K: Resource>(object: &mut K) {
    object.managed_fields_mut().clear();
}

/// What one cache watches: a kind (the type parameter), in a scope, with a selector.
struct Watched {
    client: Client,
    scope: Scope,
    config: watcher::Config,
}

/// A kind the caches can watch: namespaced, and what kube's watcher and store need.
trait Watchable:
    Resource<Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Watchable for K where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// The watches being set up, and their freshness.
struct Watches {
    drivers: Drivers,
    freshness: Freshness,
    /// Wakes the watches waiting in their backoff when one hears from the API server again.
    answered: Arc<tokio::sync::Notify>,
}

impl Watches {
    /// A store and its change feed; `index` (if any) is kept up before the feed publishes, so
    /// that a controller that hears of a change finds it in the index too.
    fn shared<K, I>(&mut self, watched: Watched, index: Option<I>) -> (Store<K>, Feed<K>)
    where
        K: Watchable,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
        I: Fn(&watcher::Event<K>, &Store<K>) + Send + 'static,
    {
        let (reader, writer) = reflector::store();
        let feed = Feed::default();
        let publisher = feed.clone();
        let store = reader.clone();
        let mut relist = Relist::default();
        self.add(watched, reader.clone(), writer, move |event| {
            if let Some(index) = &index {
                index(event, &store);
            }
            publisher.publish(event, &store, &mut relist);
        });
        (reader, feed)
    }

    fn metadata_only<K>(&mut self, watched: Watched) -> Store<PartialObjectMeta<K>>
    where
        K: Watchable,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    {
        let (reader, writer) = reflector::store();
        self.add(watched, reader.clone(), writer, |_| {});
        reader
    }

    /// Keeps `writer`'s store filled from a watch, calling `on_event` after each event is in
    /// the store.
    fn add<K>(
        &mut self,
        watched: Watched,
        reader: Store<K>,
        mut writer: reflector::store::Writer<K>,
        mut on_event: impl FnMut(&watcher::Event<K>) + Send + 'static,
    ) where
        K: Watchable,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    {
        let kind = K::kind(&K::DynamicType::default()).into_owned();
        let health = self.freshness.watch(&kind);
        let mut retry = Retry::new(self.answered.clone());
        let driver = async move {
            loop {
                // A new watch lists first: after any failure (410 Gone included) nothing is
                // taken on trust (see `watch`), and with several namespaces all of them list
                // again together, as one list.
                let mut stream =
                    watched
                        .scope
                        .watch(&watched.client, watched.config.clone(), reader.clone());
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(event) => {
                            let event = event.modify(drop_managed_fields);
                            writer.apply_watcher_event(&event);
                            on_event(&event);
                            health.saw(Seen::of(&event));
                            retry.answered();
                        }
                        Err(error) => {
                            health.saw(Seen::Error);
                            tracing::warn!(%kind, %error, "watch error; listing again");
                            if let Some(wait) = retry.failed(&error) {
                                retry.wait(wait).await;
                            }
                            break;
                        }
                    }
                }
            }
        };
        self.drivers.push(driver.boxed());
    }
}

/// All objects of a store, as `Arc`s, filtered.
pub fn select<K, F>(store: &Store<K>, filter: F) -> Vec<Arc<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
    F: Fn(&K) -> bool,
{
    store.state().into_iter().filter(|o| filter(o)).collect()
}

/// Looks an object up by namespace and name.
pub fn get<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    store.get(&reflector::ObjectRef::new(name).within(namespace))
}

/// How long a handler waits for its own write to reach the cache ([`seen`]).
pub const READ_YOUR_WRITE: std::time::Duration = std::time::Duration::from_secs(3);

/// Waits (at most `deadline`) until the store holds the object with this `uid`, so that a caller
/// who created it can read, change or delete it by id in the next request; the watch normally
/// brings it within milliseconds. Returns whether it arrived; past the deadline the write still
/// stands, only the next read may not see it yet.
pub async fn seen<K>(
    store: &Store<K>,
    namespace: &str,
    name: &str,
    uid: &str,
    deadline: std::time::Duration,
) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    let has = || get(store, namespace, name).is_some_and(|o| o.uid().as_deref() == Some(uid));
    let wait = async {
        // The store has no per-object notification; a short poll costs nothing beside a request.
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(20));
        while !has() {
            tick.tick().await;
        }
    };
    tokio::time::timeout(deadline, wait).await.is_ok()
}

/// Whether an object is in `namespace`.
pub fn in_namespace<K: Resource>(object: &K, namespace: &str) -> bool {
    object.namespace().as_deref() == Some(namespace)
}

/// Namespace and name.
type ObjectKey = (String, String);
/// The resourceVersion an object had before a write, and the object the write returned.
type Written<K> = (Option<String>, Arc<K>);

/// Objects the operator just wrote, for the moment before the watch brings them back.
///
/// A reconcile that runs again before the cache has the object it wrote would decide from the
/// old status, and write and announce the same change twice. While the cache still holds the
/// version the write replaced, [`Recent::fresh`] answers with the written one instead.
pub struct Recent<K> {
    written: std::sync::Mutex<std::collections::HashMap<ObjectKey, Written<K>>>,
}

impl<K> Default for Recent<K> {
    fn default() -> Self {
        Self {
            written: std::sync::Mutex::default(),
        }
    }
}

impl<K: Resource> Recent<K> {
    fn key(object: &K) -> (String, String) {
        (object.namespace().unwrap_or_default(), object.name_any())
    }

    /// The newest known version of `cached`.
    pub fn fresh(&self, cached: Arc<K>) -> Arc<K> {
        // Poisoned only if a holder panicked; then the cache's version is the safe answer (the
        // status write that follows checks it against the API server's).
        let Ok(mut written) = self.written.lock() else {
            return cached;
        };
        let key = Self::key(&cached);
        match written.get(&key) {
            Some((replaced, newer)) if *replaced == cached.resource_version() => newer.clone(),
            Some(_) => {
                written.remove(&key);
                cached
            }
            None => cached,
        }
    }

    /// Remembers that `after` replaced `before`.
    pub fn wrote(&self, before: &K, after: K) {
        if let Ok(mut written) = self.written.lock() {
            written.insert(
                Self::key(before),
                (before.resource_version(), Arc::new(after)),
            );
        }
    }

    /// Forgets a deleted object.
    pub fn forget(&self, object: &K) {
        if let Ok(mut written) = self.written.lock() {
            written.remove(&Self::key(object));
        }
    }
}
