//! Encrypted archives (issue 5), on the 0.8.2 fixture `mixed-enc-lz4.hxz`: byte-exact with the
//! right password; a wrong password or none is one clear error at open; a flipped byte in one
//! stored block fails that block's reads (naming it) while every other block still reads, and
//! `verify` lists exactly that block.
//!
//! Every open derives a PBKDF2 key with 600,000 iterations (seconds in a debug build), so each
//! test opens the archive once or twice at most.

mod common;

use std::path::{Path, PathBuf};

use common::{
    ArchiveBytes, FIXTURE_PASSWORD, Located, assert_clean_failure, engine, fixture, hexzd, raw,
    read_all, run,
};
use hexzd::format::codec::crc32;
use hexzd::format::{BlockKind, Stream};
use hexzd::store::{BlockFault, OpenOptions, Snapshot, StoreError};

const ARCHIVE: &str = "mixed-enc-lz4.hxz";

fn open_with(path: &Path, password: Option<&str>) -> Result<Snapshot, StoreError> {
    Snapshot::open_with(
        path,
        &engine(16 << 20, 2),
        &OpenOptions {
            password: password.map(|p| p.as_bytes().to_vec()),
            index_only: false,
        },
    )
}

#[test]
fn right_password_reads_byte_exact() {
    let snap = open_with(&fixture(ARCHIVE), Some(FIXTURE_PASSWORD)).expect("open");
    let want = raw("mixed.img");
    assert!(read_all(&snap, Stream::Main, 1 << 20).expect("read") == want);
    assert!(read_all(&snap, Stream::Main, 30_011).expect("read") == want);
    let report = snap.verify(|_, _| {}).expect("verify");
    assert!(report.ok(), "{:?}", report.bad);
    assert!(report.decoded > 0);
}

#[test]
fn wrong_password_is_one_clear_error_at_open() {
    let o = run(hexzd()
        .arg("cat")
        .arg(fixture(ARCHIVE))
        .env("HEXZ_PASSWORD", "incorrect-horse"));
    let err = assert_clean_failure(&o, "wrong password");
    assert!(
        o.stdout.is_empty(),
        "nothing may be written before the error"
    );
    assert!(err.contains("wrong password"), "{err}");
    assert!(err.contains(ARCHIVE), "{err}");
    assert_eq!(
        err.lines().count(),
        1,
        "one line, not a stream of read errors: {err}"
    );
}

#[test]
fn no_password_is_a_clear_error_at_open() {
    match open_with(&fixture(ARCHIVE), None) {
        Err(StoreError::NeedsPassword { path }) => assert_eq!(path, fixture(ARCHIVE)),
        Err(e) => panic!("expected NeedsPassword, got {e}"),
        Ok(_) => panic!("an encrypted archive must not open without a password"),
    }
    for cmd in ["cat", "verify"] {
        let o = run(hexzd().arg(cmd).arg(fixture(ARCHIVE)));
        let err = assert_clean_failure(&o, cmd);
        assert!(err.contains("needs a password"), "{err}");
        assert!(err.contains("--password-file"), "says what to do: {err}");
    }
}

/// A copy of the fixture with one byte of one stored block flipped. With `fix_crc`, the CRC
/// is recomputed so that the AES-GCM tag, not the CRC, catches it. Returns the path and the
/// block, chosen in the middle of the stream.
fn corrupt_copy(dir: &Path, fix_crc: bool) -> (PathBuf, Located) {
    corrupt_copy_at(dir, fix_crc, |n| n / 2)
}

/// As [`corrupt_copy`], corrupting data block number `pick(data block count)`.
fn corrupt_copy_at(dir: &Path, fix_crc: bool, pick: fn(usize) -> usize) -> (PathBuf, Located) {
    let mut a = ArchiveBytes::fixture(ARCHIVE);
    let data: Vec<Located> = a
        .blocks()
        .into_iter()
        .filter(|b| b.info.kind() == BlockKind::Data)
        .collect();
    assert!(data.len() > 4);
    let mut bad = data[pick(data.len())];
    let r = ArchiveBytes::stored_range(&bad.info);
    a.bytes[r.start + r.len() / 3] ^= 0x20;
    if fix_crc {
        bad.info.checksum = crc32(&a.bytes[r]);
        a.set_block(bad.entry_pos, &bad.info);
    }
    let path = dir.join(if fix_crc { "tag.hxz" } else { "crc.hxz" });
    a.save(&path);
    (path, bad)
}

/// Reads of `bad` fail naming it; every other block reads byte-exact; verify lists only it.
fn only_that_block_fails(path: &Path, bad: &Located, expect_tag_failure: bool) {
    let snap = open_with(path, Some(FIXTURE_PASSWORD)).expect("one bad block still opens");
    let want = raw("mixed.img");
    let len = bad.info.logical_len as usize;
    for (off, n) in [(0, len), (len / 2, 1), (len - 1, 1)] {
        let mut buf = vec![0u8; n];
        let e = snap
            .read_at(Stream::Main, bad.logical + off as u64, &mut buf)
            .expect_err("the corrupt block must not read");
        match &e {
            StoreError::Block {
                block,
                offset,
                fault,
                ..
            } => {
                assert_eq!(*block, bad.index, "{e}");
                assert_eq!(*offset, bad.logical, "{e}");
                if expect_tag_failure {
                    assert!(matches!(fault, BlockFault::Crypto(_)), "{e}");
                } else {
                    assert!(matches!(fault, BlockFault::Codec(_)), "{e}");
                }
            }
            other => panic!("expected a block error, got {other}"),
        }
        assert!(e.to_string().contains(&format!("block {}", bad.index)));
    }
    // A read spanning the bad block fails as a whole.
    let mut buf = vec![0u8; len + 2000];
    assert!(
        snap.read_at(Stream::Main, bad.logical.saturating_sub(1000), &mut buf)
            .is_err()
    );
    for b in ArchiveBytes::load(path).blocks() {
        if b.index == bad.index {
            continue;
        }
        let (s, l) = (common::us(b.logical), b.info.logical_len as usize);
        let mut buf = vec![0u8; l];
        snap.read_at(Stream::Main, b.logical, &mut buf)
            .unwrap_or_else(|e| panic!("block {} must still read: {e}", b.index));
        assert!(buf == want[s..s + l], "block {}", b.index);
    }
    let report = snap.verify(|_, _| {}).expect("verify");
    assert_eq!(report.bad.len(), 1, "{:?}", report.bad);
    assert_eq!(report.bad[0].block, Some(bad.index));
    assert_eq!(report.bad[0].offset, bad.logical);
}

#[test]
fn flipped_byte_fails_only_that_block_and_verify_lists_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, bad) = corrupt_copy(dir.path(), false);
    only_that_block_fails(&path, &bad, false);
    let o = run(hexzd()
        .arg("verify")
        .arg(&path)
        .env("HEXZ_PASSWORD", FIXTURE_PASSWORD));
    assert_eq!(o.status.code(), Some(1), "verify must fail");
    let out = String::from_utf8_lossy(&o.stdout);
    let bad_lines: Vec<&str> = out.lines().filter(|l| l.starts_with("BAD")).collect();
    assert_eq!(bad_lines.len(), 1, "{out}");
    assert!(
        bad_lines[0].contains(&format!(
            "block {} at stream offset {}",
            bad.index, bad.logical
        )),
        "{out}"
    );
    assert!(bad_lines[0].contains("checksum mismatch"), "{out}");
}

#[test]
fn flipped_byte_with_a_matching_crc_fails_authentication_of_only_that_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, bad) = corrupt_copy(dir.path(), true);
    only_that_block_fails(&path, &bad, true);
}

/// Regression: the password check at open used to authenticate only the first CRC-intact data
/// block, so an altered first block with a rewritten CRC made the right password look wrong.
#[test]
fn altered_first_block_with_a_matching_crc_does_not_look_like_a_wrong_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, bad) = corrupt_copy_at(dir.path(), true, |_| 0);
    only_that_block_fails(&path, &bad, true);
    let e = open_with(&path, Some("not-the-password")).expect_err("wrong password");
    assert!(matches!(e, StoreError::WrongPassword { .. }), "{e}");
}
