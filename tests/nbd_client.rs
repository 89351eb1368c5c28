//! The client-side handshake (`hexzd::nbd::client`, for nbd-proxy mode) against hexzd's server
//! and against qemu-nbd, followed by a READ on the negotiated stream.

#![allow(clippy::unwrap_used)]

mod nbd_support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;

use hexzd::nbd::client::handshake;
use hexzd::nbd::proto::*;
use nbd_support::*;

fn read_simple<S: Read + Write>(s: &mut S, offset: u64, len: u32) -> Vec<u8> {
    let r = Request {
        flags: 0,
        command: NBD_CMD_READ,
        cookie: 0x1234,
        offset,
        length: len,
    };
    s.write_all(&r.encode()).unwrap();
    let mut h = [0u8; SIMPLE_REPLY_LEN];
    s.read_exact(&mut h).unwrap();
    assert_eq!(
        ReplyHeader::decode(&h).unwrap(),
        ReplyHeader::Simple {
            error: 0,
            cookie: 0x1234
        }
    );
    let mut d = vec![0u8; len as usize];
    s.read_exact(&mut d).unwrap();
    d
}

#[test]
fn client_handshake_with_hexzd_then_read() {
    let server = Server::start(&all_fixture_specs());
    for (export, raw) in [
        ("", "vm/disk.img"),
        ("memory", "vm/memory"),
        ("zeros", "zeros.img"),
    ] {
        let mut s = server.connect();
        let e = handshake(&mut s, export).unwrap();
        let want = std::fs::read(data().join(raw)).unwrap();
        assert_eq!(e.size, want.len() as u64);
        assert_eq!(e.flags, 0x0507, "no structured replies: no SEND_DF");
        assert_eq!(read_simple(&mut s, 0, 4096), want[..4096]);
    }
    let mut s = server.connect();
    let err = handshake(&mut s, "nope").unwrap_err();
    assert!(err.to_string().contains("not served"), "{err}");
}

#[test]
fn client_handshake_with_qemu_nbd_then_read() {
    if !have("qemu-nbd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("q.sock");
    let pid = dir.path().join("q.pid");
    // A 512-aligned image: qemu-nbd rounds other sizes up to whole sectors.
    let raw = data().join("vm/disk.img");
    // --fork returns once the socket listens.
    run_ok(
        Command::new("qemu-nbd")
            .args(["-r", "-f", "raw", "-x", "mixed", "--fork"])
            .arg("-k")
            .arg(&sock)
            .arg("--pid-file")
            .arg(&pid)
            .arg(&raw),
    );
    let mut s = UnixStream::connect(&sock).unwrap();
    let e = handshake(&mut s, "mixed").unwrap();
    let want = std::fs::read(&raw).unwrap();
    assert_eq!(e.size, want.len() as u64);
    assert_ne!(e.flags & NBD_FLAG_READ_ONLY, 0);
    assert_eq!(read_simple(&mut s, 65536, 65536), want[65536..131072]);
    drop(s);
    let p = std::fs::read_to_string(&pid).unwrap();
    let _ = Command::new("kill").arg(p.trim()).status();
}
