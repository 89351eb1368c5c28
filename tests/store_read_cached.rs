//! `Snapshot::read_cached`, the zero-copy answer from the block cache that NBD READ replies
//! use (issue 11): for every fixture and stream, once the blocks are cached, random ranges
//! answered from the cache are byte-exact; a range with any block not cached, an empty range,
//! a range past the end, and every range without a cache are not answered (the caller then
//! uses `read_at`).

// Fixture streams are a few MiB: their offsets and lengths fit a usize.
#![allow(clippy::cast_possible_truncation)]

mod common;

use common::{FIXTURES, Rng, engine, fixture};
use hexzd::format::Stream;
use hexzd::store::{Segment, Snapshot};

/// The bytes of `segments`, concatenated.
fn bytes(segments: &[Segment]) -> Vec<u8> {
    Segment::parts(&[], segments).concat()
}

/// Reads all of `stream` twice in 64 KiB pieces: a block enters the cache on its second miss.
fn warm(snap: &Snapshot, stream: Stream) {
    let size = snap.size(stream);
    let mut buf = vec![0u8; 64 << 10];
    for _ in 0..2 {
        let mut off = 0;
        while off < size {
            let n = snap.read_at(stream, off, &mut buf).expect("read");
            off += n as u64;
        }
    }
}

#[test]
fn cached_ranges_of_every_fixture_are_byte_exact() {
    for f in FIXTURES {
        let snap = Snapshot::open_with(fixture(f.archive), &engine(256 << 20, 2), &f.options())
            .expect("open");
        for stream in [Stream::Main, Stream::Aux] {
            let want = f.expected(stream);
            let size = want.len() as u64;
            warm(&snap, stream);
            let mut out = Vec::new();
            let mut rng = Rng::new(size ^ 11);
            let mut ranges: Vec<(u64, usize)> = (0..200)
                .filter(|_| size > 0)
                .map(|_| {
                    let off = rng.below(size);
                    let len = rng.range(1, (size - off).min(3 << 20));
                    (off, len as usize)
                })
                .collect();
            if size > 0 {
                ranges.extend([(0, size as usize), (size - 1, 1)]);
            }
            for (off, len) in ranges {
                assert!(
                    snap.read_cached(stream, off, len, &mut out),
                    "{} {stream:?} {off}+{len} not answered from a warm cache",
                    f.archive
                );
                let o = off as usize;
                assert!(
                    bytes(&out) == want[o..o + len],
                    "{} {stream:?} {off}+{len} differs",
                    f.archive
                );
                assert_eq!(out.iter().map(Segment::len).sum::<usize>(), len);
            }
            assert!(!snap.read_cached(stream, 0, 0, &mut out), "empty range");
            assert!(
                !snap.read_cached(stream, size, 1, &mut out),
                "range at the end"
            );
            if size > 0 {
                assert!(
                    !snap.read_cached(stream, size - 1, 2, &mut out),
                    "range past the end"
                );
            }
            assert!(
                !snap.read_cached(stream, u64::MAX - 1, 4, &mut out),
                "range overflowing u64"
            );
            assert!(out.is_empty());
        }
    }
}

#[test]
fn a_range_with_any_block_not_cached_is_left_to_read_at() {
    let snap = Snapshot::open_with(
        fixture("mixed-lz4.hxz"),
        &engine(256 << 20, 2),
        &Default::default(),
    )
    .expect("open");
    let want = common::raw("mixed.img");
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096];
    // Cold: nothing cached.
    assert!(!snap.read_cached(Stream::Main, 0, 4096, &mut out));
    // A first miss is not kept (the cache's admission), a second is.
    snap.read_at(Stream::Main, 0, &mut buf).expect("read");
    assert!(!snap.read_cached(Stream::Main, 0, 4096, &mut out));
    snap.read_at(Stream::Main, 0, &mut buf).expect("read");
    assert!(snap.read_cached(Stream::Main, 0, 4096, &mut out));
    assert!(bytes(&out) == want[..4096]);
    // A range reaching into blocks that were never read is not answered, and leaves `out`
    // empty.
    assert!(!snap.read_cached(Stream::Main, 0, 4 << 20, &mut out));
    assert!(out.is_empty());
}

#[test]
fn without_a_cache_nothing_is_answered() {
    let snap = Snapshot::open_with(fixture("mixed-lz4.hxz"), &engine(0, 2), &Default::default())
        .expect("open");
    warm(&snap, Stream::Main);
    let mut out = Vec::new();
    assert!(!snap.read_cached(Stream::Main, 0, 4096, &mut out));
    assert!(out.is_empty());
}
