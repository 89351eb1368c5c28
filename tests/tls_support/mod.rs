//! Helpers for the TLS tests: certificates made in the test with `openssl` (never committed),
//! the daemon with TLS flags, and a small rustls client. Uses `systemd_support` for the
//! daemon process and its readiness lines.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::systemd_support::{Daemon, fixture, serve_command};

/// True if `tool` is installed; otherwise SKIP (a failure under `HEXZD_REQUIRE_TOOLS=1`).
pub fn have(tool: &str) -> bool {
    crate::systemd_support::have(tool)
}

/// A test PKI in a temporary directory: `dir` in the x509 layout (`ca-cert.pem`,
/// `server-cert.pem`, `server-key.pem`) plus `client-cert.pem`/`client-key.pem` signed by the
/// same CA, and `client/` (a directory a libnbd or qemu client uses: CA, client cert and key).
pub struct Pki {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub client: PathBuf,
    /// A directory with the CA certificate only (a TLS client without a certificate).
    pub ca_only: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes an EC P-256 key and a certificate for `cn` signed by the CA in `dir` (`ca-cert.pem`,
/// `ca-key.pem`), valid for `days` (negative: already expired, via -not_after is not
/// available in OpenSSL 3.0; use `expired_server_cert` for that).
fn issue(dir: &Path, name: &str, cn: &str, ext: &str, days: u32) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca-cert.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            &format!("{name}-cert.pem"),
            "-days",
            &days.to_string(),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

/// The server certificate's extensions: names `localhost` and 127.0.0.1.
const SERVER_EXT: &str = "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n";
const CLIENT_EXT: &str = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n";

impl Pki {
    /// A CA, a server certificate for localhost and a client certificate.
    pub fn new() -> Pki {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tls");
        std::fs::create_dir(&dir).unwrap();
        make_ca(&dir, "hexzd-test-ca");
        issue(&dir, "server", "localhost", SERVER_EXT, 30);
        issue(&dir, "client", "hexzd-test-client", CLIENT_EXT, 30);
        set_mode(&dir.join("server-key.pem"), 0o600);
        let client = tmp.path().join("client");
        std::fs::create_dir(&client).unwrap();
        for f in ["ca-cert.pem", "client-cert.pem", "client-key.pem"] {
            std::fs::copy(dir.join(f), client.join(f)).unwrap();
        }
        let ca_only = tmp.path().join("ca-only");
        std::fs::create_dir(&ca_only).unwrap();
        std::fs::copy(dir.join("ca-cert.pem"), ca_only.join("ca-cert.pem")).unwrap();
        Pki {
            tmp,
            dir,
            client,
            ca_only,
        }
    }

    /// `dir/NAME`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Replaces the server certificate and key with a new pair from a new CA (as a renewal
    /// by another CA would); returns the new CA certificate's path (outside `dir`).
    pub fn renew_with_new_ca(&self, tag: &str) -> PathBuf {
        let work = self.tmp.path().join(format!("renew-{tag}"));
        std::fs::create_dir(&work).unwrap();
        make_ca(&work, &format!("hexzd-test-ca-{tag}"));
        issue(&work, "server", "localhost", SERVER_EXT, 30);
        // The CA stays the same file name in `dir` for --tls-verify-peer; clients get the
        // new CA from the returned path.
        std::fs::copy(work.join("server-key.pem"), self.file("server-key.pem")).unwrap();
        std::fs::copy(work.join("server-cert.pem"), self.file("server-cert.pem")).unwrap();
        work.join("ca-cert.pem")
    }
}

fn make_ca(dir: &Path, cn: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca-cert.pem",
            "-days",
            "30",
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
}

/// Sets a file's permission bits.
pub fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `hexzd serve` over the `mixed` fixture with `args` (wait on its readiness lines with
/// `Daemon::port`).
pub fn serve(args: &[&str]) -> Daemon {
    let mut cmd = serve_command();
    cmd.args(args).arg(fixture("mixed-lz4.hxz"));
    Daemon::spawn(cmd)
}

/// The raw image of the `mixed` fixture.
pub fn mixed() -> Vec<u8> {
    std::fs::read(fixture("mixed.img")).unwrap()
}

/// A rustls client configuration trusting `ca` (PEM file), with the client certificate of
/// `client` (a directory with client-cert.pem and client-key.pem) if given.
pub fn client_config(ca: &Path, client: Option<&Path>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut c = match client {
        Some(dir) => {
            let certs = CertificateDer::pem_file_iter(dir.join("client-cert.pem"))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(dir.join("client-key.pem")).unwrap();
            b.with_client_auth_cert(certs, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// A TLS client stream to 127.0.0.1:`port` as `localhost`.
pub type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connects and completes the handshake (an error if the server refuses it).
pub fn tls_connect(port: u16, config: Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    let sock = TcpStream::connect(("127.0.0.1", port))?;
    sock.set_read_timeout(Some(crate::systemd_support::LIMIT))?;
    let conn = rustls::ClientConnection::new(config, "localhost".try_into().unwrap())
        .map_err(std::io::Error::other)?;
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// One keep-alive GET of `path` with `range` on an open connection: status and body.
pub fn get<S: Read + Write>(s: &mut S, path: &str, range: Option<(u64, u64)>) -> (u16, Vec<u8>) {
    let range = range.map_or_else(String::new, |(a, b)| format!("Range: bytes={a}-{b}\r\n"));
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n{range}\r\n").unwrap();
    s.flush().unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status: u16 = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap();
    let mut body = vec![0; len];
    s.read_exact(&mut body).unwrap();
    (status, body)
}

/// Runs `cmd`, returning its output (stdout, stderr, status).
pub fn run(cmd: &mut Command) -> std::process::Output {
    cmd.output().unwrap()
}
