//! `hexzd serve --stdio`: one NBD session on stdin/stdout, driven by libnbd's
//! `connect_command` (the client runs the server as its subprocess).

#![allow(clippy::unwrap_used)]

mod nbd_support;

use std::io::Write;
use std::process::{Command, Stdio};

use hexzd::nbd::proto::*;
use nbd_support::*;

#[test]
fn stdio_session_serves_both_streams_to_libnbd() {
    if !have_python_nbd() {
        return;
    }
    let server = server_program();
    let archive = data().join("vm-dir-lz4.hxz");
    for (export, raw) in [("", "vm/disk.img"), ("vm/memory", "vm/memory")] {
        let script = format!(
            r#"
import hashlib, nbd
h = nbd.NBD()
h.set_export_name({export:?})
h.connect_command([{server:?}, "serve", "--stdio", {archive:?}])
size = h.get_size()
data = b"".join(h.pread(min(1 << 20, size - o), o) for o in range(0, size, 1 << 20))
print(size, hashlib.sha256(data).hexdigest())
h.shutdown()
"#,
            server = server.display().to_string(),
            archive = format!("{}=vm", archive.display()),
        );
        let out = nbd_python("", &script);
        let want = std::fs::read(data().join(raw)).unwrap();
        use sha2::{Digest, Sha256};
        let hex: String = Sha256::digest(&want)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(out.trim(), format!("{} {hex}", want.len()), "{export:?}");
    }
}

#[test]
fn stdio_protocol_error_ends_the_session_with_a_failure_status() {
    let server = server_program();
    let mut child = Command::new(server)
        .args(["serve", "--stdio"])
        .arg(data().join("hello-lz4.hxz"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(&(NBD_FLAG_C_FIXED_NEWSTYLE | 0x80).to_be_bytes())
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("client flags"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn stdio_client_hanging_up_is_a_clean_end() {
    let server = server_program();
    let out = Command::new(server)
        .args(["serve", "--stdio"])
        .arg(data().join("hello-lz4.hxz"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
