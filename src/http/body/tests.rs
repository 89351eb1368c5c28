//! Body production against scripted sockets: short and stalled writes, buffer sizes, early
//! and late errors, the response budget.

use super::*;
use crate::http::range::ByteRange;
use crate::http::response::multipart;
use crate::serving::write_all_vectored;

mod cached;

impl WaitWritable for Trickle {
    fn wait_writable(&self, _: Duration) -> io::Result<bool> {
        Ok(true)
    }
}

impl WaitWritable for Calls {
    fn wait_writable(&self, _: Duration) -> io::Result<bool> {
        Ok(true)
    }
}

const T: Duration = Duration::from_secs(5);

/// `send` with a budget of `budget` bytes and `buf` as the connection's buffer.
fn run<W: Write + WaitWritable>(
    w: &mut W,
    budget: &Budget,
    buf: &mut Vec<u8>,
    head: Vec<u8>,
    plan: &Plan,
    read: &mut ReadAt<'_>,
    prefetch: Option<&mut dyn FnMut(u64, u64)>,
) -> Result<u64, SendError> {
    let mut b = Buffer::new();
    let r = send(
        w,
        Sending {
            budget,
            buf: &mut b,
            send_timeout: T,
            cached: None,
        },
        head,
        plan,
        read,
        prefetch,
    );
    buf.resize(b.len(), 0);
    r
}

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
    let sent = run(
        &mut w,
        &Budget::new(1 << 30),
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
    let budget = Budget::new(1 << 30);
    let sent = run(
        &mut w,
        &budget,
        &mut buf,
        b"H".to_vec(),
        &plan,
        &mut pattern,
        None,
    );
    assert_eq!(sent.ok(), Some(4096));
    assert_eq!(w.1, [4097]);
    assert_eq!(buf.len(), 4096);
}

#[test]
fn an_empty_body_still_sends_the_head() {
    let mut w = Calls(Vec::new(), Vec::new());
    let sent = run(
        &mut w,
        &Budget::new(1 << 30),
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
    let sent = run(
        &mut w,
        &Budget::new(1 << 30),
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
    let r = run(
        &mut w,
        &Budget::new(1 << 30),
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
    let r = run(
        &mut w,
        &Budget::new(1 << 30),
        &mut Vec::new(),
        b"H".to_vec(),
        &plan,
        &mut fails_later,
        None,
    );
    assert!(matches!(r, Err(SendError::Late(_))));
    assert_eq!(w.0.len(), MAX_CHUNK + 1, "head and first chunk only");
}

/// A socket that takes `first` bytes, then stalls once (no progress for a tick), then
/// takes everything.
struct StallOnce {
    out: Vec<u8>,
    first: usize,
    stalled: bool,
}

impl Write for StallOnce {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if self.out.len() >= self.first && !self.stalled {
            self.stalled = true;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = if self.stalled {
            b.len()
        } else {
            b.len().min(self.first - self.out.len())
        };
        self.out.extend_from_slice(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl WaitWritable for StallOnce {
    fn wait_writable(&self, _: Duration) -> io::Result<bool> {
        Ok(true)
    }
}

fn stall_once_after(first: usize) -> StallOnce {
    StallOnce {
        out: Vec::new(),
        first,
        stalled: false,
    }
}

/// The multipart body the stall tests send (a short text piece, then a 1.5 MB range), and
/// its whole output ("HEAD" first) written without a stall.
fn stall_plan(budget: &Budget) -> (Plan, Vec<u8>) {
    let plan = multipart(&[range(0, 99), range(2_000_000, 3_500_000)], 4_000_000, "B")
        .unwrap_or_else(Plan::empty);
    let mut full = Calls(Vec::new(), Vec::new());
    let _ = run(
        &mut full,
        budget,
        &mut Vec::new(),
        b"HEAD".to_vec(),
        &plan,
        &mut pattern,
        None,
    );
    (plan, full.0)
}

#[test]
fn a_stalled_body_gives_its_buffer_back_and_resumes_exactly() {
    let budget = Budget::new(1 << 30);
    let (plan, full) = stall_plan(&budget);
    for first in [2, 500, MAX_CHUNK + 77] {
        let mut w = stall_once_after(first);
        let mut b = Buffer::new();
        let sent = send(
            &mut w,
            Sending {
                budget: &budget,
                buf: &mut b,
                send_timeout: T,
                cached: None,
            },
            b"HEAD".to_vec(),
            &plan,
            &mut pattern,
            None,
        );
        assert_eq!(sent.ok(), Some(plan.len));
        assert!(w.out == full, "resumed after {first} bytes");
        assert!(w.stalled);
    }
}

#[test]
fn a_stalled_socket_holds_no_budget_while_it_waits() {
    struct Stuck<'b>(&'b Budget, std::cell::Cell<Option<u64>>);
    impl Write for Stuck<'_> {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl WaitWritable for Stuck<'_> {
        fn wait_writable(&self, _: Duration) -> io::Result<bool> {
            self.1.set(Some(self.0.used()));
            Ok(false)
        }
    }
    let budget = Budget::new(1 << 30);
    let mut w = Stuck(&budget, std::cell::Cell::new(None));
    let mut b = Buffer::new();
    let r = send(
        &mut w,
        Sending {
            budget: &budget,
            buf: &mut b,
            send_timeout: T,
            cached: None,
        },
        b"H".to_vec(),
        &Plan::data(range(0, 3 * MAX_CHUNK as u64)),
        &mut pattern,
        None,
    );
    assert!(matches!(r, Err(SendError::Io(e)) if e.kind() == io::ErrorKind::TimedOut));
    assert_eq!(
        w.1.get(),
        Some(0),
        "the buffer was given back before the wait"
    );
    assert_eq!(budget.used(), 0);
}

#[test]
fn no_budget_before_the_head_is_busy() {
    let budget = Budget::new(1 << 20);
    let _all = budget.acquire(1 << 20, 1 << 20, T);
    let mut b = Buffer::new();
    let r = send(
        &mut Calls(Vec::new(), Vec::new()),
        Sending {
            budget: &budget,
            buf: &mut b,
            send_timeout: Duration::from_millis(10),
            cached: None,
        },
        b"H".to_vec(),
        &Plan::data(range(0, 99)),
        &mut pattern,
        None,
    );
    assert!(matches!(r, Err(SendError::Busy)));
}
