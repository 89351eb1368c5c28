//! The graceful stop (`[daemon] shutdown_timeout`): at SIGTERM, a large HTTP download and an
//! NBD read in flight finish, idle connections close at once, no new request is taken, and
//! the process exits 0; a download that cannot finish is cut at the deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod systemd_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use systemd_support::{Daemon, Nbd, Notify, config, serve_command};

/// A 64 MiB image (compressible, so the archive is small) packed by `hexzd pack`; returns
/// (archive, raw bytes).
fn large_archive(dir: &Path) -> (PathBuf, Vec<u8>) {
    let raw: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i / 4096 % 251) as u8 ^ (i % 7) as u8)
        .collect();
    let img = dir.join("large.img");
    std::fs::write(&img, &raw).unwrap();
    let out = dir.join("large.hxz");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_hexzd"))
        .arg("pack")
        .arg(&img)
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (out, raw)
}

/// Starts the daemon on `archive` with `shutdown_timeout`; returns it with its HTTP and NBD
/// ports.
fn start(dir: &Path, archive: &Path, timeout: &str) -> (Daemon, Notify, u16, u16) {
    let cfg = dir.join("hexzd.toml");
    let extra = format!("[daemon]\nshutdown_timeout = {timeout:?}\n");
    std::fs::write(&cfg, config(&[("big", archive)], &extra)).unwrap();
    let notify = Notify::bind();
    let mut cmd = serve_command();
    cmd.args(["--config", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify.path);
    let mut d = Daemon::spawn(cmd);
    notify.expect("READY=1");
    let http = d.port("HTTP");
    let nbd = d.port("NBD");
    (d, notify, http, nbd)
}

/// Sends a GET of the whole disk and reads its head and `first` body bytes; the rest of the
/// body stays unread (in flight).
fn start_download(port: u16, first: usize) -> (TcpStream, u64, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(systemd_support::LIMIT)).unwrap();
    s.write_all(b"GET /disk HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let split = loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed before the head");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
    };
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let len: u64 = systemd_support::header(&head, "content-length")
        .unwrap()
        .parse()
        .unwrap();
    let mut body = buf[split + 4..].to_vec();
    while body.len() < first {
        let n = s.read(&mut chunk).unwrap();
        body.extend_from_slice(&chunk[..n]);
    }
    (s, len, body)
}

#[test]
fn in_flight_http_download_and_nbd_read_finish_and_the_process_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let (archive, raw) = large_archive(dir.path());
    let (mut d, notify, http, nbd) = start(dir.path(), &archive, "60s");

    // In flight at SIGTERM: a 64 MiB download read only 1 MiB far, a 32 MiB NBD read whose
    // reply is not read yet, and two idle connections (keep-alive HTTP, NBD).
    let (mut download, len, mut body) = start_download(http, 1 << 20);
    assert_eq!(len, raw.len() as u64);
    let mut reader = Nbd::connect(nbd, "").unwrap();
    let cookie = reader.send_read(4096, 32 << 20).unwrap();
    let mut idle_http = TcpStream::connect(("127.0.0.1", http)).unwrap();
    idle_http
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut scratch = [0u8; 1024];
    assert!(idle_http.read(&mut scratch).unwrap() > 0);
    let mut idle_nbd = Nbd::connect(nbd, "").unwrap();
    assert_eq!(idle_nbd.read(0, 512).unwrap(), raw[..512]);

    let stopped_at = Instant::now();
    d.signal(libc::SIGTERM);
    notify.expect("STOPPING=1");
    d.wait_for("waiting up to");

    // Idle connections are closed at once (end-of-file), well before any deadline.
    idle_http
        .set_read_timeout(Some(systemd_support::LIMIT))
        .unwrap();
    assert_eq!(idle_http.read(&mut scratch).unwrap_or(0), 0);
    let mut b = [0u8; 16];
    assert_eq!(idle_nbd.s.read(&mut b).unwrap_or(0), 0);

    // The NBD read in flight is answered in full, and then the connection closes: a request
    // sent after the stop is not taken.
    let (got, data) = reader.recv_read(32 << 20).unwrap();
    assert_eq!(got, cookie);
    assert!(data == raw[4096..4096 + (32 << 20)], "NBD bytes differ");
    let _ = reader.send_read(0, 512);
    assert!(
        reader.recv_read(512).is_err(),
        "a new NBD request was taken"
    );

    // The download completes, byte for byte.
    download.read_to_end(&mut body).unwrap();
    assert_eq!(body.len(), raw.len());
    assert!(body == raw, "HTTP bytes differ");

    let status = d.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    // It exited because everything finished, not at the 60 s deadline.
    assert!(stopped_at.elapsed() < Duration::from_secs(50));
    assert!(
        !d.lines().iter().any(|l| l.contains("cut")),
        "{:?}",
        d.lines()
    );
}

#[test]
fn a_download_that_cannot_finish_is_cut_at_the_deadline_and_the_exit_is_still_0() {
    let dir = tempfile::tempdir().unwrap();
    let (archive, raw) = large_archive(dir.path());
    let (mut d, notify, http, _) = start(dir.path(), &archive, "1s");
    // A client that stops reading after 1 MiB of a 64 MiB body.
    let (mut stalled, len, mut body) = start_download(http, 1 << 20);
    assert_eq!(len, raw.len() as u64);

    d.signal(libc::SIGTERM);
    notify.expect("STOPPING=1");
    d.wait_for("still busy at the shutdown deadline");
    let status = d.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    // What the client reads now ends short of Content-Length: the download was cut.
    let _ = stalled.read_to_end(&mut body);
    assert!((body.len() as u64) < len, "{} of {len}", body.len());
    assert!(body == raw[..body.len()], "the bytes sent were right");
}
