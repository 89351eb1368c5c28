//! Serialising replies onto a connection: every reply (header and payload) goes out whole, one
//! writer at a time (nbd.md §3.5), in whatever order the handlers finish.
//!
//! Small replies are combined: a handler appends its reply to a pending buffer, and whichever
//! thread holds the socket writes everything pending in one `writev`. Under deep queues of small
//! reads (the kernel's 4 KiB reads, QD 64) this turns many syscalls and lock hand-offs into a
//! few; a lone reply still leaves at once. Large replies are written straight from the
//! handler's buffer, together with anything pending.
//!
//! Stalls: the socket's SO_SNDTIMEO is a stall tick (`serving::conn`). When a write makes no
//! progress for a tick the writer is marked *stalled*: a READ reply being written returns to
//! its handler as [`ReadSent::Stalled`] (the handler gives its buffer back, waits for the
//! client, then reads the data again and goes on from where the socket stopped), and handlers
//! waiting for the socket with a READ buffer are told [`ReadSent::SinkStalled`] (they give
//! theirs back and wait for the stall to end). So a client that stops reading holds no READ
//! buffer. After the send timeout without progress the connection is closed.
//!
//! Locks: `gate` (who owns the socket, and the stall flag) is never held while writing; the
//! owner of the gate takes `sink` (uncontended) and, briefly, `pending`. Order: `gate` before
//! `sink` before `pending`, and `gate` is released before `sink` is taken.

use std::io::{self, IoSlice, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::serving::conn::{self, WaitWritable, Wrote};
use crate::serving::is_disconnect;

/// Replies up to this size are combined; larger ones are written without a copy.
const COMBINE_MAX: usize = 64 * 1024;
/// Most bytes waiting in `pending`. Beyond it a sender waits for the socket itself, so a client
/// that stops reading holds handlers (and through them the reader) instead of growing memory.
const PENDING_MAX: usize = 1024 * 1024;

/// The write half of a connection.
pub trait Sink: Write + WaitWritable + Send {
    /// Makes the connection's reader stop (shuts the socket down) after a failed write, so the
    /// connection ends instead of reading requests it can no longer answer.
    fn abort(&self);
}

impl Sink for crate::serving::Conn {
    fn abort(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

impl Sink for crate::tls::TlsWriter {
    fn abort(&self) {
        self.shutdown(std::net::Shutdown::Both);
    }
}

impl Sink for std::fs::File {
    fn abort(&self) {}
}

/// The socket, and the spare buffer swapped with `pending` for each combined write, of which
/// the first `spare_done` bytes are written (a stall can stop a write inside it).
#[derive(Debug)]
struct SinkState<W> {
    w: W,
    spare: Vec<u8>,
    spare_done: usize,
}

/// Who owns the socket.
#[derive(Debug, Default)]
struct Gate {
    busy: bool,
    stalled: bool,
    /// Threads waiting on `changed`: it is signalled only when one waits (a signal is a
    /// syscall, and every reply releases the gate).
    waiters: usize,
}

/// How a READ reply went.
#[must_use]
pub enum ReadSent<'a, W: Sink> {
    /// Written (or queued to be written) whole.
    Done,
    /// The connection is broken; nothing more can be sent.
    Broken,
    /// The socket is stalled by another reply: give the buffer back,
    /// [`ReplyWriter::wait_unstalled`], and send again.
    SinkStalled,
    /// This reply stalled after `written` bytes. The socket stays owned by `claim`: give the
    /// buffer back, [`Claim::wait`], then send the same reply again with `claim` and
    /// `written`.
    Stalled {
        /// Ownership of the socket, to resume with.
        claim: Claim<'a, W>,
        /// Reply bytes already on the wire.
        written: usize,
    },
}

/// Ownership of the socket (the gate), with the socket itself.
pub struct Claim<'a, W: Sink> {
    out: &'a ReplyWriter<W>,
    sink: Option<MutexGuard<'a, SinkState<W>>>,
}

impl<W: Sink> std::fmt::Debug for Claim<'_, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Claim")
    }
}

impl<W: Sink> std::fmt::Debug for ReadSent<'_, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadSent::Done => f.write_str("Done"),
            ReadSent::Broken => f.write_str("Broken"),
            ReadSent::SinkStalled => f.write_str("SinkStalled"),
            ReadSent::Stalled { written, .. } => write!(f, "Stalled({written})"),
        }
    }
}

impl<W: Sink> Claim<'_, W> {
    /// Waits for the client to read again, for the rest of the send timeout. False (and the
    /// connection broken) if it did not.
    pub fn wait(&mut self) -> bool {
        let Some(st) = self.sink.as_mut() else {
            return false;
        };
        match conn::wait_after_stall(&st.w, self.out.send_timeout) {
            Ok(()) => true,
            Err(e) => {
                self.out.fail(&st.w, &e);
                false
            }
        }
    }

    /// Gives up on the reply in progress (it cannot be finished): breaks the connection.
    pub fn abandon(mut self, why: &str) {
        if let Some(st) = self.sink.as_mut() {
            self.out.fail(&st.w, &io::Error::other(why.to_string()));
        }
    }
}

impl<W: Sink> Drop for Claim<'_, W> {
    fn drop(&mut self) {
        if let Some(st) = self.sink.take() {
            // Letting go in the middle of a stalled reply (its resume failed, or its handler
            // panicked) leaves a partial reply on the wire: nothing more can be sent.
            if self.out.is_stalled() {
                self.out
                    .fail(&st.w, &io::Error::other("a stalled reply was abandoned"));
            }
        }
        let mut g = self.out.gate();
        g.busy = false;
        g.stalled = false;
        self.out.wake(g);
    }
}

/// Writes whole replies. After the first failed write every later reply is dropped and the
/// connection is aborted.
#[derive(Debug)]
pub struct ReplyWriter<W> {
    sink: Mutex<SinkState<W>>,
    gate: Mutex<Gate>,
    /// Signalled when the gate is released or the stall flag changes.
    changed: Condvar,
    /// Small replies waiting for the socket, whole and back to back.
    pending: Mutex<Vec<u8>>,
    broken: AtomicBool,
    /// True once the connection was closed for the send timeout.
    timed_out: AtomicBool,
    send_timeout: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What one round of writing did.
enum Round {
    /// Everything given was written.
    All,
    /// A write stalled; `own` bytes of the caller's reply went out in this round.
    Stalled { own: usize },
}

impl<W: Sink> ReplyWriter<W> {
    /// Wraps the write half; a reply that makes no progress for `send_timeout` breaks the
    /// connection.
    pub fn new(w: W, send_timeout: Duration) -> Self {
        ReplyWriter {
            sink: Mutex::new(SinkState {
                w,
                spare: Vec::new(),
                spare_done: 0,
            }),
            gate: Mutex::new(Gate::default()),
            changed: Condvar::new(),
            pending: Mutex::new(Vec::new()),
            broken: AtomicBool::new(false),
            timed_out: AtomicBool::new(false),
            send_timeout,
        }
    }

    /// True once a write has failed.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// True if the connection was closed because the client read nothing for the send
    /// timeout.
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }

    /// True while a reply is stalled on a client that does not read.
    pub fn is_stalled(&self) -> bool {
        self.gate().stalled
    }

    fn gate(&self) -> MutexGuard<'_, Gate> {
        lock(&self.gate)
    }

    /// Waits on `changed` with the gate `g` locked (counted as a waiter meanwhile).
    fn wait_changed<'a>(&'a self, mut g: MutexGuard<'a, Gate>) -> MutexGuard<'a, Gate> {
        g.waiters += 1;
        let mut g = self.changed.wait(g).unwrap_or_else(PoisonError::into_inner);
        g.waiters -= 1;
        g
    }

    /// Unlocks the gate `g` and signals `changed` if anyone waits on it. A thread about to
    /// wait holds the gate lock from its check to its wait, so it is counted or sees the
    /// change.
    fn wake(&self, g: MutexGuard<'_, Gate>) {
        let any = g.waiters > 0;
        drop(g);
        if any {
            self.changed.notify_all();
        }
    }

    /// Waits until no reply is stalled (or the connection broke).
    pub fn wait_unstalled(&self) {
        let mut g = self.gate();
        while g.stalled && !self.is_broken() {
            g = self.wait_changed(g);
        }
    }

    fn set_stalled(&self, stalled: bool) {
        let mut g = self.gate();
        if g.stalled != stalled {
            g.stalled = stalled;
            self.wake(g);
        }
    }

    /// Takes the socket: waits while another thread owns it. With `give_way`, returns `None`
    /// instead of waiting while the owner is stalled. `None` also when broken.
    fn claim(&self, give_way: bool) -> Option<Claim<'_, W>> {
        let mut g = self.gate();
        loop {
            if self.is_broken() || (give_way && g.stalled) {
                return None;
            }
            if !g.busy {
                g.busy = true;
                drop(g);
                return Some(Claim {
                    out: self,
                    sink: Some(lock(&self.sink)),
                });
            }
            g = self.wait_changed(g);
        }
    }

    fn try_claim(&self) -> Option<Claim<'_, W>> {
        let mut g = self.gate();
        if g.busy {
            return None;
        }
        g.busy = true;
        drop(g);
        Some(Claim {
            out: self,
            sink: Some(lock(&self.sink)),
        })
    }

    /// Appends a small reply to `pending` if it fits.
    fn queue(&self, parts: &[&[u8]], total: usize) -> bool {
        total <= COMBINE_MAX && {
            let mut p = lock(&self.pending);
            let room = p.len() + total <= PENDING_MAX;
            if room {
                for part in parts {
                    p.extend_from_slice(part);
                }
            }
            room
        }
    }

    /// Sends `parts` as one reply, waiting through stalls (up to the send timeout). Returns
    /// false if the connection is broken. A small reply may be written by another thread
    /// shortly after this returns; it is never lost while the connection works.
    pub fn send(&self, parts: &[&[u8]]) -> bool {
        if self.is_broken() {
            return false;
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if self.queue(parts, total) {
            // The owner writes what is pending before it lets go (see `drain`).
            if let Some(c) = self.try_claim() {
                self.drain(c, None);
            }
        } else if let Some(c) = self.claim(false) {
            let _ = self.drain(c, Some((parts, 0, false)));
        }
        !self.is_broken()
    }

    /// Sends a READ reply whose payload is in a buffer the caller can give back and read
    /// again. `resume` continues a [`ReadSent::Stalled`] reply after `written` bytes.
    pub fn send_read<'s>(
        &'s self,
        parts: &[&[u8]],
        resume: Option<(Claim<'s, W>, usize)>,
    ) -> ReadSent<'s, W> {
        if self.is_broken() {
            return ReadSent::Broken;
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let (claim, skip) = match resume {
            Some(r) => r,
            None if self.queue(parts, total) => {
                if let Some(c) = self.try_claim() {
                    self.drain(c, None);
                }
                return if self.is_broken() {
                    ReadSent::Broken
                } else {
                    ReadSent::Done
                };
            }
            None => match self.claim(true) {
                Some(c) => (c, 0),
                None if self.is_broken() => return ReadSent::Broken,
                None => return ReadSent::SinkStalled,
            },
        };
        match self.drain(claim, Some((parts, skip, true))) {
            Some((claim, written)) => ReadSent::Stalled { claim, written },
            None if self.is_broken() => ReadSent::Broken,
            None => ReadSent::Done,
        }
    }

    /// Writes what is pending and `own` (parts, bytes of them already written, and whether the
    /// caller would rather give its buffer back on a stall) while owning the socket. Returns
    /// the claim when `own` stalled and may be given back. After letting go it looks at
    /// `pending` once more: a reply appended while this thread wrote, whose sender found the
    /// socket taken, is written here, so nothing is left behind.
    fn drain<'s>(
        &'s self,
        mut claim: Claim<'s, W>,
        mut own: Option<(&[&[u8]], usize, bool)>,
    ) -> Option<(Claim<'s, W>, usize)> {
        loop {
            loop {
                let st = claim.sink.as_mut()?;
                // Nothing may go out between the parts of a reply already started.
                let started = own.is_some_and(|(_, skip, _)| skip > 0);
                if st.spare.is_empty() && !started {
                    std::mem::swap(&mut *lock(&self.pending), &mut st.spare);
                    st.spare_done = 0;
                }
                if st.spare.is_empty() && own.is_none() {
                    break;
                }
                let round = match write_round(
                    st,
                    own.map(|(p, skip, _)| (p, skip)),
                    conn::stall_tick(self.send_timeout),
                ) {
                    Ok(r) => r,
                    Err(e) => {
                        self.fail(&st.w, &e);
                        lock(&self.pending).clear();
                        return None;
                    }
                };
                match round {
                    Round::All => {
                        own = None;
                        self.set_stalled(false);
                    }
                    Round::Stalled { own: n } => {
                        self.set_stalled(true);
                        if let Some((parts, skip, give_back)) = own {
                            if give_back {
                                return Some((claim, skip + n));
                            }
                            own = Some((parts, skip + n, false));
                        }
                        if !claim.wait() {
                            lock(&self.pending).clear();
                            return None;
                        }
                    }
                }
            }
            drop(claim);
            if self.is_broken() || lock(&self.pending).is_empty() {
                return None;
            }
            claim = self.try_claim()?;
        }
    }

    fn fail(&self, w: &W, e: &io::Error) {
        if !self.broken.swap(true, Ordering::Relaxed) {
            if is_disconnect(e) {
                log::debug!("nbd: client went away while a reply was sent: {e}");
            } else if e.kind() == io::ErrorKind::TimedOut {
                // Logged (rate-limited) and counted when the connection ends.
                self.timed_out.store(true, Ordering::Relaxed);
            } else {
                log::warn!("nbd: cannot send a reply, closing the connection: {e}");
            }
            w.abort();
            // Under the gate lock, so a thread about to wait on `changed` sees `broken` first.
            self.wake(self.gate());
        }
    }
}

/// Writes the rest of the spare buffer, then `own` from byte `skip` on, in one `writev` per
/// call, until done or a write stalls.
fn write_round<W: Sink>(
    st: &mut SinkState<W>,
    own: Option<(&[&[u8]], usize)>,
    tick: Duration,
) -> io::Result<Round> {
    let mut slices = Vec::with_capacity(4);
    let spare_left = st.spare.len() - st.spare_done;
    if spare_left > 0 {
        slices.push(IoSlice::new(&st.spare[st.spare_done..]));
    }
    if let Some((parts, mut skip)) = own {
        for p in parts {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            slices.push(IoSlice::new(&p[skip..]));
            skip = 0;
        }
    }
    let wrote = conn::write_or_stall(&mut st.w, &mut slices, tick)?;
    drop(slices);
    match wrote {
        Wrote::All => {
            st.spare.clear();
            st.spare_done = 0;
            Ok(Round::All)
        }
        Wrote::Stalled { written } => {
            let from_spare = written.min(spare_left);
            st.spare_done += from_spare;
            if st.spare_done == st.spare.len() {
                st.spare.clear();
                st.spare_done = 0;
            }
            Ok(Round::Stalled {
                own: written - from_spare,
            })
        }
    }
}

#[cfg(test)]
mod tests;
