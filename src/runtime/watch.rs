//! How the caches' watches come back after a cut: a short, jittered, capped backoff, and what a
//! relist shows went missing while the watch was down.
//!
//! After any failure a watch lists again (`Init`, `InitApply`…, `InitDone`), as client-go's
//! reflector does: on `410 Gone` kube's watcher does it by itself, after other failures the
//! caches start a new watcher (kube's would resume from its resourceVersion, and a resume that
//! succeeds shows nothing in the stream, so nobody could tell when the store is current again).
//! The store is replaced when the list is done. Objects deleted in the gap produce no `Delete`
//! event; [`Relist`] finds them by comparing the store before the list with the store after it.
//!
//! Until every watch has listed again, the stores mix what was true before the cut with what is
//! true now (the Deployments relisted, the installs not yet). [`Freshness`] tells the
//! reconcilers when all watches are current again, so that none acts on an install deleted in
//! the gap (it would make children again, for the garbage collector to remove much later).
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use kube::{
    Resource, ResourceExt,
    runtime::{
        reflector::{ObjectRef, Store},
        utils::Backoff,
        watcher::{self, ExponentialBackoff},
    },
};
use tokio::sync::Notify;

/// The first wait after a watch error.
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// The longest wait between two attempts, jitter included.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The watches' backoff: 250 ms, doubling, each wait plus a random part of up to itself, never
/// more than 5 s; reset by the first event after a success. kube's default (800 ms, up to 30 s)
/// left a restarted API server unwatched for about 20 s after an 8 s outage.
pub fn backoff() -> ExponentialBackoff {
    // backon adds the jitter after the cap: cap at half, so that jitter stays within the max.
    backon::ExponentialBuilder::default()
        .with_min_delay(BACKOFF_MIN)
        .with_max_delay(BACKOFF_MAX / 2)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .into()
}

/// When a watch tries again after a failure: after `410 Gone` at once (the API server has
/// answered, and the watcher lists again; waiting would only leave the store stale longer),
/// after other failures when [`backoff`] says, or as soon as another watch of the caches hears
/// from the API server again (`answered` is shared), so that after an outage they all list
/// again at once instead of each at the end of its own wait (up to [`BACKOFF_MAX`]).
pub struct Retry {
    backoff: ExponentialBackoff,
    failing: bool,
    answered: Arc<Notify>,
}

impl Retry {
    pub fn new(answered: Arc<Notify>) -> Self {
        Self {
            backoff: backoff(),
            failing: false,
            answered,
        }
    }

    /// The API server answered: the next failure waits the shortest time again, and if this
    /// watch was failing, the others stop waiting.
    pub fn answered(&mut self) {
        if std::mem::take(&mut self.failing) {
            self.answered.notify_waiters();
        }
        self.backoff.reset();
    }

    /// A failure: how long to wait before the next attempt (`None`: at once).
    pub fn failed(&mut self, error: &watcher::Error) -> Option<Duration> {
        if is_gone(error) {
            self.answered();
            return None;
        }
        self.failing = true;
        self.backoff.next()
    }

    /// Waits `wait`, or less when another watch hears from the API server.
    pub async fn wait(&self, wait: Duration) {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = self.answered.notified() => {}
        }
    }
}

/// The watch's resourceVersion is too old: the watcher lists again.
pub fn is_gone(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchError(status) if status.code == 410)
}

/// What the stream of one watch last showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchState {
    /// A list is under way (the first one, or again after a failure): the store is not current
    /// until it is done.
    Listing,
    /// Listed, and events flow.
    Watching,
    /// The last attempt failed; the next one lists again.
    Broken,
}

/// What a watch stream yielded, as far as freshness goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    Error,
    ListBegins,
    Listed,
    Change,
}

impl Seen {
    pub fn of<K>(event: &watcher::Event<K>) -> Self {
        match event {
            watcher::Event::Init | watcher::Event::InitApply(_) => Self::ListBegins,
            watcher::Event::InitDone => Self::Listed,
            watcher::Event::Apply(_) | watcher::Event::Delete(_) => Self::Change,
        }
    }
}

impl WatchState {
    /// The state after `seen`. Pure.
    pub fn next(self, seen: Seen) -> Self {
        match seen {
            Seen::Error => Self::Broken,
            Seen::ListBegins => Self::Listing,
            Seen::Listed => Self::Watching,
            // Changes flow only between a list and the next failure; one after a failure (a
            // watch that resumed) does not say that nothing was missed.
            Seen::Change => self,
        }
    }
}

/// Whether every watch of the caches is current: listed, and not broken since (see the module
/// documentation). Starts with every watch listing, so it is also the cold-start gate.
#[derive(Clone, Default)]
pub struct Freshness {
    watches: Arc<Mutex<Vec<(String, WatchState)>>>,
    became_current: Arc<Notify>,
}

impl Freshness {
    /// A new watch, listing; `kind` names it in logs.
    pub fn watch(&self, kind: &str) -> WatchHealth {
        let mut watches = self.lock();
        watches.push((kind.to_owned(), WatchState::Listing));
        WatchHealth {
            freshness: self.clone(),
            index: watches.len() - 1,
        }
    }

    /// Every watch is current.
    pub fn current(&self) -> bool {
        self.lock()
            .iter()
            .all(|(_, state)| *state == WatchState::Watching)
    }

    /// Waits until every watch is current, at most `deadline`; whether they are.
    pub async fn wait(&self, deadline: Duration) -> bool {
        let wait = async {
            loop {
                // Registered before the check, so a watch that becomes current in between
                // still wakes this one.
                let notified = self.became_current.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                if self.current() {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(deadline, wait).await.is_ok()
    }

    /// `object`, read from `store` when every watch is current: at once when they are; else
    /// after waiting (at most `deadline`) for them, and then read again, since it was read
    /// from a stale store. An object the relisted store no longer holds (or holds under another
    /// uid) was deleted in the gap.
    pub async fn current_version<K>(
        &self,
        store: &Store<K>,
        object: Arc<K>,
        deadline: Duration,
    ) -> Fresh<K>
    where
        K: Resource + Clone + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone + Default,
    {
        if self.current() {
            return Fresh::Current(object);
        }
        if !self.wait(deadline).await {
            return Fresh::Stale;
        }
        match store.get(&ObjectRef::from_obj(&*object)) {
            Some(current) if current.uid() == object.uid() => Fresh::Current(current),
            _ => Fresh::Gone,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, WatchState)>> {
        // A holder never panics while it holds the lock (it only reads or assigns a state).
        self.watches.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An object as [`Freshness::current_version`] found it.
#[derive(Debug)]
pub enum Fresh<K> {
    Current(Arc<K>),
    /// Deleted while the watches were catching up.
    Gone,
    /// The watches are not current yet.
    Stale,
}

/// One watch's part of [`Freshness`].
pub struct WatchHealth {
    freshness: Freshness,
    index: usize,
}

impl WatchHealth {
    /// Records what the watch stream yielded.
    pub fn saw(&self, seen: Seen) {
        let mut watches = self.freshness.lock();
        let (kind, state) = &mut watches[self.index];
        let next = state.next(seen);
        let was = std::mem::replace(state, next);
        if was == WatchState::Watching && next != WatchState::Watching {
            tracing::info!(%kind, "watch interrupted; reconciles wait until every watch is current");
        } else if was != WatchState::Watching && next == WatchState::Watching {
            tracing::debug!(%kind, "watch current");
            drop(watches);
            self.freshness.became_current.notify_waiters();
        }
    }
}

/// What a watch knew when it began to list again.
pub struct Relist<K> {
    before: Option<Vec<Arc<K>>>,
}

impl<K> Default for Relist<K> {
    fn default() -> Self {
        Self { before: None }
    }
}

impl<K: Resource> Relist<K> {
    /// A list begins (`Init`): `known` is the store as it still is (the reflector replaces it only
    /// at `InitDone`). Holds the store's `Arc`s, not copies, until the list is done.
    pub fn begin(&mut self, known: Vec<Arc<K>>) {
        self.before = Some(known);
    }

    /// The list is done (`InitDone`): the objects known before it that it no longer holds (by
    /// uid, so one deleted and made again under its name counts as gone).
    pub fn finish(&mut self, listed: &[Arc<K>]) -> Vec<Arc<K>> {
        let before = self.before.take().unwrap_or_default();
        vanished(before, listed)
    }
}

/// The objects of `before` that `after` does not hold. Pure.
pub fn vanished<K: Resource>(before: Vec<Arc<K>>, after: &[Arc<K>]) -> Vec<Arc<K>> {
    if before.is_empty() {
        return before;
    }
    let kept: HashSet<Key> = after.iter().map(|o| key(&**o)).collect();
    before
        .into_iter()
        .filter(|o| !kept.contains(&key(&**o)))
        .collect()
}

/// Namespace, name and uid.
type Key = (Option<String>, String, Option<String>);

fn key<K: Resource>(object: &K) -> Key {
    (object.namespace(), object.name_any(), object.uid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::{api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::ObjectMeta};

    fn object(namespace: &str, name: &str, uid: &str) -> Arc<ConfigMap> {
        Arc::new(ConfigMap {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                uid: Some(uid.into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        })
    }

    fn names(objects: &[Arc<ConfigMap>]) -> Vec<String> {
        let mut names: Vec<String> = objects
            .iter()
            .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_first_list_loses_nothing() {
        let mut relist = Relist::default();
        relist.begin(Vec::new());
        assert!(relist.finish(&[object("a", "x", "1")]).is_empty());
        // A list whose start was never seen knows nothing either.
        assert!(Relist::<ConfigMap>::default().finish(&[]).is_empty());
    }

    #[test]
    fn objects_missing_from_the_relist_are_gone() {
        let mut relist = Relist::default();
        relist.begin(vec![
            object("a", "kept", "1"),
            object("a", "deleted", "2"),
            object("b", "deleted", "3"),
        ]);
        let gone = relist.finish(&[object("a", "kept", "1"), object("a", "new", "4")]);
        assert_eq!(names(&gone), ["a/deleted", "b/deleted"]);
        // The list is over: the next one starts from nothing known.
        assert!(relist.finish(&[]).is_empty());
    }

    #[test]
    fn an_object_made_again_under_its_name_is_gone_too() {
        let gone = vanished(vec![object("a", "x", "old")], &[object("a", "x", "new")]);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].uid().as_deref(), Some("old"));
    }

    #[test]
    fn same_name_in_another_namespace_is_another_object() {
        let gone = vanished(vec![object("a", "x", "1")], &[object("b", "x", "1")]);
        assert_eq!(names(&gone), ["a/x"]);
    }

    #[tokio::test]
    async fn an_object_read_before_the_caches_were_current_is_read_again() {
        let freshness = Freshness::default();
        let watch = freshness.watch("ConfigMap");
        let (store, mut writer) = kube::runtime::reflector::store::<ConfigMap>();
        let (kept, deleted) = (object("a", "kept", "1"), object("a", "deleted", "2"));
        for o in [&kept, &deleted] {
            writer.apply_watcher_event(&watcher::Event::Apply((**o).clone()));
        }
        let wait = Duration::from_millis(100);
        assert!(matches!(
            freshness.current_version(&store, kept.clone(), wait).await,
            Fresh::Stale
        ));
        // The relist holds a newer `kept` and no `deleted`.
        let mut newer = (*kept).clone();
        newer.data = Some([("k".to_owned(), "v".to_owned())].into());
        let read = freshness.current_version(&store, kept, Duration::from_secs(30));
        let (found, ()) = tokio::join!(read, async {
            tokio::task::yield_now().await;
            for event in [
                watcher::Event::Init,
                watcher::Event::InitApply(newer),
                watcher::Event::InitDone,
            ] {
                writer.apply_watcher_event(&event);
                watch.saw(Seen::of(&event));
            }
        });
        match found {
            Fresh::Current(current) => assert!(current.data.is_some(), "the relisted version"),
            other => panic!("{other:?}"),
        }
        // Read before the wait (stale), gone after it.
        watch.saw(Seen::Error);
        let read = freshness.current_version(&store, deleted, Duration::from_secs(30));
        let (found, ()) = tokio::join!(read, async {
            tokio::task::yield_now().await;
            watch.saw(Seen::ListBegins);
            watch.saw(Seen::Listed);
        });
        assert!(matches!(found, Fresh::Gone), "{found:?}");
        // Made again under its name while the watch was down: another object.
        watch.saw(Seen::Error);
        let read =
            freshness.current_version(&store, object("a", "kept", "old"), Duration::from_secs(30));
        let (found, ()) = tokio::join!(read, async {
            tokio::task::yield_now().await;
            watch.saw(Seen::Listed);
        });
        assert!(matches!(found, Fresh::Gone), "{found:?}");
    }

    #[test]
    fn a_watch_is_current_only_between_a_full_list_and_its_next_failure() {
        let s = WatchState::Listing;
        assert_eq!(s.next(Seen::Change), WatchState::Listing);
        let s = s.next(Seen::Listed);
        assert_eq!(s, WatchState::Watching);
        assert_eq!(s.next(Seen::Change), WatchState::Watching);
        let failed = s.next(Seen::Error);
        assert_eq!(failed, WatchState::Broken);
        assert_eq!(
            failed.next(Seen::Change),
            WatchState::Broken,
            "a resumed watch may have missed something"
        );
        let listing = failed.next(Seen::ListBegins);
        assert_eq!(listing, WatchState::Listing);
        assert_eq!(listing.next(Seen::Listed), WatchState::Watching);
    }

    #[tokio::test]
    async fn freshness_waits_for_every_watch() {
        let freshness = Freshness::default();
        let installs = freshness.watch("PluginInstall");
        let pods = freshness.watch("Pod");
        installs.saw(Seen::Listed);
        assert!(!freshness.current(), "pods are still listing");
        assert!(!freshness.wait(Duration::from_millis(50)).await);
        // A waiter is woken when the last watch is current.
        let waiter = tokio::spawn({
            let freshness = freshness.clone();
            async move { freshness.wait(Duration::from_secs(30)).await }
        });
        tokio::task::yield_now().await;
        pods.saw(Seen::Listed);
        assert!(waiter.await.expect("waiter ran"));
        assert!(freshness.current());
        pods.saw(Seen::Error);
        assert!(
            !freshness.current(),
            "a failed watch makes the caches stale"
        );
        pods.saw(Seen::ListBegins);
        pods.saw(Seen::Change);
        assert!(!freshness.current(), "until its list is done");
        pods.saw(Seen::Listed);
        assert!(freshness.current());
    }

    fn gone() -> watcher::Error {
        let mut status = kube::core::Status::failure("too old resource version", "Expired");
        status.code = 410;
        watcher::Error::WatchError(Box::new(status))
    }

    #[test]
    fn a_gone_watch_lists_again_at_once_and_other_failures_wait() {
        let mut retry = Retry::new(Arc::default());
        let first = retry.failed(&watcher::Error::NoResourceVersion);
        assert!(first.is_some_and(|w| w >= BACKOFF_MIN), "{first:?}");
        assert_eq!(retry.failed(&gone()), None);
        // 410 is an answer: the backoff starts over.
        let again = retry.failed(&watcher::Error::NoResourceVersion);
        assert!(again.is_some_and(|w| w <= BACKOFF_MIN * 2), "{again:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_that_hears_from_the_server_again_wakes_the_waiting_ones() {
        let answered = Arc::new(Notify::new());
        let mut a = Retry::new(answered.clone());
        let mut b = Retry::new(answered.clone());
        let long = Duration::from_secs(4);
        a.failed(&watcher::Error::NoResourceVersion);
        b.failed(&watcher::Error::NoResourceVersion);
        let started = tokio::time::Instant::now();
        let (waited, ()) = tokio::join!(
            async {
                a.wait(long).await;
                started.elapsed()
            },
            async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                b.answered();
            }
        );
        assert_eq!(waited, Duration::from_millis(300));
        // A watch that was not failing wakes nobody.
        b.answered();
        let started = tokio::time::Instant::now();
        a.wait(long).await;
        assert_eq!(started.elapsed(), long);
    }

    #[test]
    fn the_backoff_starts_short_and_stays_under_its_cap() {
        let mut backoff = backoff();
        let first = backoff.next().expect("never gives up");
        assert!(
            first >= BACKOFF_MIN && first <= BACKOFF_MIN * 2,
            "{first:?}"
        );
        let waits: Vec<Duration> = backoff.by_ref().take(50).collect();
        assert_eq!(waits.len(), 50, "never gives up");
        assert!(waits.iter().all(|w| *w <= BACKOFF_MAX), "{waits:?}");
        // Past a few attempts it waits between half the cap and the cap.
        assert!(waits[10] >= BACKOFF_MAX / 2, "{waits:?}");
    }

    #[test]
    fn the_backoff_starts_over_after_a_reset() {
        let mut backoff = backoff();
        for _ in 0..10 {
            backoff.next();
        }
        backoff.reset();
        let first = backoff.next().expect("never gives up");
        assert!(first <= BACKOFF_MIN * 2, "{first:?}");
    }
}
