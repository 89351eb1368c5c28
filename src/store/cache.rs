//! A byte-bounded, sharded LRU cache with in-flight deduplication.
//!
//! Decompressed blocks and parsed index pages live here. Each shard is one mutex around an
//! `lru::LruCache` plus a map of loads in progress; a key is in at most one of the two. The
//! first reader that misses a key becomes its owner and starts the load; readers that miss
//! while it is in flight register as waiters and are told the result through their own
//! channel, so two clients asking for the same cold block cause one decompression.
//!
//! Lock order: a shard lock may be held while taking a [`Pending`] lock, never the reverse.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_channel::Sender;
use lru::LruCache;

/// Approximate bookkeeping cost of one entry (key, node, Arc header), added to its weight.
const ENTRY_OVERHEAD: usize = 96;
/// Smallest shard worth having: blocks larger than a shard are never cached.
const MIN_SHARD_BYTES: usize = 4 * 1024 * 1024;
/// Most shards; enough that 16–256 threads rarely meet on one lock.
const MAX_SHARDS: usize = 64;

/// A message to a waiter: its own tag and the load's result.
pub type Notice<V, E> = (usize, Result<V, E>);

/// A load in progress. The owner completes it exactly once; waiters registered before that get
/// the result on their channel, waiters arriving after find the value in the LRU instead.
#[derive(Debug)]
pub struct Pending<V, E> {
    state: Mutex<PendingState<V, E>>,
}

#[derive(Debug)]
struct PendingState<V, E> {
    done: Option<Result<V, E>>,
    waiters: Vec<(Sender<Notice<V, E>>, usize)>,
}

impl<V: Clone, E: Clone> Pending<V, E> {
    fn new() -> Self {
        Pending {
            state: Mutex::new(PendingState {
                done: None,
                waiters: Vec::new(),
            }),
        }
    }

    /// Registers `tx` to receive `(tag, result)`; sends at once if the load already finished.
    pub fn wait(&self, tx: Sender<Notice<V, E>>, tag: usize) {
        let mut st = lock(&self.state);
        match &st.done {
            Some(r) => {
                // The receiver lives as long as the read that registered it.
                let _ = tx.send((tag, r.clone()));
            }
            None => st.waiters.push((tx, tag)),
        }
    }

    /// Whether any reader waits for this load.
    fn has_waiters(&self) -> bool {
        !lock(&self.state).waiters.is_empty()
    }

    fn finish(&self, result: Result<V, E>) {
        let waiters = {
            let mut st = lock(&self.state);
            st.done = Some(result.clone());
            std::mem::take(&mut st.waiters)
        };
        for (tx, tag) in waiters {
            let _ = tx.send((tag, result.clone()));
        }
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup<V, E> {
    /// The value was cached.
    Hit(V),
    /// Another reader is loading it; the caller was registered as a waiter.
    Waiting,
    /// Nobody is loading it: the caller must load it and call [`ShardedCache::complete`]. It was
    /// registered as a waiter on its own load too.
    Owner(Arc<Pending<V, E>>),
}

struct Shard<K: Hash + Eq, V, E> {
    lru: LruCache<K, (V, usize)>,
    bytes: usize,
    pending: HashMap<K, Arc<Pending<V, E>>>,
}

impl<K: Hash + Eq, V, E> Shard<K, V, E> {
    /// Caches `value` at `cost` bytes, then evicts least recently used entries until the shard
    /// fits in `capacity` again.
    fn put(&mut self, key: K, value: V, cost: usize, capacity: usize) {
        if let Some((_, old)) = self.lru.put(key, (value, cost)) {
            self.bytes -= old;
        }
        self.bytes += cost;
        while self.bytes > capacity {
            match self.lru.pop_lru() {
                Some((_, (_, c))) => self.bytes -= c,
                None => break,
            }
        }
    }
}

/// The cache. `V` is cheap to clone (an `Arc`); `weight` gives its size in bytes.
pub struct ShardedCache<K: Hash + Eq, V, E> {
    shards: Box<[Mutex<Shard<K, V, E>>]>,
    shard_capacity: usize,
    hasher: std::collections::hash_map::RandomState,
}

impl<K: Hash + Eq, V, E> std::fmt::Debug for ShardedCache<K, V, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedCache")
            .field("shards", &self.shards.len())
            .field("shard_capacity", &self.shard_capacity)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a cache lock cannot leave the LRU inconsistent in a way that
    // matters (the worst is a stale byte count), so keep serving rather than propagate poison.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<K: Hash + Eq + Clone, V: Clone, E: Clone> ShardedCache<K, V, E> {
    /// A cache holding at most about `capacity` bytes. 0 disables caching (loads are still
    /// deduplicated while in flight).
    pub fn new(capacity: usize) -> Self {
        Self::with_shards(capacity, (capacity / MIN_SHARD_BYTES).clamp(1, MAX_SHARDS))
    }

    /// A cache of about `capacity` bytes in at most `shards` shards (rounded down to a power
    /// of two). An entry larger than one shard is never cached, so caches of large entries
    /// (index pages) use few shards.
    pub fn with_shards(capacity: usize, shards: usize) -> Self {
        let n = shards.clamp(1, MAX_SHARDS);
        let n = if n.is_power_of_two() {
            n
        } else {
            n.next_power_of_two() / 2
        };
        let shards = (0..n)
            .map(|_| {
                Mutex::new(Shard {
                    lru: LruCache::unbounded(),
                    bytes: 0,
                    pending: HashMap::new(),
                })
            })
            .collect();
        ShardedCache {
            shards,
            shard_capacity: capacity / n,
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Total capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.shard_capacity * self.shards.len()
    }

    fn shard(&self, key: &K) -> &Mutex<Shard<K, V, E>> {
        let h = self.hasher.hash_one(key);
        // The shard count is a power of two no larger than 64, so the masked hash fits.
        let mask = (self.shards.len() - 1) as u64;
        &self.shards[usize::try_from(h & mask).unwrap_or(0)]
    }

    /// Returns the cached value, if any, and marks it recently used.
    pub fn get(&self, key: &K) -> Option<V> {
        lock(self.shard(key)).lru.get(key).map(|(v, _)| v.clone())
    }

    /// Looks `key` up; on a miss registers the caller (`tx`, `tag`) as a waiter, and makes it the
    /// owner if no load is in flight.
    pub fn get_or_wait(&self, key: &K, tx: &Sender<Notice<V, E>>, tag: usize) -> Lookup<V, E> {
        self.lookup(key, tx, tag, true)
    }

    /// Like [`get_or_wait`](Self::get_or_wait), but an owner is not registered as a waiter on
    /// its own load: a reader that decodes a block itself, straight into its buffer, ends the
    /// load with [`complete_with`](Self::complete_with) and needs no notice.
    pub fn get_or_claim(&self, key: &K, tx: &Sender<Notice<V, E>>, tag: usize) -> Lookup<V, E> {
        self.lookup(key, tx, tag, false)
    }

    fn lookup(
        &self,
        key: &K,
        tx: &Sender<Notice<V, E>>,
        tag: usize,
        owner_waits: bool,
    ) -> Lookup<V, E> {
        let mut shard = lock(self.shard(key));
        if let Some((v, _)) = shard.lru.get(key) {
            return Lookup::Hit(v.clone());
        }
        if let Some(p) = shard.pending.get(key) {
            p.wait(tx.clone(), tag);
            return Lookup::Waiting;
        }
        let p = Arc::new(Pending::new());
        if owner_waits {
            p.wait(tx.clone(), tag);
        }
        shard.pending.insert(key.clone(), Arc::clone(&p));
        Lookup::Owner(p)
    }

    /// Starts a load unless the key is cached or already loading (prefetch). Returns the
    /// pending handle when the caller became the owner.
    pub fn claim(&self, key: &K) -> Option<Arc<Pending<V, E>>> {
        let mut shard = lock(self.shard(key));
        if shard.lru.contains(key) || shard.pending.contains_key(key) {
            return None;
        }
        let p = Arc::new(Pending::new());
        shard.pending.insert(key.clone(), Arc::clone(&p));
        Some(p)
    }

    /// Ends the owner's load: caches a success (if it fits), then tells every waiter.
    pub fn complete(&self, key: &K, pending: &Pending<V, E>, result: Result<V, E>, weight: usize) {
        {
            let mut shard = lock(self.shard(key));
            shard.pending.remove(key);
            let cost = weight + ENTRY_OVERHEAD;
            if let Ok(v) = &result {
                if cost <= self.shard_capacity {
                    shard.put(key.clone(), v.clone(), cost, self.shard_capacity);
                }
            }
        }
        pending.finish(result);
    }

    /// Ends the owner's load when the value may be wanted by nobody: `make` builds it only if
    /// it will be cached or a reader waits for it. With the cache off, a block that one reader
    /// decoded into its own buffer is then never copied.
    pub fn complete_with(
        &self,
        key: &K,
        pending: &Pending<V, E>,
        result: Result<(), E>,
        weight: usize,
        make: impl FnOnce() -> V,
    ) {
        if result.is_ok() && weight + ENTRY_OVERHEAD > self.shard_capacity {
            let mut shard = lock(self.shard(key));
            // Waiters register under the shard lock, so none can arrive between this check
            // and the removal.
            if !pending.has_waiters() {
                shard.pending.remove(key);
                return;
            }
        }
        self.complete(key, pending, result.map(|()| make()), weight);
    }

    /// Inserts a value loaded outside the pending protocol (index pages).
    pub fn insert(&self, key: K, value: V, weight: usize) {
        let cost = weight + ENTRY_OVERHEAD;
        if cost > self.shard_capacity {
            return;
        }
        lock(self.shard(&key)).put(key, value, cost, self.shard_capacity);
    }

    /// Bytes currently held (including per-entry overhead).
    pub fn used(&self) -> usize {
        self.shards.iter().map(|s| lock(s).bytes).sum()
    }

    /// Number of cached entries.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).lru.len()).sum()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type C = ShardedCache<u64, Arc<Vec<u8>>, String>;

    #[test]
    fn owner_then_waiter_then_hit() {
        let c = C::new(64 << 20);
        let (tx, rx) = crossbeam_channel::unbounded();
        let Lookup::Owner(p) = c.get_or_wait(&1, &tx, 10) else {
            panic!("first lookup must own")
        };
        assert!(matches!(c.get_or_wait(&1, &tx, 11), Lookup::Waiting));
        assert!(c.claim(&1).is_none());
        c.complete(&1, &p, Ok(Arc::new(vec![7; 100])), 100);
        let mut tags: Vec<usize> = rx
            .try_iter()
            .map(|(t, r)| {
                assert_eq!(r.unwrap().len(), 100);
                t
            })
            .collect();
        tags.sort_unstable();
        assert_eq!(tags, [10, 11]);
        assert!(matches!(c.get_or_wait(&1, &tx, 12), Lookup::Hit(_)));
    }

    #[test]
    fn errors_are_not_cached() {
        let c = C::new(64 << 20);
        let (tx, rx) = crossbeam_channel::unbounded();
        let Lookup::Owner(p) = c.get_or_wait(&1, &tx, 0) else {
            panic!()
        };
        c.complete(&1, &p, Err("crc".into()), 0);
        assert_eq!(rx.recv().unwrap().1.unwrap_err(), "crc");
        assert!(matches!(c.get_or_wait(&1, &tx, 0), Lookup::Owner(_)));
    }

    #[test]
    fn capacity_is_respected() {
        let c = C::new(8 << 20);
        for k in 0..1000u64 {
            c.insert(k, Arc::new(vec![0; 64 << 10]), 64 << 10);
        }
        assert!(c.used() <= c.capacity());
        assert!(c.len() > 50, "{}", c.len());
    }

    #[test]
    fn complete_with_builds_the_value_only_when_wanted() {
        let off = C::new(0);
        let (tx, rx) = crossbeam_channel::unbounded();
        let Lookup::Owner(p) = off.get_or_claim(&1, &tx, 0) else {
            panic!("expected owner")
        };
        off.complete_with(&1, &p, Ok(()), 4, || unreachable!("nobody wants it"));
        assert!(rx.try_recv().is_err(), "an owner is not its own waiter");
        // The load is over: the next reader owns a new one.
        let Lookup::Owner(p) = off.get_or_claim(&1, &tx, 0) else {
            panic!("expected owner")
        };
        let (tx2, rx2) = crossbeam_channel::unbounded();
        assert!(matches!(off.get_or_claim(&1, &tx2, 7), Lookup::Waiting));
        off.complete_with(&1, &p, Ok(()), 4, || Arc::new(vec![9; 4]));
        assert_eq!(rx2.recv().unwrap(), (7, Ok(Arc::new(vec![9; 4]))));

        let on = C::new(64 << 20);
        let Lookup::Owner(p) = on.get_or_claim(&2, &tx, 0) else {
            panic!("expected owner")
        };
        on.complete_with(&2, &p, Ok(()), 4, || Arc::new(vec![1; 4]));
        assert_eq!(on.get(&2), Some(Arc::new(vec![1; 4])));
        let Lookup::Owner(p) = on.get_or_claim(&3, &tx, 0) else {
            panic!("expected owner")
        };
        on.complete_with(&3, &p, Err("bad".to_string()), 4, || unreachable!());
        assert!(on.get(&3).is_none());
    }

    #[test]
    fn zero_capacity_caches_nothing_but_still_dedups() {
        let c = C::new(0);
        let (tx, _rx) = crossbeam_channel::unbounded();
        let Lookup::Owner(p) = c.get_or_wait(&1, &tx, 0) else {
            panic!()
        };
        assert!(matches!(c.get_or_wait(&1, &tx, 1), Lookup::Waiting));
        c.complete(&1, &p, Ok(Arc::new(vec![1])), 1);
        assert!(c.is_empty());
    }
}
