//! TLS over a connection's and the daemon's life (issue 13): SIGHUP with a renewed
//! certificate (new connections get it, open ones keep working; a bad one is logged and the
//! old one keeps serving), with a config file and with `--tls-certificates` alone; and abuse
//! of the HTTPS port, each closing only its own connection: a hello that never completes
//! (handshake timeout), a record larger than TLS allows, a renegotiation attempt (OpenSSL's
//! `s_client` `R` command). Certificates are made in the test with `openssl`.
#![allow(clippy::unwrap_used)]

mod systemd_support;
mod tls_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use systemd_support::{Daemon, LIMIT, fixture, serve_command};
use tls_support::{Pki, client_config, get, have, mixed, tls_connect};

/// An HTTPS-only daemon with `--tls-certificates` and, if given, `--config`.
fn https_daemon(pki: &Pki, config: Option<&std::path::Path>) -> (Daemon, u16) {
    let mut cmd = serve_command();
    cmd.args(["--http", "off", "--nbd", "off", "--https", "127.0.0.1:0"]);
    match config {
        Some(c) => {
            cmd.arg("--config").arg(c);
        }
        None => {
            cmd.arg("--tls-certificates")
                .arg(&pki.dir)
                .arg(fixture("mixed-lz4.hxz"));
        }
    }
    let mut d = Daemon::spawn(cmd);
    let port = d.port("HTTPS");
    (d, port)
}

/// The renewal scenario against a running daemon; `reloaded` is the log line a successful
/// reload prints.
fn renewal(pki: &Pki, d: &mut Daemon, port: u16, reloaded: &str) {
    let img = mixed();
    let old_ca = pki.file("ca-cert.pem");
    let mut open = tls_connect(port, client_config(&old_ca, None)).unwrap();
    assert_eq!(get(&mut open, "/disk", Some((0, 9))).1, img[..10]);

    let new_ca = pki.renew_with_new_ca("b");
    d.signal(libc::SIGHUP);
    d.wait_for(reloaded);

    // The open connection keeps its certificate and goes on.
    assert_eq!(get(&mut open, "/disk", Some((10, 19))).1, img[10..20]);
    // New connections get the new certificate: the old CA no longer verifies it.
    let e = tls_connect(port, client_config(&old_ca, None)).err();
    assert!(e.is_some_and(|e| e.to_string().contains("UnknownIssuer")));
    let mut new = tls_connect(port, client_config(&new_ca, None)).unwrap();
    assert_eq!(get(&mut new, "/disk", Some((20, 29))).1, img[20..30]);

    // A broken certificate on reload: logged, and the renewed one keeps serving.
    std::fs::write(pki.file("server-cert.pem"), "not a certificate\n").unwrap();
    d.signal(libc::SIGHUP);
    let line = d.wait_for("reload failed");
    assert!(
        line.contains("server-cert.pem: holds no certificate"),
        "{line}"
    );
    let mut again = tls_connect(port, client_config(&new_ca, None)).unwrap();
    assert_eq!(get(&mut again, "/disk", Some((30, 39))).1, img[30..40]);
    assert_eq!(get(&mut open, "/disk", Some((40, 49))).1, img[40..50]);
}

#[test]
fn sighup_with_a_config_file_renews_the_certificate_for_new_connections_only() {
    if !have("openssl") {
        return;
    }
    let pki = Pki::new();
    let cfg = pki.tmp.path().join("hexzd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[tls]\ncertificates = {:?}\n\n[[snapshot]]\nname = \"mixed\"\npath = {:?}\n",
            pki.dir.display().to_string(),
            fixture("mixed-lz4.hxz").display().to_string()
        ),
    )
    .unwrap();
    let (mut d, port) = https_daemon(&pki, Some(&cfg));
    renewal(&pki, &mut d, port, "reload: TLS certificates from");
}

#[test]
fn sighup_without_a_config_file_re_reads_the_certificates_of_the_command_line() {
    if !have("openssl") {
        return;
    }
    let pki = Pki::new();
    let (mut d, port) = https_daemon(&pki, None);
    renewal(
        &pki,
        &mut d,
        port,
        "reload: no config file; TLS certificates",
    );
}

/// True once the server closed `s` (EOF or reset) within [`LIMIT`].
fn closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let mut b = [0u8; 256];
    loop {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
    }
}

/// After abuse: a well-behaved client is still served, and the daemon still runs.
fn still_serves(pki: &Pki, port: u16) {
    let mut s = tls_connect(port, client_config(&pki.file("ca-cert.pem"), None)).unwrap();
    assert_eq!(get(&mut s, "/disk", Some((0, 3))).1, mixed()[..4]);
}

#[test]
fn a_hello_that_never_completes_times_out_and_a_huge_record_is_refused() {
    if !have("openssl") {
        return;
    }
    let pki = Pki::new();
    let cfg = pki.tmp.path().join("hexzd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[http]\nheader_timeout = \"1s\"\n[tls]\ncertificates = {:?}\n\n[[snapshot]]\n\
             name = \"mixed\"\npath = {:?}\n",
            pki.dir.display().to_string(),
            fixture("mixed-lz4.hxz").display().to_string()
        ),
    )
    .unwrap();
    let (_d, port) = https_daemon(&pki, Some(&cfg));

    // Nothing at all, and half a ClientHello: both closed at the handshake deadline.
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut half = TcpStream::connect(("127.0.0.1", port)).unwrap();
    half.write_all(&[22, 3, 1, 0, 200, 1, 0, 0]).unwrap();
    still_serves(&pki, port);
    assert!(closed(&mut silent));
    assert!(closed(&mut half));

    // A record header announcing 65535 bytes: refused at once.
    let mut huge = TcpStream::connect(("127.0.0.1", port)).unwrap();
    huge.write_all(&[22, 3, 1, 0xff, 0xff]).unwrap();
    huge.write_all(&[0u8; 4096]).unwrap();
    assert!(closed(&mut huge));
    still_serves(&pki, port);
}

#[test]
fn a_renegotiation_attempt_closes_only_its_connection() {
    if !have("openssl") {
        return;
    }
    let pki = Pki::new();
    let (mut d, port) = https_daemon(&pki, None);
    let mut other = tls_connect(port, client_config(&pki.file("ca-cert.pem"), None)).unwrap();
    assert_eq!(get(&mut other, "/disk", Some((0, 0))).1, mixed()[..1]);
    // TLS 1.2 (1.3 has no renegotiation); `R` on its own line asks s_client to renegotiate.
    let mut child = Command::new("openssl")
        .args(["s_client", "-tls1_2", "-servername", "localhost", "-CAfile"])
        .arg(pki.file("ca-cert.pem"))
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"R\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("RENEGOTIATING"), "{text}");
    // The other connection and new ones are served; nothing was logged above debug for it.
    assert_eq!(get(&mut other, "/disk", Some((1, 1))).1, mixed()[1..2]);
    still_serves(&pki, port);
    let lines = d.lines();
    assert!(
        lines
            .iter()
            .all(|l| !l.starts_with("WARN") && !l.starts_with("ERROR")),
        "{lines:?}"
    );
}
