//! Answering a request: framing checks, the handler's decision, and sending it (small bodies
//! at once, stream bodies through `body`), with the one mapping of store errors to what the
//! client sees (500 before the head, a closed connection after it).

use std::io;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use super::Connection;
use crate::format::Stream;
use crate::http::body::{self, SendError};
use crate::http::date;
use crate::http::handler::{self, Body, Response};
use crate::http::request::{Body as RequestBody, Expect, Request};
use crate::http::response::{Connection as ConnHeader, Plan};
use crate::serving::ProtoMetrics;
use crate::store::{Segment, Snapshot, StoreError};

/// How a response went out.
struct Sent {
    /// Body bytes written.
    body: u64,
    /// False when the connection must close after this response.
    keep_alive: bool,
}

impl Connection<'_> {
    /// Answers a refused head (or a header timeout) and says the connection must close.
    pub(super) fn refuse(
        &mut self,
        status: u16,
        target: &str,
        started: Instant,
    ) -> io::Result<bool> {
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
    pub(super) fn answer(&mut self, req: &Request, started: Instant) -> io::Result<bool> {
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
        let mut cached = |off: u64, len: usize, out: &mut Vec<Segment>| {
            snapshot.read_cached(stream, off, len, out)
        };
        let sending = body::Sending {
            budget: &self.svc.metrics.budget,
            buf: &mut self.body,
            send_timeout: self.svc.settings.send_timeout,
            cached: if snapshot.engine().config().cache_bytes > 0 {
                Some(&mut cached)
            } else {
                None
            },
        };
        let sent = body::send(&mut self.conn, sending, head, plan, &mut read, prefetch)?;
        self.count_bytes(sent);
        Ok(sent)
    }
}
