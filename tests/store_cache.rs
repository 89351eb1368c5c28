//! The block cache and the decompression pool, observed through `StoreMetrics`: concurrent
//! readers of a cold block cause one decompression; dedup entries decode once; prefetched
//! blocks are not decoded again; the cache stays within its budget; without a cache every read
//! decodes again; a block enters the cache on its second miss, so a scan leaves the cache
//! alone (issue 11).

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use common::{ArchiveBytes, engine, fixture, raw, read_all};
use hexzd::format::{BlockKind, Stream};
use hexzd::store::{OpenOptions, Snapshot};

fn open_on(name: &str, cache: usize, workers: usize) -> Snapshot {
    Snapshot::open_with(
        fixture(name),
        &engine(cache, workers),
        &OpenOptions::default(),
    )
    .expect("open")
}

fn decompressions(s: &Snapshot) -> u64 {
    s.metrics().decompressions.load(Ordering::Relaxed)
}

/// Distinct stored blocks of a stream (dedup entries counted once).
fn distinct_data_blocks(name: &str, stream: Stream) -> u64 {
    let mut seen = HashSet::new();
    ArchiveBytes::fixture(name)
        .blocks()
        .iter()
        .filter(|b| b.stream == stream && b.info.kind() == BlockKind::Data)
        .filter(|b| seen.insert(b.info.offset))
        .count() as u64
}

#[test]
fn concurrent_readers_of_a_cold_block_decompress_it_once() {
    let snap = open_on("mixed-zstd.hxz", 64 << 20, 4);
    let want = raw("mixed.img");
    let b = ArchiveBytes::fixture("mixed-zstd.hxz").blocks()[6];
    let (s, l) = (b.logical, b.info.logical_len as usize);
    // A first miss is not kept (cache admission): the concurrent readers below are the
    // block's second miss, whose one load the cache keeps.
    snap.read_at(Stream::Main, s, &mut [0u8; 1]).expect("read");
    std::thread::scope(|scope| {
        for t in 0..12u64 {
            let snap = snap.clone();
            let want = &want;
            scope.spawn(move || {
                // Every thread reads a different slice of the same block.
                let off = s + t * 97;
                let mut buf = vec![0u8; l / 3];
                let n = snap.read_at(Stream::Main, off, &mut buf).expect("read");
                let o = usize::try_from(off).expect("usize");
                assert!(buf[..n] == want[o..o + n]);
            });
        }
    });
    assert_eq!(
        decompressions(&snap),
        2,
        "one first miss, then one decompression for twelve concurrent readers"
    );
    assert_eq!(snap.metrics().block_errors.load(Ordering::Relaxed), 0);
}

#[test]
fn dedup_entries_share_one_decompression() {
    let snap = open_on("vm-dir-lz4.hxz", 64 << 20, 2);
    let got = read_all(&snap, Stream::Main, 1 << 20).expect("read");
    assert!(got == raw("vm/disk.img"));
    let distinct = distinct_data_blocks("vm-dir-lz4.hxz", Stream::Main);
    let entries = ArchiveBytes::fixture("vm-dir-lz4.hxz")
        .blocks()
        .iter()
        .filter(|b| b.stream == Stream::Main)
        .count() as u64;
    assert!(distinct < entries, "the fixture has dedup entries");
    // The first pass keeps the blocks it meets twice (dedup entries share a cache key); the
    // second pass decodes each of the others once more, and keeps it.
    let first = decompressions(&snap);
    assert!(first >= distinct && first < entries, "{first}");
    let got = read_all(&snap, Stream::Main, 1 << 20).expect("read");
    assert!(got == raw("vm/disk.img"));
    let second = decompressions(&snap) - first;
    assert!(second <= distinct, "{second} of {distinct}");
    // A third pass is served from the cache.
    let got = read_all(&snap, Stream::Main, 4096).expect("read");
    assert!(got == raw("vm/disk.img"));
    assert_eq!(decompressions(&snap), first + second);
    assert!(snap.metrics().cache_hits.load(Ordering::Relaxed) > 0);
}

#[test]
fn prefetched_blocks_are_not_decoded_again() {
    let snap = open_on("mixed-lz4.hxz", 64 << 20, 3);
    // The first blocks: few enough that prefetch claims every one (it stops at a full queue).
    let blocks: Vec<_> = ArchiveBytes::fixture("mixed-lz4.hxz")
        .blocks()
        .into_iter()
        .filter(|b| b.stream == Stream::Main)
        .take(6)
        .collect();
    let len = blocks
        .iter()
        .map(|b| u64::from(b.info.logical_len))
        .sum::<u64>();
    let distinct = blocks
        .iter()
        .filter(|b| b.info.kind() == BlockKind::Data)
        .map(|b| b.info.offset)
        .collect::<HashSet<_>>()
        .len() as u64;
    snap.prefetch(Stream::Main, 0, len).expect("prefetch");
    // Reads in pieces that straddle blocks: every prefetched block is kept whole.
    let want = raw("mixed.img");
    let mut pos = 0;
    while pos < len {
        let mut buf = vec![0u8; usize::try_from((len - pos).min(10_000)).expect("usize")];
        let n = snap.read_at(Stream::Main, pos, &mut buf).expect("read");
        let p = usize::try_from(pos).expect("usize");
        assert!(buf[..n] == want[p..p + n]);
        pos += n as u64;
    }
    assert_eq!(decompressions(&snap), distinct);
    // Prefetch past the end, of nothing, and of an empty stream: no-ops.
    snap.prefetch(Stream::Main, u64::MAX, 10).expect("prefetch");
    snap.prefetch(Stream::Main, 0, 0).expect("prefetch");
    snap.prefetch(Stream::Aux, 0, 100).expect("prefetch");
}

#[test]
fn without_a_cache_every_read_decodes_again() {
    let snap = open_on("hello-lz4.hxz", 0, 1);
    let mut buf = [0u8; 10];
    for _ in 0..3 {
        snap.read_at(Stream::Main, 5, &mut buf).expect("read");
    }
    assert_eq!(decompressions(&snap), 3);
    assert_eq!(snap.engine().cache_used(), 0);
}

#[test]
fn a_small_cache_stays_within_its_budget() {
    let budget = 1 << 20;
    let snap = open_on("mixed-lz4.hxz", budget, 2);
    for chunk in [1 << 20, 77_777] {
        let got = read_all(&snap, Stream::Main, chunk).expect("read");
        assert!(got == raw("mixed.img"));
        assert!(
            snap.engine().cache_used() <= budget,
            "{}",
            snap.engine().cache_used()
        );
    }
}

#[test]
fn snapshots_of_one_file_on_one_engine_share_the_archive_and_its_cache() {
    let e = engine(64 << 20, 2);
    let a =
        Snapshot::open_with(fixture("hello-lz4.hxz"), &e, &OpenOptions::default()).expect("open");
    let b =
        Snapshot::open_with(fixture("hello-lz4.hxz"), &e, &OpenOptions::default()).expect("open");
    assert!(std::sync::Arc::ptr_eq(a.archive(), b.archive()));
    let mut buf = [0u8; 100];
    // b's read is the block's second miss (a's was the first), so the cache keeps it, and a
    // finds it there.
    a.read_at(Stream::Main, 0, &mut buf).expect("read");
    b.read_at(Stream::Main, 0, &mut buf).expect("read");
    a.read_at(Stream::Main, 0, &mut buf).expect("read");
    assert_eq!(decompressions(&a), 2);
    assert!(b.metrics().cache_hits.load(Ordering::Relaxed) > 0);
    assert_eq!(a.identity(), b.identity());
}

/// Regression: NBD_CMD_CACHE with the block cache off used to decode whole ranges only to
/// throw them away (28 bytes of request bought 32 MiB of decompression on the shared pool).
#[test]
fn prefetch_without_a_cache_decodes_nothing() {
    let snap = open_on("mixed-lz4.hxz", 0, 2);
    let metrics = std::sync::Arc::clone(snap.metrics());
    for _ in 0..50 {
        snap.prefetch(Stream::Main, 0, u64::MAX).expect("prefetch");
    }
    // Dropping the last handle drops the engine, whose pool runs every queued job first.
    drop(snap);
    assert_eq!(metrics.decompressions.load(Ordering::Relaxed), 0);
}

/// A cold scan touches each block once: with the cache on it decodes as much as with the cache
/// off and keeps nothing (before issue 11 it copied every block into new cache memory, and
/// evicted what other readers used). Blocks read twice are kept and survive the scan.
#[test]
fn a_cold_scan_keeps_nothing_and_evicts_nothing() {
    let snap = open_on("mixed-lz4.hxz", 64 << 20, 2);
    // A hot block: missed twice, so kept.
    let mut small = [0u8; 100];
    for _ in 0..2 {
        snap.read_at(Stream::Main, 0, &mut small).expect("read");
    }
    let kept = snap.engine().cache_used();
    assert!(kept > 0);
    let before = decompressions(&snap);
    // A scan in pieces that do not line up with blocks but are larger than any block
    // (nbdcopy-like), so each block is met at most twice, the second time where the first
    // read stopped. (Smaller pieces meet a block three times or more: small sequential reads,
    // which the cache keeps from the third.)
    let got = read_all(&snap, Stream::Main, 300_000).expect("read");
    assert!(got == raw("mixed.img"));
    let scanned = decompressions(&snap) - before;
    let nocache = open_on("mixed-lz4.hxz", 0, 2);
    read_all(&nocache, Stream::Main, 300_000).expect("read");
    assert!(
        scanned < decompressions(&nocache),
        "{scanned} decodes with the cache, {} without (the hot block is a hit)",
        decompressions(&nocache)
    );
    // Kept: only blocks the scan itself met twice (dedup entries share stored bytes).
    let mut uses = std::collections::HashMap::new();
    for b in ArchiveBytes::fixture("mixed-lz4.hxz").blocks() {
        if b.stream == Stream::Main && b.info.kind() == BlockKind::Data {
            *uses.entry((b.info.offset, b.info.logical_len)).or_insert(0) += 1;
        }
    }
    let dups: usize = uses
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|((_, l), _)| *l as usize + 96)
        .sum();
    let added = snap.engine().cache_used() - kept;
    assert!(
        added <= dups,
        "the scan kept {added} bytes; dedup blocks: {dups}"
    );
    let hits = snap.metrics().cache_hits.load(Ordering::Relaxed);
    snap.read_at(Stream::Main, 0, &mut small).expect("read");
    assert_eq!(snap.metrics().cache_hits.load(Ordering::Relaxed), hits + 1);
}
