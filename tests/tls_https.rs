//! HTTPS against real clients (issue 13): curl `--cacert` ranges, multi-range and `-C -`,
//! byte-exact; keep-alive and pipelining over TLS; `--tls-verify-peer` with and without a
//! client certificate; the bearer token and `/metrics` over TLS; a plaintext request to the
//! HTTPS port and a TLS hello to the HTTP port each refused cheaply. Certificates are made in
//! the test with `openssl`.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod systemd_support;
mod tls_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use tls_support::{Pki, client_config, get, have, mixed, run, serve, tls_connect};

fn https_args(pki: &Pki) -> Vec<String> {
    vec![
        "--http".into(),
        "127.0.0.1:0".into(),
        "--https".into(),
        "127.0.0.1:0".into(),
        "--nbd".into(),
        "off".into(),
        "--tls-certificates".into(),
        pki.dir.display().to_string(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn curl(port: u16, pki: &Pki, extra: &[&str], path: &str) -> std::process::Output {
    run(Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(pki.file("ca-cert.pem"))
        .args(extra)
        .arg(format!("https://localhost:{port}{path}")))
}

#[test]
fn curl_ranges_multi_range_and_resume_over_https_are_exact() {
    if !have("curl") || !have("openssl") {
        return;
    }
    let pki = Pki::new();
    let mut d = serve(&strs(&https_args(&pki)));
    let port = d.port("HTTPS");
    let img = mixed();

    let o = curl(port, &pki, &["-r", "1000-70999"], "/disk");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout == img[1000..71000]);

    let o = curl(port, &pki, &["-r", "0-9,500000-500009", "-D", "-"], "/disk");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("HTTP/1.1 206"), "{text}");
    assert!(text.contains("multipart/byteranges; boundary="));
    assert!(text.contains(&format!("Content-Range: bytes 500000-500009/{}", img.len())));

    // -C -: resume a partial file to the whole image.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("part");
    std::fs::write(&out, &img[..300_000]).unwrap();
    let o = curl(
        port,
        &pki,
        &["-C", "-", "-o", out.to_str().unwrap()],
        "/disk",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == img);

    // The whole stream, and the same bytes on the plaintext port.
    let o = curl(port, &pki, &[], "/disk");
    assert!(o.stdout == img);
}

#[test]
fn keep_alive_and_pipelining_over_tls() {
    if !have("openssl") {
        return;
    }
    let pki = Pki::new();
    let mut d = serve(&strs(&https_args(&pki)));
    let port = d.port("HTTPS");
    let img = mixed();
    let mut s = tls_connect(port, client_config(&pki.file("ca-cert.pem"), None)).unwrap();
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    for (a, b) in [(0, 9), (1_000_000, 1_500_000), (7, 7)] {
        let (status, body) = get(&mut s, "/disk", Some((a, b)));
        assert_eq!(status, 206);
        assert!(body == img[a as usize..=b as usize]);
    }
    // Three requests in one write; three answers in order on the same connection.
    let reqs: String = [(0u64, 99u64), (200, 299), (1_577_000, 1_577_184)]
        .iter()
        .map(|(a, b)| format!("GET /disk HTTP/1.1\r\nHost: x\r\nRange: bytes={a}-{b}\r\n\r\n"))
        .collect();
    s.write_all(reqs.as_bytes()).unwrap();
    s.flush().unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 65536];
    while all.windows(185).all(|w| w != &img[1_577_000..]) {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed before the third answer");
        all.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&all);
    assert_eq!(text.matches("HTTP/1.1 206").count(), 3);
}

#[test]
fn verify_peer_serves_a_client_certificate_of_the_ca_and_refuses_none() {
    if !have("curl") || !have("openssl") {
        return;
    }
    let pki = Pki::new();
    let mut args = https_args(&pki);
    args.push("--tls-verify-peer".into());
    let mut d = serve(&strs(&args));
    let port = d.port("HTTPS");
    let cert = pki.file("client-cert.pem");
    let key = pki.file("client-key.pem");
    let o = curl(
        port,
        &pki,
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "-r",
            "0-99",
        ],
        "/disk",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout == mixed()[..100]);
    let o = curl(port, &pki, &["-r", "0-99"], "/disk");
    assert!(!o.status.success());
    assert!(o.stdout.is_empty());
    // The daemon goes on serving; the refusal was counted.
    let o = curl(
        port,
        &pki,
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
        "/metrics",
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("hexzd_http_tls_handshake_failures_total 1"),
        "{text}"
    );
}

#[test]
fn the_bearer_token_and_metrics_work_over_https() {
    if !have("curl") || !have("openssl") {
        return;
    }
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let mut args = https_args(&pki);
    args.extend(["--auth-token-file".into(), token.display().to_string()]);
    let mut d = serve(&strs(&args));
    let port = d.port("HTTPS");
    let o = run(Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(pki.file("ca-cert.pem"))
        .arg(format!("https://localhost:{port}/disk")));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "401");
    let o = curl(
        port,
        &pki,
        &["-H", "Authorization: Bearer s3cret", "-r", "0-3"],
        "/disk",
    );
    assert!(o.stdout == mixed()[..4]);
    let o = curl(
        port,
        &pki,
        &["-H", "Authorization: Bearer s3cret"],
        "/metrics",
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("hexzd_http_tls_handshakes_total 3"), "{text}");
}

#[test]
fn plaintext_on_the_https_port_gets_a_plain_400_and_tls_on_the_http_port_an_alert() {
    if !have("curl") || !have("openssl") {
        return;
    }
    let pki = Pki::new();
    let mut d = serve(&strs(&https_args(&pki)));
    let https = d.port("HTTPS");
    let http = d.port("HTTP");

    let mut s = TcpStream::connect(("127.0.0.1", https)).unwrap();
    s.write_all(b"GET /disk HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("This port speaks HTTPS"), "{answer}");

    let o = run(Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(pki.file("ca-cert.pem"))
        .arg(format!("https://localhost:{http}/disk")));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("alert handshake failure"), "{err}");

    // Both ports still serve.
    let o = curl(https, &pki, &["-r", "0-0"], "/disk");
    assert!(o.status.success());
    let o = run(Command::new("curl")
        .args(["-sS", "--fail", "-r", "0-0"])
        .arg(format!("http://127.0.0.1:{http}/disk")));
    assert!(o.status.success());
}
