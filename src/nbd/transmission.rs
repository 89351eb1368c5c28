//! The transmission phase (nbd.md §3, §4): request validation (pure, [`validate`]), dispatch,
//! and the concurrent request loop of one connection.
//!
//! Threads of one connection: the connection thread reads and validates requests; READ,
//! BLOCK_STATUS and CACHE go to up to [`MAX_HANDLERS`] handler threads (spawned on demand), which
//! call the store and reply out of order (`execute.rs`); everything else is answered by the
//! reader at once, and so is a READ of at most 256 KiB whose blocks are all cached (or that
//! is all hole): handing it over would cost more than answering it (`Conn::try_inline`). Replies go through one `ReplyWriter`, which writes each reply whole
//! (`reply.rs`). A READ is read completely before its header is sent (nbd.md §8 pitfall 9).
//! Memory: the reader waits before dispatching a READ that would put more than
//! [`BYTES_IN_FLIGHT`] in flight on the connection; READ buffers come from the process's
//! response budget (`execute.rs`), and idle handlers give theirs back and exit.

use std::io::{self, Read};
use std::sync::atomic::Ordering;

use super::execute::{Conn, Job};
pub use super::execute::{HANDLER_IDLE, KEEP_HANDLERS, RETAINED_BUFFER, Shared};
use super::handshake::{BLOCK_SIZE_MAX, Session};
use super::proto::*;
use super::reply::Sink;
use crate::serving::watch::{ReadableNow, watch};
use crate::serving::{Buffer, is_disconnect};

/// Most handler threads per connection. With reads of a few blocks each, this keeps every
/// decompression worker of a typical machine busy from one connection (nbdcopy keeps 64
/// requests in flight, the kernel up to 128).
pub const MAX_HANDLERS: usize = 16;
pub use super::execute::BYTES_IN_FLIGHT;
/// Bytes of request stream buffered by the reader.
const READ_BUFFER: usize = 64 * 1024;
/// Requests queued for handlers beyond those being served.
const JOB_QUEUE: usize = 64;

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
    /// The client read nothing of a reply for the send timeout: closed.
    SendTimeout,
    /// The daemon is stopping: no new request was read; the ones in flight were answered.
    Draining,
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

/// Serves requests until DISC, EOF, the idle timeout, `draining` or an error; returns after
/// every reply in flight has been sent. `reader` must time out (if at all) with
/// `WouldBlock`/`TimedOut`.
pub fn serve<R: Read + ReadableNow, W: Sink>(
    reader: R,
    writer: W,
    session: &Session,
    shared: Shared<'_>,
    peer: &str,
) -> Result<End, TransmissionError> {
    let draining = shared.draining;
    let conn = Conn::new(session, peer, shared, writer);
    // Pipelining clients (the kernel, nbdcopy) send requests back to back: read them in
    // batches, not one syscall per 28-byte header.
    let reader = &mut io::BufReader::with_capacity(READ_BUFFER, reader);
    let limits = Limits::of(session);
    let (tx, rx) = crossbeam_channel::bounded::<Job>(JOB_QUEUE);
    let base_name = std::thread::current()
        .name()
        .unwrap_or("nbd-conn")
        .to_string();
    let result = std::thread::scope(|scope| {
        let mut spawned_total = 0usize;
        // The reader's own buffer, for a cached READ it answers itself whose reply stalls and
        // whose blocks leave the cache meanwhile (`Conn::try_inline`).
        let mut inline_buf = Buffer::new();
        let result = loop {
            if conn.out.is_broken() {
                break Ok(End::WriterFailed);
            }
            // A graceful stop: read no new request (requests already buffered included).
            if draining.is_set() {
                break Ok(End::Draining);
            }
            // Nothing buffered: poll for the client's next request a little before blocking
            // (`serving::watch`). With READs from the cache answered here rather than by a
            // handler, this is what spares queue depth 1 a wake-up per request: fio, 4 KiB
            // random reads from the cache, interleaved runs (2026-11-29): 16.4-17.5 k IOPS,
            // p99 65-71 us without; 38.7-40.4 k, p99 42-45 us with. Not while handlers
            // still work on this connection's requests: a client waiting for those replies
            // sends nothing meanwhile, and the poll would only take a core from the handlers.
            if reader.buffer().is_empty() && conn.in_flight.load(Ordering::Relaxed) == 0 {
                let sock = reader.get_ref();
                watch(|| sock.readable_now());
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
                    conn.dispatched.acquire(bytes);
                    let outstanding = conn.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                    let job = Job {
                        cookie: req.cookie,
                        command,
                        tried: None,
                    };
                    let Some(job) = conn.try_inline(job, &mut inline_buf) else {
                        continue;
                    };
                    // One more handler whenever more jobs are outstanding than there are
                    // handlers. Counting jobs, not idle threads, keeps this right when freshly
                    // spawned threads have not been scheduled yet (a busy machine). Idle
                    // handlers beyond the first exit by themselves (`Conn::handler`).
                    let handlers = conn.handlers.load(Ordering::Acquire);
                    if outstanding > handlers && handlers < MAX_HANDLERS {
                        let rx = rx.clone();
                        let conn = &conn;
                        conn.handlers.fetch_add(1, Ordering::AcqRel);
                        let spawned = std::thread::Builder::new()
                            .name(format!("{base_name}-h{spawned_total}"))
                            .spawn_scoped(scope, move || conn.handler(&rx));
                        spawned_total += 1;
                        if let Err(e) = spawned {
                            conn.handlers.fetch_sub(1, Ordering::AcqRel);
                            if handlers == 0 {
                                log::warn!("nbd {peer}: cannot start a handler thread: {e}");
                                conn.run(job, &mut Buffer::new());
                                continue;
                            }
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
    });
    if conn.out.timed_out() {
        return Ok(End::SendTimeout);
    }
    result
}

#[cfg(test)]
mod tests;
