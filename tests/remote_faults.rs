//! Remote archives against a server that misbehaves on purpose (issue 14): Range ignored, a
//! short body, a wrong Content-Range, 500 then success, a reset mid-body, a stall, redirects,
//! the object replaced between reads. Each fault fails only the reads whose bytes it touches,
//! with a message naming the URL, the block and the status; nothing is ever served mixed.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod common;
mod remote_support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{ArchiveBytes, Located, assert_clean_failure, hexzd_run};
use hexzd::format::{BlockKind, Stream};
use hexzd::store::{CHUNK_BYTES, OpenOptions, Snapshot};
use remote_support::{Fault, FaultServer, engine, fixtures, quick, read, read_stream};

/// Data blocks of `mixed-lz4.hxz` in file order whose chunks opening does not fetch (the
/// header's, the index pages', the master index's).
fn data_blocks() -> Vec<Located> {
    let ab = ArchiveBytes::fixture("mixed-lz4.hxz");
    let chunks = |off: u64, len: u64| off / CHUNK_BYTES..=(off + len.max(1) - 1) / CHUNK_BYTES;
    let mut fetched = vec![0u64];
    fetched.extend(chunks(
        ab.index_offset() as u64,
        (ab.bytes.len() - ab.index_offset()) as u64,
    ));
    for p in ab.pages(Stream::Main) {
        fetched.extend(chunks(p.offset, u64::from(p.length)));
    }
    let mut blocks: Vec<Located> = ab
        .blocks()
        .into_iter()
        .filter(|b| b.stream == Stream::Main && b.info.kind() == BlockKind::Data)
        .filter(|b| chunks(b.info.offset, u64::from(b.info.length)).all(|c| !fetched.contains(&c)))
        .collect();
    blocks.sort_by_key(|b| b.info.offset);
    blocks
}

/// Two such blocks at least two chunks apart, so a fault on one never touches the other's
/// GET.
fn two_blocks() -> (Located, Located) {
    let blocks = data_blocks();
    let a = blocks[0];
    let b = *blocks
        .iter()
        .find(|b| {
            b.info.offset / CHUNK_BYTES
                > (a.info.offset + u64::from(a.info.length)) / CHUNK_BYTES + 1
        })
        .unwrap();
    (a, b)
}

fn stored(b: &Located) -> (u64, u64) {
    (b.info.offset, b.info.offset + u64::from(b.info.length))
}

/// Reads block `b` of the main stream whole.
fn read_block(snap: &Snapshot, b: &Located) -> Result<Vec<u8>, hexzd::store::StoreError> {
    let mut buf = vec![0u8; b.info.logical_len as usize];
    snap.read_at(Stream::Main, b.logical, &mut buf)?;
    Ok(buf)
}

/// The error of reading block `b`, which must fail.
fn read_error(snap: &Snapshot, b: &Located) -> String {
    match read_block(snap, b) {
        Ok(_) => panic!("reading block {} succeeded", b.index),
        Err(e) => e.to_string(),
    }
}

fn expect_block(b: &Located) -> Vec<u8> {
    let raw = read(&fixtures().join("mixed.img"));
    raw[b.logical as usize..b.logical as usize + b.info.logical_len as usize].to_vec()
}

/// A server with `mixed-lz4.hxz` at `/a.hxz`, and the snapshot opened from it.
fn served() -> (FaultServer, Snapshot) {
    let s = FaultServer::start();
    s.put("/a.hxz", read(&fixtures().join("mixed-lz4.hxz")));
    let snap =
        Snapshot::open_with(s.url("/a.hxz"), &engine(quick()), &OpenOptions::default()).unwrap();
    (s, snap)
}

#[test]
fn a_server_that_ignores_range_is_refused_at_open_with_one_clear_line() {
    let s = FaultServer::start();
    s.put("/a.hxz", read(&fixtures().join("mixed-lz4.hxz")));
    s.rule("/a.hxz", None, Fault::IgnoreRange, None);
    let e = Snapshot::open_with(s.url("/a.hxz"), &engine(quick()), &OpenOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ignores Range") && e.contains(&s.url("/a.hxz")),
        "{e}"
    );
    let o = hexzd_run(["cat", &s.url("/a.hxz")]);
    let err = assert_clean_failure(&o, "cat from a server without ranges");
    assert!(err.contains("ignores Range"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn a_short_body_fails_only_the_reads_it_touches() {
    let (s, snap) = served();
    let (a, b) = two_blocks();
    s.rule("/a.hxz", Some(stored(&a)), Fault::ShortBody, None);
    let e = read_error(&snap, &a);
    assert!(e.contains("short body") && e.contains("/a.hxz"), "{e}");
    assert!(
        e.contains(&format!("block {}", a.index)),
        "names the block: {e}"
    );
    assert_eq!(read_block(&snap, &b).unwrap(), expect_block(&b));
    let m = &snap.metrics().remote;
    assert_eq!(
        m.retries.load(Ordering::Relaxed),
        2,
        "retried twice, then gave up"
    );
}

#[test]
fn a_wrong_content_range_is_an_error_never_shifted_bytes() {
    let (s, snap) = served();
    let (a, b) = two_blocks();
    s.rule("/a.hxz", Some(stored(&a)), Fault::WrongContentRange, None);
    let e = read_error(&snap, &a);
    assert!(e.contains("Content-Range"), "{e}");
    assert_eq!(read_block(&snap, &b).unwrap(), expect_block(&b));
}

#[test]
fn a_500_then_success_is_retried_and_counted() {
    let (s, snap) = served();
    let (a, _) = two_blocks();
    s.rule("/a.hxz", Some(stored(&a)), Fault::Status(500), Some(2));
    assert_eq!(read_block(&snap, &a).unwrap(), expect_block(&a));
    let m = &snap.metrics().remote;
    assert_eq!(m.retries.load(Ordering::Relaxed), 2);
    assert!(
        m.errors().contains(&("500".to_string(), 2)),
        "{:?}",
        m.errors()
    );
    // Three 500s in a row exhaust two retries: the error names the status and the count.
    s.rule("/a.hxz", None, Fault::Status(503), Some(3));
    let (_, b) = two_blocks();
    let e = read_error(&snap, &b);
    assert!(
        e.contains("HTTP 503") && e.contains("after 3 attempts"),
        "{e}"
    );
}

#[test]
fn a_reset_mid_body_is_retried_and_a_persistent_one_fails_that_read() {
    let (s, snap) = served();
    let (a, b) = two_blocks();
    s.rule("/a.hxz", Some(stored(&a)), Fault::Reset, Some(1));
    assert_eq!(read_block(&snap, &a).unwrap(), expect_block(&a));
    s.rule("/a.hxz", Some(stored(&b)), Fault::Reset, None);
    let e = read_error(&snap, &b);
    assert!(e.contains("reset") || e.contains("short body"), "{e}");
    // The connection pool recovers: the next read of another place works.
    let chunks = |x: &Located| (stored(x).0 / CHUNK_BYTES, (stored(x).1 - 1) / CHUNK_BYTES);
    let apart = |x: &Located, y: &Located| chunks(x).1 < chunks(y).0 || chunks(y).1 < chunks(x).0;
    let c = data_blocks()
        .into_iter()
        .find(|x| apart(x, &a) && apart(x, &b))
        .unwrap();
    assert_eq!(read_block(&snap, &c).unwrap(), expect_block(&c));
}

#[test]
fn a_stalled_server_times_out_within_the_bounds() {
    let (s, snap) = served();
    let (a, b) = two_blocks();
    s.rule("/a.hxz", Some(stored(&a)), Fault::Stall, None);
    let t = Instant::now();
    let e = read_error(&snap, &a);
    // Three attempts of a 400 ms read timeout plus backoff.
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert!(e.contains("timeout") || e.contains("timed out"), "{e}");
    assert_eq!(read_block(&snap, &b).unwrap(), expect_block(&b));
}

#[test]
fn redirects_on_the_same_origin_are_followed_and_others_refused() {
    let s = FaultServer::start();
    let bytes = read(&fixtures().join("mixed-lz4.hxz"));
    s.put("/real.hxz", bytes);
    s.rule(
        "/moved.hxz",
        None,
        Fault::Redirect("/real.hxz".into()),
        None,
    );
    // The rule answers before the object lookup only for existing paths: give it one.
    s.put("/moved.hxz", vec![0; 10]);
    let snap = Snapshot::open_with(
        s.url("/moved.hxz"),
        &engine(quick()),
        &OpenOptions::default(),
    )
    .unwrap();
    assert_eq!(
        read_stream(&snap, Stream::Main, 1 << 20).unwrap(),
        read(&fixtures().join("mixed.img"))
    );

    let elsewhere = format!("http://127.0.0.2:{}/real.hxz", s.addr.port());
    s.rule("/away.hxz", None, Fault::Redirect(elsewhere), None);
    s.put("/away.hxz", vec![0; 10]);
    let e = Snapshot::open_with(
        s.url("/away.hxz"),
        &engine(quick()),
        &OpenOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("refused") && e.contains("127.0.0.2"), "{e}");

    let https = format!("https://127.0.0.1:{}/real.hxz", s.addr.port());
    s.rule("/tls.hxz", None, Fault::Redirect(https), None);
    s.put("/tls.hxz", vec![0; 10]);
    let e = Snapshot::open_with(s.url("/tls.hxz"), &engine(quick()), &OpenOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("changes the scheme"), "{e}");
}

#[test]
fn an_object_replaced_between_reads_gives_errors_never_mixed_bytes() {
    for ignores_if_match in [false, true] {
        let (s, snap) = served();
        let (a, b) = two_blocks();
        assert_eq!(read_block(&snap, &a).unwrap(), expect_block(&a));
        // Another archive (other content) under the same URL.
        s.put("/a.hxz", read(&fixtures().join("vm-dir-lz4.hxz")));
        if ignores_if_match {
            s.ignore_if_match("/a.hxz");
        }
        let e = read_error(&snap, &b);
        assert!(e.contains("changed since it was opened"), "{e}");
        // Bytes fetched before the change are the old object's: still served, still right.
        assert_eq!(read_block(&snap, &a).unwrap(), expect_block(&a));
        // Opening again (what a reload does) serves the new object.
        let fresh = Snapshot::open_with(s.url("/a.hxz"), &engine(quick()), &OpenOptions::default())
            .unwrap();
        assert_eq!(
            read_stream(&fresh, Stream::Main, 1 << 20).unwrap(),
            read(&fixtures().join("vm/disk.img"))
        );
    }
}

#[test]
fn basic_credentials_in_the_url_are_sent_and_never_shown() {
    let s = FaultServer::start();
    s.put("/a.hxz", read(&fixtures().join("mixed-lz4.hxz")));
    s.require_basic("alice", "hunter2");
    let url = format!("http://alice:hunter2@{}/a.hxz", s.addr);
    let snap = Snapshot::open_with(&url, &engine(quick()), &OpenOptions::default()).unwrap();
    assert_eq!(snap.path().display().to_string(), s.url("/a.hxz"));
    assert_eq!(
        read_stream(&snap, Stream::Main, 1 << 20).unwrap(),
        read(&fixtures().join("mixed.img"))
    );
    let wrong = format!("http://alice:wrong-pw@{}/a.hxz", s.addr);
    let o = hexzd_run(["cat", &wrong]);
    let err = assert_clean_failure(&o, "wrong password");
    assert!(err.contains("401") && !err.contains("wrong-pw"), "{err}");
}

#[test]
fn a_missing_object_and_an_unknown_host_are_one_clear_line() {
    let s = FaultServer::start();
    let o = hexzd_run(["cat", &s.url("/missing.hxz")]);
    let err = assert_clean_failure(&o, "404");
    assert!(
        err.contains("HTTP 404") && err.contains("/missing.hxz"),
        "{err}"
    );
    let o = hexzd_run(["inspect", "ftp://example.com/x.hxz"]);
    let err = assert_clean_failure(&o, "unsupported scheme");
    assert!(err.contains("unsupported URL scheme"), "{err}");
}

#[test]
fn the_chunk_size_is_what_the_tests_assume() {
    assert_eq!(CHUNK_BYTES, 128 * 1024);
}

#[test]
fn a_fault_under_read_ahead_fails_only_the_reads_it_touches() {
    // A sequential reader with read-ahead on: the read-ahead GET that covers the faulty
    // block fails in the background; the reader fetches again what it needs, so only the
    // reads whose blocks share a chunk with the fault fail, and every other read is exact.
    let s = FaultServer::start();
    s.put("/a.hxz", read(&fixtures().join("mixed-lz4.hxz")));
    let config = hexzd::store::RemoteConfig {
        readahead: 16 << 20,
        ..quick()
    };
    let snap =
        Snapshot::open_with(s.url("/a.hxz"), &engine(config), &OpenOptions::default()).unwrap();
    let blocks = data_blocks();
    let bad = blocks[blocks.len() / 2];
    s.rule("/a.hxz", Some(stored(&bad)), Fault::Status(500), None);
    let bad_chunks = (
        stored(&bad).0 / CHUNK_BYTES,
        (stored(&bad).1 - 1) / CHUNK_BYTES,
    );
    let all = ArchiveBytes::fixture("mixed-lz4.hxz").blocks();
    let raw = read(&fixtures().join("mixed.img"));
    const PIECE: u64 = 64 * 1024;
    let (mut ok, mut failed) = (0, 0);
    let mut at = 0u64;
    while at < raw.len() as u64 {
        let len = PIECE.min(raw.len() as u64 - at);
        // Whether a block this read needs has stored bytes in (or next to) a faulty chunk.
        let touches = all.iter().any(|b| {
            b.stream == Stream::Main
                && b.info.length > 0
                && b.logical < at + len
                && b.logical + u64::from(b.info.logical_len) > at
                && {
                    let (f, l) = (
                        b.info.offset / CHUNK_BYTES,
                        (b.info.offset + u64::from(b.info.length) - 1) / CHUNK_BYTES,
                    );
                    l + 1 >= bad_chunks.0 && f <= bad_chunks.1 + 1
                }
        });
        let mut buf = vec![0u8; len as usize];
        match snap.read_at(Stream::Main, at, &mut buf) {
            Ok(n) => {
                assert_eq!(n as u64, len);
                assert!(
                    buf == raw[at as usize..(at + len) as usize],
                    "wrong bytes at {at}"
                );
                ok += 1;
            }
            Err(e) => {
                assert!(touches, "a read away from the fault failed at {at}: {e}");
                let e = e.to_string();
                assert!(e.contains("HTTP 500") && e.contains("/a.hxz"), "{e}");
                failed += 1;
            }
        }
        let hit = bad.logical < at + len && bad.logical + u64::from(bad.info.logical_len) > at;
        if hit {
            assert!(failed > 0, "the read of the faulty block at {at} succeeded");
        }
        at += len;
    }
    assert!(ok > 10 && failed >= 1, "{ok} reads ok, {failed} failed");
    // A 64 KiB read needs at most two chunks: a longer GET was read-ahead.
    let longest = s
        .requests()
        .iter()
        .filter_map(|(_, r)| {
            let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
            Some(b.parse::<u64>().ok()? + 1 - a.parse::<u64>().ok()?)
        })
        .max()
        .unwrap_or(0);
    assert!(
        longest > 2 * CHUNK_BYTES,
        "no read-ahead GET (longest {longest} bytes): the test did not exercise it"
    );
}
