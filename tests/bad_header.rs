//! Bad headers (issue 2): truncated, wrong magic, version ≠ 1, unknown codec, bad `Option`
//! tags, bool bytes other than 0/1, hostile length prefixes. Each is one clear error at open
//! naming the file and the field or byte, from the library and from every CLI command; never a
//! panic.

mod common;

use std::path::Path;

use common::{ArchiveBytes, assert_clean_failure, hexzd, open, run};
use hexzd::format::FormatError;
use hexzd::store::StoreError;

/// Byte offsets in the 55-byte header of `mixed-lz4.hxz` (no parents, CDC params present),
/// as laid out in hexz-format.md §3.
const DICTIONARY_OFFSET_TAG: usize = 0x1C;
const ENCRYPTION_TAG: usize = 0x22;
const COMPRESSION: usize = 0x23;
const HAS_MAIN: usize = 0x27;
const VARIABLE_BLOCKS: usize = 0x29;
const CDC_TAG: usize = 0x2A;

fn plain() -> ArchiveBytes {
    let a = ArchiveBytes::fixture("mixed-lz4.hxz");
    // The offsets above hold for this header only.
    assert_eq!(&a.bytes[DICTIONARY_OFFSET_TAG..COMPRESSION + 4], &[0; 11]);
    assert_eq!(&a.bytes[HAS_MAIN..=CDC_TAG], &[1, 0, 1, 1]);
    a
}

/// Saves `bytes` as `name`, then checks the library error and every CLI command.
fn refused(bytes: &[u8], name: &str, check: impl Fn(&StoreError), words: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write");
    let e = match open(&path) {
        Err(e) => e,
        Ok(_) => panic!("{name}: must not open"),
    };
    check(&e);
    let msg = e.to_string();
    assert!(
        msg.contains(name),
        "{name}: the error names the file: {msg}"
    );
    for w in words {
        assert!(msg.contains(w), "{name}: expected {w:?} in: {msg}");
    }
    cli_refuses(&path, name, words);
}

fn cli_refuses(path: &Path, name: &str, words: &[&str]) {
    for cmd in ["cat", "inspect", "verify"] {
        let o = run(hexzd().arg(cmd).arg(path));
        let err = assert_clean_failure(&o, &format!("{cmd} {name}"));
        assert!(
            o.stdout.is_empty(),
            "{cmd} {name}: no output before the error"
        );
        assert!(err.contains(name), "{cmd} {name}: {err}");
        for w in words {
            assert!(err.contains(w), "{cmd} {name}: expected {w:?} in: {err}");
        }
    }
}

fn format_error(e: &StoreError) -> &FormatError {
    match e {
        StoreError::Format { source, .. } => source,
        other => panic!("expected a format error, got {other}"),
    }
}

#[test]
fn truncated_header_is_refused_naming_the_field() {
    let a = plain();
    for (len, field) in [
        (0, "magic"),
        (3, "magic"),
        (6, "version"),
        (16, "index_offset"),
        (21, "parent_paths"),
        (29, "dictionary_length"),
        (30, "metadata_offset"),
        (40, "features.has_auxiliary"),
        (54, "cdc_params.max"),
    ] {
        refused(
            &a.bytes[..len],
            &format!("truncated-{len}.hxz"),
            |e| {
                assert!(
                    matches!(format_error(e), FormatError::Truncated { .. }),
                    "{e}"
                );
            },
            &["truncated header", field],
        );
    }
}

#[test]
fn header_without_the_rest_of_the_file_is_refused() {
    // A complete 55-byte header, but the file ends inside the 4096-byte header region, so the
    // master index it points at is not there.
    let a = plain();
    for len in [55, 4095, 4096] {
        refused(
            &a.bytes[..len],
            &format!("cut-{len}.hxz"),
            |e| assert!(matches!(e, StoreError::Corrupt { .. }), "{e}"),
            &["index offset"],
        );
    }
}

#[test]
fn wrong_magic_is_refused() {
    let mut a = plain();
    a.bytes[..4].copy_from_slice(b"HEXY");
    refused(
        &a.bytes,
        "magic.hxz",
        |e| assert!(matches!(format_error(e), FormatError::BadMagic(_)), "{e}"),
        &["not a Hexz archive"],
    );
    // A file of some other kind altogether.
    refused(
        b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0",
        "elf.hxz",
        |e| assert!(matches!(format_error(e), FormatError::BadMagic(_)), "{e}"),
        &["magic"],
    );
}

#[test]
fn version_other_than_one_is_refused() {
    for v in [0u32, 2, u32::MAX] {
        let mut a = plain();
        a.bytes[4..8].copy_from_slice(&v.to_le_bytes());
        refused(
            &a.bytes,
            &format!("version-{v}.hxz"),
            |e| {
                assert_eq!(*format_error(e), FormatError::UnsupportedVersion(v), "{e}");
            },
            &[&format!("version {v}")],
        );
    }
}

#[test]
fn unknown_codec_is_refused() {
    for c in [2u32, 3, 0xFFFF_FFFF] {
        let mut a = plain();
        a.bytes[COMPRESSION..COMPRESSION + 4].copy_from_slice(&c.to_le_bytes());
        refused(
            &a.bytes,
            &format!("codec-{c}.hxz"),
            |e| assert_eq!(*format_error(e), FormatError::UnknownCompression(c), "{e}"),
            &[&format!("codec {c}")],
        );
    }
}

#[test]
fn bad_option_tag_is_refused_naming_field_and_byte() {
    for (at, field) in [
        (DICTIONARY_OFFSET_TAG, "dictionary_offset"),
        (DICTIONARY_OFFSET_TAG + 3, "metadata_length"),
        (ENCRYPTION_TAG, "encryption"),
        (CDC_TAG, "cdc_params"),
    ] {
        let mut a = plain();
        a.bytes[at] = 2;
        refused(
            &a.bytes,
            &format!("option-{at}.hxz"),
            |e| {
                assert!(
                    matches!(format_error(e), FormatError::BadOptionTag { tag: 2, .. }),
                    "{e}"
                );
            },
            &["Option tag", field, &format!("byte {at}")],
        );
    }
}

#[test]
fn bool_byte_other_than_zero_or_one_is_refused() {
    for (at, field) in [
        (HAS_MAIN, "features.has_main"),
        (HAS_MAIN + 1, "features.has_auxiliary"),
        (VARIABLE_BLOCKS, "features.variable_blocks"),
    ] {
        for v in [2u8, 0xFF] {
            let mut a = plain();
            a.bytes[at] = v;
            refused(
                &a.bytes,
                &format!("bool-{at}-{v}.hxz"),
                |e| {
                    assert!(
                        matches!(format_error(e), FormatError::BadBool { value, .. } if *value == v),
                        "{e}"
                    );
                },
                &["bool", field, &format!("byte {at}")],
            );
        }
    }
}

#[test]
fn hostile_parent_path_counts_and_lengths_are_refused_without_allocating() {
    // parent_paths count u64::MAX, then a single path claiming u64::MAX bytes.
    let mut a = plain();
    a.bytes[20..28].copy_from_slice(&u64::MAX.to_le_bytes());
    refused(
        &a.bytes,
        "parents-count.hxz",
        |e| {
            assert!(
                matches!(format_error(e), FormatError::LengthTooLarge { .. }),
                "{e}"
            );
        },
        &["parent_paths"],
    );
    let mut h = plain().header();
    h.parent_paths = vec!["base.hxz".into()];
    let mut a = plain();
    a.set_header(&h);
    a.bytes[28..36].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
    refused(
        &a.bytes,
        "parent-len.hxz",
        |e| {
            assert!(
                matches!(format_error(e), FormatError::LengthTooLarge { .. }),
                "{e}"
            );
        },
        &["parent_paths"],
    );
    // A parent path that is not UTF-8.
    let mut a = plain();
    a.set_header(&h);
    a.bytes[36] = 0xFF;
    refused(
        &a.bytes,
        "parent-utf8.hxz",
        |e| {
            assert!(
                matches!(format_error(e), FormatError::BadUtf8 { .. }),
                "{e}"
            )
        },
        &["UTF-8"],
    );
}

#[test]
fn dictionary_outside_the_file_is_refused() {
    let mut h = plain().header();
    h.dictionary_offset = Some(u64::MAX - 10);
    h.dictionary_length = Some(100);
    let mut a = plain();
    a.set_header(&h);
    refused(
        &a.bytes,
        "dictionary.hxz",
        |e| assert!(matches!(e, StoreError::Corrupt { .. }), "{e}"),
        &["dictionary"],
    );
    h.dictionary_offset = None;
    let mut a = plain();
    a.set_header(&h);
    refused(
        &a.bytes,
        "dictionary-half.hxz",
        |e| assert!(matches!(e, StoreError::Corrupt { .. }), "{e}"),
        &["dictionary"],
    );
}

#[test]
fn absurd_pbkdf2_iteration_count_is_refused_at_open() {
    let mut h = plain().header();
    h.encryption = Some(hexzd::format::EncryptionParams {
        salt: [1; 16],
        iterations: u32::MAX,
    });
    let mut a = plain();
    a.set_header(&h);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("iterations.hxz");
    a.save(&path);
    let e = hexzd::store::Snapshot::open_with(
        &path,
        &common::engine(0, 1),
        &hexzd::store::OpenOptions {
            password: Some(b"pw".to_vec()),
            index_only: false,
        },
    )
    .expect_err("must not spend hours deriving a key");
    assert!(e.to_string().contains("iteration count"), "{e}");
}
