//! Thin snapshots (issue 5): the 0.8.2 thin fixture byte-exact; a three-level chain built with
//! `hexzd pack --base` byte-exact, including child blocks only the grandparent holds; a missing
//! middle archive fails at open naming the path tried; a parent reference whose hash no parent
//! holds is a read error naming the block (never zeros); `inspect` shows the chain.

mod common;

use std::path::{Path, PathBuf};

use common::{
    ArchiveBytes, assert_clean_failure, fixture, hexzd, hexzd_ok, inspect_json, mixed_data, open,
    raw, read_all, run, write_file,
};
use hexzd::format::{BlockInfo, BlockKind, Stream};
use hexzd::store::{BlockFault, StoreError};

const BS: usize = 4096;

/// Copies the thin fixture and its base into `dir`.
fn thin_pair(dir: &Path) -> PathBuf {
    std::fs::copy(fixture("mixed-lz4.hxz"), dir.join("mixed-lz4.hxz")).expect("copy");
    let child = dir.join("mixed-child-thin-lz4.hxz");
    std::fs::copy(fixture("mixed-child-thin-lz4.hxz"), &child).expect("copy");
    child
}

#[test]
fn thin_fixture_reads_byte_exact_through_its_parent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let child = thin_pair(dir.path());
    let snap = open(&child).expect("open thin fixture");
    assert_eq!(snap.archive().parents().len(), 1);
    let a = ArchiveBytes::load(&child);
    let refs = a
        .blocks()
        .iter()
        .filter(|b| b.info.kind() == BlockKind::Parent)
        .count();
    assert_eq!(refs, 5, "the fixture has 5 parent references");
    for chunk in [1 << 20, 65_536, 4093] {
        let got = read_all(&snap, Stream::Main, chunk).expect("read");
        assert!(got == raw("mixed-child.img"), "chunk {chunk}");
    }
    let report = snap.verify(|_, _| {}).expect("verify");
    assert!(report.ok(), "{:?}", report.bad);
    assert_eq!(report.parent_refs, 5);
}

#[test]
fn thin_fixture_parent_resolves_beside_the_child_not_the_working_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let child = thin_pair(dir.path());
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let o = run(hexzd().current_dir(elsewhere.path()).arg("cat").arg(&child));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout == raw("mixed-child.img"));
}

/// base → middle → child, each sharing blocks with the level above, and the child holding
/// blocks that only the base has (the middle changed them).
struct Chain {
    _dir: tempfile::TempDir,
    base: PathBuf,
    middle: PathBuf,
    child: PathBuf,
    child_data: Vec<u8>,
    middle_data: Vec<u8>,
    /// Stream offsets of child blocks only the base holds.
    grandparent_only: Vec<usize>,
}

fn scramble(data: &mut [u8], block: usize, seed: u64) {
    common::Rng::new(seed).fill(&mut data[block * BS..block * BS + 64]);
}

fn build_chain(codec: &str) -> Chain {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = 64;
    // Random blocks only: no zeros, no repeats, so every block is a distinct data block.
    let mut base = vec![0u8; n * BS];
    common::Rng::new(1).fill(&mut base);
    let mut middle = base.clone();
    for b in (0..n).step_by(4) {
        scramble(&mut middle, b, 100 + b as u64);
    }
    middle.extend(mixed_data(5 * BS, BS, 2));
    let mut child = middle.clone();
    let mut grandparent_only = Vec::new();
    for b in 0..n {
        if b % 4 == 0 && b % 8 == 0 {
            // Back to the base's version: only the grandparent holds it.
            child[b * BS..(b + 1) * BS].copy_from_slice(&base[b * BS..(b + 1) * BS]);
            grandparent_only.push(b * BS);
        } else if b % 7 == 0 {
            scramble(&mut child, b, 1000 + b as u64);
        }
    }
    child.extend(mixed_data(3 * BS + 11, BS, 3));

    let p = dir.path();
    let (bi, mi, ci) = (
        write_file(p, "base.img", &base),
        write_file(p, "middle.img", &middle),
        write_file(p, "child.img", &child),
    );
    let (bo, mo, co) = (
        p.join("base.hxz"),
        p.join("middle.hxz"),
        p.join("child.hxz"),
    );
    let args = |input: &Path, out: &Path, base: Option<&Path>| {
        let mut v: Vec<std::ffi::OsString> = vec![
            "pack".into(),
            input.into(),
            out.into(),
            "--compression".into(),
            codec.into(),
            "--block-size".into(),
            BS.to_string().into(),
        ];
        if let Some(b) = base {
            v.push("--base".into());
            v.push(b.into());
        }
        v
    };
    hexzd_ok(args(&bi, &bo, None));
    hexzd_ok(args(&mi, &mo, Some(&bo)));
    hexzd_ok(args(&ci, &co, Some(&mo)));
    Chain {
        _dir: dir,
        base: bo,
        middle: mo,
        child: co,
        child_data: child,
        middle_data: middle,
        grandparent_only,
    }
}

fn three_level_chain(codec: &str) {
    let c = build_chain(codec);
    // Through the CLI.
    let got = hexzd_ok(["cat".as_ref(), c.child.as_os_str()]);
    assert!(got == c.child_data, "child differs");
    let got = hexzd_ok(["cat".as_ref(), c.middle.as_os_str()]);
    assert!(got == c.middle_data, "middle differs");
    let o = run(hexzd().arg("verify").arg(&c.child));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));

    // In process: the grandparent-only blocks really are parent references of the child,
    // absent from the middle's stored blocks, and read back exactly.
    let child_blocks = ArchiveBytes::load(&c.child).blocks();
    let middle_hashes: Vec<[u8; 32]> = ArchiveBytes::load(&c.middle)
        .blocks()
        .iter()
        .filter(|b| b.info.kind() == BlockKind::Data)
        .map(|b| b.info.hash)
        .collect();
    let snap = open(&c.child).expect("open child");
    for &off in &c.grandparent_only {
        let b = child_blocks
            .iter()
            .find(|b| b.logical == off as u64)
            .expect("block at offset");
        assert_eq!(b.info.kind(), BlockKind::Parent, "block at {off}");
        assert!(
            !middle_hashes.contains(&b.info.hash),
            "middle must not store it"
        );
        let mut buf = vec![0u8; BS];
        snap.read_at(Stream::Main, off as u64, &mut buf)
            .expect("read");
        assert!(buf == c.child_data[off..off + BS]);
    }
    let refs = child_blocks
        .iter()
        .filter(|b| b.info.kind() == BlockKind::Parent)
        .count();
    assert!(refs > 40, "the child must be mostly references: {refs}");
    assert!(read_all(&snap, Stream::Main, 10_000).expect("read") == c.child_data);
}

#[test]
fn three_level_chain_built_with_pack_base_is_byte_exact_lz4() {
    three_level_chain("lz4");
}

#[test]
fn three_level_chain_built_with_pack_base_is_byte_exact_zstd() {
    three_level_chain("zstd");
}

#[test]
fn moving_the_middle_archive_away_fails_at_open_naming_the_path_tried() {
    let c = build_chain("lz4");
    let away = c.middle.with_file_name("middle-moved-away.hxz");
    std::fs::rename(&c.middle, &away).expect("mv");

    match open(&c.child) {
        Err(e @ StoreError::Parent { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&c.middle.display().to_string()), "{msg}");
            assert!(msg.contains("middle.hxz"), "{msg}");
        }
        Err(e) => panic!("expected a parent error, got {e}"),
        Ok(_) => panic!("a thin snapshot with a missing parent must not open"),
    }
    let o = run(hexzd().arg("cat").arg(&c.child));
    let err = assert_clean_failure(&o, "cat with missing middle");
    assert!(o.stdout.is_empty(), "no bytes before the error");
    assert!(err.contains(&c.middle.display().to_string()), "{err}");
    let o = run(hexzd().arg("verify").arg(&c.child));
    assert_clean_failure(&o, "verify with missing middle");

    // Back in place, but now without the grandparent: still an error at open, naming it.
    std::fs::rename(&away, &c.middle).expect("mv back");
    std::fs::remove_file(&c.base).expect("rm base");
    let e = open(&c.child).expect_err("missing grandparent");
    assert!(e.to_string().contains("base.hxz"), "{e}");
}

#[test]
fn inspect_shows_the_chain() {
    let c = build_chain("lz4");
    let j = inspect_json(&c.child);
    let p = &j["parents"][0];
    assert_eq!(p["path"], "middle.hxz");
    assert!(
        p["resolved"]
            .as_str()
            .is_some_and(|r| r.ends_with("middle.hxz"))
    );
    assert_eq!(p["parents"][0]["path"], "base.hxz");
    assert!(p["parents"][0]["resolved"].is_string());
    assert!(j["main"]["parent_blocks"].as_u64() > Some(40));
    let text =
        String::from_utf8_lossy(&hexzd_ok(["inspect".as_ref(), c.child.as_os_str()])).into_owned();
    let mi = text.find("middle.hxz").expect("middle in text");
    let bi = text.find("base.hxz").expect("base in text");
    assert!(mi < bi, "{text}");

    // With the middle gone inspect still describes the child and marks the link missing.
    std::fs::remove_file(&c.middle).expect("rm");
    let j = inspect_json(&c.child);
    assert!(j["parents"][0]["resolved"].is_null());
    assert!(j["parents"][0]["error"].is_string());
}

/// Replaces the hash of the first parent reference of `a` with one no archive holds and
/// returns that block.
fn break_first_parent_ref(a: &mut ArchiveBytes) -> common::Located {
    let b = *a
        .blocks()
        .iter()
        .find(|b| b.info.kind() == BlockKind::Parent)
        .expect("a parent reference");
    let info = BlockInfo::parent(b.info.logical_len, [0xEE; 32]);
    a.set_block(b.entry_pos, &info);
    b
}

#[test]
fn parent_hash_no_parent_holds_is_a_read_error_naming_the_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let child = thin_pair(dir.path());
    let mut a = ArchiveBytes::load(&child);
    let bad = break_first_parent_ref(&mut a);
    a.save(&child);
    let want = raw("mixed-child.img");

    let snap = open(&child).expect("the parent is there: open succeeds");
    let len = bad.info.logical_len as usize;
    let mut buf = vec![0u8; len];
    let e = snap
        .read_at(Stream::Main, bad.logical, &mut buf)
        .expect_err("a hash no parent holds must not read");
    match &e {
        StoreError::Block {
            block,
            offset,
            fault: BlockFault::ParentMissing(h),
            ..
        } => {
            assert_eq!(*block, bad.index);
            assert_eq!(*offset, bad.logical);
            assert!(h.starts_with("eeee"), "{h}");
        }
        other => panic!("expected ParentMissing, got {other}"),
    }
    assert!(
        e.to_string().contains(&format!("block {}", bad.index)),
        "{e}"
    );
    // One byte of it fails too; every other block still reads.
    assert!(
        snap.read_at(Stream::Main, bad.logical + 7, &mut buf[..1])
            .is_err()
    );
    for b in ArchiveBytes::load(&child).blocks() {
        if b.index == bad.index {
            continue;
        }
        let (s, l) = (common::us(b.logical), b.info.logical_len as usize);
        let mut buf = vec![0u8; l];
        snap.read_at(Stream::Main, b.logical, &mut buf)
            .expect("other block");
        assert!(buf == want[s..s + l], "block {}", b.index);
    }
    // verify lists exactly that block; cat fails cleanly naming it.
    let report = snap.verify(|_, _| {}).expect("verify");
    assert_eq!(report.bad.len(), 1, "{:?}", report.bad);
    assert_eq!(report.bad[0].block, Some(bad.index));
    assert_eq!(report.bad[0].offset, bad.logical);
    let o = run(hexzd().arg("verify").arg(&child));
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!(
            "block {} at stream offset {}",
            bad.index, bad.logical
        )),
        "{out}"
    );
    let o = run(hexzd().arg("cat").arg(&child));
    let err = assert_clean_failure(&o, "cat of a broken parent reference");
    assert!(err.contains(&format!("block {}", bad.index)), "{err}");
}

#[test]
fn parent_reference_in_an_archive_without_parents_is_a_read_error_not_zeros() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = ArchiveBytes::fixture("mixed-lz4.hxz");
    let b = a.blocks()[3];
    a.set_block(
        b.entry_pos,
        &BlockInfo::parent(b.info.logical_len, b.info.hash),
    );
    let path = dir.path().join("refs-without-parent.hxz");
    a.save(&path);
    let snap = open(&path).expect("open");
    let mut buf = vec![0u8; 10];
    let e = snap
        .read_at(Stream::Main, b.logical, &mut buf)
        .expect_err("no parent: error");
    assert!(e.to_string().contains(&format!("block {}", b.index)), "{e}");
}

#[test]
fn archive_naming_itself_as_parent_is_refused_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = ArchiveBytes::fixture("mixed-child-thin-lz4.hxz");
    let mut h = a.header();
    h.parent_paths = vec!["loop.hxz".into()];
    a.set_header(&h);
    let path = dir.path().join("loop.hxz");
    a.save(&path);
    let e = open(&path).expect_err("a cycle must not open");
    assert!(e.to_string().contains("loop"), "{e}");
}

/// Regression: the parent's hash index used to be built all-or-nothing and its failure cached
/// forever, so one corrupt page anywhere in a parent (here its aux stream, which the child
/// never uses) made every parent reference of every child fail.
#[test]
fn a_corrupt_page_in_a_parent_costs_only_its_own_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let base = mixed_data(2 << 20, 65536, 41);
    let aux = mixed_data(512 << 10, 65536, 42);
    let mut child = base.clone();
    child[100_000..100_016].copy_from_slice(b"changed in child");
    let (b, a, c) = (
        write_file(d, "base.img", &base),
        write_file(d, "aux.img", &aux),
        write_file(d, "child.img", &child),
    );
    let s = |p: &Path| p.to_str().expect("utf-8 path").to_string();
    hexzd_ok([
        "pack".into(),
        s(&b),
        s(&d.join("base.hxz")),
        "--aux".into(),
        s(&a),
    ]);
    hexzd_ok([
        "pack".into(),
        s(&c),
        s(&d.join("child.hxz")),
        "--base".into(),
        s(&d.join("base.hxz")),
    ]);

    let mut bytes = ArchiveBytes::load(&d.join("base.hxz"));
    let aux_page = bytes.pages(Stream::Aux)[0];
    // The page's entry count (u64 LE at its start) becomes absurd: that page cannot decode.
    bytes.bytes[common::us(aux_page.offset) + 7] = 0x7f;
    bytes.save(&d.join("base.hxz"));
    let base_snap = common::open(&d.join("base.hxz")).expect("open base");
    assert!(
        read_all(&base_snap, Stream::Aux, 1 << 20).is_err(),
        "the aux page must be bad"
    );

    let snap = common::open(&d.join("child.hxz")).expect("open child");
    let got = read_all(&snap, Stream::Main, 1 << 20)
        .expect("the child's blocks all live in the base's main stream");
    assert!(got == child);
}

/// Regression: `inspect` walked the parent chain without remembering where it had been, so a
/// file listing itself twice as parent took 2^32 opens. `open` refuses such a loop; `inspect`
/// must show it and finish.
#[test]
fn inspect_shows_a_self_referencing_chain_and_finishes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("self.hxz");
    let mut a = ArchiveBytes::fixture("hello-lz4.hxz");
    let mut h = a.header();
    h.parent_paths = vec!["self.hxz".into(), "self.hxz".into()];
    a.set_header(&h);
    a.save(&path);
    let out = String::from_utf8(hexzd_ok([
        "inspect".into(),
        path.to_str().expect("utf-8").to_string(),
    ]))
    .expect("utf-8");
    assert!(out.contains("already shown"), "{out}");
    let e = open(&path).expect_err("a loop is refused at open");
    assert!(e.to_string().contains("loops"), "{e}");
}
