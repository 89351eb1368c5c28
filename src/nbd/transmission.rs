//! The transmission phase (nbd.md §3, §4): request validation (pure, [`validate`]), dispatch,
//! and the concurrent request loop of one connection.
//!
//! Threads of one connection: the connection thread reads and validates requests; READ,
//! BLOCK_STATUS and CACHE go to up to [`MAX_HANDLERS`] handler threads (spawned on demand), which
//! call the store and reply out of order; everything else is answered by the reader at once. Replies go
//! through one [`ReplyWriter`], which writes each reply whole (see `reply.rs`).
//! A READ is read completely before its header is sent (nbd.md §8 pitfall 9). Memory is bounded
//! by [`BYTES_IN_FLIGHT`]: the reader waits before dispatching a READ that would exceed it.

use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};

use super::handshake::{BLOCK_SIZE_MAX, Session};
use super::proto::*;
use super::reply::{ReplyWriter, Sink};
use crate::daemon::ProtoMetrics;
use crate::daemon::conn::is_disconnect;
use crate::store::ExtentKind;

/// Most handler threads per connection. With reads of a few blocks each, this keeps every
/// decompression worker of a typical machine busy from one connection (nbdcopy keeps 64
/// requests in flight, the kernel up to 128).
pub const MAX_HANDLERS: usize = 16;
/// READ bytes dispatched but not yet replied, per connection. One READ of the maximum size is
/// always admitted when nothing else is in flight.
pub const BYTES_IN_FLIGHT: u64 = 64 * 1024 * 1024;
/// Bytes of request stream buffered by the reader.
const READ_BUFFER: usize = 64 * 1024;
/// Requests queued for handlers beyond those being served.
const JOB_QUEUE: usize = 64;
/// A handler's read buffer is kept between requests up to this size (the kernel's largest usual
/// request is 1.25 MiB; nbdcopy's 256 KiB); larger ones are freed after use.
const RETAINED_BUFFER: usize = 2 * 1024 * 1024;
/// CACHE prefetches at most this much of a request (a prefetch larger than the block cache
/// would only evict itself).
const MAX_PREFETCH: u64 = 32 * 1024 * 1024;
/// BLOCK_STATUS describes at most this much per request (replies may cover less than asked).
const MAX_STATUS_BYTES: u64 = 1 << 30;
/// BLOCK_STATUS sends at most this many extents per reply (nbd.md §4 allows up to 2^20).
const MAX_STATUS_EXTENTS: usize = 65536;

/// A request the server refuses: the NBD error and why (for logs and structured error chunks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// `NBD_E*` value.
    pub error: u32,
    /// What was wrong.
    pub reason: &'static str,
}

const fn refuse(error: u32, reason: &'static str) -> Refusal {
    Refusal { error, reason }
}

/// A valid request, ready to dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Read `length` bytes at `offset` (within the export). `df`: one data chunk, no holes.
    Read { offset: u64, length: u32, df: bool },
    /// Disconnect after in-flight replies.
    Disc,
    /// No-op flush: success.
    Flush,
    /// Warm the cache for `offset..offset+length`.
    Cache { offset: u64, length: u32 },
    /// `base:allocation` extents for `offset..offset+length`.
    BlockStatus {
        offset: u64,
        length: u32,
        req_one: bool,
        context: u32,
    },
}

/// What the export allows: the parts of a [`Session`] validation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Export size.
    pub size: u64,
    /// Structured replies negotiated (DF allowed).
    pub structured: bool,
    /// `base:allocation` context id, when negotiated.
    pub base_allocation: Option<u32>,
}

impl Limits {
    /// The limits of a session.
    pub fn of(s: &Session) -> Limits {
        Limits {
            size: s.size,
            structured: s.structured,
            base_allocation: s.base_allocation,
        }
    }
}

fn in_range(offset: u64, length: u32, size: u64) -> bool {
    offset
        .checked_add(u64::from(length))
        .is_some_and(|end| end <= size)
}

/// Decides every client-visible error before any storage runs (nbd.md §3.2, style.md §3).
/// Write-type commands are refused with EPERM: every export is read-only.
pub fn validate(req: &Request, limits: &Limits) -> Result<Command, Refusal> {
    const BAD_FLAGS: Refusal = refuse(NBD_EINVAL, "command flags not valid for this command");
    const RANGE: Refusal = refuse(NBD_EINVAL, "request extends past the end of the export");
    const READ_ONLY: Refusal = refuse(NBD_EPERM, "the export is read-only");
    let flags = req.flags;
    let only = |allowed: u16| flags & !allowed == 0;
    match req.command {
        NBD_CMD_READ => {
            let allowed = if limits.structured {
                NBD_CMD_FLAG_DF
            } else {
                0
            };
            if !only(allowed) {
                return Err(BAD_FLAGS);
            }
            if req.length > BLOCK_SIZE_MAX {
                return Err(refuse(NBD_EINVAL, "read larger than the 32 MiB maximum"));
            }
            if !in_range(req.offset, req.length, limits.size) {
                return Err(RANGE);
            }
            Ok(Command::Read {
                offset: req.offset,
                length: req.length,
                df: flags & NBD_CMD_FLAG_DF != 0,
            })
        }
        NBD_CMD_DISC => Ok(Command::Disc),
        NBD_CMD_FLUSH => {
            if !only(0) {
                return Err(BAD_FLAGS);
            }
            if req.offset != 0 || req.length != 0 {
                return Err(refuse(NBD_EINVAL, "flush with a non-zero offset or length"));
            }
            Ok(Command::Flush)
        }
        NBD_CMD_WRITE | NBD_CMD_TRIM => {
            if !only(0) {
                return Err(BAD_FLAGS);
            }
            Err(READ_ONLY)
        }
        NBD_CMD_WRITE_ZEROES => {
            // NO_HOLE belongs to this command; FAST_ZERO needs SEND_FAST_ZERO, never offered.
            if !only(NBD_CMD_FLAG_NO_HOLE) {
                return Err(BAD_FLAGS);
            }
            Err(READ_ONLY)
        }
        NBD_CMD_CACHE => {
            if !only(0) {
                return Err(BAD_FLAGS);
            }
            if !in_range(req.offset, req.length, limits.size) {
                return Err(RANGE);
            }
            Ok(Command::Cache {
                offset: req.offset,
                length: req.length,
            })
        }
        NBD_CMD_BLOCK_STATUS => {
            let Some(context) = limits.base_allocation else {
                return Err(refuse(NBD_EINVAL, "no metadata context was negotiated"));
            };
            if !only(NBD_CMD_FLAG_REQ_ONE) {
                return Err(BAD_FLAGS);
            }
            if req.length == 0 {
                return Err(refuse(NBD_EINVAL, "block status of zero bytes"));
            }
            if !in_range(req.offset, req.length, limits.size) {
                return Err(RANGE);
            }
            Ok(Command::BlockStatus {
                offset: req.offset,
                length: req.length,
                req_one: flags & NBD_CMD_FLAG_REQ_ONE != 0,
                context,
            })
        }
        _ => Err(refuse(NBD_EINVAL, "unknown command")),
    }
}

/// A failure of the transmission phase that ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum TransmissionError {
    /// Reading from the client failed, or it hung up inside a request.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The client closed the connection inside a request (header or WRITE payload).
    #[error("connection closed inside a request: {0}")]
    Truncated(String),
    /// A request without the request magic: the stream is out of sync.
    #[error("request header: {0}")]
    Proto(#[from] ProtoError),
}

impl TransmissionError {
    /// True when the client simply went away (logged at debug level).
    pub fn is_disconnect(&self) -> bool {
        matches!(self, TransmissionError::Io(e) if is_disconnect(e))
    }
}

/// How a transmission phase ended normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// NBD_CMD_DISC.
    Disconnect,
    /// EOF at a request boundary (nbd-client killed, libnbd closing): normal.
    Eof,
    /// No request for the idle timeout with nothing in flight.
    Idle,
    /// A reply could not be written (the client went away); nothing more can be said.
    WriterFailed,
}

/// Bytes of READ payload in flight on a connection, with a cap the reader waits on.
#[derive(Debug)]
struct Budget {
    used: Mutex<u64>,
    freed: Condvar,
}

impl Budget {
    fn acquire(&self, n: u64) {
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        while *used > 0 && *used + n > BYTES_IN_FLIGHT {
            used = self
                .freed
                .wait(used)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *used += n;
    }

    fn release(&self, n: u64) {
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        *used = used.saturating_sub(n);
        self.freed.notify_all();
    }
}

/// A request handed to a handler.
#[derive(Debug)]
struct Job {
    cookie: u64,
    command: Command,
}

/// State shared by the reader and the handlers of one connection.
struct Conn<'a, W> {
    session: &'a Session,
    peer: &'a str,
    metrics: &'a ProtoMetrics,
    out: ReplyWriter<W>,
    budget: Budget,
    /// Jobs dispatched and not yet answered.
    in_flight: AtomicUsize,
}

/// Releases a job's budget and in-flight count however the job ends (even by a panic).
struct JobGuard<'c, 'a, W> {
    conn: &'c Conn<'a, W>,
    bytes: u64,
}

impl<W> Drop for JobGuard<'_, '_, W> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.conn.budget.release(self.bytes);
        }
        self.conn.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One request header, or why there is none.
enum Next {
    Request([u8; REQUEST_LEN]),
    Eof,
    /// The read timed out with no byte of a new request received.
    Idle,
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads one request header, telling EOF at a request boundary (clean) from EOF inside it.
fn read_header<R: Read>(r: &mut R) -> Result<Next, TransmissionError> {
    let mut b = [0u8; REQUEST_LEN];
    let mut got = 0;
    while got < REQUEST_LEN {
        match r.read(&mut b[got..]) {
            Ok(0) if got == 0 => return Ok(Next::Eof),
            Ok(0) => {
                return Err(TransmissionError::Truncated(format!(
                    "{got} of {REQUEST_LEN} header bytes received"
                )));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if got == 0 && is_timeout(&e) => return Ok(Next::Idle),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Next::Request(b))
}

/// Reads and discards a refused WRITE's payload so the stream stays in sync (style.md §3). Uses
/// `io::copy`'s small stack buffer: nothing is allocated whatever the length.
fn drain<R: Read>(r: &mut R, len: u32) -> Result<(), TransmissionError> {
    let n = io::copy(&mut r.by_ref().take(u64::from(len)), &mut io::sink())?;
    if n < u64::from(len) {
        return Err(TransmissionError::Truncated(format!(
            "{n} of {len} write payload bytes received"
        )));
    }
    Ok(())
}

/// Serves requests until DISC, EOF, the idle timeout or an error; returns after every reply in
/// flight has been sent. `reader` must time out (if at all) with `WouldBlock`/`TimedOut`.
pub fn serve<R: Read, W: Sink>(
    reader: R,
    writer: W,
    session: &Session,
    metrics: &ProtoMetrics,
    peer: &str,
) -> Result<End, TransmissionError> {
    let conn = Conn {
        session,
        peer,
        metrics,
        out: ReplyWriter::new(writer),
        budget: Budget {
            used: Mutex::new(0),
            freed: Condvar::new(),
        },
        in_flight: AtomicUsize::new(0),
    };
    // Pipelining clients (the kernel, nbdcopy) send requests back to back: read them in
    // batches, not one syscall per 28-byte header.
    let reader = &mut io::BufReader::with_capacity(READ_BUFFER, reader);
    let limits = Limits::of(session);
    let (tx, rx) = crossbeam_channel::bounded::<Job>(JOB_QUEUE);
    let base_name = std::thread::current()
        .name()
        .unwrap_or("nbd-conn")
        .to_string();
    std::thread::scope(|scope| {
        let mut handlers = 0usize;
        let result = loop {
            if conn.out.is_broken() {
                break Ok(End::WriterFailed);
            }
            let raw = match read_header(reader) {
                Ok(Next::Request(b)) => b,
                Ok(Next::Eof) => break Ok(End::Eof),
                Ok(Next::Idle) if conn.in_flight.load(Ordering::Relaxed) > 0 => continue,
                Ok(Next::Idle) => break Ok(End::Idle),
                Err(e) => break Err(e),
            };
            let req = match Request::decode(&raw) {
                Ok(r) => r,
                Err(e) => break Err(e.into()),
            };
            if req.command == NBD_CMD_WRITE {
                if let Err(e) = drain(reader, req.length) {
                    break Err(e);
                }
            }
            let command = match validate(&req, &limits) {
                Ok(c) => c,
                Err(refusal) => {
                    log::debug!(
                        "nbd {peer}: refused command {} at {}+{}: {}",
                        req.command,
                        req.offset,
                        req.length,
                        refusal.reason
                    );
                    conn.refuse(&req, refusal);
                    continue;
                }
            };
            match command {
                Command::Disc => break Ok(End::Disconnect),
                Command::Flush => conn.reply_ok(req.cookie),
                // CACHE goes to a handler too: submitting up to 32 MiB of decodes can wait for
                // room in the pool's queue, which must not stall the reader.
                Command::Read { .. } | Command::BlockStatus { .. } | Command::Cache { .. } => {
                    let bytes = match command {
                        Command::Read { length, .. } => u64::from(length),
                        _ => 0,
                    };
                    conn.budget.acquire(bytes);
                    let outstanding = conn.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                    let job = Job {
                        cookie: req.cookie,
                        command,
                    };
                    // One more handler whenever more jobs are outstanding than there are
                    // handlers. Counting jobs, not idle threads, keeps this right when freshly
                    // spawned threads have not been scheduled yet (a busy machine).
                    if outstanding > handlers && handlers < MAX_HANDLERS {
                        let rx = rx.clone();
                        let conn = &conn;
                        let spawned = std::thread::Builder::new()
                            .name(format!("{base_name}-h{handlers}"))
                            .spawn_scoped(scope, move || conn.handler(&rx));
                        match spawned {
                            Ok(_) => handlers += 1,
                            Err(e) if handlers == 0 => {
                                log::warn!("nbd {peer}: cannot start a handler thread: {e}");
                                conn.run(job, &mut Vec::new());
                                continue;
                            }
                            Err(_) => {}
                        }
                    }
                    // Handlers only stop when `tx` is dropped, so the send cannot fail.
                    let _ = tx.send(job);
                }
            }
        };
        // Closing the queue lets the handlers finish what is queued and exit; the scope joins
        // them, so every reply in flight is sent before the connection closes (nbd.md §8.5).
        drop(tx);
        result
    })
}

impl<W: Sink> Conn<'_, W> {
    fn handler(&self, rx: &crossbeam_channel::Receiver<Job>) {
        let mut buf = Vec::new();
        for job in rx.iter() {
            self.run(job, &mut buf);
            if buf.capacity() > RETAINED_BUFFER {
                buf = Vec::new();
            }
        }
    }

    fn run(&self, job: Job, buf: &mut Vec<u8>) {
        let bytes = match job.command {
            Command::Read { length, .. } => u64::from(length),
            _ => 0,
        };
        let _guard = JobGuard { conn: self, bytes };
        if self.out.is_broken() {
            return;
        }
        match job.command {
            Command::Read { offset, length, df } => self.read(job.cookie, offset, length, df, buf),
            Command::BlockStatus {
                offset,
                length,
                req_one,
                context,
            } => self.block_status(job.cookie, offset, length, req_one, context),
            Command::Cache { offset, length } => self.cache(job.cookie, offset, length),
            Command::Disc | Command::Flush => {}
        }
    }

    fn count(&self) {
        ProtoMetrics::add(&self.metrics.requests_total, 1);
    }

    fn reply_ok(&self, cookie: u64) {
        self.count();
        self.out.send(&[&simple_reply(0, cookie)]);
    }

    /// Sends an error reply: a structured error chunk for READ once structured replies are on
    /// (never a simple reply to READ then, nbd.md §4), a simple reply otherwise.
    fn reply_error(&self, command: u16, cookie: u64, error: u32, message: &str) {
        self.count();
        if self.session.structured && command == NBD_CMD_READ {
            self.out.send(&[&error_chunk(cookie, error, message)]);
        } else {
            self.out.send(&[&simple_reply(error, cookie)]);
        }
    }

    fn refuse(&self, req: &Request, r: Refusal) {
        self.reply_error(req.command, req.cookie, r.error, r.reason);
    }

    fn cache(&self, cookie: u64, offset: u64, length: u32) {
        let s = self.session;
        let len = u64::from(length).min(MAX_PREFETCH);
        match s.snapshot.snapshot.prefetch(s.stream, offset, len) {
            Ok(()) => self.reply_ok(cookie),
            Err(e) => {
                self.read_failed("CACHE", offset, u64::from(length), &e);
                self.reply_error(NBD_CMD_CACHE, cookie, NBD_EIO, "read error");
            }
        }
    }

    /// Logs a store failure (the error names archive, block and offset) and counts it.
    fn read_failed(&self, what: &str, offset: u64, length: u64, e: &crate::store::StoreError) {
        log::warn!(
            "nbd {}: {what} {offset}+{length} of export {:?} failed: {e}",
            self.peer,
            self.session.export_name
        );
        ProtoMetrics::add(&self.metrics.read_errors, 1);
    }

    fn read(&self, cookie: u64, offset: u64, length: u32, df: bool, buf: &mut Vec<u8>) {
        let s = self.session;
        let len = length as usize;
        if len == 0 {
            self.count();
            if s.structured {
                self.out.send(&[&none_chunk(cookie)]);
            } else {
                self.out.send(&[&simple_reply(0, cookie)]);
            }
            return;
        }
        // Zero extents become holes in a structured reply (unless DF); a READ that is all hole
        // needs no data at all.
        let holes = if s.structured && !df {
            s.snapshot
                .snapshot
                .extents(s.stream, offset, u64::from(length))
                .ok()
                .filter(|x| x.iter().any(|e| e.kind == ExtentKind::Zero))
        } else {
            None
        };
        if let Some(x) = &holes {
            if x.len() == 1 {
                self.count();
                self.out.send(&[&offset_hole_chunk(
                    NBD_REPLY_FLAG_DONE,
                    cookie,
                    offset,
                    length,
                )]);
                return;
            }
        }
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let data = &mut buf[..len];
        match s.snapshot.snapshot.read_at(s.stream, offset, data) {
            Ok(n) if n == len => {}
            Ok(n) => {
                // Validation checked the range against the size of an immutable snapshot.
                log::error!(
                    "nbd {}: short read of {n} bytes at {offset}+{len} of export {:?}",
                    self.peer,
                    s.export_name
                );
                self.reply_error(NBD_CMD_READ, cookie, NBD_EIO, "short read");
                return;
            }
            Err(e) => {
                self.read_failed("READ", offset, u64::from(length), &e);
                self.reply_error(
                    NBD_CMD_READ,
                    cookie,
                    NBD_EIO,
                    "the archive data for this range is unreadable or corrupt",
                );
                return;
            }
        }
        self.count();
        let sent = match &holes {
            Some(extents) => self.send_chunks(cookie, offset, data, extents),
            None if s.structured => self.out.send(&[
                &offset_data_header(NBD_REPLY_FLAG_DONE, cookie, offset, length),
                data,
            ]),
            None => self.out.send(&[&simple_reply(0, cookie), data]),
        };
        if sent {
            ProtoMetrics::add(&self.metrics.bytes_sent, u64::from(length));
        }
    }

    /// Sends a READ as OFFSET_DATA and OFFSET_HOLE chunks following `extents`, DONE on the last.
    fn send_chunks(
        &self,
        cookie: u64,
        offset: u64,
        data: &[u8],
        extents: &[crate::store::Extent],
    ) -> bool {
        let mut heads: Vec<[u8; 32]> = Vec::with_capacity(extents.len());
        for (i, e) in extents.iter().enumerate() {
            let flags = if i + 1 == extents.len() {
                NBD_REPLY_FLAG_DONE
            } else {
                0
            };
            // Extents lie inside a READ of at most 32 MiB, so their lengths fit a u32.
            let len = u32::try_from(e.length).unwrap_or(u32::MAX);
            heads.push(match e.kind {
                ExtentKind::Zero => offset_hole_chunk(flags, cookie, e.offset, len),
                ExtentKind::Data => {
                    let mut h = [0u8; 32];
                    h[..28].copy_from_slice(&offset_data_header(flags, cookie, e.offset, len));
                    h
                }
            });
        }
        let mut parts: Vec<&[u8]> = Vec::with_capacity(2 * extents.len());
        for (e, h) in extents.iter().zip(&heads) {
            match e.kind {
                ExtentKind::Zero => parts.push(h),
                ExtentKind::Data => {
                    let start = usize::try_from(e.offset - offset).unwrap_or(usize::MAX);
                    let end = start.saturating_add(usize::try_from(e.length).unwrap_or(0));
                    let Some(slice) = data.get(start..end) else {
                        return false;
                    };
                    parts.push(&h[..28]);
                    parts.push(slice);
                }
            }
        }
        self.out.send(&parts)
    }

    fn block_status(&self, cookie: u64, offset: u64, length: u32, req_one: bool, context: u32) {
        let s = self.session;
        let len = u64::from(length).min(MAX_STATUS_BYTES);
        let extents = match s.snapshot.snapshot.extents(s.stream, offset, len) {
            Ok(x) => x,
            Err(e) => {
                self.read_failed("BLOCK_STATUS", offset, u64::from(length), &e);
                self.reply_error(NBD_CMD_BLOCK_STATUS, cookie, NBD_EIO, "read error");
                return;
            }
        };
        let limit = if req_one { 1 } else { MAX_STATUS_EXTENTS };
        let wire: Vec<WireExtent> = extents
            .iter()
            .take(limit)
            .map(|e| WireExtent {
                // At most MAX_STATUS_BYTES (1 GiB) long.
                length: u32::try_from(e.length).unwrap_or(u32::MAX),
                flags: match e.kind {
                    ExtentKind::Zero => NBD_STATE_HOLE | NBD_STATE_ZERO,
                    ExtentKind::Data => 0,
                },
            })
            .collect();
        if wire.is_empty() {
            // Cannot happen for a validated, non-empty range; stay safe for the client.
            self.reply_error(NBD_CMD_BLOCK_STATUS, cookie, NBD_EINVAL, "empty range");
            return;
        }
        self.count();
        self.out
            .send(&[&block_status_chunk(cookie, context, &wire)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(command: u16, flags: u16, offset: u64, length: u32) -> Request {
        Request {
            flags,
            command,
            cookie: 1,
            offset,
            length,
        }
    }

    const SIMPLE: Limits = Limits {
        size: 1 << 20,
        structured: false,
        base_allocation: None,
    };
    const STRUCTURED: Limits = Limits {
        size: 1 << 20,
        structured: true,
        base_allocation: Some(1),
    };

    fn errno(r: Result<Command, Refusal>) -> u32 {
        r.err().map_or(0, |r| r.error)
    }

    #[test]
    fn read_in_range_is_valid_and_past_the_end_is_einval() {
        assert_eq!(
            validate(&req(NBD_CMD_READ, 0, 0, 4096), &SIMPLE),
            Ok(Command::Read {
                offset: 0,
                length: 4096,
                df: false
            })
        );
        assert!(validate(&req(NBD_CMD_READ, 0, (1 << 20) - 1, 1), &SIMPLE).is_ok());
        assert!(validate(&req(NBD_CMD_READ, 0, 1 << 20, 0), &SIMPLE).is_ok());
        assert_eq!(
            errno(validate(&req(NBD_CMD_READ, 0, 1 << 20, 1), &SIMPLE)),
            NBD_EINVAL
        );
        assert_eq!(
            errno(validate(&req(NBD_CMD_READ, 0, (1 << 20) - 1, 2), &SIMPLE)),
            NBD_EINVAL
        );
        assert_eq!(
            errno(validate(&req(NBD_CMD_READ, 0, u64::MAX, 2), &SIMPLE)),
            NBD_EINVAL
        );
    }

    #[test]
    fn read_over_32_mib_is_einval() {
        let big = Limits {
            size: 1 << 40,
            ..SIMPLE
        };
        assert!(validate(&req(NBD_CMD_READ, 0, 0, 32 << 20), &big).is_ok());
        assert_eq!(
            errno(validate(&req(NBD_CMD_READ, 0, 0, (32 << 20) + 1), &big)),
            NBD_EINVAL
        );
    }

    #[test]
    fn df_only_with_structured_replies() {
        assert_eq!(
            errno(validate(&req(NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 1), &SIMPLE)),
            NBD_EINVAL
        );
        assert_eq!(
            validate(&req(NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 1), &STRUCTURED),
            Ok(Command::Read {
                offset: 0,
                length: 1,
                df: true
            })
        );
        assert_eq!(
            errno(validate(
                &req(NBD_CMD_READ, NBD_CMD_FLAG_FUA, 0, 1),
                &STRUCTURED
            )),
            NBD_EINVAL
        );
    }

    #[test]
    fn writes_are_eperm_and_bad_flags_einval() {
        assert_eq!(
            errno(validate(&req(NBD_CMD_WRITE, 0, 0, 512), &SIMPLE)),
            NBD_EPERM
        );
        assert_eq!(
            errno(validate(&req(NBD_CMD_TRIM, 0, 0, 512), &SIMPLE)),
            NBD_EPERM
        );
        assert_eq!(
            errno(validate(
                &req(NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_NO_HOLE, 0, 512),
                &SIMPLE
            )),
            NBD_EPERM
        );
        assert_eq!(
            errno(validate(
                &req(NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_FAST_ZERO, 0, 512),
                &SIMPLE
            )),
            NBD_EINVAL
        );
        assert_eq!(
            errno(validate(
                &req(NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, 0, 512),
                &SIMPLE
            )),
            NBD_EINVAL
        );
    }

    #[test]
    fn flush_is_a_no_op_only_without_offset_and_length() {
        assert_eq!(
            validate(&req(NBD_CMD_FLUSH, 0, 0, 0), &SIMPLE),
            Ok(Command::Flush)
        );
        assert_eq!(
            errno(validate(&req(NBD_CMD_FLUSH, 0, 1, 0), &SIMPLE)),
            NBD_EINVAL
        );
        assert_eq!(
            errno(validate(&req(NBD_CMD_FLUSH, 0, 0, 1), &SIMPLE)),
            NBD_EINVAL
        );
    }

    #[test]
    fn cache_in_range_only() {
        assert!(validate(&req(NBD_CMD_CACHE, 0, 0, 1 << 20), &SIMPLE).is_ok());
        assert_eq!(
            errno(validate(&req(NBD_CMD_CACHE, 0, 1, 1 << 20), &SIMPLE)),
            NBD_EINVAL
        );
    }

    #[test]
    fn block_status_needs_a_negotiated_context() {
        assert_eq!(
            errno(validate(&req(NBD_CMD_BLOCK_STATUS, 0, 0, 512), &SIMPLE)),
            NBD_EINVAL
        );
        assert_eq!(
            validate(
                &req(NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_REQ_ONE, 0, 512),
                &STRUCTURED
            ),
            Ok(Command::BlockStatus {
                offset: 0,
                length: 512,
                req_one: true,
                context: 1
            })
        );
        assert_eq!(
            errno(validate(&req(NBD_CMD_BLOCK_STATUS, 0, 0, 0), &STRUCTURED)),
            NBD_EINVAL
        );
        assert_eq!(
            errno(validate(
                &req(NBD_CMD_BLOCK_STATUS, 0, 1 << 20, 1),
                &STRUCTURED
            )),
            NBD_EINVAL
        );
    }

    #[test]
    fn unknown_commands_are_einval_and_disc_is_accepted() {
        assert_eq!(
            errno(validate(&req(NBD_CMD_RESIZE, 0, 0, 0), &SIMPLE)),
            NBD_EINVAL
        );
        assert_eq!(errno(validate(&req(77, 0, 0, 0), &SIMPLE)), NBD_EINVAL);
        assert_eq!(
            validate(&req(NBD_CMD_DISC, 0, 0, 0), &SIMPLE),
            Ok(Command::Disc)
        );
    }
}
