//! The reply writer: whole replies under concurrency, bounded pending bytes while the socket
//! is stuck, and what a failed write does to later replies.

use super::*;
use std::sync::Arc;

const T: Duration = Duration::from_secs(5);

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

impl WaitWritable for Rec {
    fn wait_writable(&self, _: Duration) -> io::Result<bool> {
        Ok(true)
    }
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
    let w = ReplyWriter::new(rec.clone(), T);
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
        let len = u32::from_be_bytes(out[pos + 4..pos + 8].try_into().unwrap_or_default()) as usize;
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

impl WaitWritable for Gated {
    fn wait_writable(&self, _: Duration) -> io::Result<bool> {
        Ok(true)
    }
}

#[test]
fn pending_replies_are_bounded_while_the_socket_is_stuck() {
    let open = Arc::new(AtomicBool::new(false));
    let rec = Rec::default();
    let w = ReplyWriter::new(
        Gated {
            open: Arc::clone(&open),
            inner: rec.clone(),
        },
        T,
    );
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
    let w = ReplyWriter::new(rec, T);
    assert!(!w.send(&[b"0123456789abcdef"]));
    assert!(w.is_broken());
    assert!(!w.send(&[b"x"]));
}
