//! Response bodies produced block by block (http.md §5 "Body integrity"): a [`Plan`] of text
//! pieces and stream ranges is filled into one reusable buffer of at most [`MAX_CHUNK`] bytes
//! and written after the head in large vectored writes. The head goes out with the first full
//! buffer, so a body that fits in one buffer is read completely before anything is sent and a
//! read error in it is still a clean 500; an error after the head means the connection must
//! close, never a short body on a kept-alive connection.

use std::io::{self, IoSlice, Write};

use super::response::{Piece, Plan};
use crate::serving::write_all_vectored;
use crate::store::StoreError;

/// Largest body buffer per connection: bodies are produced in chunks of at most this size.
pub const MAX_CHUNK: usize = 1 << 20;

/// A failure while sending a streamed body.
#[derive(Debug)]
pub(super) enum SendError {
    /// A storage read failed before any byte of the response was written: a 500 can still be
    /// sent.
    Early(StoreError),
    /// A storage read failed after the head was written: the connection must close.
    Late(StoreError),
    /// The socket failed.
    Io(io::Error),
}

/// Fills a buffer with stream bytes from an offset; the whole buffer or an error.
pub(super) type ReadAt<'a> = dyn FnMut(u64, &mut [u8]) -> Result<(), StoreError> + 'a;

/// Writes `head` and the body described by `plan` to `w`, reading stream bytes with `read`
/// (which fills its whole buffer or fails) into `buf` (grown to `min(plan.len, MAX_CHUNK)` if
/// smaller, and kept by the caller for the next response). `prefetch(offset, len)`, when
/// given, is told about the next chunk of a long range before the current one is written, so
/// its blocks decode while the socket drains. Returns the body bytes written.
pub(super) fn send<W: Write>(
    w: &mut W,
    buf: &mut Vec<u8>,
    head: Vec<u8>,
    plan: &Plan,
    read: &mut ReadAt<'_>,
    mut prefetch: Option<&mut dyn FnMut(u64, u64)>,
) -> Result<u64, SendError> {
    let cap = usize::try_from(plan.len)
        .unwrap_or(MAX_CHUNK)
        .clamp(1, MAX_CHUNK);
    if buf.len() < cap {
        *buf = vec![0; cap];
    }
    let buf = &mut buf[..cap];
    let mut out = Out {
        w,
        head: Some(head),
        sent: 0,
    };
    let mut fill = 0usize;
    for piece in &plan.pieces {
        match piece {
            Piece::Text(t) => {
                let mut t = t.as_slice();
                while !t.is_empty() {
                    let k = t.len().min(cap - fill);
                    buf[fill..fill + k].copy_from_slice(&t[..k]);
                    fill += k;
                    t = &t[k..];
                    if fill == cap {
                        out.flush(buf)?;
                        fill = 0;
                    }
                }
            }
            Piece::Data(r) => {
                let end = r.last + 1;
                let mut off = r.first;
                while off < end {
                    let want = usize::try_from(end - off)
                        .unwrap_or(usize::MAX)
                        .min(cap - fill);
                    if let Err(e) = read(off, &mut buf[fill..fill + want]) {
                        return Err(out.fail(e));
                    }
                    fill += want;
                    off += want as u64;
                    if fill == cap {
                        if let Some(p) = prefetch.as_mut().filter(|_| off < end) {
                            p(off, (end - off).min(cap as u64));
                        }
                        out.flush(buf)?;
                        fill = 0;
                    }
                }
            }
        }
    }
    if fill > 0 || out.head.is_some() {
        out.flush(&buf[..fill])?;
    }
    Ok(out.sent)
}

/// The writing side of [`send`]: the pending head and a byte count.
struct Out<'w, W: Write> {
    w: &'w mut W,
    head: Option<Vec<u8>>,
    sent: u64,
}

impl<W: Write> Out<'_, W> {
    /// Writes the head (the first time) and `data` in as few system calls as the socket
    /// allows.
    fn flush(&mut self, data: &[u8]) -> Result<(), SendError> {
        let head = self.head.take().unwrap_or_default();
        write_all_vectored(self.w, &mut [IoSlice::new(&head), IoSlice::new(data)])
            .map_err(SendError::Io)?;
        self.sent += data.len() as u64;
        Ok(())
    }

    fn fail(&self, e: StoreError) -> SendError {
        if self.head.is_some() {
            SendError::Early(e)
        } else {
            SendError::Late(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::range::ByteRange;
    use crate::http::response::multipart;

    /// A writer that takes at most 3 bytes per call and counts its calls.
    struct Trickle(Vec<u8>, usize);

    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.1 += 1;
            let n = b.len().min(3);
            self.0.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            self.write(first)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A writer that records each call's total length (a socket that takes everything).
    struct Calls(Vec<u8>, Vec<usize>);

    impl Write for Calls {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.1.push(b.len());
            self.0.extend_from_slice(b);
            Ok(b.len())
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let n = bufs.iter().map(|b| b.len()).sum();
            self.1.push(n);
            for b in bufs {
                self.0.extend_from_slice(b);
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn range(first: u64, last: u64) -> ByteRange {
        ByteRange { first, last }
    }

    /// Stream bytes: the low byte of the offset.
    fn pattern(off: u64, dst: &mut [u8]) -> Result<(), StoreError> {
        for (i, b) in dst.iter_mut().enumerate() {
            *b = (off + i as u64).to_le_bytes()[0];
        }
        Ok(())
    }

    fn expected(first: u64, last: u64) -> Vec<u8> {
        let mut v = vec![0; usize::try_from(last - first + 1).unwrap_or(0)];
        let _ = pattern(first, &mut v);
        v
    }

    fn fault() -> StoreError {
        StoreError::Corrupt {
            path: "x.hxz".into(),
            detail: "test".into(),
        }
    }

    #[test]
    fn vectored_write_survives_short_writes() {
        let mut w = Trickle(Vec::new(), 0);
        let bufs = &mut [
            IoSlice::new(b"head"),
            IoSlice::new(b""),
            IoSlice::new(b"body!"),
        ];
        write_all_vectored(&mut w, bufs).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(w.0, b"headbody!");
    }

    #[test]
    fn a_large_range_goes_out_in_mebibyte_writes_with_the_head_in_the_first() {
        let plan = Plan::data(range(5, 5 + 3 * MAX_CHUNK as u64 + 99));
        let mut w = Calls(Vec::new(), Vec::new());
        let mut buf = Vec::new();
        let mut prefetched = Vec::new();
        let mut pre = |o: u64, l: u64| prefetched.push((o, l));
        let sent = send(
            &mut w,
            &mut buf,
            b"HEAD".to_vec(),
            &plan,
            &mut pattern,
            Some(&mut pre),
        );
        assert_eq!(sent.ok(), Some(plan.len));
        assert_eq!(w.1, [MAX_CHUNK + 4, MAX_CHUNK, MAX_CHUNK, 100]);
        assert_eq!(&w.0[..4], b"HEAD");
        assert!(w.0[4..] == expected(5, 5 + 3 * MAX_CHUNK as u64 + 99));
        let m = MAX_CHUNK as u64;
        assert_eq!(prefetched, [(5 + m, m), (5 + 2 * m, m), (5 + 3 * m, 100)]);
        assert_eq!(buf.len(), MAX_CHUNK);
    }

    #[test]
    fn a_small_body_is_one_write_sized_to_the_body() {
        let plan = Plan::data(range(0, 4095));
        let mut w = Calls(Vec::new(), Vec::new());
        let mut buf = Vec::new();
        let sent = send(&mut w, &mut buf, b"H".to_vec(), &plan, &mut pattern, None);
        assert_eq!(sent.ok(), Some(4096));
        assert_eq!(w.1, [4097]);
        assert_eq!(buf.len(), 4096);
    }

    #[test]
    fn an_empty_body_still_sends_the_head() {
        let mut w = Calls(Vec::new(), Vec::new());
        let sent = send(
            &mut w,
            &mut Vec::new(),
            b"H".to_vec(),
            &Plan::empty(),
            &mut pattern,
            None,
        );
        assert_eq!(sent.ok(), Some(0));
        assert_eq!(w.0, b"H");
    }

    #[test]
    fn multipart_bodies_are_exact() {
        let ranges = [range(0, 9), range(3_000_000, 3_000_004)];
        let plan = multipart(&ranges, 4_000_000, "B").unwrap();
        let mut w = Calls(Vec::new(), Vec::new());
        let sent = send(
            &mut w,
            &mut Vec::new(),
            Vec::new(),
            &plan,
            &mut pattern,
            None,
        );
        assert_eq!(sent.ok(), Some(plan.len));
        assert_eq!(w.0.len() as u64, plan.len);
        assert_eq!(w.1.len(), 1, "fits one buffer: one write");
        let text = String::from_utf8_lossy(&w.0);
        assert!(text.contains("Content-Range: bytes 3000000-3000004/4000000"));
        assert!(text.ends_with("\r\n--B--\r\n"));
    }

    #[test]
    fn an_error_in_the_first_buffer_is_early_and_writes_nothing() {
        let plan = Plan::data(range(0, 999));
        let mut w = Calls(Vec::new(), Vec::new());
        let mut failing = |_: u64, _: &mut [u8]| Err(fault());
        let r = send(
            &mut w,
            &mut Vec::new(),
            b"H".to_vec(),
            &plan,
            &mut failing,
            None,
        );
        assert!(matches!(r, Err(SendError::Early(_))));
        assert!(w.0.is_empty());
    }

    #[test]
    fn an_error_after_the_head_is_late() {
        let plan = Plan::data(range(0, 2 * MAX_CHUNK as u64));
        let mut w = Calls(Vec::new(), Vec::new());
        let mut fails_later = |off: u64, dst: &mut [u8]| {
            if off == 0 {
                pattern(off, dst)
            } else {
                Err(fault())
            }
        };
        let r = send(
            &mut w,
            &mut Vec::new(),
            b"H".to_vec(),
            &plan,
            &mut fails_later,
            None,
        );
        assert!(matches!(r, Err(SendError::Late(_))));
        assert_eq!(w.0.len(), MAX_CHUNK + 1, "head and first chunk only");
    }
}
