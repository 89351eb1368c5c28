//! The disk cache of fetched bytes (`[cache] disk`, the unit's `CacheDirectory=`): chunks of
//! remote objects as files, keyed by the object and its validator (URL, ETag, Last-Modified,
//! size), bounded in bytes, least recently used evicted first. Restarts and snapshots that
//! share a base then fetch nothing twice.
//!
//! Layout: `DIR/OBJECT/HIGH/LOW`, where `OBJECT` is 32 hex digits of the object key and
//! `HIGH`/`LOW` split the chunk number (at most 4096 files per directory). Each file is the
//! chunk's bytes followed by a 12-byte trailer: CRC-32 of the bytes, their length, `HXZC`. A
//! file that is short, long or fails its CRC is removed and the chunk fetched again. Files are
//! written under a temporary name and renamed, by one writer thread, so a reader sees whole
//! files or none. `DIR/.lock` is held (`flock`) so two daemons never share a directory.
//!
//! Recency survives restarts through the files' modification times (set on every hit).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use crossbeam_channel::{Sender, TrySendError};
use lru::LruCache;
use nix::fcntl::{Flock, FlockArg};

use super::chunks::{CHUNK, Chunk};
use super::metrics::RemoteMetrics;

const TRAILER: usize = 12;
const MAGIC: &[u8; 4] = b"HXZC";
/// Chunks waiting for the writer; beyond that a chunk is simply not written (it is a cache).
const WRITE_QUEUE: usize = 256;

/// Where a chunk lives on disk: object key (hex) and chunk number.
type DiskKey = (Arc<str>, u64);

/// What the writer thread is asked to do.
enum Job {
    Write(DiskKey, Chunk),
    /// Answer once every earlier job is done.
    Sync(crossbeam_channel::Sender<()>),
}

#[derive(Debug)]
struct Index {
    lru: LruCache<DiskKey, u64>,
    used: u64,
}

/// The disk cache: its directory, the LRU index of its files, and the writer thread's queue.
#[derive(Debug)]
pub(crate) struct DiskCache {
    dir: PathBuf,
    capacity: u64,
    index: Arc<Mutex<Index>>,
    /// The writer's queue; `None` once dropping.
    writer: Option<Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    metrics: Arc<RemoteMetrics>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Write((o, n), _) => write!(f, "Write({o}, {n})"),
            Job::Sync(_) => f.write_str("Sync"),
        }
    }
}

/// Dropping the cache lets the writer finish its queue and waits for it, so the directory
/// (and its lock) is free when the engine is gone.
impl Drop for DiskCache {
    fn drop(&mut self) {
        self.writer = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl DiskCache {
    /// Opens (creating) the cache directory, takes its lock, indexes the files already there
    /// (oldest first) and starts the writer thread.
    pub fn open(
        dir: &Path,
        capacity: u64,
        metrics: Arc<RemoteMetrics>,
    ) -> std::io::Result<DiskCache> {
        let ctx = |what: &str, e: std::io::Error| {
            std::io::Error::new(
                e.kind(),
                format!("disk cache {}: {what}: {e}", dir.display()),
            )
        };
        fs::create_dir_all(dir).map_err(|e| ctx("cannot create", e))?;
        let lock = File::create(dir.join(".lock")).map_err(|e| ctx("cannot create .lock", e))?;
        let lock = Flock::lock(lock, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            ctx(
                "in use by another process (a second hexzd?)",
                std::io::Error::from(e),
            )
        })?;
        let mut found = Vec::new();
        scan(dir, &mut found).map_err(|e| ctx("cannot read", e))?;
        found.sort_by_key(|(_, _, mtime)| *mtime);
        let mut index = Index {
            lru: LruCache::unbounded(),
            used: 0,
        };
        for (key, size, _) in found {
            index.used += size;
            index.lru.put(key, size);
        }
        let index = Arc::new(Mutex::new(index));
        let (tx, rx) = crossbeam_channel::bounded::<Job>(WRITE_QUEUE);
        evict(
            dir,
            capacity,
            &mut index.lock().unwrap_or_else(PoisonError::into_inner),
            &metrics,
        );
        let writer = Writer {
            dir: dir.to_path_buf(),
            capacity,
            index: Arc::clone(&index),
            metrics: Arc::clone(&metrics),
        };
        // The writer thread holds the directory lock: it is released after the last write.
        let thread = std::thread::Builder::new()
            .name("hexzd-disk-cache".into())
            .spawn(move || {
                let _lock = lock;
                for job in rx {
                    match job {
                        Job::Write(key, chunk) => writer.write(&key, &chunk),
                        Job::Sync(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
            .map_err(|e| ctx("cannot start the writer thread", e))?;
        Ok(DiskCache {
            dir: dir.to_path_buf(),
            capacity,
            index,
            writer: Some(tx),
            thread: Some(thread),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached chunk `n` of `object`, `len` bytes long, if a valid file holds it. A file
    /// that fails its check is removed (counted as corrupt).
    pub fn get(&self, object: &Arc<str>, n: u64, len: usize) -> Option<Vec<u8>> {
        let key: DiskKey = (Arc::clone(object), n);
        // Known to the index (and promoted to most recent), or not on disk.
        self.lock().lru.get(&key)?;
        let path = chunk_path(&self.dir, object, n);
        match read_checked(&path, len) {
            Ok(Some(bytes)) => {
                // Recency for the next start; a failure only costs ordering.
                if let Ok(f) = File::options().write(true).open(&path) {
                    let _ = f.set_modified(SystemTime::now());
                }
                Some(bytes)
            }
            Ok(None) => {
                RemoteMetrics::add(&self.metrics.disk_corrupt, 1);
                log::warn!(
                    "disk cache: {} is corrupt or truncated; fetching it again",
                    path.display()
                );
                self.forget(&key, &path);
                None
            }
            Err(_) => {
                self.forget(&key, &path);
                None
            }
        }
    }

    /// Queues chunk `n` of `object` for writing (dropped if the writer is behind).
    pub fn put(&self, object: &Arc<str>, n: u64, chunk: &Chunk) {
        if (chunk.len() + TRAILER) as u64 > self.capacity {
            return;
        }
        let Some(w) = &self.writer else {
            return;
        };
        match w.try_send(Job::Write((Arc::clone(object), n), Arc::clone(chunk))) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                log::debug!("disk cache writer is behind; chunk not cached")
            }
        }
    }

    /// Waits until every chunk queued so far is written (or dropped).
    pub fn sync(&self) {
        if let Some(w) = &self.writer {
            let (tx, rx) = crossbeam_channel::bounded(1);
            if w.send(Job::Sync(tx)).is_ok() {
                let _ = rx.recv();
            }
        }
    }

    /// Removes chunk `n` of `object` (its bytes failed a check upstream).
    pub fn remove(&self, object: &Arc<str>, n: u64) {
        let key: DiskKey = (Arc::clone(object), n);
        let path = chunk_path(&self.dir, object, n);
        self.forget(&key, &path);
    }

    fn forget(&self, key: &DiskKey, path: &Path) {
        let mut idx = self.lock();
        if let Some(size) = idx.lru.pop(key) {
            idx.used -= size;
            let _ = fs::remove_file(path);
        }
        self.metrics
            .disk_bytes
            .store(idx.used, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    capacity: u64,
    index: Arc<Mutex<Index>>,
    metrics: Arc<RemoteMetrics>,
}

impl Writer {
    fn write(&self, key: &DiskKey, chunk: &[u8]) {
        if self
            .index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lru
            .contains(key)
        {
            return;
        }
        let path = chunk_path(&self.dir, &key.0, key.1);
        let size = (chunk.len() + TRAILER) as u64;
        if let Err(e) = write_file(&path, chunk) {
            log::warn!("disk cache: cannot write {}: {e}", path.display());
            return;
        }
        let mut idx = self.index.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = idx.lru.put(key.clone(), size) {
            idx.used -= old;
        }
        idx.used += size;
        evict(&self.dir, self.capacity, &mut idx, &self.metrics);
    }
}

fn evict(dir: &Path, capacity: u64, idx: &mut Index, metrics: &RemoteMetrics) {
    while idx.used > capacity {
        let Some(((object, n), size)) = idx.lru.pop_lru() else {
            break;
        };
        idx.used -= size;
        let path = chunk_path(dir, &object, n);
        let _ = fs::remove_file(&path);
        if let Some(parent) = path.parent() {
            // Only succeeds once the directory is empty.
            let _ = fs::remove_dir(parent);
        }
        RemoteMetrics::add(&metrics.disk_evictions, 1);
    }
    metrics
        .disk_bytes
        .store(idx.used, std::sync::atomic::Ordering::Relaxed);
}

fn chunk_path(dir: &Path, object: &str, n: u64) -> PathBuf {
    dir.join(object)
        .join(format!("{:x}", n >> 12))
        .join(format!("{:03x}", n & 0xfff))
}

fn write_file(path: &Path, chunk: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    let mut trailer = [0u8; TRAILER];
    trailer[..4].copy_from_slice(&crc32fast::hash(chunk).to_le_bytes());
    // A chunk is at most CHUNK bytes, far below u32::MAX.
    trailer[4..8].copy_from_slice(&u32::try_from(chunk.len()).unwrap_or(u32::MAX).to_le_bytes());
    trailer[8..].copy_from_slice(MAGIC);
    f.write_all(chunk)?;
    f.write_all(&trailer)?;
    drop(f);
    fs::rename(&tmp, path)
}

/// Reads a chunk file: `Ok(None)` when it is not exactly `len` bytes plus a valid trailer.
fn read_checked(path: &Path, len: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut f = File::open(path)?;
    let mut buf = Vec::with_capacity(len + TRAILER);
    Read::by_ref(&mut f)
        .take((len + TRAILER + 1) as u64)
        .read_to_end(&mut buf)?;
    if buf.len() != len + TRAILER {
        return Ok(None);
    }
    let (data, t) = buf.split_at(len);
    let crc = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
    let n = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
    if &t[8..] != MAGIC || n as usize != len || crc32fast::hash(data) != crc {
        return Ok(None);
    }
    buf.truncate(len);
    Ok(Some(buf))
}

/// Collects `(key, size, mtime)` of every chunk file under `dir`; removes leftover `.tmp`
/// files and ignores anything else.
fn scan(dir: &Path, out: &mut Vec<(DiskKey, u64, SystemTime)>) -> std::io::Result<()> {
    for object in fs::read_dir(dir)? {
        let object = object?;
        let name = object.file_name().to_string_lossy().into_owned();
        if name.len() != 32
            || !name.bytes().all(|b| b.is_ascii_hexdigit())
            || !object.file_type()?.is_dir()
        {
            continue;
        }
        let key: Arc<str> = Arc::from(name.as_str());
        for high in fs::read_dir(object.path())? {
            let high = high?;
            let Ok(h) = u64::from_str_radix(&high.file_name().to_string_lossy(), 16) else {
                continue;
            };
            if !high.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(high.path())? {
                let f = f?;
                let fname = f.file_name().to_string_lossy().into_owned();
                if fname.ends_with(".tmp") {
                    let _ = fs::remove_file(f.path());
                    continue;
                }
                let Ok(l) = u64::from_str_radix(&fname, 16) else {
                    continue;
                };
                let meta = f.metadata()?;
                if !meta.is_file() || l > 0xfff || meta.len() > CHUNK + TRAILER as u64 {
                    continue;
                }
                let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                out.push(((Arc::clone(&key), (h << 12) | l), meta.len(), mtime));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_survive_a_restart_and_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let m = Arc::new(RemoteMetrics::default());
        let obj: Arc<str> = Arc::from("0123456789abcdef0123456789abcdef");
        {
            let c = DiskCache::open(dir.path(), 1 << 20, Arc::clone(&m)).unwrap();
            c.put(&obj, 5, &Arc::new(vec![1u8; 1000]));
            c.put(&obj, 4097, &Arc::new(vec![2u8; 10]));
            c.sync();
            // The lock keeps a second user out.
            assert!(DiskCache::open(dir.path(), 1 << 20, Arc::clone(&m)).is_err());
        }
        let c = DiskCache::open(dir.path(), 1 << 20, Arc::clone(&m)).unwrap();
        assert_eq!(c.get(&obj, 5, 1000).unwrap(), vec![1u8; 1000]);
        assert_eq!(c.get(&obj, 4097, 10).unwrap(), vec![2u8; 10]);
        // Wrong expected length (the object is not what the file was written for).
        assert!(c.get(&obj, 4097, 11).is_none());
        // Flip a byte: the CRC catches it and the file goes.
        let p = chunk_path(dir.path(), &obj, 5);
        let mut bytes = fs::read(&p).unwrap();
        bytes[3] ^= 0xff;
        fs::write(&p, &bytes).unwrap();
        assert!(c.get(&obj, 5, 1000).is_none());
        assert!(!p.exists());
        assert!(m.disk_corrupt.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    }

    #[test]
    fn the_size_bound_holds() {
        let dir = tempfile::tempdir().unwrap();
        let m = Arc::new(RemoteMetrics::default());
        let obj: Arc<str> = Arc::from("00000000000000000000000000000001");
        let c = DiskCache::open(dir.path(), 5000, m).unwrap();
        for n in 0..20 {
            c.put(&obj, n, &Arc::new(vec![7u8; 1000]));
        }
        c.sync();
        let mut found = Vec::new();
        scan(dir.path(), &mut found).unwrap();
        let total: u64 = found.iter().map(|f| f.1).sum();
        assert!(total <= 5000, "{total}");
        assert!(c.get(&obj, 19, 1000).is_some());
        assert!(c.get(&obj, 0, 1000).is_none());
    }
}
