//! The certificate directory's errors and warnings (issue 13), through `serve --check-config`
//! (what `ExecReload=` runs) and `serve`: a missing directory or file, a key that belongs to
//! another certificate, an encrypted key, TLS listeners without certificates, each one line
//! naming the file; an expired certificate and a key every user can read are warnings with
//! the date or the mode. Certificates are made in the test with `openssl`.
#![allow(clippy::unwrap_used)]

mod systemd_support;
mod tls_support;

use std::path::Path;
use std::process::Command;

use systemd_support::fixture;
use tls_support::{Pki, have, set_mode};

/// `hexzd serve --check-config --https 127.0.0.1:0 ARGS mixed-lz4.hxz`: (success, stdout,
/// stderr).
fn check(args: &[&str]) -> (bool, String, String) {
    let o = systemd_support::serve_command()
        .args(["--check-config", "--https", "127.0.0.1:0"])
        .args(args)
        .arg(fixture("mixed-lz4.hxz"))
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn with_dir(dir: &Path) -> (bool, String, String) {
    check(&["--tls-certificates", dir.to_str().unwrap()])
}

#[test]
fn a_good_directory_passes_check_config_with_its_expiry() {
    if !have("openssl") {
        return;
    }
    let pki = Pki::new();
    let (ok, out, err) = with_dir(&pki.dir);
    assert!(ok, "{err}");
    assert!(out.contains("configuration OK"), "{out}");
    assert!(out.contains("CN=localhost, valid until 20"), "{out}");
    assert!(!err.contains("WARN"), "{err}");
}

#[test]
fn https_without_certificates_is_a_config_error() {
    let (ok, _, err) = check(&[]);
    assert!(!ok);
    assert!(
        err.contains("--https: HTTPS listeners need certificates"),
        "{err}"
    );
    let o = systemd_support::serve_command()
        .args(["--check-config", "--nbd-tls", "require"])
        .arg(fixture("mixed-lz4.hxz"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--nbd-tls: NBD over TLS needs"));
}

#[test]
fn missing_and_unusable_files_are_named() {
    if !have("openssl") {
        return;
    }
    let pki = Pki::new();
    let (ok, _, err) = with_dir(&pki.tmp.path().join("nope"));
    assert!(!ok);
    assert!(
        err.contains("nope: cannot open the certificate directory"),
        "{err}"
    );

    // A key that belongs to another certificate.
    std::fs::copy(pki.file("client-key.pem"), pki.file("server-key.pem")).unwrap();
    let (ok, _, err) = with_dir(&pki.dir);
    assert!(!ok);
    assert!(
        err.contains("server-key.pem: this key does not belong to the certificate"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    // An encrypted key.
    let key = pki.file("server-key.pem");
    let out = Command::new("openssl")
        .args(["pkey", "-aes256", "-passout", "pass:x", "-in"])
        .arg(pki.file("client-key.pem"))
        .arg("-out")
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let (ok, _, err) = with_dir(&pki.dir);
    assert!(!ok);
    assert!(
        err.contains("server-key.pem: the key is encrypted"),
        "{err}"
    );

    // No certificate file; a certificate file that is not PEM.
    std::fs::remove_file(pki.file("server-cert.pem")).unwrap();
    let (ok, _, err) = with_dir(&pki.dir);
    assert!(!ok);
    assert!(err.contains("server-cert.pem: cannot open"), "{err}");
    std::fs::write(pki.file("server-cert.pem"), "hello\n").unwrap();
    let (ok, _, err) = with_dir(&pki.dir);
    assert!(!ok);
    assert!(
        err.contains("server-cert.pem: holds no certificate"),
        "{err}"
    );
}

#[test]
fn verify_peer_needs_ca_cert_pem() {
    if !have("openssl") {
        return;
    }
    let pki = Pki::new();
    std::fs::remove_file(pki.file("ca-cert.pem")).unwrap();
    let (ok, _, err) = check(&[
        "--tls-certificates",
        pki.dir.to_str().unwrap(),
        "--tls-verify-peer",
    ]);
    assert!(!ok);
    assert!(err.contains("ca-cert.pem: cannot open"), "{err}");
    // Without verify-peer the CA file is not needed.
    let (ok, _, err) = with_dir(&pki.dir);
    assert!(ok, "{err}");
}

#[test]
fn an_expired_certificate_and_a_world_readable_key_are_warnings() {
    if !have("openssl") {
        return;
    }
    let pki = Pki::new();
    expire_server_certificate(&pki);
    set_mode(&pki.file("server-key.pem"), 0o644);
    let (ok, _, err) = with_dir(&pki.dir);
    assert!(ok, "{err}");
    assert!(
        err.contains(
            "server-cert.pem: the certificate (CN=localhost) expired on 2020-01-02T00:00:00Z"
        ),
        "{err}"
    );
    assert!(
        err.contains("server-key.pem: the private key is readable by every user (mode 0644)"),
        "{err}"
    );
}

/// Re-issues the server certificate with a validity window in 2020 (`openssl ca` takes
/// explicit dates; `openssl x509 -days` cannot make a past one).
fn expire_server_certificate(pki: &Pki) {
    let d = &pki.dir;
    std::fs::write(
        d.join("ca.cnf"),
        "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n\
         default_md = sha256\npolicy = p\ncopy_extensions = copy\n[p]\ncommonName = supplied\n",
    )
    .unwrap();
    std::fs::write(d.join("index.txt"), "").unwrap();
    std::fs::write(d.join("serial"), "1000\n").unwrap();
    let o = Command::new("openssl")
        .args([
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-cert",
            "ca-cert.pem",
            "-keyfile",
            "ca-key.pem",
            "-in",
            "server.csr",
            "-out",
            "server-cert.pem",
            "-notext",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200102000000Z",
            "-extfile",
            "server.ext",
        ])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
