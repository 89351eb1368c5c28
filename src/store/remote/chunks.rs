//! The memory cache of fetched bytes: fixed-size chunks of remote objects, shared by every
//! reader, with single flight (a chunk being fetched is waited for, never fetched twice) and
//! pinning (a chunk a read holds is not evicted until the read lets go, so one read's
//! coalesced fetch is still there when its blocks are decoded).
//!
//! Locking: one mutex over the LRU and the set of chunks in flight; the condition variable
//! wakes waiters whenever a load ends. Nothing else is locked while it is held.

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use lru::LruCache;

/// Bytes per chunk: the unit of fetching and caching. Large enough that a block (at most a
/// few hundred KiB stored) spans one to three chunks, small enough that a random 4 KiB read
/// fetches little beyond its block.
pub const CHUNK: u64 = 128 * 1024;

/// A chunk: (object id, chunk number).
pub(crate) type ChunkKey = (u64, u64);
/// The bytes of one chunk (`CHUNK` long, shorter at the end of an object).
pub(crate) type Chunk = Arc<Vec<u8>>;

/// What a lookup found.
#[derive(Debug)]
pub(crate) enum Look {
    /// The bytes.
    Ready(Chunk),
    /// Nobody has them and nobody is fetching them: the caller now owns the fetch and must
    /// end it with [`ChunkCache::finish`].
    Claimed,
    /// Another thread is fetching them; [`ChunkCache::wait`] for it.
    Busy,
}

/// Buffers of evicted chunks kept for the next fetches (4 MiB): a fresh 128 KiB buffer is
/// an `mmap` whose every page faults in and is zeroed, a recycled one is written straight
/// over (a fetch fills every byte or fails and drops it).
const SPARE: usize = 32;

#[derive(Debug)]
struct State {
    lru: LruCache<ChunkKey, Chunk>,
    used: usize,
    loading: HashSet<ChunkKey>,
    spare: Vec<Vec<u8>>,
}

/// The shared chunk cache, bounded in bytes (pinned chunks may exceed the bound while held).
#[derive(Debug)]
pub(crate) struct ChunkCache {
    state: Mutex<State>,
    done: Condvar,
    capacity: usize,
}

impl ChunkCache {
    /// An empty cache of `capacity` bytes.
    pub fn new(capacity: usize) -> ChunkCache {
        ChunkCache {
            state: Mutex::new(State {
                lru: LruCache::unbounded(),
                used: 0,
                loading: HashSet::new(),
                spare: Vec::new(),
            }),
            done: Condvar::new(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Looks `key` up, claiming it when nobody has it.
    pub fn look(&self, key: ChunkKey) -> Look {
        let mut s = self.lock();
        if let Some(c) = s.lru.get(&key) {
            return Look::Ready(Arc::clone(c));
        }
        if s.loading.insert(key) {
            Look::Claimed
        } else {
            Look::Busy
        }
    }

    /// Ends a claimed fetch: stores the bytes (if it succeeded) and wakes the waiters.
    pub fn finish(&self, key: ChunkKey, chunk: Option<Chunk>) {
        let mut s = self.lock();
        s.loading.remove(&key);
        if let Some(c) = chunk {
            s.used += c.len();
            if let Some(old) = s.lru.put(key, c) {
                s.used -= old.len();
            }
            self.evict(&mut s);
        }
        drop(s);
        self.done.notify_all();
    }

    /// Waits until nobody is fetching `key`, then returns it if the fetch succeeded (and it
    /// is still cached).
    pub fn wait(&self, key: ChunkKey) -> Option<Chunk> {
        let mut s = self.lock();
        while s.loading.contains(&key) {
            s = self.done.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        s.lru.get(&key).cloned()
    }

    /// Forgets `key` (its bytes failed a check upstream).
    pub fn remove(&self, key: ChunkKey) {
        let mut s = self.lock();
        if let Some(c) = s.lru.pop(&key) {
            s.used -= c.len();
        }
    }

    /// A buffer of `len` bytes (at most [`CHUNK`]) for a fetch to fill entirely: a recycled
    /// one when there is one (holding old bytes, which the fetch overwrites), else a new one.
    pub fn buffer(&self, len: usize) -> Vec<u8> {
        let spare = self.lock().spare.pop();
        match spare {
            Some(mut v) if len <= v.len() => {
                v.truncate(len);
                v
            }
            _ => vec![0u8; len],
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.lock().used
    }

    /// Evicts least recently used chunks down to the bound, skipping pinned ones (held by a
    /// read: the cache's reference is not the only one). Those go back as most recent.
    fn evict(&self, s: &mut State) {
        let mut looked = s.lru.len();
        while s.used > self.capacity && looked > 0 {
            looked -= 1;
            let Some((k, c)) = s.lru.pop_lru() else {
                break;
            };
            if Arc::strong_count(&c) > 1 {
                s.lru.put(k, c);
            } else {
                s.used -= c.len();
                // Only full chunks are kept, so every spare serves any request.
                if s.spare.len() < SPARE && c.len() as u64 == CHUNK {
                    if let Ok(v) = Arc::try_unwrap(c) {
                        s.spare.push(v);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_wait_and_finish() {
        let c = Arc::new(ChunkCache::new(1 << 20));
        assert!(matches!(c.look((1, 0)), Look::Claimed));
        assert!(matches!(c.look((1, 0)), Look::Busy));
        let c2 = Arc::clone(&c);
        let waiter = std::thread::spawn(move || c2.wait((1, 0)));
        c.finish((1, 0), Some(Arc::new(vec![7; 10])));
        assert_eq!(waiter.join().unwrap().unwrap()[0], 7);
        assert!(matches!(c.look((1, 0)), Look::Ready(_)));
        // A failed fetch leaves nothing; the next look claims again.
        assert!(matches!(c.look((1, 1)), Look::Claimed));
        c.finish((1, 1), None);
        assert!(c.wait((1, 1)).is_none());
        assert!(matches!(c.look((1, 1)), Look::Claimed));
    }

    #[test]
    fn the_bound_holds_except_for_pinned_chunks() {
        let c = ChunkCache::new(100);
        let pinned = Arc::new(vec![0u8; 60]);
        let _ = c.look((1, 0));
        c.finish((1, 0), Some(Arc::clone(&pinned)));
        for i in 1..5 {
            let _ = c.look((1, i));
            c.finish((1, i), Some(Arc::new(vec![0u8; 30])));
        }
        // 60 pinned + at most one 30-byte chunk... the bound is exceeded only by the pin.
        assert!(c.used() <= 100, "{}", c.used());
        assert!(matches!(c.look((1, 0)), Look::Ready(_)));
        drop(pinned);
        let _ = c.look((1, 9));
        c.finish((1, 9), Some(Arc::new(vec![0u8; 90])));
        assert!(c.used() <= 100);
    }

    #[test]
    fn evicted_full_chunks_are_recycled() {
        let full = usize::try_from(CHUNK).unwrap();
        let c = ChunkCache::new(full);
        for i in 0..3u8 {
            let _ = c.look((1, u64::from(i)));
            c.finish((1, u64::from(i)), Some(Arc::new(vec![i; full])));
        }
        // Two were evicted; their buffers come back (old bytes and all) at the asked length.
        let b = c.buffer(100);
        assert_eq!(b.len(), 100);
        assert_eq!(b.capacity(), full);
        assert_eq!(c.buffer(full).capacity(), full);
        // None left: a fresh, zeroed one.
        assert!(c.buffer(10).iter().all(|&x| x == 0));
    }
}
