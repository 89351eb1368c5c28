//! Chunks written straight from the block cache: exact, resumed after a stall, falling back
//! to the buffer, never waiting for budget.

use super::*;

/// A cache that holds every stream byte (as the pattern), in blocks of `block` bytes, and
/// counts its answers.
fn pattern_cache(
    block: u64,
    calls: &mut usize,
) -> impl FnMut(u64, usize, &mut Vec<Segment>) -> bool + '_ {
    move |off, len, out| {
        *calls += 1;
        out.clear();
        let mut at = off;
        let end = off + len as u64;
        while at < end {
            let start = at - at % block;
            let mut data = vec![0u8; usize::try_from(block).unwrap_or(0)];
            let _ = pattern(start, &mut data);
            let skip = usize::try_from(at - start).unwrap_or(0);
            let n = usize::try_from((start + block).min(end) - at).unwrap_or(0);
            out.push(Segment::Block {
                data: std::sync::Arc::new(data),
                start: skip,
                len: n,
            });
            at += n as u64;
        }
        true
    }
}

/// `send` of `plan` after `head` with `cache` as the cached source and a fresh connection
/// buffer: the result, and how large that buffer grew (0: no byte went through it).
fn send_via<W: Write + WaitWritable>(
    w: &mut W,
    budget: &Budget,
    send_timeout: Duration,
    mut cache: impl FnMut(u64, usize, &mut Vec<Segment>) -> bool,
    head: &[u8],
    plan: &Plan,
    read: &mut ReadAt<'_>,
) -> (Result<u64, SendError>, usize) {
    let mut b = Buffer::new();
    let sent = send(
        w,
        Sending {
            budget,
            buf: &mut b,
            send_timeout,
            cached: Some(&mut cache),
        },
        head.to_vec(),
        plan,
        read,
        None,
    );
    (sent, b.len())
}

#[test]
fn a_cached_body_never_touches_the_buffer_and_resumes_exactly_after_a_stall() {
    let budget = Budget::new(1 << 30);
    let plan = Plan::data(range(3, 3_000_000));
    let mut want = b"HEAD".to_vec();
    want.extend(expected(3, 3_000_000));
    for first in [2, 500, MAX_CHUNK + 77] {
        let mut w = stall_once_after(first);
        let mut calls = 0;
        let cache = pattern_cache(65_536, &mut calls);
        // Reading into the buffer fails: every byte must come from the cache.
        let (sent, buffer) = send_via(&mut w, &budget, T, cache, b"HEAD", &plan, &mut |_, _| {
            Err(fault())
        });
        assert_eq!(sent.ok(), Some(plan.len), "stall after {first}");
        assert!(w.out == want, "resumed after {first} bytes");
        assert!(w.stalled);
        assert_eq!(buffer, 0, "no body buffer");
        assert_eq!(budget.used(), 0, "permits given back");
        assert!(calls >= 3, "{calls} answers for three chunks");
    }
}

#[test]
fn cached_chunks_are_exact_resume_after_a_stall_and_give_their_budget_back() {
    let budget = Budget::new(1 << 30);
    // Multipart: a chunk that starts in a text piece goes through the buffer (with the data
    // after it), one that starts in a range comes from the cache.
    let (plan, full) = stall_plan(&budget);
    for first in [2, 500, MAX_CHUNK + 77] {
        let mut w = stall_once_after(first);
        let mut calls = 0;
        let cache = pattern_cache(65_536, &mut calls);
        let (sent, _) = send_via(&mut w, &budget, T, cache, b"HEAD", &plan, &mut pattern);
        assert_eq!(sent.ok(), Some(plan.len), "stall after {first}");
        assert!(w.out == full, "resumed after {first} bytes");
        assert!(w.stalled);
        assert_eq!(budget.used(), 0);
        assert!(calls >= 1, "{calls} answers from the cache");
    }
}

#[test]
fn a_chunk_the_cache_does_not_hold_goes_through_the_buffer() {
    let budget = Budget::new(1 << 30);
    let plan = Plan::data(range(10, 3_000_000));
    let mut calls = 0;
    let cache = |_: u64, _: usize, _: &mut Vec<Segment>| {
        calls += 1;
        false
    };
    let mut w = Calls(Vec::new(), Vec::new());
    let (sent, _) = send_via(&mut w, &budget, T, cache, &[], &plan, &mut pattern);
    assert_eq!(sent.ok(), Some(plan.len));
    assert!(w.0 == expected(10, 3_000_000));
    assert_eq!(calls, 3, "asked once per chunk");
}

#[test]
fn a_cached_chunk_never_waits_for_budget() {
    // All of the budget is taken: the cached path does not wait for it, the buffered path
    // is busy.
    let budget = Budget::new(1 << 20);
    let _all = budget.acquire(1 << 20, 1 << 20, T);
    let mut calls = 0;
    let cache = pattern_cache(4096, &mut calls);
    let (r, _) = send_via(
        &mut Calls(Vec::new(), Vec::new()),
        &budget,
        Duration::from_millis(10),
        cache,
        b"H",
        &Plan::data(range(0, 99)),
        &mut pattern,
    );
    assert!(matches!(r, Err(SendError::Busy)));
    assert_eq!(calls, 0);
}
