//! Watching some namespaces, not the whole cluster (`--namespace a,b`): one watch per namespace,
//! merged into the one stream a reflector and its store expect.
//!
//! The API server has no watch over a set of namespaces (a field selector takes one namespace,
//! not a list), and kube's reflector replaces its whole store at the end of each list
//! (`InitDone`): fed two namespaces' lists as they come, one namespace's relist would empty
//! the other's objects. [`Merge`] turns the per-namespace streams into one whose lists cover
//! every namespace:
//! - the first lists are gathered until every namespace has listed, then given as one list
//!   (`Init`, `InitApply`…, `InitDone`), so the store is ready only when all are in it;
//! - a later relist of one namespace (after a watch error) becomes changes (`Apply` for each
//!   object listed, `Delete` for each object of that namespace the store holds and the list no
//!   longer has), which leave the other namespaces' objects alone.
use std::collections::{BTreeMap, HashMap, HashSet};

use futures::{Stream, StreamExt, stream::BoxStream};
use kube::{
    Resource, ResourceExt,
    runtime::{reflector::Store, watcher},
};

type Item<K> = Result<watcher::Event<K>, watcher::Error>;

/// Merges the watch streams of `namespaces` (name, stream) into one for a reflector whose reader
/// is `store`.
pub fn merge<K>(
    streams: Vec<(String, BoxStream<'static, Item<K>>)>,
    store: Store<K>,
) -> impl Stream<Item = Item<K>> + Send + 'static
where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let mut merge = Merge::new(streams.iter().map(|(ns, _)| ns.clone()), store);
    let tagged = streams
        .into_iter()
        .map(|(namespace, stream)| stream.map(move |item| (namespace.clone(), item)).boxed());
    futures::stream::select_all(tagged)
        .map(move |(namespace, item)| futures::stream::iter(merge.translate(&namespace, item)))
        .flatten()
}

/// The state of a merge (see the module's doc).
pub struct Merge<K: Resource + 'static>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    /// Namespaces whose first list is not done yet.
    pending: HashSet<String>,
    /// Until every first list is done: the objects seen so far, by namespace and name.
    first: Option<BTreeMap<(String, String), K>>,
    /// Namespaces relisting now, and the names their list has given so far.
    relisting: HashMap<String, HashSet<String>>,
    store: Store<K>,
}

impl<K> Merge<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    pub fn new(namespaces: impl IntoIterator<Item = String>, store: Store<K>) -> Self {
        Self {
            pending: namespaces.into_iter().collect(),
            first: Some(BTreeMap::new()),
            relisting: HashMap::new(),
            store,
        }
    }

    /// What one event of `namespace`'s watch becomes in the merged stream.
    pub fn translate(&mut self, namespace: &str, item: Item<K>) -> Vec<Item<K>> {
        use watcher::Event;
        let event = match item {
            Ok(event) => event,
            Err(error) => return vec![Err(error)],
        };
        if let Some(first) = &mut self.first {
            let key = |o: &K| (namespace.to_owned(), o.name_any());
            match event {
                Event::Init => first.retain(|(ns, _), _| ns != namespace),
                Event::InitApply(o) | Event::Apply(o) => {
                    first.insert(key(&o), o);
                }
                Event::Delete(o) => {
                    first.remove(&key(&o));
                }
                Event::InitDone => {
                    self.pending.remove(namespace);
                }
            }
            if !self.pending.is_empty() {
                return Vec::new();
            }
            let listed = self.first.take().unwrap_or_default();
            let mut events = vec![Ok(Event::Init)];
            events.extend(listed.into_values().map(|o| Ok(Event::InitApply(o))));
            events.push(Ok(Event::InitDone));
            return events;
        }
        match event {
            Event::Init => {
                self.relisting.insert(namespace.to_owned(), HashSet::new());
                Vec::new()
            }
            Event::InitApply(o) => {
                if let Some(seen) = self.relisting.get_mut(namespace) {
                    seen.insert(o.name_any());
                }
                vec![Ok(Event::Apply(o))]
            }
            Event::InitDone => {
                let seen = self.relisting.remove(namespace).unwrap_or_default();
                self.store
                    .state()
                    .into_iter()
                    .filter(|o| o.namespace().as_deref() == Some(namespace))
                    .filter(|o| !seen.contains(&o.name_any()))
                    .map(|o| Ok(Event::Delete((*o).clone())))
                    .collect()
            }
            other => vec![Ok(other)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::{api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::ObjectMeta};
    use kube::runtime::{reflector, watcher::Event};

    fn object(namespace: &str, name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    fn names(store: &Store<ConfigMap>) -> Vec<String> {
        let mut names: Vec<String> = store
            .state()
            .iter()
            .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
            .collect();
        names.sort();
        names
    }

    /// A merge feeding a reflector's store, as `merge` does.
    struct Fed {
        merge: Merge<ConfigMap>,
        writer: reflector::store::Writer<ConfigMap>,
        store: Store<ConfigMap>,
    }

    impl Fed {
        fn new(namespaces: &[&str]) -> Self {
            let (store, writer) = reflector::store();
            Self {
                merge: Merge::new(namespaces.iter().map(|n| (*n).to_owned()), store.clone()),
                writer,
                store,
            }
        }

        fn feed(&mut self, namespace: &str, event: Event<ConfigMap>) -> usize {
            let out = self.merge.translate(namespace, Ok(event));
            let count = out.len();
            for event in out.into_iter().flatten() {
                self.writer.apply_watcher_event(&event);
            }
            count
        }
    }

    #[test]
    fn the_store_is_filled_once_every_namespace_has_listed() {
        let mut fed = Fed::new(&["a", "b"]);
        fed.feed("a", Event::Init);
        fed.feed("a", Event::InitApply(object("a", "x")));
        assert_eq!(fed.feed("a", Event::InitDone), 0, "b has not listed yet");
        // A change in a while b lists is kept, and so is a deletion.
        fed.feed("a", Event::Apply(object("a", "y")));
        fed.feed("b", Event::Init);
        fed.feed("b", Event::InitApply(object("b", "x")));
        fed.feed("a", Event::Delete(object("a", "x")));
        assert!(names(&fed.store).is_empty());
        fed.feed("b", Event::InitDone);
        assert_eq!(names(&fed.store), ["a/y", "b/x"]);
    }

    #[test]
    fn a_relist_of_one_namespace_leaves_the_others_alone() {
        let mut fed = Fed::new(&["a", "b"]);
        for ns in ["a", "b"] {
            fed.feed(ns, Event::Init);
            fed.feed(ns, Event::InitApply(object(ns, "kept")));
            fed.feed(ns, Event::InitApply(object(ns, "deleted")));
            fed.feed(ns, Event::InitDone);
        }
        assert_eq!(names(&fed.store).len(), 4);
        // a's watch broke: it lists again; `deleted` went while it was down, `new` came.
        fed.feed("a", Event::Init);
        fed.feed("a", Event::InitApply(object("a", "kept")));
        fed.feed("a", Event::InitApply(object("a", "new")));
        let out = fed.merge.translate("a", Ok(Event::InitDone));
        let deleted: Vec<String> = out
            .iter()
            .filter_map(|e| match e {
                Ok(Event::Delete(o)) => Some(o.name_any()),
                _ => None,
            })
            .collect();
        assert_eq!(deleted, ["deleted"], "published as deleted");
        for event in out.into_iter().flatten() {
            fed.writer.apply_watcher_event(&event);
        }
        assert_eq!(
            names(&fed.store),
            ["a/kept", "a/new", "b/deleted", "b/kept"]
        );
    }
}
