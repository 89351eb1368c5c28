//! READs the connection's reader answers itself (every block cached, at most 256 KiB; see
//! `Conn::try_inline`) mixed with READs that go to handler threads, on one pipelined
//! connection: every reply arrives once, with its cookie and the exact bytes, in simple and
//! in structured mode (holes as OFFSET_HOLE chunks), for LZ4 and Zstd archives, one with
//! sparse blocks, and a thin child whose blocks come from its parent.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod nbd_support;

use std::collections::HashMap;
use std::io::{Read, Write};

use hexzd::nbd::proto::*;
use nbd_support::*;

fn raw(path: &str) -> Vec<u8> {
    std::fs::read(data().join(path)).unwrap()
}

/// `n` pseudo-random ranges of 1 byte to 300 KiB (some above the inline limit) in `size`.
fn ranges(seed: u64, n: usize, size: usize) -> Vec<(usize, usize)> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let len = 1 + (x >> 40) as usize % (300 << 10).min(size);
            let off = (x >> 16) as usize % (size - len + 1);
            (off, len)
        })
        .collect()
}

/// Sends READs of `ranges` in one write, cookies `base + i`.
fn send_batch(c: &mut RawClient, base: u64, ranges: &[(usize, usize)]) {
    let mut batch = Vec::new();
    for (i, &(off, len)) in ranges.iter().enumerate() {
        batch.extend_from_slice(
            &Request {
                flags: 0,
                command: NBD_CMD_READ,
                cookie: base + i as u64,
                offset: off as u64,
                length: len as u32,
            }
            .encode(),
        );
    }
    c.s.write_all(&batch).unwrap();
}

/// Reads one reply per request of the batch (in any order) and checks it against `want`.
fn check_simple(c: &mut RawClient, base: u64, ranges: &[(usize, usize)], want: &[u8]) {
    let mut open: HashMap<u64, (usize, usize)> = (0..ranges.len())
        .map(|i| (base + i as u64, ranges[i]))
        .collect();
    while !open.is_empty() {
        let mut h = [0u8; SIMPLE_REPLY_LEN];
        c.s.read_exact(&mut h).unwrap();
        let ReplyHeader::Simple { error, cookie } = ReplyHeader::decode(&h).unwrap() else {
            panic!("simple replies only");
        };
        assert_eq!(error, 0, "cookie {cookie}");
        let (off, len) = open.remove(&cookie).expect("known, unanswered cookie");
        let mut d = vec![0u8; len];
        c.s.read_exact(&mut d).unwrap();
        assert!(d == want[off..off + len], "cookie {cookie}: {off}+{len}");
    }
}

/// Reads structured chunks until every request of the batch is DONE, rebuilding each reply
/// from its OFFSET_DATA and OFFSET_HOLE chunks, and checks them against `want`. Returns the
/// number of hole chunks.
fn check_structured(c: &mut RawClient, base: u64, ranges: &[(usize, usize)], want: &[u8]) -> usize {
    let mut open: HashMap<u64, (usize, usize, Vec<u8>, usize)> = (0..ranges.len())
        .map(|i| {
            let (off, len) = ranges[i];
            (base + i as u64, (off, len, vec![0xAA; len], 0))
        })
        .collect();
    let mut holes = 0;
    while !open.is_empty() {
        let (flags, chunk_type, cookie, p) = c.chunk();
        let (off, _, buf, filled) = open.get_mut(&cookie).expect("known, open cookie");
        let at = u64::from_be_bytes(p[..8].try_into().unwrap()) as usize - *off;
        match chunk_type {
            NBD_REPLY_TYPE_OFFSET_DATA => {
                buf[at..at + p.len() - 8].copy_from_slice(&p[8..]);
                *filled += p.len() - 8;
            }
            NBD_REPLY_TYPE_OFFSET_HOLE => {
                let n = u32::from_be_bytes(p[8..12].try_into().unwrap()) as usize;
                buf[at..at + n].fill(0);
                *filled += n;
                holes += 1;
            }
            t => panic!("cookie {cookie}: unexpected chunk type {t}"),
        }
        if flags & NBD_REPLY_FLAG_DONE != 0 {
            let (off, len, buf, filled) = open.remove(&cookie).unwrap();
            assert_eq!(filled, len, "cookie {cookie}: chunks cover the range");
            assert!(buf == want[off..off + len], "cookie {cookie}: {off}+{len}");
        }
    }
    holes
}

/// Three batches on one connection: cold ranges (handlers decode), the same ranges again
/// (all cached: the reader answers those up to 256 KiB) interleaved with new cold ones, and
/// the whole image in 64 KiB READs twice. Returns the number of hole chunks received.
fn mixed_batches(export: &str, image: &str, structured: bool) -> usize {
    let server = Server::start(&all_fixture_specs());
    let want = raw(image);
    let mut c = RawClient::connect(&server, export, structured);
    assert_eq!(c.size as usize, want.len());
    let first = ranges(7, 64, want.len());
    let mut second = first.clone();
    for (i, r) in ranges(8, 64, want.len()).into_iter().enumerate() {
        second.insert(2 * i + 1, r);
    }
    let whole: Vec<(usize, usize)> = (0..want.len())
        .step_by(64 << 10)
        .map(|o| (o, (64 << 10).min(want.len() - o)))
        .collect();
    let whole_twice: Vec<(usize, usize)> = whole.iter().chain(&whole).copied().collect();
    let mut holes = 0;
    for (base, batch) in [(0, &first), (1000, &second), (5000, &whole_twice)] {
        send_batch(&mut c, base, batch);
        if structured {
            holes += check_structured(&mut c, base, batch, &want);
        } else {
            check_simple(&mut c, base, batch, &want);
        }
    }
    holes
}

#[test]
fn cached_and_uncached_reads_pipelined_with_simple_replies() {
    mixed_batches("mixed", "mixed.img", false);
}

#[test]
fn cached_and_uncached_reads_pipelined_with_structured_replies() {
    mixed_batches("mixed", "mixed.img", true);
    mixed_batches("mixed-zstd", "mixed.img", true);
}

#[test]
fn replies_with_holes_and_data_mixed() {
    // 1 data block and 4 sparse ones: all-hole READs, all-data READs and READs of both.
    assert!(mixed_batches("zeros", "zeros.img", true) > 0);
    mixed_batches("zeros", "zeros.img", false);
}

#[test]
fn thin_child_reads_from_the_parent_through_the_cache() {
    mixed_batches("child", "mixed-child.img", true);
    mixed_batches("child", "mixed-child.img", false);
}
