//! Reading request heads: the receive buffer (allocated while requests keep coming, released
//! when idle), the header and idle deadlines, and the sniffing of a TLS ClientHello on a
//! plaintext connection.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use super::Connection;
use crate::http::request::{self, HeadError, MAX_HEAD_BYTES, Request};
use crate::serving::is_disconnect;
use crate::tls::sniff::{Hello, classify};

/// First size of the receive buffer; most request heads are a few hundred bytes.
const INITIAL_INBUF: usize = 4096;

/// What the wait for the next request produced.
pub(super) enum Next {
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

impl Connection<'_> {
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
    pub(super) fn next_request(&mut self) -> io::Result<Next> {
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
            if self.end == self.start && !self.inbuf.is_empty() {
                // Between requests of a busy connection (a cold one waits in poll above).
                self.watch();
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

    /// Polls the socket for the next request for a few microseconds before the thread blocks
    /// in `read` (`serving::watch`, where the measurements are).
    fn watch(&self) {
        crate::serving::watch::watch(|| self.conn.wait_readable(Duration::ZERO).unwrap_or(true));
    }

    /// Waits up to `wait` for the socket to become readable (or closed).
    fn wait_readable(&self, wait: Duration) -> io::Result<bool> {
        self.conn.wait_readable(wait)
    }
}
