//! Reload under load (issue 9 §4): HTTP and NBD clients read continuously while SIGHUP swaps
//! a snapshot between two files 20 times. Zero failed requests; connections opened before a
//! swap keep their bytes, connections opened after it get the new ones, and the ETag changes
//! with the file. A bad config and a config naming a FIFO change nothing, and SIGTERM right
//! after them still stops the daemon promptly. Each reload is awaited on the private
//! `NOTIFY_SOCKET` (`READY=1` after `RELOADING=1`), never with a sleep.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod systemd_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use systemd_support::{Daemon, Nbd, Notify, config, fixture, get, header, serve_command};

/// The two files the snapshot alternates between, with their raw main streams.
struct Files {
    a: (std::path::PathBuf, Vec<u8>),
    b: (std::path::PathBuf, Vec<u8>),
}

/// The range every reader asks for: inside both images, across several blocks.
const RANGE: (u64, u64) = (60_000, 60_000 + 200_000 - 1);

fn slice(raw: &[u8]) -> &[u8] {
    &raw[usize::try_from(RANGE.0).unwrap()..=usize::try_from(RANGE.1).unwrap()]
}

/// Reads one response on a kept-alive connection; returns (ETag, body).
fn keep_alive_range(r: &mut BufReader<TcpStream>) -> Result<(String, Vec<u8>), String> {
    r.get_mut()
        .write_all(
            format!(
                "GET /snapshots/s/disk HTTP/1.1\r\nHost: x\r\nRange: bytes={}-{}\r\n\r\n",
                RANGE.0, RANGE.1
            )
            .as_bytes(),
        )
        .map_err(|e| e.to_string())?;
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err(format!("connection closed; head so far {head:?}"));
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    if !head.starts_with("HTTP/1.1 206") {
        return Err(head);
    }
    let len: usize = header(&head, "content-length").unwrap().parse().unwrap();
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok((header(&head, "etag").unwrap().to_string(), body))
}

#[test]
fn twenty_swaps_under_http_and_nbd_load_lose_no_request() {
    let files = Arc::new(Files {
        a: (
            fixture("mixed-lz4.hxz"),
            std::fs::read(fixture("mixed.img")).unwrap(),
        ),
        b: (
            fixture("zeros-serial-lz4.hxz"),
            std::fs::read(fixture("zeros.img")).unwrap(),
        ),
    });
    assert_ne!(slice(&files.a.1), slice(&files.b.1));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hexzd.toml");
    std::fs::write(&cfg, config(&[("s", &files.a.0)], "")).unwrap();
    let notify = Notify::bind();
    let mut cmd = serve_command();
    cmd.args(["--config", cfg.to_str().unwrap()])
        .env("HEXZD_LOG", "warn")
        .env("NOTIFY_SOCKET", &notify.path);
    let mut d = Daemon::spawn(cmd);
    notify.expect("READY=1");
    let (http, nbd) = (d.port("HTTP"), d.port("NBD"));
    let (_, head, _) = get(http, "/snapshots/s/disk", Some(RANGE));
    let etag_a = header(&head, "etag").unwrap().to_string();

    // Connections opened before any swap: they must see file A's bytes to the end.
    let mut old_http = BufReader::new(TcpStream::connect(("127.0.0.1", http)).unwrap());
    let mut old_nbd = Nbd::connect(nbd, "s").unwrap();
    // A connection takes its snapshot set when its server thread starts: one answer proves
    // it has (the NBD handshake already did).
    assert_eq!(keep_alive_range(&mut old_http).unwrap().0, etag_a);

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    // Fresh-connection readers: each answer must be one file's bytes, with that file's ETag.
    for t in 0..2 {
        let (stop, done, files, etag_a) = (
            Arc::clone(&stop),
            Arc::clone(&done),
            Arc::clone(&files),
            etag_a.clone(),
        );
        readers.push(std::thread::spawn(move || -> Result<(), String> {
            while !stop.load(Ordering::Relaxed) {
                if t == 0 {
                    let (status, head, body) = get(http, "/snapshots/s/disk", Some(RANGE));
                    if status != 206 {
                        return Err(format!("HTTP status {status}"));
                    }
                    let etag = header(&head, "etag").unwrap_or_default();
                    let want = if etag == etag_a {
                        &files.a.1
                    } else {
                        &files.b.1
                    };
                    if body != slice(want) {
                        return Err(format!("HTTP bytes do not match ETag {etag}"));
                    }
                } else {
                    let mut c = Nbd::connect(nbd, "s").map_err(|e| e.to_string())?;
                    let size = c.size;
                    let len = u32::try_from(RANGE.1 - RANGE.0 + 1).unwrap();
                    let got = c.read(RANGE.0, len).map_err(|e| e.to_string())?;
                    let want = if size == files.a.1.len() as u64 {
                        &files.a.1
                    } else {
                        &files.b.1
                    };
                    if got != slice(want) {
                        return Err(format!("NBD bytes do not match the export of size {size}"));
                    }
                    c.disconnect();
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }

    let mut etags = vec![etag_a.clone()];
    for i in 0..20 {
        let (path, raw) = if i % 2 == 0 { &files.b } else { &files.a };
        std::fs::write(&cfg, config(&[("s", path)], "")).unwrap();
        d.signal(libc::SIGHUP);
        notify.expect("RELOADING=1");
        let ready = notify.expect("READY=1");
        assert!(ready.contains("last reload: ok"), "swap {i}: {ready}");
        // New connections: the new file's bytes and ETag.
        let (status, head, body) = get(http, "/snapshots/s/disk", Some(RANGE));
        assert_eq!(status, 206);
        assert!(
            body == slice(raw),
            "swap {i}: a new HTTP connection got old bytes"
        );
        let etag = header(&head, "etag").unwrap().to_string();
        assert_ne!(
            &etag,
            etags.last().unwrap(),
            "swap {i}: the ETag did not change"
        );
        etags.push(etag);
        let mut c = Nbd::connect(nbd, "s").unwrap();
        assert_eq!(c.size, raw.len() as u64);
        let len = u32::try_from(RANGE.1 - RANGE.0 + 1).unwrap();
        assert!(c.read(RANGE.0, len).unwrap() == slice(raw));
        // Old connections: still file A.
        let (etag, body) = keep_alive_range(&mut old_http).unwrap();
        assert_eq!(
            etag, etag_a,
            "swap {i}: an old HTTP connection changed snapshot"
        );
        assert!(body == slice(&files.a.1));
        assert!(old_nbd.read(RANGE.0, len).unwrap() == slice(&files.a.1));
        // Keep the load on: both readers get requests through between two swaps.
        let before = done.load(Ordering::Relaxed);
        let deadline = std::time::Instant::now() + systemd_support::LIMIT;
        while done.load(Ordering::Relaxed) < before + 4 {
            assert!(std::time::Instant::now() < deadline, "the readers stalled");
            std::thread::yield_now();
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap().unwrap();
    }
    assert!(done.load(Ordering::Relaxed) > 0);
    // A and B alternate, so the ETags alternate between two values.
    assert_eq!(etags[0], etags[2]);

    // After 20 swaps the set serves B... then a bad config and a FIFO change nothing.
    let current = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, "[[snapshot]]\nname = \"s\"\n").unwrap();
    d.signal(libc::SIGHUP);
    notify.expect("RELOADING=1");
    let ready = notify.expect("READY=1");
    assert!(ready.contains("last reload: FAILED"), "{ready}");
    let fifo = dir.path().join("pipe.hxz");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    std::fs::write(&cfg, config(&[("s", &fifo)], "")).unwrap();
    d.signal(libc::SIGHUP);
    notify.expect("RELOADING=1");
    let ready = notify.expect("READY=1");
    assert!(ready.contains("is a FIFO"), "{ready}");
    let last = if current.contains("zeros") {
        &files.b.1
    } else {
        &files.a.1
    };
    let (_, _, body) = get(http, "/snapshots/s/disk", Some(RANGE));
    assert!(
        body == slice(last),
        "a failed reload changed what is served"
    );

    // The FIFO once more, and SIGTERM right behind the SIGHUP.
    d.signal(libc::SIGHUP);
    d.signal(libc::SIGTERM);
    notify.expect("STOPPING=1");
    drop(old_http);
    drop(old_nbd);
    let status = d.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
}
