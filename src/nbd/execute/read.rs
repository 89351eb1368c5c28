//! READ: a structured reply with holes for zero extents (unless DF), a payload written
//! straight from the block cache when every block of the range is cached, or read into the
//! handler's buffer; a reply that stalls gives its memory back and is produced again when the
//! client reads again.

use super::Conn;
use crate::nbd::proto::*;
use crate::nbd::reply::{Claim, ReadSent, Sink};
use crate::serving::{Buffer, ProtoMetrics};
use crate::store::{Extent, ExtentKind, Segment};

/// The zero extents of a READ's range when its structured reply sends them as holes (`None`:
/// one data payload).
pub(in crate::nbd) type Holes = Option<Vec<Extent>>;

/// Who answers a READ ([`Conn::read`]).
pub(in crate::nbd) enum Attempt {
    /// The connection's reader ([`Conn::try_inline`]): only what needs no decoding.
    Inline,
    /// A handler; with what the reader found when it tried first (the range's holes; the
    /// cache did not hold it then), so that is not looked up again at once.
    Handler(Option<Holes>),
}

impl<'a, W: Sink> Conn<'a, W> {
    /// Answers a READ. [`Attempt::Inline`] answers only what needs no decoding: an empty or
    /// all-hole READ, or one whose blocks are all cached; otherwise it sends nothing and
    /// returns the range's holes, and the READ goes to a handler. `Ok` when the READ was
    /// answered (or the connection broke).
    pub(super) fn read(
        &self,
        cookie: u64,
        offset: u64,
        length: u32,
        df: bool,
        buf: &mut Buffer<'a>,
        attempt: Attempt,
    ) -> Result<(), Holes> {
        let s = self.session;
        let len = length as usize;
        if len == 0 {
            self.count();
            if s.structured {
                self.out.send(&[&none_chunk(cookie)]);
            } else {
                self.out.send(&[&simple_reply(0, cookie)]);
            }
            return Ok(());
        }
        let inline = matches!(attempt, Attempt::Inline);
        // Zero extents become holes in a structured reply (unless DF); a READ that is all hole
        // needs no data at all.
        let (holes, mut try_cache) = match attempt {
            Attempt::Handler(Some(holes)) => (holes, false),
            _ if s.structured && !df => (
                s.snapshot
                    .snapshot
                    .extents(s.stream, offset, u64::from(length))
                    .ok()
                    .filter(|x| x.iter().any(|e| e.kind == ExtentKind::Zero)),
                true,
            ),
            _ => (None, true),
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
                return Ok(());
            }
        }
        // A READ whose reply stalls gives its buffer back and comes round again: the data is
        // read again and the reply continues after the bytes already on the wire.
        let mut resume: Option<(Claim<'_, W>, usize)> = None;
        let mut segments: Vec<Segment> = Vec::new();
        loop {
            // A range whose blocks are all cached (and which has no holes to send as such)
            // goes out straight from the cache, without the copy into `buf`; its bytes are
            // backed by a permit of the budget while they are written, like a buffer.
            if holes.is_none() && try_cache {
                if let Some(sent) =
                    self.send_cached(cookie, offset, length, &mut resume, &mut segments)
                {
                    match self.settle(sent, length, buf) {
                        Some(r) => {
                            resume = r;
                            continue;
                        }
                        None => return Ok(()),
                    }
                }
            }
            // After a stall the blocks may be cached again.
            try_cache = true;
            // Nothing sent yet and the data must be read: a handler's work. (A reply the
            // reader started and that stalled, then lost its blocks from the cache, is
            // finished here: it cannot change hands.)
            if inline && resume.is_none() {
                return Err(holes);
            }
            if buf
                .ensure(self.memory, len, len, self.send_timeout)
                .is_none()
            {
                match resume {
                    Some((claim, _)) => {
                        claim.abandon("no reply buffer memory within the send timeout");
                    }
                    None => self.reply_error(
                        NBD_CMD_READ,
                        cookie,
                        NBD_EIO,
                        "the server is out of reply buffer memory",
                    ),
                }
                return Ok(());
            }
            let data = &mut buf.bytes_mut()[..len];
            let failure = match s.snapshot.snapshot.read_at(s.stream, offset, data) {
                Ok(n) if n == len => None,
                Ok(n) => {
                    // Validation checked the range against the size of an immutable snapshot.
                    log::error!(
                        "nbd {}: short read of {n} bytes at {offset}+{len} of export {:?}",
                        self.peer,
                        s.export_name
                    );
                    Some("short read")
                }
                Err(e) => {
                    self.read_failed("READ", offset, u64::from(length), &e);
                    Some("the archive data for this range is unreadable or corrupt")
                }
            };
            if let Some(why) = failure {
                match resume {
                    // Part of the reply is on the wire: it cannot become an error any more.
                    Some((claim, _)) => claim.abandon(why),
                    None => self.reply_error(NBD_CMD_READ, cookie, NBD_EIO, why),
                }
                return Ok(());
            }
            if resume.is_none() {
                self.count();
            }
            let data = &buf.bytes_mut()[..len];
            let simple_head = simple_reply(0, cookie);
            let data_head = offset_data_header(NBD_REPLY_FLAG_DONE, cookie, offset, length);
            let heads = holes.as_ref().map(|x| chunk_heads(cookie, x));
            let parts: Vec<&[u8]> = match (&holes, &heads) {
                (Some(extents), Some(heads)) => match chunk_parts(heads, offset, data, extents) {
                    Some(p) => p,
                    None => return Ok(()),
                },
                _ if s.structured => vec![&data_head, data],
                _ => vec![&simple_head, data],
            };
            let sent = self.out.send_read(&parts, resume.take());
            match self.settle(sent, length, buf) {
                Some(r) => resume = r,
                None => return Ok(()),
            }
        }
    }

    /// Sends a READ reply of one data payload straight from the block cache, if every block
    /// of the range is cached and the budget has room for it at once (a READ never waits for
    /// budget here: it takes the buffered path, which queues). `None` if it could not; the
    /// caller then reads into its buffer, and `resume` (a reply already partly written) is
    /// left for it: it is taken only when this reply is attempted.
    fn send_cached<'s>(
        &'s self,
        cookie: u64,
        offset: u64,
        length: u32,
        resume: &mut Option<(Claim<'s, W>, usize)>,
        segments: &mut Vec<Segment>,
    ) -> Option<ReadSent<'s, W>> {
        let s = self.session;
        if s.snapshot.snapshot.engine().config().cache_bytes == 0 {
            return None;
        }
        let _permit = self.memory.try_acquire(u64::from(length))?;
        if !s
            .snapshot
            .snapshot
            .read_cached(s.stream, offset, length as usize, segments)
        {
            return None;
        }
        if resume.is_none() {
            self.count();
        }
        let simple_head = simple_reply(0, cookie);
        let data_head = offset_data_header(NBD_REPLY_FLAG_DONE, cookie, offset, length);
        let head: &[u8] = if s.structured {
            &data_head
        } else {
            &simple_head
        };
        let parts = Segment::parts(head, segments);
        let sent = self.out.send_read(&parts, resume.take());
        drop(parts);
        // The blocks are not held past the write (nor across a stall).
        segments.clear();
        Some(sent)
    }

    /// What a READ does after one attempt to send its reply: `None` when it is finished
    /// (sent, or the connection is broken), `Some(resume)` to read the data again and go on
    /// after the bytes already written, once the client reads again. The buffer is given back
    /// while the client does not read.
    fn settle<'s>(
        &'s self,
        sent: ReadSent<'s, W>,
        length: u32,
        buf: &mut Buffer<'a>,
    ) -> Option<Option<(Claim<'s, W>, usize)>> {
        match sent {
            ReadSent::Done => {
                ProtoMetrics::add(&self.metrics.bytes_sent, u64::from(length));
                None
            }
            ReadSent::Broken => None,
            ReadSent::SinkStalled => {
                buf.release();
                self.out.wait_unstalled();
                Some(None)
            }
            ReadSent::Stalled { mut claim, written } => {
                buf.release();
                if !claim.wait() {
                    return None;
                }
                Some(Some((claim, written)))
            }
        }
    }
}

/// The chunk headers of a READ sent as OFFSET_DATA and OFFSET_HOLE chunks following
/// `extents`, DONE on the last (an OFFSET_DATA header is the first 28 bytes).
fn chunk_heads(cookie: u64, extents: &[Extent]) -> Vec<[u8; 32]> {
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
    heads
}

/// The parts of a chunked READ reply: each hole's chunk, each data chunk's header and its
/// slice of `data` (which starts at stream offset `offset`). `None` if an extent lies outside
/// `data` (cannot happen for extents of the same range).
fn chunk_parts<'p>(
    heads: &'p [[u8; 32]],
    offset: u64,
    data: &'p [u8],
    extents: &[Extent],
) -> Option<Vec<&'p [u8]>> {
    let mut parts: Vec<&[u8]> = Vec::with_capacity(2 * extents.len());
    for (e, h) in extents.iter().zip(heads) {
        match e.kind {
            ExtentKind::Zero => parts.push(h),
            ExtentKind::Data => {
                let start = usize::try_from(e.offset - offset).unwrap_or(usize::MAX);
                let end = start.saturating_add(usize::try_from(e.length).unwrap_or(0));
                parts.push(&h[..28]);
                parts.push(data.get(start..end)?);
            }
        }
    }
    Some(parts)
}
