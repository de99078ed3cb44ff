//! How the caches' watches come back after a cut: a short, jittered, capped backoff, and what a
//! relist shows went missing while the watch was down.
//!
//! After a watch restarts (410 Gone, an API server restart) kube's watcher lists again
//! (`Init`, `InitApply`…, `InitDone`) and the reflector replaces its store. Objects deleted in
//! the gap produce no `Delete` event; [`Relist`] finds them by comparing the store before the
//! list with the store after it.
use std::{collections::HashSet, sync::Arc, time::Duration};

use kube::{Resource, ResourceExt, runtime::watcher::ExponentialBackoff};

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
        use kube::runtime::utils::Backoff;
        let mut backoff = backoff();
        for _ in 0..10 {
            backoff.next();
        }
        backoff.reset();
        let first = backoff.next().expect("never gives up");
        assert!(first <= BACKOFF_MIN * 2, "{first:?}");
    }
}
