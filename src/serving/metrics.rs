//! Counters shared by the daemon and the front ends, rendered by `GET /metrics`. Passed
//! explicitly (no globals); all updates are relaxed atomics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::budget::{Budget, DEFAULT_BUFFER_MEMORY};
use super::ratelog::RateLog;
use crate::store::StoreMetrics;

/// Counters of one protocol front end (HTTP or NBD).
#[derive(Debug, Default)]
pub struct ProtoMetrics {
    /// Connections accepted and served.
    pub connections_total: AtomicU64,
    /// Connections open now (gauge).
    pub connections_active: AtomicU64,
    /// Connections refused because the cap was reached.
    pub connections_rejected: AtomicU64,
    /// Requests (HTTP) or commands (NBD) answered.
    pub requests_total: AtomicU64,
    /// Payload bytes sent.
    pub bytes_sent: AtomicU64,
    /// Requests that failed with a read error (HTTP 500, NBD EIO).
    pub read_errors: AtomicU64,
    /// Protocol errors that closed a connection.
    pub protocol_errors: AtomicU64,
    /// Connections refused because their client was at `max_connections_per_client`.
    pub connections_rejected_per_client: AtomicU64,
    /// Connections closed because the client read nothing for the send timeout.
    pub send_timeouts: AtomicU64,
    /// TLS handshakes completed (HTTPS, NBD after STARTTLS).
    pub tls_handshakes: AtomicU64,
    /// TLS handshakes that failed or timed out (logged at debug level only), and plaintext
    /// requests refused on an HTTPS port.
    pub tls_handshake_failures: AtomicU64,
    /// Rate-limits the per-client refusal log line.
    pub per_client_log: RateLog,
    /// Rate-limits the send-timeout log line.
    pub send_timeout_log: RateLog,
}

impl ProtoMetrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts `n` from a gauge.
    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Every counter of the process.
#[derive(Debug)]
pub struct Metrics {
    /// HTTP front end.
    pub http: ProtoMetrics,
    /// NBD front end.
    pub nbd: ProtoMetrics,
    /// The store (cache hits and misses, decompressions, block errors).
    pub store: Arc<StoreMetrics>,
    /// The memory budget every response buffer draws from (shared like the counters, and
    /// shown with them).
    pub budget: Budget,
}

impl Metrics {
    /// Metrics over the store counters of `store`, with a budget of the default size.
    pub fn new(store: Arc<StoreMetrics>) -> Self {
        Metrics::with_budget(store, DEFAULT_BUFFER_MEMORY)
    }

    /// Metrics with a response-buffer budget of `buffer_memory` bytes.
    pub fn with_budget(store: Arc<StoreMetrics>, buffer_memory: u64) -> Self {
        Metrics {
            http: ProtoMetrics::default(),
            nbd: ProtoMetrics::default(),
            store,
            budget: Budget::new(buffer_memory),
        }
    }
}

/// Reads a counter.
pub fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}
