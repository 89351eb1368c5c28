//! The shared machinery behind every snapshot of a process: the block cache, the page cache,
//! the decompression pool, the registry of open archives (so a parent shared by several thin
//! snapshots is opened and hash-indexed once) and the store's counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::StoreError;
use super::archive::{Archive, Page};
use super::cache::ShardedCache;
use super::pool::Pool;
use super::remote::{Remote, RemoteConfig, RemoteMetrics};
use super::source::ArchiveKey;

/// Cache key of a decoded block: the archive id and everything that decides what decoding the
/// entry yields (stored offset, stored length, logical length, CRC and, for encrypted
/// archives, the global block index that is the nonce). Dedup entries share a key; an entry
/// that shares only the offset with another (a corrupt one) gets its own decode and its own
/// checks, never its twin's cached result.
pub(crate) type BlockKey = (u64, u64, u32, u32, u32, u64);
/// A decoded block, shared by the cache and every reader copying from it.
pub(crate) type BlockData = Arc<Vec<u8>>;
pub(crate) type BlockCache = ShardedCache<BlockKey, BlockData, StoreError>;
/// Cache key of a parsed index page: archive id, stream number, page number.
pub(crate) type PageKey = (u64, u8, usize);
pub(crate) type PageCache = ShardedCache<PageKey, Arc<Page>, StoreError>;

/// Sizes of the caches and the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Bytes of decompressed blocks to keep; 0 disables the block cache.
    pub cache_bytes: usize,
    /// Bytes of parsed index pages to keep (about 64 bytes per block entry).
    pub page_cache_bytes: usize,
    /// Decompression workers; 0 means one per CPU.
    pub workers: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            cache_bytes: default_cache_bytes(),
            page_cache_bytes: 64 << 20,
            workers: 0,
        }
    }
}

/// The default block cache: a sixteenth of the memory this process may use (the machine's,
/// or its cgroup's limit when that is lower), between 64 MiB and 1 GiB; 256 MiB when neither
/// can be read.
///
/// Why it scales (issue 11): with 4 KiB random reads over a 512 MiB image (reference archive)
/// a 256 MiB cache answered 76 % of lookups and a 512 MiB one 99 %, at about 22 and 16 µs
/// of CPU per request, while the process's RSS was 373 and 388 MB: a block enters the cache
/// only on its second miss, so memory follows what clients read again, not the cache size.
/// A fixed larger default would still be too much for a small VM or a BMC; a sixteenth
/// keeps 4 GiB machines at the old 256 MiB and gives a 1 GiB machine 64 MiB.
pub fn default_cache_bytes() -> usize {
    const MIN: u64 = 64 << 20;
    const MAX: u64 = 1 << 30;
    let limit = [memory_total(), cgroup_memory_max()]
        .into_iter()
        .flatten()
        .min();
    let bytes = limit.map_or(256 << 20, |b| (b / 16).clamp(MIN, MAX));
    usize::try_from(bytes).unwrap_or(256 << 20)
}

/// `MemTotal` of /proc/meminfo, in bytes.
fn memory_total() -> Option<u64> {
    parse_mem_total(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The memory limit of this process's cgroup: `memory.max` (v2) or `memory.limit_in_bytes`
/// (v1), when it is a number (`max`, or v1's huge "unlimited", are no lower than MemTotal).
fn cgroup_memory_max() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let read = |file: String| std::fs::read_to_string(file).ok();
    // A hybrid system lists both hierarchies; the one with the memory controller answers.
    let max = cgroup_path(&cgroup, "")
        .and_then(|p| read(format!("/sys/fs/cgroup{p}/memory.max")))
        .or_else(|| {
            let p = cgroup_path(&cgroup, "memory")?;
            read(format!("/sys/fs/cgroup/memory{p}/memory.limit_in_bytes"))
        })?;
    max.trim().parse().ok()
}

/// The path of `controller`'s hierarchy in /proc/self/cgroup (`""`: the unified v2 one, its
/// `0::` line).
fn cgroup_path<'a>(cgroup: &'a str, controller: &str) -> Option<&'a str> {
    cgroup
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, c, p) = (f.next()?, f.next()?, f.next()?);
            c.split(',').any(|c| c == controller).then_some(p)
        })
        .filter(|p| p.starts_with('/') && !p.contains(".."))
}

/// Counters of the store, exported by `/metrics`. Monotonic unless noted.
#[derive(Debug, Default)]
pub struct StoreMetrics {
    /// Block lookups answered from the cache.
    pub cache_hits: AtomicU64,
    /// Block lookups that had to wait for a decode (their own or another reader's).
    pub cache_misses: AtomicU64,
    /// Blocks decoded by the pool.
    pub decompressions: AtomicU64,
    /// Stored bytes read from archive files.
    pub stored_bytes_read: AtomicU64,
    /// Blocks that failed to decode (CRC, codec, tag, I/O).
    pub block_errors: AtomicU64,
    /// Remote archives: requests, bytes fetched, retries, errors, chunk cache hits.
    pub remote: Arc<RemoteMetrics>,
}

impl StoreMetrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The process-wide store context. Snapshots hold an `Arc<Engine>`; dropping the last one
/// stops the workers.
#[derive(Debug)]
pub struct Engine {
    pub(crate) blocks: Arc<BlockCache>,
    pub(crate) pages: PageCache,
    pub(crate) pool: Pool,
    /// Store counters.
    pub metrics: Arc<StoreMetrics>,
    next_id: AtomicU64,
    /// Open archives by file identity and password, so each file is opened and indexed once.
    archives: Mutex<HashMap<ArchiveKey, Weak<Archive>>>,
    config: EngineConfig,
    /// Remote archives' agents, chunk caches and read-ahead.
    pub(crate) remote: Arc<Remote>,
}

impl Engine {
    /// Starts the worker pool and allocates the (empty) caches. Remote archives use the
    /// default [`RemoteConfig`] (no disk cache, unsigned S3 requests).
    pub fn new(config: EngineConfig) -> std::io::Result<Arc<Engine>> {
        Engine::with_remote(config, RemoteConfig::default())
    }

    /// [`Engine::new`] with the settings of remote archives (and their disk cache, whose
    /// directory is created and locked here).
    pub fn with_remote(config: EngineConfig, remote: RemoteConfig) -> std::io::Result<Arc<Engine>> {
        let workers = if config.workers == 0 {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        } else {
            config.workers
        };
        let metrics = Arc::new(StoreMetrics::default());
        let remote = Arc::new(Remote::new(remote, workers, Arc::clone(&metrics))?);
        Ok(Arc::new(Engine {
            blocks: Arc::new(ShardedCache::new(config.cache_bytes)),
            // Two shards: a parsed page can be large (64 bytes per entry, and the format does
            // not cap entries per page), and a page larger than its shard is never cached.
            pages: ShardedCache::with_shards(config.page_cache_bytes, 2),
            pool: Pool::new(workers)?,
            metrics,
            next_id: AtomicU64::new(1),
            archives: Mutex::new(HashMap::new()),
            config: EngineConfig { workers, ..config },
            remote,
        }))
    }

    /// The configuration in effect (with `workers` resolved).
    pub fn config(&self) -> EngineConfig {
        self.config
    }

    /// Number of decompression workers.
    pub fn workers(&self) -> usize {
        self.pool.size()
    }

    /// How many of one read's own decodes may wait in the pool queue at once: two per worker,
    /// so each worker has the next job queued while the reader collects a finished one.
    pub fn read_window(&self) -> usize {
        (4 * self.pool.size()).max(8)
    }

    /// Bytes currently held by the block cache.
    pub fn cache_used(&self) -> usize {
        self.blocks.used()
    }

    /// The settings of remote archives.
    pub fn remote_config(&self) -> &RemoteConfig {
        &self.remote.config
    }

    /// Bytes of fetched remote chunks held in memory.
    pub fn remote_memory_used(&self) -> usize {
        self.remote.chunks.used()
    }

    /// Waits until the disk cache has written every chunk fetched so far.
    pub fn sync_disk_cache(&self) {
        if let Some(d) = &self.remote.disk {
            d.sync();
        }
    }

    pub(crate) fn next_archive_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Returns the archive already open for this file, if any.
    pub(crate) fn registered(&self, key: &ArchiveKey) -> Option<Arc<Archive>> {
        let map = self
            .archives
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(key).and_then(Weak::upgrade)
    }

    /// Records an opened archive (and forgets files no longer open).
    pub(crate) fn register(&self, key: ArchiveKey, archive: &Arc<Archive>) {
        let mut map = self
            .archives
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(key, Arc::downgrade(archive));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_cgroup_lines_parse() {
        let meminfo = "MemTotal:       24567892 kB\nMemFree:         1234 kB\n";
        assert_eq!(parse_mem_total(meminfo), Some(24_567_892 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(
            cgroup_path("0::/system.slice/hexzd.service\n", ""),
            Some("/system.slice/hexzd.service")
        );
        let v1 = "9:name=systemd:/\n4:memory:/lxc/a\n2:cpu,cpuacct:/\n0::/\n";
        assert_eq!(cgroup_path(v1, "memory"), Some("/lxc/a"));
        assert_eq!(cgroup_path(v1, "cpuacct"), Some("/"));
        assert_eq!(cgroup_path("1:name=systemd:/x\n", ""), None);
        assert_eq!(cgroup_path("0::/../x\n", ""), None);
    }

    #[test]
    fn the_default_cache_is_a_sixteenth_of_memory_within_bounds() {
        let b = default_cache_bytes();
        assert!((64 << 20..=1 << 30).contains(&b), "{b}");
    }
}
