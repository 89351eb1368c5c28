//! One HTTP connection (RFC 9112): reads request heads within the header and idle timeouts,
//! answers them in order (keep-alive and pipelining), streams bodies through one reusable
//! buffer, and closes on anything that would leave the stream out of step.
//!
//! Memory: the receive buffer (4 KiB, grown up to [`MAX_HEAD_BYTES`] for a large head) and
//! the body buffer (at most [`body::MAX_CHUNK`], sized to the response, drawn from the
//! response budget) are kept while requests keep coming and released once the connection has
//! been idle for [`IDLE_GRACE`]; an idle connection then waits in `poll` holding only its
//! thread's stack. A client that stops reading gives the body buffer back within a stall tick
//! (`body`).
//!
//! Timeouts: SO_RCVTIMEO is set once to a short tick; a read that times out re-checks the
//! deadlines (header deadline from the first byte of a head, idle deadline from the end of the
//! previous response). SO_SNDTIMEO is the stall tick of the send timeout: a client that reads
//! nothing of a response for `send_timeout` is closed, whatever the idle timeout.
//!
//! TLS: the connection is a [`Transport`], plaintext or TLS after its handshake (`tls`); the
//! TLS halves keep the same timeout semantics on a non-blocking socket. A TLS ClientHello on a
//! plaintext connection is answered with a TLS alert and closed (`tls::sniff`).
//!
//! Files by role: this file owns the connection's state, its request loop, socket setup, I/O
//! error logging and the lingering close; `read` reads request heads, `answer` decides and
//! sends responses (and maps store errors), `access_log` writes the per-request log line.
//!
//! [`MAX_HEAD_BYTES`]: super::request::MAX_HEAD_BYTES
//! [`body::MAX_CHUNK`]: super::body::MAX_CHUNK

use std::io::{self, IoSlice, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{HttpService, date};
use crate::serving::conn::{stall_tick, write_all_timed};
use crate::serving::is_disconnect;
use crate::serving::{Buffer, Catalog, ProtoMetrics, RateLog};
use crate::tls::Transport;
use crate::tls::sniff::ALERT_HANDSHAKE_FAILURE;
use read::Next;

mod access_log;
mod answer;
mod read;

/// How long a connection keeps its buffers after a response while waiting for the next
/// request (keep-alive clients usually come back within milliseconds).
pub const IDLE_GRACE: Duration = Duration::from_secs(1);
/// After an error response, bytes of request data read and discarded before closing, so the
/// close does not become a reset that destroys the response in flight (RFC 9112 §9.6).
const LINGER_BYTES: u64 = 8 << 20;
/// Longest time spent discarding after an error response.
const LINGER_TIME: Duration = Duration::from_secs(2);

/// The state of one connection.
pub(super) struct Connection<'a> {
    svc: &'a HttpService,
    catalog: Arc<Catalog>,
    conn: Transport,
    peer: String,
    /// Received bytes; `inbuf[start..end]` is not yet consumed. Empty (no allocation) while
    /// the connection is cold.
    inbuf: Vec<u8>,
    start: usize,
    end: usize,
    /// The body buffer, sized to the largest chunk sent since the connection was last cold.
    body: Buffer<'a>,
    /// The SO_RCVTIMEO in effect.
    tick: Duration,
    /// When the connection was accepted, until its first request arrives.
    accepted: Option<Instant>,
    /// The last `Date` value and its second: a keep-alive client sends many requests a second.
    date: (i64, Arc<str>),
    /// Request heads read so far.
    served: u64,
}

impl<'a> Connection<'a> {
    /// Takes over an accepted connection.
    pub fn new(svc: &'a HttpService, conn: Transport, peer: String) -> Connection<'a> {
        let s = &svc.settings;
        let tick = IDLE_GRACE
            .min(s.header_timeout)
            .min(s.idle_timeout)
            .max(Duration::from_millis(1));
        Connection {
            svc,
            catalog: svc.catalog.load(),
            conn,
            peer,
            inbuf: Vec::new(),
            start: 0,
            end: 0,
            body: Buffer::new(),
            tick,
            accepted: Some(Instant::now()),
            served: 0,
            date: (i64::MIN, Arc::from("")),
        }
    }

    /// The IMF-fixdate of `now`, formatted once per second.
    fn date(&mut self, now: i64) -> Arc<str> {
        if self.date.0 != now {
            self.date = (now, Arc::from(date::format(now)));
        }
        Arc::clone(&self.date.1)
    }

    /// Serves requests until the connection closes; a TLS connection then sends close_notify.
    pub fn run(mut self) {
        self.serve();
        self.conn.close();
    }

    fn serve(&mut self) {
        if let Err(e) = self.setup() {
            log::debug!("{}: cannot set socket options: {e}", self.peer);
            return;
        }
        loop {
            let next = match self.next_request() {
                Ok(n) => n,
                Err(e) => {
                    self.io_error("reading a request", &e);
                    return;
                }
            };
            // A graceful stop: the response in flight has gone out; take no new request.
            if self.svc.draining.is_set() {
                log::debug!("{}: shutting down, connection closed", self.peer);
                // FIN first, then discard what the client sent: a close with unread data
                // would be a reset, which can destroy the response it is still reading.
                self.linger_close();
                return;
            }
            let started = Instant::now();
            let result = match next {
                Next::Closed => return,
                Next::TlsHello => {
                    ProtoMetrics::add(&self.svc.metrics.http.protocol_errors, 1);
                    log::debug!(
                        "{}: TLS ClientHello on a plaintext HTTP port; closed with an alert",
                        self.peer
                    );
                    let _ = self.write_small(&[&ALERT_HANDSHAKE_FAILURE]);
                    self.linger_close();
                    return;
                }
                Next::Request(req) => self.answer(&req, started),
                Next::Bad(e) => {
                    log::debug!("{}: {e}", self.peer);
                    self.refuse(e.status(), "-", started)
                }
                Next::HeadTimeout => {
                    log::debug!(
                        "{}: request head not received within the header timeout",
                        self.peer
                    );
                    self.refuse(408, "-", started)
                }
            };
            match result {
                Ok(true) => {}
                Ok(false) => {
                    self.linger_close();
                    return;
                }
                Err(e) => {
                    self.io_error("sending a response", &e);
                    return;
                }
            }
        }
    }

    fn setup(&mut self) -> io::Result<()> {
        // A plaintext socket goes back to blocking mode here: an accept loop that polls a
        // non-blocking listener must not hand over a non-blocking connection by accident.
        self.conn
            .setup(self.tick, stall_tick(self.svc.settings.send_timeout))
    }

    /// Writes small bytes (a head, an in-memory body) within the send timeout.
    fn write_small(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        write_all_timed(&mut self.conn, &mut slices, self.svc.settings.send_timeout)
    }

    fn io_error(&self, what: &str, e: &io::Error) {
        let m = &self.svc.metrics.http;
        if is_disconnect(e) {
            log::debug!("{}: client went away while {what}: {e}", self.peer);
        } else if self.conn.is_tls() && e.kind() == io::ErrorKind::InvalidData {
            // A TLS protocol error is the client's (an alert it sent, a bad record): like a
            // malformed request, it is logged at debug level only.
            log::debug!(
                "{}: TLS error while {what}: {e}; connection closed",
                self.peer
            );
        } else if what == "sending a response" && e.kind() == io::ErrorKind::TimedOut {
            ProtoMetrics::add(&m.send_timeouts, 1);
            if let Some(n) = m.send_timeout_log.ready() {
                log::info!(
                    "{}: HTTP connection closed: {e} ([limits] send_timeout){}",
                    self.peer,
                    RateLog::suffix(n)
                );
            }
        } else if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            log::info!("{}: timed out while {what}; connection closed", self.peer);
        } else {
            log::warn!("{}: error while {what}: {e}; connection closed", self.peer);
        }
    }

    /// Closes after an error response: stops sending, then reads and discards what the
    /// client is still sending (bounded in bytes and time, never stored), so the kernel sends
    /// FIN rather than RST and the client gets to read the response.
    fn linger_close(&mut self) {
        self.conn.shutdown_write();
        let deadline = Instant::now() + LINGER_TIME;
        let mut scratch = [0u8; 4096];
        let mut drained = 0u64;
        while drained < LINGER_BYTES && Instant::now() < deadline {
            match self.conn.read(&mut scratch) {
                Ok(0) => break,
                Ok(n) => drained += n as u64,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => break,
            }
        }
    }
}
