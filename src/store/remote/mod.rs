//! Remote archives (issue 14): objects behind HTTP(S) or S3, read by range GETs through a
//! chunk cache in memory and, optionally, on disk.
//!
//! Files by role: `location` tells paths from URLs and keeps credentials out of what is
//! shown; `client` is one range GET (redirects, checks, retries); `sigv4` and `s3` sign S3
//! requests; `chunks` is the shared memory cache with single flight; `disk` the disk cache;
//! `object` an open object (the probe at open, reads, coalescing, read-ahead); `metrics` the
//! counters. `Remote` is the engine-wide state all of them share.

mod chunks;
mod client;
mod disk;
pub mod location;
pub mod metrics;
mod object;
pub mod s3;
pub mod sigv4;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use crossbeam_channel::Sender;

pub use chunks::CHUNK;
pub(crate) use chunks::Chunk;
pub use location::{Location, LocationError, RemoteUrl};
pub use metrics::RemoteMetrics;
pub(crate) use object::RemoteObject;
pub use s3::{Credentials, S3Config, S3Error, S3Settings};

use super::engine::StoreMetrics;

/// How remote archives are fetched and cached. Fixed for the life of an engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteConfig {
    /// TCP (and TLS) connection set-up.
    pub connect_timeout: Duration,
    /// Longest wait for any one read from the socket (a stalled server).
    pub read_timeout: Duration,
    /// Longest one request may take, retries included.
    pub request_timeout: Duration,
    /// Retries of a retryable failure (5xx, reset, timeout, short body).
    pub retries: u32,
    /// HTTP proxy (`http://proxy:3128`); none unless configured (the environment's proxy
    /// variables are ignored).
    pub proxy: Option<String>,
    /// Origins other than an archive's own that its parent references and redirects may
    /// name (normalised: `https://host[:port]`, `s3://bucket`).
    pub allow_origins: Vec<String>,
    /// Largest read-ahead window of a sequential reader, in bytes.
    pub readahead: u64,
    /// Bytes of fetched chunks kept in memory.
    pub memory: usize,
    /// The disk cache: directory and byte bound.
    pub disk: Option<(PathBuf, u64)>,
    /// S3 endpoint, region and credentials.
    pub s3: S3Config,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(120),
            retries: 3,
            proxy: None,
            allow_origins: Vec::new(),
            readahead: 16 << 20,
            memory: 64 << 20,
            disk: None,
            s3: S3Config::default(),
        }
    }
}

impl RemoteConfig {
    /// The defaults with S3 settings from the environment (for CLI commands).
    pub fn from_env() -> Result<RemoteConfig, S3Error> {
        Ok(RemoteConfig {
            s3: S3Config::resolve(&S3Settings::default(), &|k| std::env::var(k).ok())?,
            ..RemoteConfig::default()
        })
    }
}

/// Why a remote read failed. Every message names the URL without credentials.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    /// An answer other than 206 (or a redirect) to a range request.
    #[error("GET {url} ({range}): HTTP {status} {detail}")]
    Status {
        url: String,
        range: String,
        status: u16,
        detail: String,
    },
    /// A 200 to a range request: the server does not do ranges.
    #[error(
        "{url}: the server ignores Range requests (answered 200 instead of 206); serve it from a server with byte-range support"
    )]
    RangeIgnored { url: String },
    /// A 206 for other bytes than asked.
    #[error("{url}: asked for {asked}, the server answered Content-Range {got:?}")]
    WrongRange {
        url: String,
        asked: String,
        got: String,
    },
    /// The object is not the one opened (412, or another ETag/Last-Modified/size).
    #[error(
        "{url}: the object changed since it was opened ({detail}); reload (SIGHUP) to serve the new one"
    )]
    Changed { url: String, detail: String },
    /// The body ended before the range did.
    #[error("GET {url} ({range}): short body: {got} of {want} bytes")]
    ShortBody {
        url: String,
        range: String,
        got: u64,
        want: u64,
    },
    /// Connect, timeout, reset, DNS, protocol failures.
    #[error("GET {url} ({range}): {kind}: {detail}")]
    Transport {
        url: String,
        range: String,
        kind: &'static str,
        detail: String,
    },
    /// A redirect that is not followed.
    #[error("{url}: redirect ({status}) refused: {why}")]
    Redirect {
        url: String,
        status: u16,
        why: String,
    },
    /// A retryable failure that kept failing.
    #[error("{source} (gave up after {attempts} attempts)")]
    GaveUp {
        attempts: u32,
        #[source]
        source: Box<RemoteError>,
    },
    /// The object is too small to be an archive (or empty).
    #[error("{url}: {detail}")]
    Object { url: String, detail: String },
}

impl RemoteError {
    /// Worth another attempt: server errors, throttling, resets, timeouts, short bodies.
    pub fn retryable(&self) -> bool {
        match self {
            RemoteError::Status { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            RemoteError::ShortBody { .. } => true,
            RemoteError::Transport { kind, .. } => !matches!(*kind, "dns" | "content encoding"),
            _ => false,
        }
    }

    /// The `/metrics` label of this failure: the status code or the fault kind.
    pub fn label(&self) -> String {
        match self {
            RemoteError::Status { status, .. } => status.to_string(),
            RemoteError::RangeIgnored { .. } => "range_ignored".into(),
            RemoteError::WrongRange { .. } => "content_range".into(),
            RemoteError::Changed { .. } => "changed".into(),
            RemoteError::ShortBody { .. } => "short_body".into(),
            RemoteError::Transport { kind, .. } => kind.replace(' ', "_"),
            RemoteError::Redirect { .. } => "redirect".into(),
            RemoteError::GaveUp { source, .. } => source.label(),
            RemoteError::Object { .. } => "object".into(),
        }
    }

    /// The HTTP status, if the failure was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            RemoteError::Status { status, .. } => Some(*status),
            RemoteError::GaveUp { source, .. } => source.status(),
            _ => None,
        }
    }
}

/// A read-ahead job: chunks `first..end` of an object.
pub(crate) type ReadAhead = (Arc<RemoteObject>, u64, u64);

/// Engine-wide remote state: the configuration, one pooled HTTP agent per origin, the chunk
/// caches and the read-ahead threads.
pub(crate) struct Remote {
    pub config: RemoteConfig,
    /// Idle connections kept per origin: the decompression workers plus the read-ahead
    /// threads can each hold one.
    pool_size: usize,
    agents: Mutex<HashMap<String, ureq::Agent>>,
    pub chunks: chunks::ChunkCache,
    pub disk: Option<disk::DiskCache>,
    pub metrics: Arc<StoreMetrics>,
    readahead: OnceLock<Option<Sender<ReadAhead>>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("config", &self.config)
            .field("chunks_used", &self.chunks.used())
            .finish_non_exhaustive()
    }
}

/// Threads fetching ahead of sequential readers.
const READAHEAD_THREADS: usize = 2;

impl Remote {
    /// Remote state for an engine with `workers` decompression workers. Opens the disk
    /// cache (creating its directory) when one is configured.
    pub fn new(
        config: RemoteConfig,
        workers: usize,
        metrics: Arc<StoreMetrics>,
    ) -> std::io::Result<Remote> {
        let disk = match &config.disk {
            Some((dir, bytes)) => Some(disk::DiskCache::open(
                dir,
                *bytes,
                Arc::clone(&metrics.remote),
            )?),
            None => None,
        };
        Ok(Remote {
            chunks: chunks::ChunkCache::new(config.memory),
            pool_size: workers + READAHEAD_THREADS + 2,
            config,
            agents: Mutex::new(HashMap::new()),
            disk,
            metrics,
            readahead: OnceLock::new(),
            next_id: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// The pooled agent of `origin`, created on first use.
    pub fn agent(&self, origin: &str) -> ureq::Agent {
        let mut agents = self.agents.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(a) = agents.get(origin) {
            return a.clone();
        }
        let c = &self.config;
        let proxy = c.proxy.as_deref().and_then(|p| match ureq::Proxy::new(p) {
            Ok(p) => Some(p),
            Err(e) => {
                log::warn!("[remote] proxy is unusable ({e}); connecting directly");
                None
            }
        });
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(proxy)
            .timeout_connect(Some(c.connect_timeout))
            .timeout_per_read(Some(c.read_timeout))
            .timeout_recv_response(Some(c.read_timeout))
            .timeout_global(Some(c.request_timeout))
            .max_idle_connections(self.pool_size)
            .max_idle_connections_per_host(self.pool_size)
            .user_agent(concat!("hexzd/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        agents.insert(origin.to_string(), agent.clone());
        agent
    }

    /// A process-unique object number (chunk keys).
    pub fn next_id(&self) -> u64 {
        self.next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues a read-ahead job; dropped when the threads are busy (it is advisory).
    pub fn read_ahead(&self, job: ReadAhead) {
        let tx = self.readahead.get_or_init(|| {
            let (tx, rx) = crossbeam_channel::bounded::<ReadAhead>(READAHEAD_THREADS * 2);
            for i in 0..READAHEAD_THREADS {
                let rx = rx.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("hexzd-readahead-{i}"))
                    .spawn(move || {
                        for (object, first, end) in rx {
                            object.fetch_ahead(first, end);
                        }
                    });
                if let Err(e) = spawned {
                    log::warn!("cannot start read-ahead: {e}");
                    return None;
                }
            }
            Some(tx)
        });
        if let Some(tx) = tx {
            let _ = tx.try_send(job);
        }
    }
}
