//! Stalled HTTPS clients (issue 13 with the send timeouts of `[limits]`): a TLS write that
//! waits out its stall tick in the middle of a record must leave the stream intact. A client
//! that pauses reading a 40 MiB body (longer than the 500 ms stall tick, shorter than the send
//! timeout) gets every byte exactly, and holds no response buffer while it pauses; a client
//! that stops reading is closed after the send timeout, counted, and gives its buffer back.
#![allow(clippy::unwrap_used)]

mod http_support;
mod systemd_support;
mod tls_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Duration;

use systemd_support::{Daemon, serve_command};
use tls_support::{Pki, client_config, get, have};

const BIG: usize = 40 << 20;

/// A TCP connection whose receive buffer is small, so the server's writes fill the path.
fn small_window(port: u16) -> TcpStream {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, connect, setsockopt, socket, sockopt,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    setsockopt(&fd, sockopt::RcvBuf, &16384).unwrap();
    let addr = SockaddrIn::new(127, 0, 0, 1, port);
    connect(fd.as_raw_fd(), &addr).unwrap();
    TcpStream::from(fd)
}

fn tls_on(sock: TcpStream, pki: &Pki) -> tls_support::Tls {
    let conn = rustls::ClientConnection::new(
        client_config(&pki.file("ca-cert.pem"), None),
        "localhost".try_into().unwrap(),
    )
    .unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).unwrap();
    }
    s
}

fn metric(port: u16, pki: &Pki, name: &str) -> u64 {
    let mut s =
        tls_support::tls_connect(port, client_config(&pki.file("ca-cert.pem"), None)).unwrap();
    let (_, body) = get(&mut s, "/metrics", None);
    let text = String::from_utf8(body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn paused_and_stopped_tls_readers_keep_the_stream_exact_and_hold_no_buffer() {
    if !have("openssl") {
        return;
    }
    let (archive, data) = http_support::cached_archive("big", BIG, 11);
    let pki = Pki::new();
    let cfg = pki.tmp.path().join("hexzd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[http]\nmax_range_bytes = 0\n[limits]\nsend_timeout = \"3s\"\n[tls]\n\
             certificates = {:?}\n\n[[snapshot]]\nname = \"big\"\npath = {:?}\n",
            pki.dir.display().to_string(),
            archive.display().to_string()
        ),
    )
    .unwrap();
    let mut cmd = serve_command();
    cmd.args([
        "--http",
        "off",
        "--nbd",
        "off",
        "--https",
        "127.0.0.1:0",
        "--config",
    ])
    .arg(&cfg);
    let mut d = Daemon::spawn(cmd);
    let port = d.port("HTTPS");

    // A reader that pauses twice for longer than the stall tick.
    let mut s = tls_on(small_window(port), &pki);
    s.write_all(b"GET /disk HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    s.flush().unwrap();
    let mut got = Vec::with_capacity(BIG + 1024);
    let mut buf = vec![0u8; 1 << 16];
    let mut pauses = [2 << 20, 20 << 20].into_iter().peekable();
    let mut body_at = None;
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
        if body_at.is_none() {
            body_at = got.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        }
        if let Some(at) = body_at {
            if got.len() - at >= BIG {
                break;
            }
            if pauses.peek().is_some_and(|&p| got.len() - at >= p) {
                pauses.next();
                // Not a wait for readiness: this is the slow client under test.
                std::thread::sleep(Duration::from_millis(1500));
                assert_eq!(
                    metric(port, &pki, "hexzd_buffer_memory_used_bytes"),
                    0,
                    "a paused client holds no response buffer"
                );
            }
        }
    }
    let at = body_at.unwrap();
    assert!(got[..at].starts_with(b"HTTP/1.1 200 "));
    assert_eq!(got.len() - at, BIG);
    assert!(got[at..] == data[..], "the body differs after stalls");

    // A reader that stops: closed after the send timeout, counted, its buffer given back.
    let mut stuck = tls_on(small_window(port), &pki);
    stuck
        .write_all(b"GET /disk HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    stuck.flush().unwrap();
    let line = d.wait_for("send_timeout");
    assert!(line.contains("connection closed"), "{line}");
    assert_eq!(metric(port, &pki, "hexzd_http_send_timeouts_total"), 1);
    assert_eq!(metric(port, &pki, "hexzd_buffer_memory_used_bytes"), 0);
}
