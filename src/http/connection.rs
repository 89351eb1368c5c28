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

use std::io::{self, IoSlice, Read};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use super::body::{self, SendError};
use super::handler::{self, Body, Response};
use super::request::{self, Body as RequestBody, Expect, HeadError, MAX_HEAD_BYTES, Request};
use super::response::{Connection as ConnHeader, Plan, push_decimal};
use super::{HttpService, date};
use crate::format::Stream;
use crate::serving::conn::{stall_tick, write_all_timed};
use crate::serving::is_disconnect;
use crate::serving::{Buffer, Catalog, ProtoMetrics, RateLog};
use crate::store::{Snapshot, StoreError};
use crate::tls::Transport;
use crate::tls::sniff::{ALERT_HANDSHAKE_FAILURE, Hello, classify};

/// First size of the receive buffer; most request heads are a few hundred bytes.
const INITIAL_INBUF: usize = 4096;
/// How long a connection keeps its buffers after a response while waiting for the next
/// request (keep-alive clients usually come back within milliseconds).
pub const IDLE_GRACE: Duration = Duration::from_secs(1);
/// After an error response, bytes of request data read and discarded before closing, so the
/// close does not become a reset that destroys the response in flight (RFC 9112 §9.6).
const LINGER_BYTES: u64 = 8 << 20;
/// Longest time spent discarding after an error response.
const LINGER_TIME: Duration = Duration::from_secs(2);

/// What the wait for the next request produced.
enum Next {
    /// A complete head (boxed: it is much larger than the other variants).
    Request(Box<Request>),
    /// A head hexzd refuses.
    Bad(HeadError),
    /// The head did not arrive within the header timeout.
    HeadTimeout,
    /// The client closed, or the idle timeout expired between requests.
    Closed,
    /// A TLS ClientHello arrived on a plaintext connection.
    TlsHello,
}

/// How a response went out.
struct Sent {
    /// Body bytes written.
    body: u64,
    /// False when the connection must close after this response.
    keep_alive: bool,
}

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

    // ---- reading -------------------------------------------------------------------------

    /// Allocates the receive buffer if the connection was cold, and grows a full one (up to
    /// [`MAX_HEAD_BYTES`]; a full buffer of that size has already been refused by the parser).
    fn warm(&mut self) {
        if self.inbuf.is_empty() {
            self.inbuf = vec![0; INITIAL_INBUF];
        } else if self.end == self.inbuf.len() && self.inbuf.len() < MAX_HEAD_BYTES {
            self.inbuf
                .resize((self.inbuf.len() * 2).min(MAX_HEAD_BYTES), 0);
        }
    }

    /// Releases both buffers (nothing is pending in them).
    fn cool(&mut self) {
        debug_assert_eq!(self.start, self.end);
        self.inbuf = Vec::new();
        self.body.release();
        self.start = 0;
        self.end = 0;
    }

    /// Waits for and parses the next request head.
    fn next_request(&mut self) -> io::Result<Next> {
        let settings = &self.svc.settings;
        // A new connection owes its first head within the header timeout of being accepted
        // (a client that connects and sends nothing is a slow client, not an idle one);
        // between requests the idle timeout applies until the next head starts.
        let (idle_deadline, mut head_deadline) = match self.accepted.take() {
            Some(at) => (
                at + settings.header_timeout,
                Some(at + settings.header_timeout),
            ),
            None => (Instant::now() + settings.idle_timeout, None),
        };
        loop {
            if self.end > self.start {
                let now = Instant::now();
                let deadline = *head_deadline.get_or_insert(now + settings.header_timeout);
                match request::parse(&self.inbuf[self.start..self.end]) {
                    Ok(Some((req, used))) => {
                        self.start += used;
                        if self.start == self.end {
                            self.start = 0;
                            self.end = 0;
                        }
                        self.served += 1;
                        return Ok(Next::Request(Box::new(req)));
                    }
                    Ok(None) => {}
                    Err(_)
                        if self.served == 0
                            && !self.conn.is_tls()
                            && classify(&self.inbuf[self.start..self.end]) == Hello::Tls =>
                    {
                        return Ok(Next::TlsHello);
                    }
                    Err(e) => return Ok(Next::Bad(e)),
                }
                if now >= deadline {
                    return Ok(Next::HeadTimeout);
                }
                // Make room at the end: a partial head moves to the front.
                if self.start > 0 {
                    self.inbuf.copy_within(self.start..self.end, 0);
                    self.end -= self.start;
                    self.start = 0;
                }
            } else if Instant::now() >= idle_deadline {
                return Ok(Next::Closed);
            }
            if self.inbuf.is_empty() {
                // Cold: wait in poll without buffers.
                let wait = idle_deadline.saturating_duration_since(Instant::now());
                if !self.wait_readable(wait)? {
                    return Ok(Next::Closed);
                }
            }
            self.warm();
            match self.conn.read(&mut self.inbuf[self.end..]) {
                Ok(0) => {
                    if self.end > self.start {
                        log::debug!(
                            "{}: client closed in the middle of a request head",
                            self.peer
                        );
                    }
                    return Ok(Next::Closed);
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.end == self.start {
                        // A full tick with nothing: this connection is idle, not busy.
                        self.cool();
                    }
                }
                Err(e) if is_disconnect(&e) => return Ok(Next::Closed),
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits up to `wait` for the socket to become readable (or closed).
    fn wait_readable(&self, wait: Duration) -> io::Result<bool> {
        self.conn.wait_readable(wait)
    }

    // ---- answering -----------------------------------------------------------------------

    /// Answers a refused head (or a header timeout) and says the connection must close.
    fn refuse(&mut self, status: u16, target: &str, started: Instant) -> io::Result<bool> {
        ProtoMetrics::add(&self.svc.metrics.http.protocol_errors, 1);
        let now = date::unix_seconds(SystemTime::now());
        let r = Response::empty(status, &date::format(now));
        let head = r.head.finish(ConnHeader::Close);
        let result = self.write_small(&[&head]);
        self.log_access("-", target, None, status, 0, started);
        ProtoMetrics::add(&self.svc.metrics.http.requests_total, 1);
        result.map(|()| false)
    }

    /// Validates the framing of `req`, decides its answer and sends it. Returns whether the
    /// connection stays open.
    fn answer(&mut self, req: &Request, started: Instant) -> io::Result<bool> {
        // RFC 9112 §3.2: exactly one Host in HTTP/1.1, at most one in 1.0.
        let framing_error = if req.hosts > 1 || (req.minor_version >= 1 && req.hosts == 0) {
            Some(400)
        } else {
            match req.body {
                RequestBody::None => None,
                RequestBody::Invalid => Some(400),
                // Bodies are refused unread; with `Expect: 100-continue` the client has not
                // sent it yet and will not, as no 100 is sent.
                RequestBody::Length(_) | RequestBody::Encoded => Some(413),
            }
        };
        if let Some(status) = framing_error {
            return self.refuse(status, &req.target, started);
        }
        let now = date::unix_seconds(SystemTime::now());
        let date = self.date(now);
        let response = if req.expect == Expect::Other {
            Response::empty(417, &date)
        } else {
            handler::respond(self.svc, &self.catalog, req, now, &date)
        };
        let keep_alive = req.wants_keep_alive();
        let conn_header = match (keep_alive, req.minor_version) {
            (false, _) => ConnHeader::Close,
            (true, 0) => ConnHeader::KeepAlive10,
            (true, _) => ConnHeader::KeepAlive,
        };
        let (status, sent) = self.send(response, conn_header, req.range())?;
        self.log_access(
            &req.method_name,
            &req.target,
            req.range(),
            status,
            sent.body,
            started,
        );
        ProtoMetrics::add(&self.svc.metrics.http.requests_total, 1);
        Ok(keep_alive && sent.keep_alive)
    }

    /// Sends a decided response; returns the status actually sent and how.
    fn send(
        &mut self,
        response: Response,
        conn_header: ConnHeader,
        range: Option<&[u8]>,
    ) -> io::Result<(u16, Sent)> {
        let Response { status, head, body } = response;
        match body {
            Body::None => {
                self.write_small(&[&head.finish(conn_header)])?;
                Ok((
                    status,
                    Sent {
                        body: 0,
                        keep_alive: true,
                    },
                ))
            }
            Body::Bytes(b) => {
                let head = head.finish(conn_header);
                self.write_small(&[&head, &b])?;
                self.count_bytes(b.len() as u64);
                Ok((
                    status,
                    Sent {
                        body: b.len() as u64,
                        keep_alive: true,
                    },
                ))
            }
            Body::Stream {
                snapshot,
                stream,
                plan,
            } => {
                let head = head.finish(conn_header);
                match self.stream_body(head, &snapshot, stream, &plan) {
                    Ok(n) => Ok((
                        status,
                        Sent {
                            body: n,
                            keep_alive: true,
                        },
                    )),
                    Err(SendError::Io(e)) => Err(e),
                    Err(SendError::Early(e)) => {
                        self.store_error(&snapshot, &e, range);
                        let now = date::unix_seconds(SystemTime::now());
                        let head = Response::empty(500, &date::format(now))
                            .head
                            .finish(conn_header);
                        self.write_small(&[&head])?;
                        Ok((
                            500,
                            Sent {
                                body: 0,
                                keep_alive: true,
                            },
                        ))
                    }
                    Err(SendError::Busy) => {
                        // Every response buffer stayed in use for the whole send timeout:
                        // busy, like the connection cap (the budget logged it).
                        let now = date::unix_seconds(SystemTime::now());
                        let head = Response::empty(503, &date::format(now))
                            .head
                            .header("Retry-After", 1)
                            .finish(conn_header);
                        self.write_small(&[&head])?;
                        Ok((
                            503,
                            Sent {
                                body: 0,
                                keep_alive: true,
                            },
                        ))
                    }
                    Err(SendError::Late(e)) => {
                        self.store_error(&snapshot, &e, range);
                        // Never a short body on a kept-alive connection (http.md §5).
                        Ok((
                            status,
                            Sent {
                                body: 0,
                                keep_alive: false,
                            },
                        ))
                    }
                }
            }
        }
    }

    fn count_bytes(&self, n: u64) {
        ProtoMetrics::add(&self.svc.metrics.http.bytes_sent, n);
    }

    /// Logs and counts a storage failure (the one mapping of store errors for HTTP: 500 before
    /// the head, a closed connection after it).
    fn store_error(&self, snapshot: &Snapshot, e: &StoreError, range: Option<&[u8]>) {
        ProtoMetrics::add(&self.svc.metrics.http.read_errors, 1);
        let range = range.map(String::from_utf8_lossy).unwrap_or_default();
        if e.is_corruption() {
            self.svc.corrupt_blocks.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "{}: corrupt block not served (Range {range:?}): {e}",
                self.peer
            );
        } else {
            log::error!(
                "{}: read of {} failed (Range {range:?}): {e}",
                self.peer,
                snapshot.path().display()
            );
        }
    }

    /// Produces `plan` from `snapshot` through the connection's body buffer and writes it
    /// after `head` (see [`body::send`]).
    fn stream_body(
        &mut self,
        head: Vec<u8>,
        snapshot: &Snapshot,
        stream: Stream,
        plan: &Plan,
    ) -> Result<u64, SendError> {
        let mut read = |off: u64, dst: &mut [u8]| match snapshot.read_at(stream, off, dst) {
            Ok(n) if n == dst.len() => Ok(()),
            Ok(n) => Err(StoreError::Corrupt {
                path: snapshot.path().to_path_buf(),
                detail: format!(
                    "{stream} stream: read at offset {off} returned {n} of {} bytes",
                    dst.len()
                ),
            }),
            Err(e) => Err(e),
        };
        // Decoding the next chunk on the pool while this one is written only pays when the
        // decoded blocks are kept for the read that follows.
        let mut prefetch = |off: u64, len: u64| {
            let _ = snapshot.prefetch(stream, off, len);
        };
        let prefetch: Option<&mut dyn FnMut(u64, u64)> =
            if snapshot.engine().config().cache_bytes > 0 {
                Some(&mut prefetch)
            } else {
                None
            };
        let sending = body::Sending {
            budget: &self.svc.metrics.budget,
            buf: &mut self.body,
            send_timeout: self.svc.settings.send_timeout,
        };
        let sent = body::send(&mut self.conn, sending, head, plan, &mut read, prefetch)?;
        self.count_bytes(sent);
        Ok(sent)
    }

    fn log_access(
        &self,
        method: &str,
        target: &str,
        range: Option<&[u8]>,
        status: u16,
        bytes: u64,
        started: Instant,
    ) {
        if !log::log_enabled!(log::Level::Info) {
            return;
        }
        let range = range.map(String::from_utf8_lossy);
        let range = range.as_deref().unwrap_or("-");
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        // Built by hand rather than with `format!` arguments: one line per request.
        let mut line = String::with_capacity(128);
        line.push_str(&self.peer);
        line.push_str(" \"");
        push_printable(&mut line, method);
        line.push(' ');
        push_printable(&mut line, target);
        line.push_str("\" range=");
        push_printable(&mut line, range);
        line.push(' ');
        push_decimal(&mut line, u64::from(status));
        line.push(' ');
        push_decimal(&mut line, bytes);
        line.push(' ');
        push_decimal(&mut line, micros / 1000);
        line.push('.');
        let ms_frac = micros % 1000;
        if ms_frac < 100 {
            line.push('0');
        }
        if ms_frac < 10 {
            line.push('0');
        }
        push_decimal(&mut line, ms_frac);
        line.push_str("ms");
        log::info!("{line}");
    }

    // ---- closing -------------------------------------------------------------------------

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

/// Appends `s` with its control characters escaped, for a log line a client cannot forge.
fn push_printable(out: &mut String, s: &str) {
    // Printable ASCII (what clients send) needs no look at each char.
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) || !s.chars().any(char::is_control) {
        out.push_str(s);
        return;
    }
    out.extend(s.chars().flat_map(char::escape_default));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_fields_are_escaped() {
        let shown = |s: &str| {
            let mut out = String::new();
            push_printable(&mut out, s);
            out
        };
        assert_eq!(shown("/disk"), "/disk");
        assert_eq!(shown("a\nb"), "a\\nb");
        assert_eq!(shown("caf\u{e9} \u{85}"), "caf\\u{e9} \\u{85}");
        assert_eq!(shown("caf\u{e9}"), "caf\u{e9}");
    }
}
