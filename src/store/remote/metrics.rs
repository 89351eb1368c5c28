//! Counters of remote archives, exported by `/metrics` beside the store's. Labels are status
//! codes or fault kinds, never URLs (a URL may carry credentials).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Remote fetching and caching counters. Monotonic unless noted.
#[derive(Debug, Default)]
pub struct RemoteMetrics {
    /// HTTP requests sent (every attempt and every redirect hop).
    pub requests: AtomicU64,
    /// Response body bytes fetched.
    pub bytes: AtomicU64,
    /// Requests repeated after a retryable failure (5xx, reset, timeout, short body).
    pub retries: AtomicU64,
    /// Chunk lookups answered from memory.
    pub memory_hits: AtomicU64,
    /// Chunk lookups answered from the disk cache.
    pub disk_hits: AtomicU64,
    /// Chunk lookups the disk cache could not answer.
    pub disk_misses: AtomicU64,
    /// Disk cache files found corrupt or truncated (removed and fetched again).
    pub disk_corrupt: AtomicU64,
    /// Disk cache files evicted to keep the size bound.
    pub disk_evictions: AtomicU64,
    /// Bytes held by the disk cache now (gauge).
    pub disk_bytes: AtomicU64,
    /// Bytes fetched ahead of sequential readers.
    pub readahead_bytes: AtomicU64,
    /// Failed requests by HTTP status or fault kind (`404`, `timeout`, `reset`, ...).
    errors: Mutex<BTreeMap<String, u64>>,
}

impl RemoteMetrics {
    /// Adds `n` to a counter.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one failed request under `label`.
    pub(crate) fn error(&self, label: &str) {
        let mut m = self
            .errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *m.entry(label.to_string()).or_insert(0) += 1;
    }

    /// Failed requests by label, in label order.
    pub fn errors(&self) -> Vec<(String, u64)> {
        self.errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}
