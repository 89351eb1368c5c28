//! Running valid requests against the store and sending their replies: the per-connection
//! state the reader and the handler threads share ([`Conn`]), BLOCK_STATUS, CACHE, and the one
//! mapping from a failure to an NBD error. READ is in `execute/read.rs`. A READ that needs no
//! decoding (all cached, or all hole; at most [`INLINE_READ`]) is answered by the reader
//! itself ([`Conn::try_inline`]); handlers take the rest.
//!
//! Every request reaching this file has passed `transmission::validate`; store calls here can
//! only fail for reasons of the archive (I/O, corruption), which become EIO and a warning.
//!
//! Memory: each handler's READ buffer is a [`Buffer`] of the response budget, kept between
//! requests up to [`RETAINED_BUFFER`] (a larger one for [`LARGE_BUFFER_GRACE`], unless others
//! wait for budget) and given back entirely after [`HANDLER_IDLE`] without work; handlers
//! beyond [`KEEP_HANDLERS`] then exit. A READ whose reply stalls gives its buffer back and
//! reads the data again when the client reads again (`reply.rs`). A READ whose blocks are all
//! cached is written straight from the cache (`Snapshot::read_cached`) under a permit of the
//! same budget, which it gives back on a stall like a buffer.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use super::handshake::Session;
pub use super::in_flight::BYTES_IN_FLIGHT;
use super::in_flight::InFlight;
use super::proto::*;
use super::reply::{ReplyWriter, Sink};
use super::transmission::{Command, Refusal};

mod read;
use crate::serving::{Budget, Buffer, Draining, ProtoMetrics};
use crate::store::{ExtentKind, StoreError};
use read::{Attempt, Holes};

/// A handler's read buffer is kept between requests up to this size (the kernel's largest usual
/// request is 1.25 MiB; nbdcopy's 256 KiB); larger ones are freed after use.
pub const RETAINED_BUFFER: usize = 2 * 1024 * 1024;
/// How long a handler keeps a buffer larger than [`RETAINED_BUFFER`] for the next READ (while
/// no other thread waits for buffer memory). A fresh 32 MiB mapping costs 8,192 page faults
/// and as many zeroed pages; between READs of a stream of them the gap is well below this.
pub const LARGE_BUFFER_GRACE: Duration = Duration::from_millis(250);
/// A handler with no request for this long gives its buffer back, and exits unless it is one
/// of the first [`KEEP_HANDLERS`].
pub const HANDLER_IDLE: Duration = Duration::from_secs(2);
/// How long one idle handler watches an empty job queue before it blocks (about a loopback
/// round trip).
const WATCH: Duration = Duration::from_micros(50);
/// Largest READ the connection's reader answers itself from the cache ([`Conn::try_inline`]):
/// nbdcopy's requests (256 KiB), and well below the time a larger write would keep the
/// reader from the next requests.
const INLINE_READ: usize = 256 * 1024;
/// Handlers kept (without buffers) by an idle connection.
pub const KEEP_HANDLERS: usize = 1;
/// CACHE prefetches at most this much of a request (a prefetch larger than the block cache
/// would only evict itself).
const MAX_PREFETCH: u64 = 32 * 1024 * 1024;
/// BLOCK_STATUS describes at most this much per request (replies may cover less than asked).
const MAX_STATUS_BYTES: u64 = 1 << 30;
/// BLOCK_STATUS sends at most this many extents per reply (nbd.md §4 allows up to 2^20).
const MAX_STATUS_EXTENTS: usize = 65536;

/// A request handed to a handler.
#[derive(Debug)]
pub(super) struct Job {
    pub(super) cookie: u64,
    pub(super) command: Command,
    /// What the reader found when it tried to answer this READ itself: `None` if it did not.
    pub(super) tried: Option<Holes>,
}

/// What a connection's transmission phase shares with the rest of the process: its
/// counters, the response budget, and the send timeout.
#[derive(Debug, Clone, Copy)]
pub struct Shared<'a> {
    /// The NBD counters.
    pub metrics: &'a ProtoMetrics,
    /// The response budget READ buffers draw from.
    pub budget: &'a Budget,
    /// Time a reply may make no progress before the connection is closed.
    pub send_timeout: Duration,
    /// The graceful-stop flag: once set, no new request is read.
    pub draining: &'a Draining,
}

/// State shared by the reader and the handlers of one connection.
pub(super) struct Conn<'a, W> {
    session: &'a Session,
    peer: &'a str,
    metrics: &'a ProtoMetrics,
    memory: &'a Budget,
    send_timeout: Duration,
    pub(super) out: ReplyWriter<W>,
    pub(super) dispatched: InFlight,
    /// Jobs dispatched and not yet answered.
    pub(super) in_flight: AtomicUsize,
    /// Handler threads running.
    pub(super) handlers: AtomicUsize,
    /// A handler watches the empty job queue ([`Conn::watch`]).
    watching: AtomicBool,
    /// Whether the reader may answer READs itself: the block cache is on (with `--cache 0`
    /// nothing is ever cached) and the export reads no remote archive (which may fetch index
    /// pages over the network even for a cached range; the reader must not wait for that).
    inline_reads: bool,
}

/// Releases a job's budget and in-flight count however the job ends (even by a panic).
struct JobGuard<'c, 'a, W> {
    conn: &'c Conn<'a, W>,
    bytes: u64,
}

impl<W> Drop for JobGuard<'_, '_, W> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.conn.dispatched.release(self.bytes);
        }
        self.conn.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<'a, W: Sink> Conn<'a, W> {
    /// State for one connection's transmission phase, replying through `writer`.
    pub(super) fn new(session: &'a Session, peer: &'a str, shared: Shared<'a>, writer: W) -> Self {
        Conn {
            session,
            peer,
            metrics: shared.metrics,
            memory: shared.budget,
            send_timeout: shared.send_timeout,
            out: ReplyWriter::new(writer, shared.send_timeout),
            dispatched: InFlight::new(),
            in_flight: AtomicUsize::new(0),
            handlers: AtomicUsize::new(0),
            watching: AtomicBool::new(false),
            inline_reads: {
                let snap = &session.snapshot.snapshot;
                snap.engine().config().cache_bytes > 0 && !snap.archive().any_remote()
            },
        }
    }

    /// A handler thread: runs jobs until the queue closes, or until it has been idle for
    /// [`HANDLER_IDLE`] and more than [`KEEP_HANDLERS`] handlers are running.
    pub(super) fn handler(&self, rx: &crossbeam_channel::Receiver<Job>) {
        let mut buf = Buffer::new();
        loop {
            // A buffer larger than RETAINED_BUFFER is kept only for a short while, and only
            // while nobody waits for budget: a client streaming large READs (nbdcopy
            // --request-size 32M) reuses it instead of faulting in a fresh mapping per READ.
            let large = buf.len() > RETAINED_BUFFER;
            let wait = if large {
                LARGE_BUFFER_GRACE
            } else {
                HANDLER_IDLE
            };
            if rx.is_empty() {
                self.watch(rx);
            }
            match rx.recv_timeout(wait) {
                Ok(job) => {
                    self.run(job, &mut buf);
                    if self.memory.has_waiters() {
                        buf.shrink(RETAINED_BUFFER);
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) if large => {
                    buf.shrink(RETAINED_BUFFER);
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    buf.release();
                    let leave = self
                        .handlers
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                            (n > KEEP_HANDLERS).then(|| n - 1)
                        })
                        .is_ok();
                    if leave {
                        return;
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Watches the empty job queue for up to [`WATCH`] before the handler blocks in the
    /// channel, if no other handler of the connection watches it. A client that waits for
    /// each reply (queue depth 1: fio, a VM's synchronous reads) sends its next request
    /// within a loopback round trip, which the watcher then takes without being put to
    /// sleep and woken. fio, 4 KiB random reads at queue depth 1: 15.0-15.3 k IOPS (p99
    /// 114-122 µs) without, 25-28 k (p99 62-64 µs) with a watcher, in the same run.
    fn watch(&self, rx: &crossbeam_channel::Receiver<Job>) {
        if self.watching.swap(true, Ordering::Acquire) {
            return;
        }
        let start = std::time::Instant::now();
        'watch: while start.elapsed() < WATCH {
            for _ in 0..64 {
                if !rx.is_empty() {
                    break 'watch;
                }
                std::hint::spin_loop();
            }
        }
        self.watching.store(false, Ordering::Release);
    }

    pub(super) fn run(&self, job: Job, buf: &mut Buffer<'a>) {
        let bytes = match job.command {
            Command::Read { length, .. } => u64::from(length),
            _ => 0,
        };
        let _guard = JobGuard { conn: self, bytes };
        if self.out.is_broken() {
            return;
        }
        match job.command {
            Command::Read { offset, length, df } => {
                let attempt = Attempt::Handler(job.tried);
                let _answered = self.read(job.cookie, offset, length, df, buf, attempt);
            }
            // The other replies may wait for a stalled socket without a way to give memory
            // back: they hold none.
            Command::BlockStatus {
                offset,
                length,
                req_one,
                context,
            } => {
                buf.release();
                self.block_status(job.cookie, offset, length, req_one, context);
            }
            Command::Cache { offset, length } => {
                buf.release();
                self.cache(job.cookie, offset, length);
            }
            Command::Disc | Command::Flush => {}
        }
    }

    /// Lets the connection's reader answer a READ itself when that needs no decoding (every
    /// block of the range cached, or all of it a hole) and the reply is at most
    /// [`INLINE_READ`]: handing such a READ to a handler costs a wake-up of that thread per
    /// request, which is more than the READ. Returns the job when a handler must run it.
    /// The caller has counted the job in flight (`dispatched`, `in_flight`) as for a handler.
    ///
    /// Under fio at queue depth 32 (4 KiB random reads from the cache), `perf` put 44 % of
    /// hexzd's samples in handler threads being switched in and out and spinning for the next
    /// job. Answered here, interleaved runs against the same cached image (2026-11-29):
    /// 96-105 k IOPS (p99 0.67-0.84 ms, 12.8-14.1 us of CPU per READ) before, 111-127 k
    /// (p99 0.31 ms, 9.7-11.1 us) after; nbdcopy 2.2-2.4 GB/s before, 2.9-3.0 after.
    /// A reply that stalls holds up this connection's next requests, and only them: the
    /// client is not reading its replies.
    pub(super) fn try_inline(&self, job: Job, buf: &mut Buffer<'a>) -> Option<Job> {
        let Command::Read { offset, length, df } = job.command else {
            return Some(job);
        };
        if length as usize > INLINE_READ || self.out.is_broken() || !self.inline_reads {
            return Some(job);
        }
        if let Err(holes) = self.read(job.cookie, offset, length, df, buf, Attempt::Inline) {
            return Some(Job {
                tried: Some(holes),
                ..job
            });
        }
        // Answered: give back what the reader counted for it.
        drop(JobGuard {
            conn: self,
            bytes: u64::from(length),
        });
        // The reader's buffer is used only when a reply it started stalled and its blocks
        // left the cache meanwhile: not worth keeping budget for.
        buf.release();
        None
    }

    fn count(&self) {
        ProtoMetrics::add(&self.metrics.requests_total, 1);
    }

    pub(super) fn reply_ok(&self, cookie: u64) {
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

    pub(super) fn refuse(&self, req: &Request, r: Refusal) {
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
    fn read_failed(&self, what: &str, offset: u64, length: u64, e: &StoreError) {
        log::warn!(
            "nbd {}: {what} {offset}+{length} of export {:?} failed: {e}",
            self.peer,
            self.session.export_name
        );
        ProtoMetrics::add(&self.metrics.read_errors, 1);
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
