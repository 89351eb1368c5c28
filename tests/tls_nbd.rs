//! NBD over TLS (`NBD_OPT_STARTTLS`, issue 13) against real clients: nbdinfo and nbdcopy with
//! `nbds://…?tls-certificates=DIR` under `--nbd-tls on` and `require`, byte-exact; plaintext
//! clients served under `on` and refused under `require` (where LIST and INFO reveal
//! nothing: checked on the wire too); qemu-img convert with `--object tls-creds-x509`;
//! verify-peer; STARTTLS refused with POLICY when TLS is off; and STARTTLS abuse (garbage or
//! a hang after the ACK) closing only that connection.
#![allow(clippy::unwrap_used)]

mod systemd_support;
mod tls_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use tls_support::{Pki, have, mixed, run, serve};

const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const NBD_OPT_ABORT: u32 = 2;
const NBD_OPT_LIST: u32 = 3;
const NBD_OPT_STARTTLS: u32 = 5;
const NBD_OPT_INFO: u32 = 6;
const NBD_REP_ACK: u32 = 1;
const NBD_REP_ERR_POLICY: u32 = 0x8000_0002;
const NBD_REP_ERR_TLS_REQD: u32 = 0x8000_0005;

fn nbd_serve(pki: &Pki, mode: &str, extra: &[&str]) -> (systemd_support::Daemon, u16) {
    let dir = pki.dir.display().to_string();
    let mut args = vec![
        "--http",
        "off",
        "--nbd",
        "127.0.0.1:0",
        "--nbd-tls",
        mode,
        "--tls-certificates",
        &dir,
    ];
    args.extend_from_slice(extra);
    let mut d = serve(&args);
    let port = d.port("NBD");
    (d, port)
}

fn nbds(port: u16, dir: &std::path::Path) -> String {
    format!(
        "nbds://localhost:{port}/?tls-certificates={}",
        dir.display()
    )
}

fn nbdcopy_equals(uri: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.img");
    let o = run(Command::new("nbdcopy").arg(uri).arg(&out));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        std::fs::read(&out).unwrap() == mixed(),
        "nbdcopy over TLS differs"
    );
}

/// A raw client after the greeting: sends options, reads replies.
struct Raw(TcpStream);

impl Raw {
    fn connect(port: u16) -> Raw {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(systemd_support::LIMIT)).unwrap();
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting[..8], b"NBDMAGIC");
        s.write_all(&3u32.to_be_bytes()).unwrap(); // fixed newstyle, no zeroes
        Raw(s)
    }

    fn option(&mut self, opt: u32, data: &[u8]) {
        let mut m = IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
        m.extend_from_slice(data);
        self.0.write_all(&m).unwrap();
    }

    /// One option reply: (option, type, data).
    fn reply(&mut self) -> (u32, u32, Vec<u8>) {
        let mut h = [0u8; 20];
        self.0.read_exact(&mut h).unwrap();
        assert_eq!(u64::from_be_bytes(h[..8].try_into().unwrap()), REPLY_MAGIC);
        let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let mut data = vec![0; len as usize];
        self.0.read_exact(&mut data).unwrap();
        (opt, kind, data)
    }

    /// True once the server has closed the connection (EOF or reset), within the limit.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        loop {
            match self.0.read(&mut b) {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    }
}

#[test]
fn nbdinfo_and_nbdcopy_over_tls_with_tls_on_and_plaintext_too() {
    if !have("nbdinfo") || !have("nbdcopy") || !have("openssl") {
        return;
    }
    let pki = Pki::new();
    let (_d, port) = nbd_serve(&pki, "on", &[]);
    let o = run(Command::new("nbdinfo").arg(nbds(port, &pki.ca_only)));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("with TLS"), "{text}");
    nbdcopy_equals(&nbds(port, &pki.ca_only));
    // `on` serves plaintext clients as well.
    let o = run(Command::new("nbdinfo")
        .arg("--size")
        .arg(format!("nbd://localhost:{port}/")));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        mixed().len().to_string()
    );
}

#[test]
fn with_tls_require_tls_clients_are_served_and_plaintext_ones_refused() {
    if !have("nbdinfo") || !have("nbdcopy") || !have("openssl") {
        return;
    }
    let pki = Pki::new();
    let (_d, port) = nbd_serve(&pki, "require", &[]);
    nbdcopy_equals(&nbds(port, &pki.ca_only));
    let o = run(Command::new("nbdinfo").arg(format!("nbd://localhost:{port}/")));
    assert!(!o.status.success());
    let o = run(Command::new("nbdinfo")
        .arg("--list")
        .arg(format!("nbd://localhost:{port}/")));
    assert!(!o.status.success());
    assert!(!String::from_utf8_lossy(&o.stdout).contains("mixed"));

    // On the wire: LIST and INFO get ERR_TLS_REQD and nothing else; ABORT is still ACKed.
    let mut raw = Raw::connect(port);
    raw.option(NBD_OPT_LIST, &[]);
    let (opt, kind, _) = raw.reply();
    assert_eq!((opt, kind), (NBD_OPT_LIST, NBD_REP_ERR_TLS_REQD));
    let mut info = 0u32.to_be_bytes().to_vec();
    info.extend_from_slice(&0u16.to_be_bytes());
    raw.option(NBD_OPT_INFO, &info);
    let (opt, kind, _) = raw.reply();
    assert_eq!((opt, kind), (NBD_OPT_INFO, NBD_REP_ERR_TLS_REQD));
    raw.option(NBD_OPT_ABORT, &[]);
    assert_eq!(raw.reply().1, NBD_REP_ACK);
}

#[test]
fn starttls_is_refused_with_policy_when_tls_is_off() {
    if !have("openssl") {
        return;
    }
    let pki = Pki::new();
    let (_d, port) = nbd_serve(&pki, "off", &[]);
    let mut raw = Raw::connect(port);
    raw.option(NBD_OPT_STARTTLS, &[]);
    let (opt, kind, msg) = raw.reply();
    assert_eq!((opt, kind), (NBD_OPT_STARTTLS, NBD_REP_ERR_POLICY));
    assert!(String::from_utf8_lossy(&msg).contains("not enabled"));
}

#[test]
fn qemu_img_convert_over_tls_with_tls_creds_x509() {
    if !have("qemu-img") || !have("openssl") {
        return;
    }
    let pki = Pki::new();
    let (_d, port) = nbd_serve(&pki, "require", &["--tls-verify-peer"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.img");
    let o = run(Command::new("qemu-img")
        .args(["convert", "-O", "raw", "--object"])
        .arg(format!(
            "tls-creds-x509,id=tls0,dir={},endpoint=client",
            pki.client.display()
        ))
        .arg("--image-opts")
        .arg(format!(
            "driver=nbd,host=localhost,port={port},export=,tls-creds=tls0"
        ))
        .arg(&out));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = std::fs::read(&out).unwrap();
    let img = mixed();
    // qemu rounds the size up to whole sectors; the rest is zeros.
    assert!(got[..img.len()] == img[..]);
    assert!(got[img.len()..].iter().all(|&b| b == 0));
}

#[test]
fn verify_peer_over_nbd_needs_a_client_certificate_of_the_ca() {
    if !have("nbdinfo") || !have("openssl") {
        return;
    }
    let pki = Pki::new();
    let (_d, port) = nbd_serve(&pki, "require", &["--tls-verify-peer"]);
    let o = run(Command::new("nbdinfo")
        .arg("--size")
        .arg(nbds(port, &pki.client)));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(Command::new("nbdinfo")
        .arg("--size")
        .arg(nbds(port, &pki.ca_only)));
    assert!(!o.status.success());
}

#[test]
fn garbage_or_silence_after_starttls_closes_only_that_connection() {
    if !have("nbdinfo") || !have("openssl") {
        return;
    }
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hexzd.toml");
    std::fs::write(&cfg, "[nbd]\nhandshake_timeout = \"1s\"\n").unwrap();
    let cfg = cfg.display().to_string();
    let (_d, port) = nbd_serve(&pki, "require", &["--config", &cfg]);

    // Garbage where the ClientHello belongs: closed at once.
    let mut garbage = Raw::connect(port);
    garbage.option(NBD_OPT_STARTTLS, &[]);
    assert_eq!(garbage.reply().1, NBD_REP_ACK);
    garbage.0.write_all(&[0x42; 300]).unwrap();
    assert!(garbage.closed());

    // A record header announcing more than TLS allows: closed at once.
    let mut huge = Raw::connect(port);
    huge.option(NBD_OPT_STARTTLS, &[]);
    assert_eq!(huge.reply().1, NBD_REP_ACK);
    huge.0.write_all(&[22, 3, 1, 0xff, 0xff]).unwrap();
    huge.0.write_all(&[0; 1024]).unwrap();
    assert!(huge.closed());

    // Silence after the ACK: closed at the handshake timeout, while others are served.
    let mut silent = Raw::connect(port);
    silent.option(NBD_OPT_STARTTLS, &[]);
    assert_eq!(silent.reply().1, NBD_REP_ACK);
    let o = run(Command::new("nbdinfo")
        .arg("--size")
        .arg(nbds(port, &pki.ca_only)));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(silent.closed());
}

#[test]
fn replies_that_stall_mid_record_arrive_whole_after_the_client_reads_again() {
    if !have("openssl") {
        return;
    }
    const NBD_OPT_GO: u32 = 7;
    const NBD_CMD_READ: u16 = 0;
    let pki = Pki::new();
    let (_d, port) = nbd_serve(&pki, "require", &[]);
    let mut raw = Raw::connect(port);
    raw.option(NBD_OPT_STARTTLS, &[]);
    assert_eq!(raw.reply().1, NBD_REP_ACK);
    // rustls on the same socket from here; a small receive window so replies back up.
    nix::sys::socket::setsockopt(&raw.0, nix::sys::socket::sockopt::RcvBuf, &16384).unwrap();
    let conn = rustls::ClientConnection::new(
        tls_support::client_config(&pki.file("ca-cert.pem"), None),
        "localhost".try_into().unwrap(),
    )
    .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, raw.0);
    let mut go = 0u32.to_be_bytes().to_vec();
    go.extend_from_slice(&0u16.to_be_bytes());
    let mut m = IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&NBD_OPT_GO.to_be_bytes());
    m.extend_from_slice(&u32::try_from(go.len()).unwrap().to_be_bytes());
    m.extend_from_slice(&go);
    tls.write_all(&m).unwrap();
    // Replies to GO: INFO (export), then ACK.
    loop {
        let mut h = [0u8; 20];
        tls.read_exact(&mut h).unwrap();
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let mut data = vec![0; len as usize];
        tls.read_exact(&mut data).unwrap();
        if kind == NBD_REP_ACK {
            break;
        }
        assert_eq!(kind, 3, "NBD_REP_INFO");
    }
    let img = mixed();
    let len = u32::try_from(img.len()).unwrap();
    // 24 whole-image READs (36 MiB of replies) sent at once; nothing read for 1.5 s: the
    // server's writes stall (their tick is 500 ms) in the middle of TLS records.
    for cookie in 0..24u64 {
        let mut req = 0x2560_9513u32.to_be_bytes().to_vec();
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&NBD_CMD_READ.to_be_bytes());
        req.extend_from_slice(&cookie.to_be_bytes());
        req.extend_from_slice(&0u64.to_be_bytes());
        req.extend_from_slice(&len.to_be_bytes());
        tls.write_all(&req).unwrap();
    }
    tls.flush().unwrap();
    // Not a wait for readiness: this is the client under test not reading.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let mut seen = std::collections::HashSet::new();
    let mut data = vec![0u8; img.len()];
    for _ in 0..24 {
        let mut h = [0u8; 16];
        tls.read_exact(&mut h).unwrap();
        assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), 0x6744_6698);
        assert_eq!(
            u32::from_be_bytes(h[4..8].try_into().unwrap()),
            0,
            "error reply"
        );
        assert!(seen.insert(u64::from_be_bytes(h[8..16].try_into().unwrap())));
        tls.read_exact(&mut data).unwrap();
        assert!(data == img, "a reply's data differs after a stall");
    }
}
