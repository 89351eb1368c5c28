//! Bad block entries and stored bytes (issue 2): offset + length past EOF, absurd
//! `logical_len` and stored lengths, a decompressed size other than `logical_len`, CRC
//! mismatch, truncated LZ4 and Zstd data, an entry with a zero stored length. Each read of the
//! block is an error naming the file, block and stream offset (never a panic or a huge
//! allocation, never zeros or stale bytes); other blocks still read; `verify` exits non-zero
//! and lists exactly the bad blocks with their stream offsets.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{ArchiveBytes, Located, assert_clean_failure, engine, hexzd, open, raw, run};
use hexzd::format::codec::crc32;
use hexzd::format::{BLOCK_OFFSET_PARENT, BlockInfo, BlockKind, MAX_BLOCK_LEN, Stream};
use hexzd::store::{BlockFault, OpenOptions, Snapshot, StoreError};

/// One corruption of one block entry (and perhaps its stored bytes).
type Corrupt = fn(&mut ArchiveBytes, &mut BlockInfo);

fn data_blocks(a: &ArchiveBytes) -> Vec<Located> {
    a.blocks()
        .into_iter()
        .filter(|b| b.info.kind() == BlockKind::Data)
        .collect()
}

/// Applies `corrupt` to data block `which` of fixture `name`, saves it, and returns the path
/// and the (original) location of the block.
fn corrupted(
    dir: &Path,
    name: &str,
    which: usize,
    tag: &str,
    corrupt: Corrupt,
) -> (PathBuf, Located) {
    let mut a = ArchiveBytes::fixture(name);
    let b = data_blocks(&a)[which];
    let mut info = b.info;
    corrupt(&mut a, &mut info);
    a.set_block(b.entry_pos, &info);
    let path = dir.join(format!("{tag}-{name}"));
    a.save(&path);
    (path, b)
}

/// Reading block `b` fails with a block error naming it; `check` inspects the fault.
fn read_fails(snap: &Snapshot, b: &Located, check: impl Fn(&BlockFault) -> bool) -> StoreError {
    let mut buf = vec![0u8; 1000];
    let e = snap
        .read_at(b.stream, b.logical + 10, &mut buf)
        .expect_err("a corrupt block must not read");
    match &e {
        StoreError::Block {
            path,
            stream,
            block,
            offset,
            fault,
        } => {
            assert_eq!(path, snap.path());
            assert_eq!(*stream, b.stream);
            assert_eq!(*block, b.index, "{e}");
            assert_eq!(*offset, b.logical, "{e}");
            assert!(check(fault), "unexpected fault: {e}");
        }
        other => panic!("expected a block error, got {other}"),
    }
    let msg = e.to_string();
    assert!(msg.contains(&format!("block {}", b.index)), "{msg}");
    assert!(
        msg.contains(&format!("stream offset {}", b.logical)),
        "{msg}"
    );
    e
}

/// The other blocks of the stream still read exactly (when the corruption kept the layout).
fn others_read(snap: &Snapshot, bad: &Located, want: &[u8]) {
    for b in ArchiveBytes::load(snap.path()).blocks() {
        if b.index == bad.index || b.info.offset == bad.info.offset || b.stream != bad.stream {
            continue;
        }
        let (s, l) = (common::us(b.logical), b.info.logical_len as usize);
        let mut buf = vec![0u8; l];
        snap.read_at(b.stream, b.logical, &mut buf)
            .unwrap_or_else(|e| panic!("block {}: {e}", b.index));
        assert!(buf == want[s..s + l], "block {}", b.index);
    }
}

/// `verify` (library and CLI) lists exactly `bad`, with stream offsets.
fn verify_lists(path: &Path, bad: &[&Located]) {
    let snap = open(path).expect("open");
    let report = snap.verify(|_, _| {}).expect("verify");
    let got: Vec<(Stream, u64, u64)> = report
        .bad
        .iter()
        .map(|b| (b.stream, b.block.expect("block number"), b.offset))
        .collect();
    let mut want: Vec<(Stream, u64, u64)> =
        bad.iter().map(|b| (b.stream, b.index, b.logical)).collect();
    want.sort_unstable_by_key(|w| (w.0, w.2));
    assert_eq!(got, want, "{:?}", report.bad);
    let o = run(hexzd().arg("verify").arg(path));
    assert_eq!(o.status.code(), Some(1), "verify must exit 1");
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("BAD")).collect();
    assert_eq!(lines.len(), bad.len(), "{out}");
    for b in bad {
        let needle = format!("block {} at stream offset {}", b.index, b.logical);
        assert!(
            lines.iter().any(|l| l.contains(&needle)),
            "{needle} in {out}"
        );
    }
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("{} bad block", bad.len())), "{err}");
}

/// `cat` stops with a clean error naming the block.
fn cat_fails(path: &Path, b: &Located) {
    let o = run(hexzd()
        .arg("cat")
        .arg(path)
        .args(["--stream", b.stream.name()]));
    let err = assert_clean_failure(&o, "cat of a corrupt block");
    assert!(err.contains(&format!("block {}", b.index)), "{err}");
}

/// The full check for a corruption that keeps the layout of the stream.
fn check(name: &str, raw_name: &str, tag: &str, corrupt: Corrupt, fault: fn(&BlockFault) -> bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, b) = corrupted(dir.path(), name, 4, tag, corrupt);
    let snap = open(&path).expect("a bad block does not stop open");
    read_fails(&snap, &b, fault);
    others_read(&snap, &b, &raw(raw_name));
    verify_lists(&path, &[&b]);
    cat_fails(&path, &b);
}

fn past_eof(a: &mut ArchiveBytes, i: &mut BlockInfo) {
    i.offset = a.bytes.len() as u64 - u64::from(i.length) + 1;
}

#[test]
fn block_offset_plus_length_past_eof_is_a_block_error() {
    for name in ["mixed-lz4.hxz", "mixed-zstd.hxz"] {
        check(name, "mixed.img", "past-eof", past_eof, |f| {
            matches!(f, BlockFault::PastEof { .. })
        });
        check(
            name,
            "mixed.img",
            "overflow",
            |_, i| i.offset = BLOCK_OFFSET_PARENT - 1,
            |f| matches!(f, BlockFault::PastEof { .. }),
        );
        check(
            name,
            "mixed.img",
            "length-past-eof",
            |_, i| i.length = u32::MAX / 2,
            |f| {
                matches!(
                    f,
                    BlockFault::StoredTooLarge(_) | BlockFault::PastEof { .. }
                )
            },
        );
    }
}

#[test]
fn crc_mismatch_is_a_block_error() {
    for name in ["mixed-lz4.hxz", "mixed-zstd.hxz"] {
        check(
            name,
            "mixed.img",
            "crc-byte",
            |a, i| a.bytes[ArchiveBytes::stored_range(i).start + 100] ^= 1,
            |f| matches!(f, BlockFault::Codec(hexzd::format::CodecError::Crc { .. })),
        );
        check(
            name,
            "mixed.img",
            "crc-field",
            |_, i| i.checksum ^= 0x8000_0000,
            |f| matches!(f, BlockFault::Codec(hexzd::format::CodecError::Crc { .. })),
        );
    }
}

/// Shortens the stored bytes and recomputes the CRC, so the codec, not the CRC, finds it.
fn truncate_to(a: &mut ArchiveBytes, i: &mut BlockInfo, len: u32) {
    i.length = len;
    i.checksum = crc32(&a.bytes[ArchiveBytes::stored_range(i)]);
}

#[test]
fn truncated_lz4_data_is_a_block_error() {
    type Cut = fn(&mut ArchiveBytes, &mut BlockInfo);
    let cuts: [(&str, Cut); 4] = [
        ("lz4-cut-half", |a, i| truncate_to(a, i, i.length / 2)),
        ("lz4-cut-one", |a, i| truncate_to(a, i, i.length - 1)),
        ("lz4-cut-prefix", |a, i| truncate_to(a, i, 3)),
        ("lz4-cut-to-prefix", |a, i| truncate_to(a, i, 4)),
    ];
    for (tag, cut) in cuts {
        check("mixed-lz4.hxz", "mixed.img", tag, cut, |f| {
            matches!(f, BlockFault::Codec(_))
        });
    }
}

#[test]
fn truncated_zstd_data_is_a_block_error() {
    type Cut = fn(&mut ArchiveBytes, &mut BlockInfo);
    let cuts: [(&str, Cut); 4] = [
        ("zstd-cut-half", |a, i| truncate_to(a, i, i.length / 2)),
        ("zstd-cut-one", |a, i| truncate_to(a, i, i.length - 1)),
        ("zstd-cut-magic", |a, i| truncate_to(a, i, 3)),
        ("zstd-cut-header", |a, i| truncate_to(a, i, 6)),
    ];
    for (tag, cut) in cuts {
        check("mixed-zstd.hxz", "mixed.img", tag, cut, |f| {
            matches!(f, BlockFault::Codec(_))
        });
    }
}

#[test]
fn decompressed_size_other_than_logical_len_is_a_block_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["mixed-lz4.hxz", "mixed-zstd.hxz"] {
        for (tag, delta) in [("longer", 1i64), ("shorter", -1), ("much-shorter", -5000)] {
            let mut a = ArchiveBytes::fixture(name);
            let b = data_blocks(&a)[4];
            let mut info = b.info;
            info.logical_len = u32::try_from(i64::from(info.logical_len) + delta).expect("u32");
            a.set_block(b.entry_pos, &info);
            let path = dir.path().join(format!("{tag}-{name}"));
            a.save(&path);
            // Both the cached and the uncached path refuse it.
            for cache in [0, 16 << 20] {
                let snap = Snapshot::open_with(&path, &engine(cache, 2), &OpenOptions::default())
                    .expect("open");
                let e = read_fails(&snap, &b, |f| matches!(f, BlockFault::Codec(_)));
                assert!(!e.to_string().is_empty());
            }
            verify_lists(&path, &[&b]);
        }
    }
}

#[test]
fn absurd_logical_len_is_refused_without_allocating() {
    for len in [MAX_BLOCK_LEN + 1, u32::MAX] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = ArchiveBytes::fixture("mixed-lz4.hxz");
        let b = data_blocks(&a)[4];
        let mut info = b.info;
        info.logical_len = len;
        a.set_block(b.entry_pos, &info);
        let path = dir.path().join("huge.hxz");
        a.save(&path);
        let snap = open(&path).expect("open");
        read_fails(
            &snap,
            &b,
            |f| matches!(f, BlockFault::TooLarge(l) if *l == len),
        );
        verify_lists(&path, &[&b]);
        cat_fails(&path, &b);
    }
}

#[test]
fn absurd_logical_len_of_a_parent_reference_fails_fast() {
    // Regression: an unresolvable parent reference is checked against the BLAKE3 of
    // `logical_len` zero bytes; with a hostile 4 GiB `logical_len` that cost seconds of CPU per
    // read (and per verify) before failing.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = ArchiveBytes::fixture("mixed-lz4.hxz");
    let b = data_blocks(&a)[4];
    a.set_block(b.entry_pos, &BlockInfo::parent(u32::MAX, [0x11; 32]));
    let path = dir.path().join("huge-parent.hxz");
    a.save(&path);
    let snap = open(&path).expect("open");
    let start = Instant::now();
    for _ in 0..5 {
        read_fails(&snap, &b, |f| matches!(f, BlockFault::TooLarge(_)));
    }
    let report = snap.verify(|_, _| {}).expect("verify");
    assert_eq!(report.bad.len(), 1, "{:?}", report.bad);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn zero_stored_length_at_a_real_offset_is_a_block_error() {
    check(
        "mixed-lz4.hxz",
        "mixed.img",
        "zero-length",
        |_, i| i.length = 0,
        |f| matches!(f, BlockFault::Invalid(_)),
    );
}

#[test]
fn dedup_entry_with_a_corrupt_entry_fails_even_when_its_twin_is_cached() {
    // Regression: the block cache was keyed by file offset alone, so an entry sharing stored
    // bytes with an intact twin was served from the twin's cached decode without its own
    // (corrupt) length or checksum ever being checked; the result depended on what had been
    // read before.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = ArchiveBytes::fixture("vm-dir-lz4.hxz");
    let blocks = a.blocks();
    let twins: Vec<Located> = blocks
        .iter()
        .filter(|b| {
            b.info.kind() == BlockKind::Data
                && blocks
                    .iter()
                    .filter(|o| o.info.offset == b.info.offset)
                    .count()
                    > 1
        })
        .copied()
        .collect();
    let (good, bad) = (
        twins[0],
        *twins
            .iter()
            .find(|t| t.info.offset == twins[0].info.offset && t.index != twins[0].index)
            .expect("a twin"),
    );
    for (tag, edit) in [
        (
            "crc",
            (|i: &mut BlockInfo| i.checksum ^= 1) as fn(&mut BlockInfo),
        ),
        ("length", |i: &mut BlockInfo| i.length -= 1),
    ] {
        let mut info = bad.info;
        edit(&mut info);
        a.set_block(bad.entry_pos, &info);
        let path = dir.path().join(format!("twin-{tag}.hxz"));
        a.save(&path);
        a.set_block(bad.entry_pos, &bad.info);
        let snap = Snapshot::open_with(&path, &engine(64 << 20, 2), &OpenOptions::default())
            .expect("open");
        let mut buf = vec![0u8; good.info.logical_len as usize];
        snap.read_at(good.stream, good.logical, &mut buf)
            .expect("the intact twin reads");
        read_fails(&snap, &bad, |f| matches!(f, BlockFault::Codec(_)));
        verify_lists(&path, &[&bad]);
    }
}

#[test]
fn verify_lists_every_bad_block_with_its_stream_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = ArchiveBytes::fixture("vm-dir-lz4.hxz");
    let unique: Vec<Located> = {
        let all = a.blocks();
        all.iter()
            .filter(|b| {
                b.info.kind() == BlockKind::Data
                    && all
                        .iter()
                        .filter(|o| o.info.offset == b.info.offset)
                        .count()
                        == 1
            })
            .copied()
            .collect()
    };
    // Bad blocks in both streams, each broken a different way.
    let main: Vec<&Located> = unique.iter().filter(|b| b.stream == Stream::Main).collect();
    let aux: Vec<&Located> = unique.iter().filter(|b| b.stream == Stream::Aux).collect();
    let picks = [main[3], main[20], main[40], aux[2], aux[10]];
    let file_len = a.bytes.len() as u64;
    for (k, b) in picks.iter().enumerate() {
        let mut info = b.info;
        match k {
            0 => a.bytes[ArchiveBytes::stored_range(&info).start + 5] ^= 0xFF,
            1 => info.offset = file_len - 1,
            2 => info.logical_len = u32::MAX,
            3 => info.checksum = !info.checksum,
            _ => {
                let third = info.length / 3;
                truncate_to(&mut a, &mut info, third);
            }
        }
        a.set_block(b.entry_pos, &info);
    }
    let path = dir.path().join("many-bad.hxz");
    a.save(&path);
    verify_lists(&path, &picks);
    // Block 40 of main now claims 4 GiB, so main's later blocks shift; aux is intact
    // apart from its own two bad blocks.
    let snap = open(&path).expect("open");
    let want = raw("vm/memory");
    for b in unique.iter().filter(|b| b.stream == Stream::Aux) {
        let r = {
            let mut buf = vec![0u8; b.info.logical_len as usize];
            snap.read_at(Stream::Aux, b.logical, &mut buf).map(|_| buf)
        };
        if picks.iter().any(|p| p.index == b.index) {
            assert!(r.is_err(), "block {} must fail", b.index);
        } else {
            let s = common::us(b.logical);
            assert!(r.expect("good aux block") == want[s..s + b.info.logical_len as usize]);
        }
    }
}
