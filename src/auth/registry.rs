//! The registries behind the token cache: the live [`CachedSession`]s by session id (so a
//! revocation finds the one flag all of a session's cached tokens share) and the live
//! [`Principal`]s by user id (so a user's sessions share one set of identity headers).
//!
//! Sized for a million cached sessions: a slot is one pointer (the key is read from the
//! value), where a map from id to pointer would take three words. A value stays while some
//! cached token holds it and is dropped by [`Registry::prune`] once only the registry does.
//! Only misses, revocations and the prune take the locks, never a cache hit. Sharded, so
//! misses on two cores rarely wait for each other, and growing frees a shard's small table
//! rather than one of tens of MiB.
//!
//! [`CachedSession`]: super::cache::CachedSession
//! [`Principal`]: super::cache::Principal

use std::sync::{Arc, Mutex, MutexGuard};

use hashbrown::HashTable;

const SHARDS: usize = 64;

/// A value a registry can hold: it knows its key, a random 128-bit id (v4 UUID bytes).
pub trait Registered {
    type Key: Eq + Copy + AsRef<[u8]>;
    fn key(&self) -> Option<Self::Key>;
}

pub struct Registry<V: Registered> {
    shards: Box<[Mutex<HashTable<Arc<V>>>]>,
}

/// The keys are random, so their own bytes are a good hash (and nobody but this gateway
/// chooses them): the first 8 pick the slot, the last one the shard.
fn hash(key: &[u8]) -> u64 {
    let mut first = [0u8; 8];
    let n = key.len().min(8);
    first[..n].copy_from_slice(&key[..n]);
    u64::from_le_bytes(first)
}

fn hash_of<V: Registered>(value: &Arc<V>) -> u64 {
    value.key().map_or(0, |k| hash(k.as_ref()))
}

impl<V: Registered> Registry<V> {
    pub fn new() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashTable::new())).collect(),
        }
    }

    fn shard(&self, key: &V::Key) -> MutexGuard<'_, HashTable<Arc<V>>> {
        let last = key.as_ref().last().copied().unwrap_or(0);
        self.shards[usize::from(last) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: V::Key) -> Option<Arc<V>> {
        self.shard(&key)
            .find(hash(key.as_ref()), |v| v.key() == Some(key))
            .cloned()
    }

    /// The registered value of `key` if `keep` accepts it, else the one `make` builds, which
    /// replaces it (values handed out earlier live on with the tokens holding them).
    pub fn get_or_insert(
        &self,
        key: V::Key,
        keep: impl Fn(&V) -> bool,
        make: impl FnOnce() -> V,
    ) -> Arc<V> {
        let mut shard = self.shard(&key);
        let h = hash(key.as_ref());
        match shard.find_mut(h, |v| v.key() == Some(key)) {
            Some(value) if keep(value) => value.clone(),
            Some(value) => {
                *value = Arc::new(make());
                value.clone()
            }
            None => shard
                .insert_unique(h, Arc::new(make()), hash_of)
                .get()
                .clone(),
        }
    }

    /// Drops the values no cached token holds any more.
    pub fn prune(&self) {
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            // Under the lock nobody can take a new reference to a value only we hold.
            shard.retain(|value| Arc::strong_count(value) > 1);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

impl<V: Registered> Default for Registry<V> {
    fn default() -> Self {
        Self::new()
    }
}
