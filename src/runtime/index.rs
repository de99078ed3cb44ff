//! Indexes kept beside the watch caches, from the same events, so that a lookup costs the
//! objects it concerns, not a scan of the whole store: installs by namespace, by uid and by the
//! Plugin they use; versions by Plugin; pods by install. kube's reflector store has no indexes
//! (client-go's Indexer does); this is the few lines of it the operator needs.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
};

use kube::{
    ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};

/// Namespace and name: the order lookups answer in.
type Key = (String, String);

/// The keys an object is found by.
pub type KeysOf<K> = Box<dyn Fn(&K) -> Vec<String> + Send + Sync>;

/// Objects of one cached kind by the keys `keys_of` gives them.
pub struct Index<K> {
    keys_of: KeysOf<K>,
    maps: RwLock<Maps<K>>,
}

/// Each key's objects in order: the store's own `Arc`s (taken from it right after it applied the
/// event, in the same task, so the two agree), so that a lookup copies no names and asks the
/// store nothing (get-endpoint makes one per request).
struct Maps<K> {
    by_key: HashMap<String, BTreeMap<Key, Arc<K>>>,
    keys_of: HashMap<Key, Vec<String>>,
}

// Not derived: that would ask `K: Default`.
impl<K> Default for Maps<K> {
    fn default() -> Self {
        Self {
            by_key: HashMap::new(),
            keys_of: HashMap::new(),
        }
    }
}

impl<K> Maps<K> {
    fn remove(&mut self, object: &Key) {
        for key in self.keys_of.remove(object).unwrap_or_default() {
            if let Some(set) = self.by_key.get_mut(&key) {
                set.remove(object);
                if set.is_empty() {
                    self.by_key.remove(&key);
                }
            }
        }
    }

    fn insert(&mut self, object: Key, stored: &Arc<K>, keys: Vec<String>) {
        for key in &keys {
            self.by_key
                .entry(key.clone())
                .or_default()
                .insert(object.clone(), stored.clone());
        }
        self.keys_of.insert(object, keys);
    }
}

fn key_of<K: ResourceExt>(object: &K) -> Key {
    (object.namespace().unwrap_or_default(), object.name_any())
}

impl<K> Index<K>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    pub fn new(keys_of: impl Fn(&K) -> Vec<String> + Send + Sync + 'static) -> Self {
        Self {
            keys_of: Box::new(keys_of),
            maps: RwLock::default(),
        }
    }

    /// An object was created or changed, and `store` holds it now.
    pub fn applied(&self, object: &K, store: &Store<K>) {
        let keys = (self.keys_of)(object);
        let key = key_of(object);
        let stored = store
            .get(&ObjectRef::new(&key.1).within(&key.0))
            .unwrap_or_else(|| Arc::new(object.clone()));
        // Poisoned only if a holder panicked mid-update; the next relist rebuilds it.
        if let Ok(mut maps) = self.maps.write() {
            maps.remove(&key);
            maps.insert(key, &stored, keys);
        }
    }

    /// An object was deleted.
    pub fn deleted(&self, object: &K) {
        if let Ok(mut maps) = self.maps.write() {
            maps.remove(&key_of(object));
        }
    }

    /// The store was listed again: the index is made anew from it.
    pub fn rebuild(&self, objects: &[Arc<K>]) {
        let mut fresh = Maps::default();
        for object in objects {
            fresh.insert(key_of(&**object), object, (self.keys_of)(object));
        }
        if let Ok(mut maps) = self.maps.write() {
            *maps = fresh;
        } else {
            self.maps.clear_poison();
            if let Ok(mut maps) = self.maps.write() {
                *maps = fresh;
            }
        }
    }

    /// The objects of `store` found by `key`, sorted by namespace and name.
    pub fn get(&self, key: &str) -> Vec<Arc<K>> {
        match self.maps.read() {
            Ok(maps) => maps
                .by_key
                .get(key)
                .map(|objects| objects.values().cloned().collect())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::{reflector, watcher};

    fn map(namespace: &str, name: &str, colour: &str) -> ConfigMap {
        let mut object = ConfigMap::default();
        object.metadata.namespace = Some(namespace.into());
        object.metadata.name = Some(name.into());
        object.metadata.labels = Some([("colour".to_owned(), colour.to_owned())].into());
        object
    }

    fn colour(object: &ConfigMap) -> Vec<String> {
        object.labels().get("colour").cloned().into_iter().collect()
    }

    fn names(found: &[Arc<ConfigMap>]) -> Vec<String> {
        found.iter().map(|o| o.name_any()).collect()
    }

    #[test]
    fn follows_changes_deletions_and_relists() {
        let (store, mut writer) = reflector::store::<ConfigMap>();
        let index = Index::new(colour);
        let mut event = |event: watcher::Event<ConfigMap>| {
            writer.apply_watcher_event(&event);
            match &event {
                watcher::Event::Apply(o) => index.applied(o, &store),
                watcher::Event::Delete(o) => index.deleted(o),
                watcher::Event::InitDone => index.rebuild(&store.state()),
                _ => {}
            }
        };
        event(watcher::Event::Init);
        event(watcher::Event::InitApply(map("a", "one", "red")));
        event(watcher::Event::InitApply(map("b", "two", "red")));
        event(watcher::Event::InitDone);
        assert_eq!(names(&index.get("red")), ["one", "two"]);

        // A change moves an object from one key to another.
        event(watcher::Event::Apply(map("a", "one", "blue")));
        assert_eq!(names(&index.get("red")), ["two"]);
        assert_eq!(names(&index.get("blue")), ["one"]);
        // The store's own object, as it is now (not a copy of the event's).
        let stored = store
            .get(&reflector::ObjectRef::new("one").within("a"))
            .expect("stored");
        assert!(Arc::ptr_eq(&index.get("blue")[0], &stored));

        event(watcher::Event::Delete(map("b", "two", "red")));
        assert!(index.get("red").is_empty());

        // A relist that no longer has `one` and has `three` replaces what the index knew.
        event(watcher::Event::Init);
        event(watcher::Event::InitApply(map("c", "three", "blue")));
        event(watcher::Event::InitDone);
        assert_eq!(names(&index.get("blue")), ["three"]);
    }
}
