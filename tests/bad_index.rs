//! Bad master indexes and index pages (issue 2): `index_offset` past EOF, a master index over
//! 64 MiB, page counts and Vec lengths larger than the bytes that remain, page directory
//! entries outside the file, pages out of order or overlapping. Each is a clear error naming the
//! file and the page or offset, at open or at the first read of the page; never a panic.

mod common;

use std::path::{Path, PathBuf};

use common::{ArchiveBytes, assert_clean_failure, hexzd, mixed_data, open, run};
use hexzd::format::{HEADER_SIZE, MAX_MASTER_INDEX_BYTES, Stream};
use hexzd::pack::{PackOptions, pack};
use hexzd::store::StoreError;

fn save(dir: &Path, name: &str, a: &ArchiveBytes) -> PathBuf {
    let p = dir.join(name);
    a.save(&p);
    p
}

/// Open fails; the message names the file and contains `words`; `cat` fails the same way.
fn refused_at_open(path: &Path, words: &[&str]) -> StoreError {
    let name = path.file_name().and_then(|n| n.to_str()).expect("name");
    let e = match open(path) {
        Err(e) => e,
        Ok(_) => panic!("{name}: must not open"),
    };
    let msg = e.to_string();
    assert!(msg.contains(name), "{msg}");
    for w in words {
        assert!(msg.contains(w), "{name}: expected {w:?} in: {msg}");
    }
    let o = run(hexzd().arg("cat").arg(path));
    let err = assert_clean_failure(&o, name);
    assert!(o.stdout.is_empty());
    for w in words {
        assert!(err.contains(w), "cat {name}: expected {w:?} in: {err}");
    }
    e
}

/// Open succeeds (pages load lazily) but reading `stream` at `offset` fails naming the file
/// and `words`; `cat` and `verify` fail too.
fn refused_at_read(path: &Path, stream: Stream, offset: u64, words: &[&str]) {
    let name = path.file_name().and_then(|n| n.to_str()).expect("name");
    let snap = open(path).unwrap_or_else(|e| panic!("{name}: open: {e}"));
    let mut buf = vec![0u8; 4096];
    let e = snap
        .read_at(stream, offset, &mut buf)
        .expect_err("read of a bad page must fail");
    let msg = e.to_string();
    assert!(msg.contains(name), "{msg}");
    for w in words {
        assert!(msg.contains(w), "{name}: expected {w:?} in: {msg}");
    }
    let o = run(hexzd()
        .arg("cat")
        .arg(path)
        .args(["--stream", stream.name()]));
    let err = assert_clean_failure(&o, name);
    for w in words {
        assert!(err.contains(w), "cat {name}: expected {w:?} in: {err}");
    }
    let o = run(hexzd().arg("verify").arg(path));
    assert_eq!(o.status.code(), Some(1), "verify {name} must fail");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("BAD"), "verify {name}: {out}");
}

/// An archive with two pages in each stream (512-byte blocks).
fn multi_page(dir: &Path) -> ArchiveBytes {
    let main = common::write_file(dir, "m.img", &mixed_data(4096 * 512 + 5000, 512, 7));
    let aux = common::write_file(dir, "a.img", &mixed_data(4096 * 512 + 100, 512, 8));
    let out = dir.join("multi.hxz");
    pack(
        &main,
        &out,
        &PackOptions {
            block_size: Some(512),
            aux: Some(aux),
            workers: 2,
            ..PackOptions::default()
        },
    )
    .expect("pack");
    let a = ArchiveBytes::load(&out);
    assert_eq!(a.pages(Stream::Main).len(), 2);
    assert_eq!(a.pages(Stream::Aux).len(), 2);
    a
}

#[test]
fn index_offset_past_eof_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = ArchiveBytes::fixture("mixed-lz4.hxz");
    let len = base.bytes.len() as u64;
    for (k, off) in [len, len + 1, u64::MAX, 0, HEADER_SIZE as u64 - 1]
        .into_iter()
        .enumerate()
    {
        let mut a = base.clone();
        let mut h = a.header();
        h.index_offset = off;
        a.set_header(&h);
        let p = save(dir.path(), &format!("index-offset-{k}.hxz"), &a);
        refused_at_open(&p, &["index offset", &off.to_string()]);
    }
}

#[test]
fn master_index_truncated_or_with_hostile_counts_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = ArchiveBytes::fixture("mixed-lz4.hxz");
    let at = base.index_offset();
    // Cut inside the master index.
    let mut a = base.clone();
    a.bytes.truncate(at + 40);
    let p = save(dir.path(), "master-cut.hxz", &a);
    refused_at_open(&p, &["master index", "auxiliary_pages"]);
    // Page counts far beyond the bytes that remain.
    for (k, (field_at, field)) in [(0usize, "main_pages"), (8 + 28, "auxiliary_pages")]
        .into_iter()
        .enumerate()
    {
        for count in [2u64, 1 << 40, u64::MAX] {
            let mut a = base.clone();
            a.bytes[at + field_at..at + field_at + 8].copy_from_slice(&count.to_le_bytes());
            let p = save(dir.path(), &format!("master-count-{k}-{count}.hxz"), &a);
            refused_at_open(&p, &["master index", field, &count.to_string()]);
        }
    }
}

#[test]
fn master_index_over_64_mib_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = ArchiveBytes::fixture("hello-lz4.hxz");
    let at = a.index_offset();
    // A page count whose entries need more than 64 MiB, and a file that really has more than
    // 64 MiB after the index offset (sparse, so it costs no disk).
    let count = MAX_MASTER_INDEX_BYTES / 28 + 10;
    a.bytes.truncate(at);
    a.bytes.extend_from_slice(&count.to_le_bytes());
    let p = save(dir.path(), "master-huge.hxz", &a);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .expect("open");
    f.set_len(at as u64 + MAX_MASTER_INDEX_BYTES + 4096)
        .expect("extend");
    drop(f);
    refused_at_open(&p, &["64 MiB"]);
}

#[test]
fn metadata_after_the_master_index_is_not_counted_against_it() {
    // hexz-format.md §16 #7: the reader bounds only what it decodes.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = ArchiveBytes::fixture("hello-lz4.hxz");
    a.bytes.extend_from_slice(b"{\"trailing\":\"metadata\"}");
    let p = save(dir.path(), "trailing.hxz", &a);
    let snap = open(&p).expect("open");
    let got = common::read_all(&snap, Stream::Main, 100).expect("read");
    assert!(got == common::raw("hello.txt"));
}

#[test]
fn page_directory_entries_outside_the_file_are_refused_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = ArchiveBytes::fixture("mixed-lz4.hxz");
    let file_len = base.bytes.len() as u64;
    let index_offset = base.index_offset() as u64;
    type Edit = fn(&mut hexzd::format::PageEntry, u64, u64);
    let cases: [(&str, Edit, &str); 6] = [
        (
            "page-past-eof",
            |p, len, _| p.offset = len - 10,
            "outside the file",
        ),
        (
            "page-offset-overflow",
            |p, _, _| p.offset = u64::MAX - 5,
            "overflows",
        ),
        (
            "page-in-header",
            |p, _, _| p.offset = 100,
            "outside the file",
        ),
        (
            "page-over-master",
            |p, _, idx| {
                p.offset = idx - 8;
                p.length = 16;
            },
            "overlap the master index",
        ),
        ("page-too-short", |p, _, _| p.length = 7, "out of range"),
        (
            "page-length-huge",
            |p, _, _| p.length = u32::MAX,
            "outside the file",
        ),
    ];
    for (name, edit, words) in cases {
        let mut a = base.clone();
        let mut m = a.master();
        edit(&mut m.main_pages[0], file_len, index_offset);
        a.set_master(&m);
        let p = save(dir.path(), &format!("{name}.hxz"), &a);
        refused_at_open(&p, &["main stream page 0", words]);
    }
}

#[test]
fn page_count_larger_than_its_bytes_is_a_read_error_naming_the_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = ArchiveBytes::fixture("vm-dir-lz4.hxz");
    for stream in Stream::ALL {
        for count in [64u64, 1 << 33, u64::MAX] {
            let mut a = base.clone();
            let pe = a.pages(stream)[0];
            let at = usize::try_from(pe.offset).expect("offset");
            a.bytes[at..at + 8].copy_from_slice(&count.to_le_bytes());
            let p = save(dir.path(), &format!("page-count-{stream}-{count}.hxz"), &a);
            refused_at_read(
                &p,
                stream,
                0,
                &[&format!("{stream} stream page 0"), &count.to_string()],
            );
        }
    }
}

#[test]
fn page_shorter_than_its_entries_is_a_read_error() {
    // The directory says the page is shorter than 8 + 52·count bytes.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = ArchiveBytes::fixture("mixed-lz4.hxz");
    let mut m = a.master();
    m.main_pages[0].length -= 30;
    a.set_master(&m);
    let p = save(dir.path(), "page-short.hxz", &a);
    refused_at_read(
        &p,
        Stream::Main,
        0,
        &["main stream page 0", "block entry count"],
    );
}

#[test]
fn pages_out_of_order_are_refused_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = multi_page(dir.path());
    for stream in Stream::ALL {
        let mut a = base.clone();
        let mut m = a.master();
        let pages = match stream {
            Stream::Main => &mut m.main_pages,
            Stream::Aux => &mut m.aux_pages,
        };
        pages.swap(0, 1);
        a.set_master(&m);
        let p = save(dir.path(), &format!("swapped-{stream}.hxz"), &a);
        refused_at_open(&p, &[&format!("{stream} stream page 1"), "out of order"]);
    }
}

#[test]
fn overlapping_pages_are_a_read_error() {
    // Page 1 claims to start inside page 0: page 0's blocks run past it.
    let dir = tempfile::tempdir().expect("tempdir");
    let base = multi_page(dir.path());
    for stream in Stream::ALL {
        let mut a = base.clone();
        let mut m = a.master();
        let pages = match stream {
            Stream::Main => &mut m.main_pages,
            Stream::Aux => &mut m.aux_pages,
        };
        pages[1].start_logical -= 1000;
        let start = pages[1].start_logical;
        a.set_master(&m);
        let p = save(dir.path(), &format!("overlap-{stream}.hxz"), &a);
        refused_at_read(
            &p,
            stream,
            start - 10,
            &[&format!("{stream} stream page 0"), "past the next page"],
        );
    }
}

#[test]
fn page_directory_pointing_at_the_wrong_bytes_never_panics() {
    // Page entries aimed at stored data (garbage as a page): decoding fails or yields
    // nonsense blocks that fail their checks; either way, never a panic.
    let dir = tempfile::tempdir().expect("tempdir");
    let base = ArchiveBytes::fixture("mixed-lz4.hxz");
    let mut rng = common::Rng::new(99);
    for k in 0..40 {
        let mut a = base.clone();
        let mut m = a.master();
        let max = a.index_offset() as u64 - 8;
        m.main_pages[0].offset = rng.range(HEADER_SIZE as u64, max - 100);
        m.main_pages[0].length =
            u32::try_from(rng.range(8, max - m.main_pages[0].offset)).expect("u32");
        a.set_master(&m);
        let p = save(dir.path(), &format!("aimed-{k}.hxz"), &a);
        if let Ok(snap) = open(&p) {
            let _ = common::read_all(&snap, Stream::Main, 1 << 20);
            let _ = snap.extents(Stream::Main, 0, u64::MAX);
            let _ = snap.verify(|_, _| {});
        }
    }
}
