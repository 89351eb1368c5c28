//! The per-page "length checked" bits (issue 11, round 2): once a block has been seen to
//! decode to exactly its `logical_len`, a later partial LZ4 decode of it stops at the last
//! byte the read needs instead of walking the rest of the block. These tests pin what must
//! not change with that shortcut: a block whose length is wrong is an error on every read
//! (it never gets its bit), stored bytes that change after the check are still refused by
//! their CRC, and partial reads after the check return the right bytes. The block cache is
//! off (every read decodes), the page cache on (the bits live in the parsed pages).

mod common;

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use common::{ArchiveBytes, Located, raw};
use hexzd::format::codec::crc32;
use hexzd::format::{BlockKind, CodecError, Stream};
use hexzd::store::{BlockFault, Engine, EngineConfig, OpenOptions, Snapshot, StoreError};

/// No block cache (each read decodes), the default page cache.
fn uncached_engine() -> Arc<Engine> {
    Engine::new(EngineConfig {
        cache_bytes: 0,
        workers: 2,
        ..EngineConfig::default()
    })
    .expect("engine")
}

fn lz4_blocks(a: &ArchiveBytes) -> Vec<Located> {
    a.blocks()
        .into_iter()
        .filter(|b| b.info.kind() == BlockKind::Data && b.stream == Stream::Main)
        .collect()
}

/// Reads 100 bytes at `at` bytes into block `b`.
fn read_in(snap: &Snapshot, b: &Located, at: u64) -> Result<Vec<u8>, StoreError> {
    let mut buf = vec![0u8; 100];
    snap.read_at(b.stream, b.logical + at, &mut buf)?;
    Ok(buf)
}

fn codec_fault(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Block {
            fault: BlockFault::Codec(_),
            ..
        }
    )
}

#[test]
fn a_block_of_the_wrong_length_is_an_error_on_every_partial_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (tag, delta) in [("longer", 1i64), ("shorter", -1), ("much-shorter", -5000)] {
        let mut a = ArchiveBytes::fixture("mixed-lz4.hxz");
        let b = lz4_blocks(&a)[4];
        let mut info = b.info;
        info.logical_len = u32::try_from(i64::from(info.logical_len) + delta).expect("u32");
        a.set_block(b.entry_pos, &info);
        let path = dir.path().join(format!("{tag}.hxz"));
        a.save(&path);
        let snap =
            Snapshot::open_with(&path, &uncached_engine(), &OpenOptions::default()).expect("open");
        // The same few bytes near the start, read again and again: the first read's failed
        // check must not let a later one skip it.
        for round in 0..3 {
            let e = read_in(&snap, &b, 10).expect_err("a block of the wrong length must not read");
            assert!(codec_fault(&e), "{tag} round {round}: {e}");
        }
    }
}

#[test]
fn stored_bytes_changed_after_the_check_are_refused_by_their_crc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.hxz");
    let a = ArchiveBytes::fixture("mixed-lz4.hxz");
    a.save(&path);
    let b = lz4_blocks(&a)[4];
    let want = raw("mixed.img");
    let snap =
        Snapshot::open_with(&path, &uncached_engine(), &OpenOptions::default()).expect("open");
    let at = |off: u64| {
        let s = usize::try_from(b.logical + off).expect("usize");
        want[s..s + 100].to_vec()
    };
    // A read near the start walks the block and records its length as checked; the second
    // read takes the shortcut and still gets the right bytes.
    assert_eq!(read_in(&snap, &b, 10).expect("first read"), at(10));
    assert_eq!(read_in(&snap, &b, 20).expect("second read"), at(20));
    // Rewrite one stored byte in place, under the open archive (same size, same index).
    let stored = ArchiveBytes::stored_range(&b.info);
    let pos = stored.start + stored.len() / 2;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open for writing");
    file.write_all_at(&[a.bytes[pos] ^ 0x55], pos as u64)
        .expect("rewrite");
    for round in 0..2 {
        let e = read_in(&snap, &b, 10).expect_err("changed stored bytes must not read");
        assert!(
            matches!(
                e,
                StoreError::Block {
                    fault: BlockFault::Codec(CodecError::Crc { .. }),
                    ..
                }
            ),
            "round {round}: {e}"
        );
    }
}

#[test]
fn partial_reads_after_the_check_match_the_image_everywhere() {
    let a = ArchiveBytes::fixture("mixed-lz4.hxz");
    let snap = Snapshot::open_with(
        common::fixture("mixed-lz4.hxz"),
        &uncached_engine(),
        &OpenOptions::default(),
    )
    .expect("open");
    let want = raw("mixed.img");
    // Twice over every block, at a few positions: the first pass checks each block's length,
    // the second reads with the shortcut (including the last bytes of the block).
    for pass in 0..2 {
        for b in lz4_blocks(&a) {
            let len = u64::from(b.info.logical_len);
            for at in [0, len / 3, len.saturating_sub(100)] {
                let s = usize::try_from(b.logical + at).expect("usize");
                let got = read_in(&snap, &b, at).expect("read");
                assert!(got == want[s..s + 100], "pass {pass} block {}", b.index);
            }
        }
    }
}

#[test]
fn a_corrupt_stored_byte_with_a_matching_crc_is_still_a_codec_error_when_unchecked() {
    // A block whose stored bytes were altered with the CRC recomputed (so only decoding can
    // tell): never checked, so the partial read walks it and refuses it, every time.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = ArchiveBytes::fixture("mixed-lz4.hxz");
    let b = lz4_blocks(&a)[4];
    let mut info = b.info;
    let stored = ArchiveBytes::stored_range(&info);
    // Cut the block short: the last sequence is gone, the CRC made to match.
    info.length -= 1;
    let cut = stored.start..stored.end - 1;
    info.checksum = crc32(&a.bytes[cut]);
    a.set_block(b.entry_pos, &info);
    let path = dir.path().join("cut.hxz");
    a.save(&path);
    let snap =
        Snapshot::open_with(&path, &uncached_engine(), &OpenOptions::default()).expect("open");
    for round in 0..3 {
        let e = read_in(&snap, &b, 10).expect_err("a cut block must not read");
        assert!(codec_fault(&e), "round {round}: {e}");
    }
}
