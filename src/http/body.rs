//! Response bodies produced block by block (http.md §5 "Body integrity"): a [`Plan`] of text
//! pieces and stream ranges is filled into one reusable buffer of at most [`MAX_CHUNK`] bytes
//! and written after the head in large vectored writes. The head goes out with the first full
//! buffer, so a body that fits in one buffer is read completely before anything is sent and a
//! read error in it is still a clean 500; an error after the head means the connection must
//! close, never a short body on a kept-alive connection.
//!
//! A chunk that lies in one stream range whose blocks are all cached is written straight from
//! the cache ([`Sending::cached`], `Snapshot::read_cached`) without the copy into the buffer,
//! under a permit of the budget for its length, given back after the write or on a stall.
//!
//! Memory: the buffer is a [`Buffer`] of the response budget. When the client stops reading
//! (a write makes no progress for a stall tick) the buffer is given back at once, and the body
//! is produced again from where the socket stopped once the client reads again: a body is a
//! pure function of its plan and a position, so a stalled connection holds no buffer at all.

use std::io::{self, IoSlice, Write};
use std::time::Duration;

use super::response::{Piece, Plan};
use crate::serving::conn::{self, WaitWritable, Wrote};
use crate::serving::{Budget, Buffer};
use crate::store::{Segment, StoreError};

/// Largest body buffer per connection: bodies are produced in chunks of at most this size.
pub const MAX_CHUNK: usize = 1 << 20;
/// Smallest chunk taken when the budget is short (rather than waiting for a full one).
pub const MIN_CHUNK: usize = 64 << 10;

/// A failure while sending a streamed body.
#[derive(Debug)]
pub(super) enum SendError {
    /// A storage read failed before any byte of the response was written: a 500 can still be
    /// sent.
    Early(StoreError),
    /// A storage read failed after the head was written: the connection must close.
    Late(StoreError),
    /// No buffer memory came within the send timeout before anything was written: a 503 can
    /// still be sent.
    Busy,
    /// The socket failed, or the client read nothing for the send timeout.
    Io(io::Error),
}

/// Fills a buffer with stream bytes from an offset; the whole buffer or an error.
pub(super) type ReadAt<'a> = dyn FnMut(u64, &mut [u8]) -> Result<(), StoreError> + 'a;

/// Answers `len` stream bytes from an offset from the block cache, as segments, or says it
/// cannot (then the bytes are read into the buffer).
pub(super) type Cached<'a> = dyn FnMut(u64, usize, &mut Vec<Segment>) -> bool + 'a;

/// Where a body's buffers come from and how long a client may stall it.
pub(super) struct Sending<'b, 'c> {
    /// The response budget.
    pub budget: &'b Budget,
    /// The connection's buffer, kept by the caller for the next response.
    pub buf: &'c mut Buffer<'b>,
    /// Time without progress (writing, or waiting for buffer memory) before giving up.
    pub send_timeout: Duration,
    /// Where chunks come from without a copy when their blocks are cached (`None`: always
    /// through the buffer).
    pub cached: Option<&'c mut Cached<'c>>,
}

/// Writes `head` and the body described by `plan` to `w`, reading stream bytes with `read`
/// (which fills its whole buffer or fails) into the buffer of `s` (grown to
/// `min(plan.len, MAX_CHUNK)` if smaller). `prefetch(offset, len)`, when given, is told about
/// the next chunk of a long range before the current one is written, so its blocks decode
/// while the socket drains. Returns the body bytes written.
pub(super) fn send<W: Write + WaitWritable>(
    w: &mut W,
    s: Sending<'_, '_>,
    head: Vec<u8>,
    plan: &Plan,
    read: &mut ReadAt<'_>,
    mut prefetch: Option<&mut dyn FnMut(u64, u64)>,
) -> Result<u64, SendError> {
    let mut head_sent = 0usize;
    let mut pos = 0u64;
    if plan.len == 0 {
        conn::write_all_timed(w, &mut [IoSlice::new(&head)], s.send_timeout)
            .map_err(SendError::Io)?;
        return Ok(0);
    }
    let mut cached = s.cached;
    let mut segments: Vec<Segment> = Vec::new();
    while pos < plan.len {
        let want = usize::try_from(plan.len - pos)
            .unwrap_or(MAX_CHUNK)
            .min(MAX_CHUNK);
        if let Some(c) = cached.as_mut() {
            let chunk = Chunk {
                head: &head[head_sent..],
                pos,
                want,
            };
            match send_cached(w, chunk, plan, s.budget, s.send_timeout, c, &mut segments) {
                Some(Ok((Wrote::All, body))) => {
                    head_sent = head.len();
                    pos += body;
                    if let (Some(p), Some((off, left))) = (prefetch.as_mut(), span(plan, pos)) {
                        p(off, left.min(MAX_CHUNK as u64));
                    }
                    continue;
                }
                Some(Ok((Wrote::Stalled { written }, _))) => {
                    let h = written.min(head.len() - head_sent);
                    head_sent += h;
                    pos += (written - h) as u64;
                    s.buf.release();
                    conn::wait_after_stall(w, s.send_timeout).map_err(SendError::Io)?;
                    continue;
                }
                Some(Err(e)) => return Err(SendError::Io(e)),
                None => {}
            }
        }
        let Some(granted) = s
            .buf
            .ensure(s.budget, want, MIN_CHUNK.min(want), s.send_timeout)
        else {
            return Err(if head_sent == 0 {
                SendError::Busy
            } else {
                SendError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no response buffer memory within the send timeout",
                ))
            });
        };
        let n = granted.min(want);
        let chunk = &mut s.buf.bytes_mut()[..n];
        let next = match fill(plan, pos, chunk, read) {
            Ok(next) => next,
            Err(e) if head_sent == 0 => return Err(SendError::Early(e)),
            Err(e) => return Err(SendError::Late(e)),
        };
        if let (Some(p), Some((off, left))) = (prefetch.as_mut(), next) {
            p(off, left.min(n as u64));
        }
        let slices = &mut [IoSlice::new(&head[head_sent..]), IoSlice::new(chunk)];
        let tick = conn::stall_tick(s.send_timeout);
        match conn::write_or_stall(w, slices, tick).map_err(SendError::Io)? {
            Wrote::All => {
                head_sent = head.len();
                pos += n as u64;
            }
            Wrote::Stalled { written } => {
                let h = written.min(head.len() - head_sent);
                head_sent += h;
                pos += (written - h) as u64;
                // The client stopped reading: give the buffer back while it does not.
                s.buf.release();
                conn::wait_after_stall(w, s.send_timeout).map_err(SendError::Io)?;
            }
        }
    }
    // The last write may have stalled after its bytes were taken (a TLS writer queues their
    // records): they must be on their way before the response counts as sent.
    conn::write_all_timed(w, &mut [], s.send_timeout).map_err(SendError::Io)?;
    Ok(pos)
}

/// The next write of a body: what is left of the head, the body position, and the most
/// body bytes to send.
struct Chunk<'h> {
    head: &'h [u8],
    pos: u64,
    want: usize,
}

/// Writes the rest of the head and up to `chunk.want` body bytes straight from the block
/// cache, when they lie in one stream range whose blocks are all cached and the budget has
/// room for them at once (a chunk never waits for budget here: the buffered path queues).
/// `None` if not; otherwise the write's outcome and the body bytes it was given. The
/// segments, and the permit that accounts for them, are let go before this returns.
fn send_cached<W: Write>(
    w: &mut W,
    chunk: Chunk<'_>,
    plan: &Plan,
    budget: &Budget,
    send_timeout: Duration,
    cached: &mut Cached<'_>,
    segments: &mut Vec<Segment>,
) -> Option<io::Result<(Wrote, u64)>> {
    let (off, left) = span(plan, chunk.pos)?;
    let n = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.want);
    let _permit = budget.try_acquire(n as u64)?;
    if !cached(off, n, segments) {
        return None;
    }
    let parts = Segment::parts(chunk.head, segments);
    let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let wrote = conn::write_or_stall(w, &mut slices, conn::stall_tick(send_timeout));
    drop(slices);
    drop(parts);
    segments.clear();
    Some(wrote.map(|r| (r, n as u64)))
}

/// The stream range body position `pos` lies in: the stream offset there and the bytes
/// left of that range; `None` if `pos` lies in a text piece (a multipart boundary).
fn span(plan: &Plan, pos: u64) -> Option<(u64, u64)> {
    let mut at = 0u64;
    for piece in &plan.pieces {
        let len = match piece {
            Piece::Text(t) => t.len() as u64,
            Piece::Data(r) => r.len(),
        };
        if pos < at + len {
            return match piece {
                Piece::Data(r) => Some((r.first + (pos - at), len - (pos - at))),
                Piece::Text(_) => None,
            };
        }
        at += len;
    }
    None
}

/// Fills `dst` with the body bytes of `plan` from body position `pos`. Returns where the
/// stream data continues after `dst` (stream offset and bytes left of that range) when `dst`
/// ends inside a stream range.
fn fill(
    plan: &Plan,
    pos: u64,
    dst: &mut [u8],
    read: &mut ReadAt<'_>,
) -> Result<Option<(u64, u64)>, StoreError> {
    let mut at = 0u64;
    let mut pos = pos;
    let mut filled = 0usize;
    for piece in &plan.pieces {
        let len = match piece {
            Piece::Text(t) => t.len() as u64,
            Piece::Data(r) => r.len(),
        };
        if pos >= at + len {
            at += len;
            continue;
        }
        let skip = pos - at;
        let room = dst.len() - filled;
        let k = usize::try_from(len - skip).unwrap_or(usize::MAX).min(room);
        let out = &mut dst[filled..filled + k];
        match piece {
            Piece::Text(t) => {
                let from = usize::try_from(skip).unwrap_or(usize::MAX);
                out.copy_from_slice(&t[from..from + k]);
            }
            Piece::Data(r) => read(r.first + skip, out)?,
        }
        filled += k;
        pos += k as u64;
        at += len;
        if filled == dst.len() {
            return Ok(match piece {
                Piece::Data(r) if skip + (k as u64) < len => {
                    Some((r.first + skip + k as u64, len - skip - k as u64))
                }
                _ => None,
            });
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
