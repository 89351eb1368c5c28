//! `hexzd serve` as users run it: archives and flags on the command line (no config file),
//! readiness on stderr, the access log and corrupt-block warnings on stderr, no thread or fd
//! leak after clients vanish mid-body (counted in /proc/PID), the bearer token file, the
//! password file for encrypted archives, and `--max-range-bytes`.
#![allow(clippy::unwrap_used)]

mod http_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use http_support::{Daemon, Target, all_fixtures, fixtures, get, wait_until};

/// `hexzd serve --http 127.0.0.1:0 --nbd off ARGS...`.
fn serve(args: &[&str]) -> Daemon {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hexzd"));
    cmd.args(["serve", "--http", "127.0.0.1:0", "--nbd", "off"])
        .args(args);
    Daemon::spawn(cmd, tempfile::tempdir().unwrap())
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn command_line_archives_with_a_password_file_and_a_thin_child() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{}\n", http_support::PASSWORD)).unwrap();
    let fx = fixtures();
    let d = serve(&[
        "--password-file",
        path(&pw),
        &format!("{}=enc", path(&fx.join("mixed-enc-lz4.hxz"))),
        &format!("{}=thin", path(&fx.join("mixed-child-thin-lz4.hxz"))),
    ]);
    let mixed = std::fs::read(fx.join("mixed.img")).unwrap();
    let child = std::fs::read(fx.join("mixed-child.img")).unwrap();
    assert_eq!(
        get(d.addr, "/disk", &[]).body,
        mixed,
        "default = first = enc"
    );
    assert_eq!(get(d.addr, "/snapshots/thin/disk", &[]).body, child);
    let r = get(d.addr, "/snapshots/thin/disk", &[("Range", "bytes=-4096")]);
    assert_eq!(r.body, child[child.len() - 4096..]);
    let list: serde_json::Value =
        serde_json::from_slice(&get(d.addr, "/snapshots", &[]).body).unwrap();
    assert_eq!(list[0]["name"], "enc");
    assert_eq!(list[1]["name"], "thin");
}

#[test]
fn access_log_has_one_line_per_request() {
    let d = serve(&[path(&fixtures().join("hello-lz4.hxz"))]);
    let r = get(d.addr, "/disk?x=1", &[("Range", "bytes=0-9")]);
    assert_eq!(r.status, 206);
    let line = d
        .wait_log(&[
            "127.0.0.1:",
            "\"GET /disk?x=1\"",
            "range=bytes=0-9",
            " 206 10 ",
        ])
        .unwrap_or_else(|| {
            panic!(
                "no access log line:\n{}",
                d.stderr.lock().unwrap().join("\n")
            )
        });
    assert!(line.contains("ms"), "{line}");
    let _ = get(d.addr, "/nope", &[]);
    assert!(
        d.wait_log(&["\"GET /nope\"", "range=-", " 404 0 "])
            .is_some()
    );
}

#[test]
fn corrupt_blocks_are_500_logged_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (archive, data, bad) = http_support::corrupt_archive(dir.path());
    let d = serve(&[&format!("{}=corrupt", path(&archive))]);
    let off = bad[0];
    let r = get(
        d.addr,
        "/disk",
        &[("Range", &format!("bytes={off}-{}", off + 9))],
    );
    assert_eq!((r.status, r.content_length()), (500, Some(0)));
    // The warning names the archive, the block and its offset.
    let line = d
        .wait_log(&["corrupt block", path(&archive), "block ", "offset "])
        .unwrap_or_else(|| panic!("no warning:\n{}", d.stderr.lock().unwrap().join("\n")));
    assert!(
        line.starts_with("WARN") || line.starts_with("<4>"),
        "{line}"
    );
    // Mid-body: the connection closes short of Content-Length.
    let mut s = d.connect();
    s.write_all(b"GET /disk HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(out.len() - head_end < data.len());
    let metrics = String::from_utf8(get(d.addr, "/metrics", &[]).body).unwrap();
    assert!(
        metrics.contains("hexzd_http_corrupt_block_errors_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hexzd_http_read_errors_total 2"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("hexzd_store_block_errors_total 0\n"),
        "{metrics}"
    );
}

#[test]
fn auth_token_file_and_max_range_bytes_flags() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let (big, data) = http_support::cached_archive("big", 40 << 20, 11);
    let d = serve(&[
        "--auth-token-file",
        path(&token),
        "--max-range-bytes",
        "0",
        &format!("{}=big", path(&big)),
    ]);
    let r = get(d.addr, "/disk", &[("Range", "bytes=0-")]);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"hexzd\""));
    assert_eq!(get(d.addr, "/healthz", &[]).status, 200);
    let r = get(
        d.addr,
        "/disk",
        &[("Range", "bytes=1000-"), ("Authorization", "Bearer t0ken")],
    );
    assert_eq!(r.status, 206);
    assert!(
        r.body == data[1000..],
        "exact range over 32 MiB with --max-range-bytes 0"
    );
}

#[test]
fn clients_vanishing_mid_body_leak_no_thread_or_fd() {
    let (big, data) = http_support::cached_archive("big", 40 << 20, 11);
    let d = serve(&[&format!("{}=big", path(&big))]);
    assert_eq!(
        get(d.addr, "/disk", &[("Range", "bytes=0-9")]).body,
        data[..10]
    );
    assert!(d.wait_idle(Duration::from_secs(10)));
    let before = d.proc_counts();
    let mut clients = Vec::new();
    for i in 0..24 {
        let mut s = TcpStream::connect(d.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        match i % 3 {
            0 => {
                s.write_all(b"GET /disk HTTP/1.1\r\nHost: a\r\n\r\n")
                    .unwrap();
                let mut buf = vec![0; 256 << 10];
                s.read_exact(&mut buf).unwrap();
            }
            1 => {
                s.write_all(b"GET /disk HTTP/1.1\r\nHost: a\r\nRange: bytes=0-\r\n\r\n")
                    .unwrap();
                let mut buf = vec![0; 100];
                s.read_exact(&mut buf).unwrap();
            }
            _ => s.write_all(b"GET /disk HTTP/1.1\r\nHo").unwrap(),
        }
        clients.push(s);
    }
    assert!(wait_until(Duration::from_secs(10), || d.conn_threads() == 24));
    assert!(d.proc_counts().0 >= before.0 + 24);
    drop(clients);
    assert!(
        d.wait_idle(Duration::from_secs(30)),
        "connection threads ended"
    );
    assert!(
        wait_until(Duration::from_secs(10), || d.proc_counts() == before),
        "before {before:?}, after {:?}",
        d.proc_counts()
    );
    assert_eq!(
        get(d.addr, "/disk", &[("Range", "bytes=5-9")]).body,
        data[5..10]
    );
}

#[test]
fn every_fixture_on_the_command_line_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, http_support::PASSWORD).unwrap();
    let mut args = vec!["--password-file".to_string(), path(&pw).to_string()];
    for (a, _, _) in all_fixtures() {
        args.push(format!("{}={}", path(&a.path), a.name));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = serve(&args);
    let list: serde_json::Value =
        serde_json::from_slice(&get(d.addr, "/snapshots", &[]).body).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), all_fixtures().len());
    for (entry, (a, main, aux)) in list.iter().zip(all_fixtures()) {
        assert_eq!(entry["name"], a.name.as_str());
        assert_eq!(
            entry["disk"]["size"],
            std::fs::metadata(main).unwrap().len()
        );
        let aux = aux.map_or(0, |p| std::fs::metadata(p).unwrap().len());
        assert_eq!(entry["memory"]["size"], aux);
        let etag = get(
            d.addr,
            &format!("/snapshots/{}/disk", a.name),
            &[("Range", "bytes=0-0")],
        );
        assert_eq!(entry["disk"]["etag"].as_str(), etag.header("etag"));
    }
}
