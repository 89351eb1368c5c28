//! The HTTP front end (http.md): serves snapshot streams as RFC 9110 byte ranges over a small
//! HTTP/1.1 layer of its own (http.md §8 says why not tiny_http), one OS thread per connection.
//!
//! Files by role: [`request`] parses heads and enforces the limits, [`route`] reduces
//! request-targets to paths (`serving::names` resolves them to resources), [`range`] and
//! [`conditional`] decide the answer (pure), [`response`] renders heads and body plans, `body`
//! produces bodies block by block, `handler` runs the decision procedure of http.md §3 for one
//! request, `admin` renders `/snapshots` and `/metrics`, and `connection` owns the socket:
//! timeouts, keep-alive, pipelining, bounded body streaming. The daemon accepts connections,
//! enforces the connection cap and calls [`HttpService::serve_connection`] (or, for an HTTPS
//! listener, [`HttpService::serve_tls_connection`]) or [`HttpService::reject_busy`].

mod admin;
pub mod auth;
mod body;
pub mod conditional;
mod connection;
pub mod date;
mod handler;
pub mod range;
pub mod request;
pub mod response;
pub mod route;

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime};

use crate::serving::{CatalogHandle, Conn, Draining, Metrics, ProtoMetrics};
use crate::tls::sniff::{self, Hello};
use crate::tls::{TlsContext, Transport};

/// Settings of the HTTP front end, validated by the daemon and fixed for the service's life.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// Connections served at once; the daemon enforces it and calls
    /// [`HttpService::reject_busy`] beyond it.
    pub max_connections: usize,
    /// Time allowed for a request line and headers to arrive, from their first byte; then 408
    /// and close.
    pub header_timeout: Duration,
    /// Time a kept-alive connection may wait for its next request; then it is closed.
    pub idle_timeout: Duration,
    /// Time a response may go without any progress writing it (the client reads nothing);
    /// then the connection is closed (`[limits] send_timeout`).
    pub send_timeout: Duration,
    /// Largest ranged response in bytes (http.md §3a); 0 serves every satisfiable range
    /// exactly. Never applies to a GET without Range.
    pub max_range_bytes: u64,
    /// Bearer token required on every route except `/healthz`.
    pub auth_token: Option<String>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: crate::serving::budget::DEFAULT_SEND_TIMEOUT,
            max_range_bytes: 32 << 20,
            auth_token: None,
        }
    }
}

impl std::fmt::Debug for HttpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSettings")
            .field("max_connections", &self.max_connections)
            .field("header_timeout", &self.header_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("send_timeout", &self.send_timeout)
            .field("max_range_bytes", &self.max_range_bytes)
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The HTTP front end: shared by every connection thread through an `Arc`. Holds no lock;
/// counters are atomics and the catalog is loaded once per connection (design.md §4: an open
/// connection keeps the snapshots it started with).
#[derive(Debug)]
pub struct HttpService {
    settings: HttpSettings,
    token: Option<auth::Token>,
    catalog: Arc<CatalogHandle>,
    metrics: Arc<Metrics>,
    /// Feeds multipart boundaries, so no two answers share one.
    nonce: AtomicU64,
    /// Responses that failed on a corrupt block (CRC, codec, tag): `/metrics`.
    corrupt_blocks: AtomicU64,
    /// Set by the daemon at a graceful stop: connections take no new request.
    draining: Arc<Draining>,
}

impl HttpService {
    /// A service over `catalog`, counting into `metrics.http`.
    pub fn new(settings: HttpSettings, catalog: Arc<CatalogHandle>, metrics: Arc<Metrics>) -> Self {
        let token = settings.auth_token.as_deref().map(auth::Token::new);
        HttpService {
            settings,
            token,
            catalog,
            metrics,
            nonce: AtomicU64::new(0),
            corrupt_blocks: AtomicU64::new(0),
            draining: Arc::new(Draining::new()),
        }
    }

    /// Uses `draining` as the graceful-stop flag (the daemon's; by default a flag of its own
    /// that is never set).
    #[must_use]
    pub fn with_draining(mut self, draining: Arc<Draining>) -> Self {
        self.draining = draining;
        self
    }

    /// The settings in effect.
    pub fn settings(&self) -> &HttpSettings {
        &self.settings
    }

    /// Serves one accepted connection until it closes: keep-alive, pipelined requests
    /// answered in order. Blocks the calling thread (the daemon's `http-conn-N`). Never
    /// panics; every error closes only this connection and is logged.
    pub fn serve_connection(&self, conn: Conn) {
        let peer = conn.peer();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            connection::Connection::new(self, Transport::Plain(conn), peer.clone()).run();
        }));
        if result.is_err() {
            log::error!("{peer}: HTTP connection thread panicked; connection closed");
        }
    }

    /// Serves one connection of an HTTPS listener: a plaintext request gets a plaintext 400
    /// that says the port speaks HTTPS; otherwise the TLS handshake (with the certificates of
    /// `tls` in effect now) must finish within the header timeout, and the connection is then
    /// served like any other. Failed handshakes are counted and logged at debug level only.
    pub fn serve_tls_connection(&self, conn: Conn, tls: &TlsContext) {
        let peer = conn.peer();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let m = &self.metrics.http;
            let deadline = Instant::now() + self.settings.header_timeout;
            match crate::tls::peek_hello(&conn, deadline) {
                Ok(Hello::PlainHttp) => {
                    ProtoMetrics::add(&m.tls_handshake_failures, 1);
                    log::debug!("{peer}: plaintext HTTP request on an HTTPS port; refused");
                    self.refuse_plaintext(conn);
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    ProtoMetrics::add(&m.tls_handshake_failures, 1);
                    log::debug!("{peer}: {e}");
                    return;
                }
            }
            match crate::tls::accept(conn, tls.http(), deadline) {
                Ok((r, w)) => {
                    ProtoMetrics::add(&m.tls_handshakes, 1);
                    connection::Connection::new(self, Transport::Tls(r, w), peer.clone()).run();
                }
                Err(e) => {
                    ProtoMetrics::add(&m.tls_handshake_failures, 1);
                    log::debug!("{peer}: {e}");
                }
            }
        }));
        if result.is_err() {
            log::error!("{peer}: HTTPS connection thread panicked; connection closed");
        }
    }

    /// Answers a plaintext request on an HTTPS port: one small plaintext 400, then close
    /// (bounded like [`HttpService::reject_busy`]).
    fn refuse_plaintext(&self, mut conn: Conn) {
        let _ = conn.set_write_timeout(Some(Duration::from_millis(100)));
        if let Err(e) = conn.write_all(&sniff::plaintext_refusal()) {
            log::debug!("{}: 400 not delivered: {e}", conn.peer());
        }
        close_after_answer(conn);
    }

    /// Answers a connection refused by the cap: `503` with `Retry-After`, then close. Does not
    /// block: the write is one small segment on a fresh socket (and is bounded by a 100 ms
    /// send timeout anyway), and only bytes already received are drained, so the close does
    /// not turn into a reset that would destroy the 503 before the client reads it.
    pub fn reject_busy(&self, mut conn: Conn) {
        let _ = conn.set_write_timeout(Some(Duration::from_millis(100)));
        let now = date::unix_seconds(SystemTime::now());
        let head = response::Head::new(503, &date::format(now))
            .header("Retry-After", 1)
            .header("Content-Length", 0)
            .finish(response::Connection::Close);
        if let Err(e) = conn.write_all(&head) {
            log::debug!("{}: 503 not delivered: {e}", conn.peer());
        }
        // Counted by the daemon (connections_rejected); a flood must not flood the log too.
        log::debug!("{}: refused, HTTP connection limit reached", conn.peer());
        close_after_answer(conn);
    }
}

/// Closes a connection after a one-segment answer without blocking: FIN first, then only the
/// bytes already received are drained, so the close does not turn into a reset that would
/// destroy the answer before the client reads it.
fn close_after_answer(mut conn: Conn) {
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let nonblocking = match &conn {
        Conn::Tcp(s) => s.set_nonblocking(true),
        Conn::Unix(s) => s.set_nonblocking(true),
    };
    if nonblocking.is_ok() {
        let mut scratch = [0u8; 2048];
        for _ in 0..8 {
            match conn.read(&mut scratch) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    }
}
