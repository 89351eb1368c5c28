//! The sequential readers of one remote object, as pure bookkeeping: which runs of forward
//! reads are under way, and what each read should have fetched ahead (the window doubling up
//! to `[remote] readahead`). The object (`object.rs`) does the fetching.

/// Sequential readers tracked per object.
const STREAMS: usize = 4;
/// First read-ahead window, in chunks (1 MiB).
pub(super) const FIRST_WINDOW: u64 = 8;

/// A run of forward reads through the object.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seq {
    /// First chunk of the run.
    start: u64,
    /// One past the last chunk read.
    next: u64,
    /// One past the last chunk read ahead.
    ahead: u64,
    /// Read-ahead window in chunks (doubles up to the configured bound).
    window: u64,
    /// Reads seen in this run.
    hits: u32,
    /// Recency, to replace the oldest run.
    tick: u64,
}

/// Records a read of chunks `first..=last` in the object's streams and returns the chunks
/// to fetch ahead, if any. A read continues a stream when it starts anywhere from the
/// stream's start to just past its end: the blocks of one large read, loaded one by one and
/// out of order by the decode workers, each top the read-ahead up while the read is decoded
/// (measured: counting only reads at the stream's end issued the same GETs later and cut
/// cold sequential throughput by a third). Pure bookkeeping.
pub(super) fn advance(
    seqs: &mut Vec<Seq>,
    tick: &mut u64,
    first: u64,
    last: u64,
    max_window: u64,
    chunks: u64,
) -> Option<(u64, u64)> {
    *tick += 1;
    let now = *tick;
    if let Some(s) = seqs
        .iter_mut()
        .find(|s| first >= s.start && first <= s.next + 1)
    {
        s.tick = now;
        s.next = s.next.max(last + 1);
        s.hits += 1;
        let mut job = None;
        if s.hits >= 2 && s.ahead < s.next + s.window / 2 {
            let from = s.ahead.max(s.next);
            let to = (s.next + s.window).min(chunks);
            if to > from {
                job = Some((from, to));
                s.ahead = to;
            }
            s.window = (s.window * 2).min(max_window);
        }
        return job;
    }
    let seq = Seq {
        start: first,
        next: last + 1,
        ahead: last + 1,
        window: FIRST_WINDOW.min(max_window),
        hits: 1,
        tick: now,
    };
    if seqs.len() < STREAMS {
        seqs.push(seq);
    } else if let Some(oldest) = seqs.iter_mut().min_by_key(|s| s.tick) {
        *oldest = seq;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forward_reader_gets_read_ahead_that_grows() {
        let (mut seqs, mut tick) = (Vec::new(), 0);
        assert_eq!(advance(&mut seqs, &mut tick, 0, 7, 128, 1000), None);
        let mut jobs = Vec::new();
        for r in 1..20u64 {
            if let Some(j) = advance(&mut seqs, &mut tick, r * 8, r * 8 + 7, 128, 1000) {
                jobs.push(j);
            }
        }
        assert_eq!(jobs[0], (16, 24));
        // Windows never overlap, and the last ones are the full bound.
        for w in jobs.windows(2) {
            assert!(w[1].0 >= w[0].1, "{jobs:?}");
        }
        // The read-ahead stays at least half the bound ahead of the reader (at chunk 160).
        assert!(
            jobs.iter().map(|j| j.1).max().unwrap() >= 160 + 64,
            "{jobs:?}"
        );
        // A reader that ended mid-chunk starts its next read in that chunk: still a stream.
        let (mut seqs, mut tick) = (Vec::new(), 0);
        advance(&mut seqs, &mut tick, 0, 3, 128, 1000);
        assert!(advance(&mut seqs, &mut tick, 3, 7, 128, 1000).is_some());
    }

    #[test]
    fn the_blocks_of_a_large_read_keep_its_stream_and_top_it_up() {
        let (mut seqs, mut tick) = (Vec::new(), 0);
        let mut jobs = 0;
        for r in 0..10u64 {
            // One 8 MiB read (64 chunks), then its blocks loaded out of order, two chunks
            // each, as the decode workers take them.
            let (first, last) = (r * 64, r * 64 + 63);
            jobs += usize::from(advance(&mut seqs, &mut tick, first, last, 128, 1000).is_some());
            for b in (0..32u64).rev() {
                let f = first + b * 2;
                jobs += usize::from(advance(&mut seqs, &mut tick, f, f + 1, 128, 1000).is_some());
            }
        }
        assert_eq!(seqs.len(), 1, "{seqs:?}");
        assert!(jobs >= 4, "{jobs} read-ahead jobs for 10 reads");
    }
}
