//! A byte-bounded, sharded LRU cache with in-flight deduplication and scan-resistant
//! admission.
//!
//! Decompressed blocks and parsed index pages live here. Each shard is one mutex around an
//! `lru::LruCache` plus a map of loads in progress; a key is in at most one of the two. The
//! first reader that misses a key becomes its owner and starts the load; readers that miss
//! while it is in flight register as waiters and are told the result through their own
//! channel, so two clients asking for the same cold block cause one decompression.
//!
//! Admission (the "A1out" ghost list of 2Q): a load that starts on a key's first miss is not
//! kept; the key's hash goes to a bounded FIFO of recently missed keys instead, and a load
//! that starts while its key is there is kept. A block therefore enters the cache on its
//! second miss within the ghost's reach. A long sequential scan (nbdcopy, a VM reading its
//! whole disk, a full GET) touches each block once, so it neither evicts what random readers
//! keep using nor pays for copying every block into new cache memory (first-touch page faults
//! made a filling cache slower than no cache at all); its reader decodes only what it needs,
//! into reused buffers. A scan whose requests do not line up with blocks touches the blocks
//! on its request boundaries twice, the second time exactly where the first read stopped
//! ([`Span`]): such a continuation is not a second use, unless it is the second one in a row
//! (small sequential reads, which the cache should serve). Explicit prefetches
//! ([`ShardedCache::claim`]) are always kept.
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

/// Ghost entries per byte of shard capacity: one per 32 KiB, about as many keys as the shard
/// holds blocks of 32 KiB (2-4 times its entries for the usual 64-128 KiB blocks), at about
/// 60 bytes each.
const GHOST_BYTES_PER_ENTRY: usize = 32 * 1024;

/// The part of a block a read needs, `start..end` in bytes from the block's start: what
/// tells a scan continuing through a block from a second use of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

/// What the ghost remembers of a key's last miss: where that read stopped, and how many
/// continuations in a row led there.
#[derive(Debug, Clone, Copy)]
struct Ghost {
    end: u32,
    continuations: u8,
}

/// A load in progress. The owner completes it exactly once; waiters registered before that get
/// the result on their channel, waiters arriving after find the value in the LRU instead.
#[derive(Debug)]
pub struct Pending<V, E> {
    state: Mutex<PendingState<V, E>>,
    /// Whether a successful result will be kept in the cache (decided when the load starts).
    admit: bool,
}

#[derive(Debug)]
struct PendingState<V, E> {
    done: Option<Result<V, E>>,
    waiters: Vec<(Sender<Notice<V, E>>, usize)>,
}

impl<V, E> Pending<V, E> {
    fn new(admit: bool) -> Self {
        Pending {
            state: Mutex::new(PendingState {
                done: None,
                waiters: Vec::new(),
            }),
            admit,
        }
    }

    /// Whether the cache keeps this load's value: if not, and nobody waits for it, its owner
    /// need not build a whole block buffer (see [`ShardedCache::complete_with`]).
    pub fn admitted(&self) -> bool {
        self.admit
    }
}

impl<V: Clone, E: Clone> Pending<V, E> {
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

/// What [`ShardedCache::entry`] found.
#[derive(Debug)]
pub enum Entry<V, E, W> {
    /// The value was cached.
    Hit(V),
    /// Another reader is loading it; `W` is what the caller's `wait` returned when it
    /// registered (under the shard lock, so the load cannot end unnoticed in between).
    Loading(W),
    /// Nobody is loading it: the caller owns the load and must complete it.
    Owner(Arc<Pending<V, E>>),
}

struct Shard<K: Hash + Eq, V, E> {
    lru: LruCache<K, (V, usize)>,
    bytes: usize,
    pending: HashMap<K, Arc<Pending<V, E>>>,
    /// Hashes of keys whose last load was not kept, oldest first (`None` when caching is off).
    ghost: Option<LruCache<u64, Ghost>>,
}

impl<K: Hash + Eq, V, E> Shard<K, V, E> {
    /// Decides whether a load of the key with hash `h` for a read of `span` will be kept: yes
    /// if the key missed recently (it leaves the ghost list), unless this read merely
    /// continues where the last one stopped for the first time; otherwise no, and the key is
    /// remembered.
    fn admit(&mut self, h: u64, span: Span) -> bool {
        let Some(ghost) = self.ghost.as_mut() else {
            return false;
        };
        let continuations = match ghost.pop(&h) {
            Some(g) if g.end == span.start && span.start > 0 && g.continuations == 0 => 1,
            Some(_) => return true,
            None => 0,
        };
        ghost.put(
            h,
            Ghost {
                end: span.end,
                continuations,
            },
        );
        false
    }

    /// Starts a load of `key`.
    fn start(&mut self, key: K, admit: bool) -> Arc<Pending<V, E>> {
        let p = Arc::new(Pending::new(admit));
        self.pending.insert(key, Arc::clone(&p));
        p
    }

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
        let ghost_len = capacity / n / GHOST_BYTES_PER_ENTRY;
        let shards = (0..n)
            .map(|_| {
                Mutex::new(Shard {
                    lru: LruCache::unbounded(),
                    bytes: 0,
                    pending: HashMap::new(),
                    ghost: std::num::NonZeroUsize::new(ghost_len).map(LruCache::new),
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
        self.shard_of(self.hasher.hash_one(key))
    }

    fn shard_of(&self, h: u64) -> &Mutex<Shard<K, V, E>> {
        // The shard count is a power of two no larger than 64, so the masked hash fits.
        let mask = (self.shards.len() - 1) as u64;
        &self.shards[usize::try_from(h & mask).unwrap_or(0)]
    }

    /// Looks `key` up: a hit, the load in flight (then `wait` registers the caller on it, under
    /// the shard lock), or a new load the caller owns (kept in the cache only if
    /// [`Pending::admitted`]).
    pub fn entry<W>(
        &self,
        key: &K,
        span: Span,
        wait: impl FnOnce(&Pending<V, E>) -> W,
    ) -> Entry<V, E, W> {
        let h = self.hasher.hash_one(key);
        let mut shard = lock(self.shard_of(h));
        if let Some((v, _)) = shard.lru.get(key) {
            return Entry::Hit(v.clone());
        }
        if let Some(p) = shard.pending.get(key) {
            // Registering under the shard lock: `complete_with` relies on it.
            return Entry::Loading(wait(p));
        }
        let admit = shard.admit(h, span);
        Entry::Owner(shard.start(key.clone(), admit))
    }

    /// Returns the cached value, if any, and marks it recently used.
    pub fn get(&self, key: &K) -> Option<V> {
        lock(self.shard(key)).lru.get(key).map(|(v, _)| v.clone())
    }

    /// Looks `key` up; on a miss registers the caller (`tx`, `tag`) as a waiter, and makes it the
    /// owner if no load is in flight.
    pub fn get_or_wait(
        &self,
        key: &K,
        span: Span,
        tx: &Sender<Notice<V, E>>,
        tag: usize,
    ) -> Lookup<V, E> {
        self.lookup(key, span, tx, tag, true)
    }

    /// Like [`get_or_wait`](Self::get_or_wait), but an owner is not registered as a waiter on
    /// its own load: a reader that decodes a block itself, straight into its buffer, ends the
    /// load with [`complete_with`](Self::complete_with) and needs no notice.
    pub fn get_or_claim(
        &self,
        key: &K,
        span: Span,
        tx: &Sender<Notice<V, E>>,
        tag: usize,
    ) -> Lookup<V, E> {
        self.lookup(key, span, tx, tag, false)
    }

    fn lookup(
        &self,
        key: &K,
        span: Span,
        tx: &Sender<Notice<V, E>>,
        tag: usize,
        owner_waits: bool,
    ) -> Lookup<V, E> {
        match self.entry(key, span, |p| p.wait(tx.clone(), tag)) {
            Entry::Hit(v) => Lookup::Hit(v),
            Entry::Loading(()) => Lookup::Waiting,
            Entry::Owner(p) => {
                if owner_waits {
                    p.wait(tx.clone(), tag);
                }
                Lookup::Owner(p)
            }
        }
    }

    /// Starts a load unless the key is cached or already loading (prefetch). Returns the
    /// pending handle when the caller became the owner.
    pub fn claim(&self, key: &K) -> Option<Arc<Pending<V, E>>> {
        let mut shard = lock(self.shard(key));
        if shard.lru.contains(key) || shard.pending.contains_key(key) {
            return None;
        }
        Some(shard.start(key.clone(), true))
    }

    /// Ends the owner's load: caches a success (if admitted and it fits), then tells every
    /// waiter.
    pub fn complete(&self, key: &K, pending: &Pending<V, E>, result: Result<V, E>, weight: usize) {
        {
            let mut shard = lock(self.shard(key));
            shard.pending.remove(key);
            let cost = weight + ENTRY_OVERHEAD;
            if let Ok(v) = &result {
                if pending.admit && cost <= self.shard_capacity {
                    shard.put(key.clone(), v.clone(), cost, self.shard_capacity);
                }
            }
        }
        pending.finish(result);
    }

    /// Ends the owner's load when the value may be wanted by nobody: `make` builds it only if
    /// it will be cached or a reader waits for it. A block that one reader decoded (or partly
    /// decoded) into its own buffer and that the cache does not admit is then never copied.
    pub fn complete_with(
        &self,
        key: &K,
        pending: &Pending<V, E>,
        result: Result<(), E>,
        weight: usize,
        make: impl FnOnce() -> Result<V, E>,
    ) {
        if result.is_ok() && (!pending.admit || weight + ENTRY_OVERHEAD > self.shard_capacity) {
            let mut shard = lock(self.shard(key));
            // Waiters register under the shard lock, so none can arrive between this check
            // and the removal.
            if !pending.has_waiters() {
                shard.pending.remove(key);
                return;
            }
        }
        self.complete(key, pending, result.and_then(|()| make()), weight);
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
mod tests;
