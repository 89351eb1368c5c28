//! Serialising replies onto a connection: every reply (header and payload) goes out whole, one
//! writer at a time (nbd.md §3.5), in whatever order the handlers finish.
//!
//! Small replies are combined: a handler appends its reply to a pending buffer, and whichever
//! thread holds the socket writes everything pending in one `writev`. Under deep queues of small
//! reads (the kernel's 4 KiB reads, QD 64) this turns many syscalls and lock hand-offs into a
//! few; a lone reply still leaves at once. Large replies are written straight from the
//! handler's buffer, together with anything pending.
//!
//! Locks: `sink` is taken before `pending`, never the other way round; `pending` is only held
//! to append or swap buffers.

use std::io::{self, IoSlice, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};

use crate::serving::{is_disconnect, write_all_vectored};

/// Replies up to this size are combined; larger ones are written without a copy.
const COMBINE_MAX: usize = 64 * 1024;
/// Most bytes waiting in `pending`. Beyond it a sender waits for the socket itself, so a client
/// that stops reading holds handlers (and through them the reader) instead of growing memory.
const PENDING_MAX: usize = 4 * 1024 * 1024;

/// The write half of a connection.
pub trait Sink: Write + Send {
    /// Makes the connection's reader stop (shuts the socket down) after a failed write, so the
    /// connection ends instead of reading requests it can no longer answer.
    fn abort(&self);
}

impl Sink for crate::serving::Conn {
    fn abort(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

impl Sink for std::fs::File {
    fn abort(&self) {}
}

/// The socket and a spare buffer swapped with `pending` for each combined write.
#[derive(Debug)]
struct SinkState<W> {
    w: W,
    spare: Vec<u8>,
}

/// Writes whole replies. After the first failed write every later reply is dropped and the
/// connection is aborted.
#[derive(Debug)]
pub struct ReplyWriter<W> {
    sink: Mutex<SinkState<W>>,
    /// Small replies waiting for the socket, whole and back to back.
    pending: Mutex<Vec<u8>>,
    broken: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<W: Sink> ReplyWriter<W> {
    /// Wraps the write half.
    pub fn new(w: W) -> Self {
        ReplyWriter {
            sink: Mutex::new(SinkState {
                w,
                spare: Vec::new(),
            }),
            pending: Mutex::new(Vec::new()),
            broken: AtomicBool::new(false),
        }
    }

    /// True once a write has failed.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Sends `parts` as one reply. Returns false if the connection is broken. A small reply may
    /// be written by another thread shortly after this returns; it is never lost while the
    /// connection works.
    pub fn send(&self, parts: &[&[u8]]) -> bool {
        if self.is_broken() {
            return false;
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let queued = total <= COMBINE_MAX && {
            let mut p = lock(&self.pending);
            let room = p.len() + total <= PENDING_MAX;
            if room {
                for part in parts {
                    p.extend_from_slice(part);
                }
            }
            room
        };
        if queued {
            match self.sink.try_lock() {
                Ok(g) => self.drain(g, None),
                Err(TryLockError::Poisoned(e)) => self.drain(e.into_inner(), None),
                // The holder writes what is pending before it lets go (see `drain`).
                Err(TryLockError::WouldBlock) => {}
            }
        } else {
            self.drain(lock(&self.sink), Some(parts));
        }
        !self.is_broken()
    }

    /// Writes `own` and everything pending while holding the socket. After letting go it looks
    /// at `pending` once more: a reply appended while this thread wrote, whose sender failed
    /// to get the lock, is written here, so nothing is left behind.
    fn drain<'a>(&'a self, mut sink: MutexGuard<'a, SinkState<W>>, mut own: Option<&[&[u8]]>) {
        loop {
            loop {
                let st = &mut *sink;
                std::mem::swap(&mut *lock(&self.pending), &mut st.spare);
                if st.spare.is_empty() && own.is_none() {
                    break;
                }
                let mut slices = Vec::with_capacity(3);
                if !st.spare.is_empty() {
                    slices.push(IoSlice::new(&st.spare));
                }
                for p in own.take().unwrap_or_default() {
                    slices.push(IoSlice::new(p));
                }
                let result = write_all_vectored(&mut st.w, &mut slices);
                st.spare.clear();
                if let Err(e) = result {
                    self.fail(&st.w, &e);
                    lock(&self.pending).clear();
                    return;
                }
            }
            drop(sink);
            if self.is_broken() || lock(&self.pending).is_empty() {
                return;
            }
            sink = match self.sink.try_lock() {
                Ok(g) => g,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            };
        }
    }

    fn fail(&self, w: &W, e: &io::Error) {
        if !self.broken.swap(true, Ordering::Relaxed) {
            if is_disconnect(e) {
                log::debug!("nbd: client went away while a reply was sent: {e}");
            } else {
                log::warn!("nbd: cannot send a reply, closing the connection: {e}");
            }
            w.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A sink that records writes (and how many calls it took), failing after `fail_after`
    /// bytes if set.
    #[derive(Clone, Default)]
    struct Rec {
        out: Arc<Mutex<Vec<u8>>>,
        fail_after: Option<usize>,
    }

    impl Write for Rec {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut o = lock(&self.out);
            if self.fail_after.is_some_and(|n| o.len() + buf.len() > n) {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            // Short writes on purpose: exercise the resumption of vectored writes.
            let n = buf.len().min(1000);
            o.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink for Rec {
        fn abort(&self) {}
    }

    /// A reply whose header says its index and length, followed by that many bytes.
    fn reply(i: u32, len: usize) -> (Vec<u8>, Vec<u8>) {
        let mut h = i.to_be_bytes().to_vec();
        h.extend_from_slice(&u32::try_from(len).unwrap_or(0).to_be_bytes());
        (h, vec![u8::try_from(i % 251).unwrap_or(0); len])
    }

    #[test]
    fn concurrent_replies_arrive_whole_and_all_of_them() {
        let rec = Rec::default();
        let w = ReplyWriter::new(rec.clone());
        std::thread::scope(|s| {
            for t in 0..8u32 {
                let w = &w;
                s.spawn(move || {
                    for k in 0..200u32 {
                        let i = t * 1000 + k;
                        // Mix combined and direct replies.
                        let len = if k % 10 == 0 {
                            100_000
                        } else {
                            100 + (k as usize % 7) * 500
                        };
                        let (h, d) = reply(i, len);
                        assert!(w.send(&[&h, &d]));
                    }
                });
            }
        });
        let out = lock(&rec.out).clone();
        let mut seen = std::collections::HashSet::new();
        let mut pos = 0;
        while pos < out.len() {
            let i = u32::from_be_bytes(out[pos..pos + 4].try_into().unwrap_or_default());
            let len =
                u32::from_be_bytes(out[pos + 4..pos + 8].try_into().unwrap_or_default()) as usize;
            let body = &out[pos + 8..pos + 8 + len];
            assert!(
                body.iter().all(|&b| u32::from(b) == i % 251),
                "reply {i} interleaved"
            );
            assert!(seen.insert(i));
            pos += 8 + len;
        }
        assert_eq!(seen.len(), 1600);
    }

    /// A sink whose writes wait until `open` is set.
    struct Gated {
        open: Arc<AtomicBool>,
        inner: Rec,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            while !self.open.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
            self.inner.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink for Gated {
        fn abort(&self) {}
    }

    #[test]
    fn pending_replies_are_bounded_while_the_socket_is_stuck() {
        let open = Arc::new(AtomicBool::new(false));
        let rec = Rec::default();
        let w = ReplyWriter::new(Gated {
            open: Arc::clone(&open),
            inner: rec.clone(),
        });
        let sent = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            // Holds the socket, stuck in its first write.
            s.spawn(|| {
                let (h, d) = reply(0, 200_000);
                assert!(w.send(&[&h, &d]));
            });
            while w.sink.try_lock().is_ok() {
                std::thread::yield_now();
            }
            s.spawn(|| {
                for i in 1..=200 {
                    let (h, d) = reply(i, 60_000);
                    assert!(w.send(&[&h, &d]));
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            });
            // The small sender fills `pending` up to the cap, then has to wait for the socket.
            while lock(&w.pending).len() + 60_008 <= PENDING_MAX {
                std::thread::yield_now();
            }
            assert!(lock(&w.pending).len() <= PENDING_MAX);
            assert!(sent.load(Ordering::Relaxed) < 200);
            open.store(true, Ordering::Release);
        });
        assert_eq!(sent.load(Ordering::Relaxed), 200);
        assert_eq!(lock(&rec.out).len(), 200_008 + 200 * 60_008);
    }

    #[test]
    fn a_failed_write_breaks_the_writer_and_drops_later_replies() {
        let rec = Rec {
            fail_after: Some(10),
            ..Rec::default()
        };
        let w = ReplyWriter::new(rec);
        assert!(!w.send(&[b"0123456789abcdef"]));
        assert!(w.is_broken());
        assert!(!w.send(&[b"x"]));
    }
}
