//! The relay of nbd-proxy mode without a kernel: `hexzd serve --stdio` plays the remote NBD
//! server on pipes, the relay backend does the client handshake on them and relays one end of
//! a socketpair, and the test plays the kernel on the other end (simple requests and
//! replies, as the kernel sends them after `NBD_SET_SOCK`).
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

use hexzd::nbd::proto::*;
use hexzd::proxy::relay::StdioBackend;
use hexzd::proxy::session::{Backend, Event};

#[test]
fn kernel_requests_reach_the_server_and_replies_come_back_through_pipes() {
    let archive = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/hexz-0.8.2/mixed-lz4.hxz");
    let raw = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hexz-0.8.2/mixed.img"),
    )
    .unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_hexzd"))
        .args(["serve", "--stdio"])
        .arg(&archive)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let to_server = File::from(std::os::fd::OwnedFd::from(server.stdin.take().unwrap()));
    let from_server = File::from(std::os::fd::OwnedFd::from(server.stdout.take().unwrap()));
    let mut backend = Box::new(StdioBackend::new(from_server, to_server));
    let export = backend.connect().unwrap();
    assert_eq!(export.size, raw.len() as u64);
    assert!(export.read_only);
    let (mut kernel, ours) = UnixStream::pair().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let relay = std::thread::spawn(move || backend.serve(ours, tx));
    // Two pipelined reads, as the kernel sends them.
    for (cookie, offset, len) in [(1u64, 0u64, 4096u32), (2, 65536, 131072)] {
        let req = Request {
            flags: 0,
            command: NBD_CMD_READ,
            cookie,
            offset,
            length: len,
        };
        kernel.write_all(&req.encode()).unwrap();
    }
    for (cookie, offset, len) in [(1u64, 0usize, 4096usize), (2, 65536, 131072)] {
        let mut h = [0u8; 16];
        kernel.read_exact(&mut h).unwrap();
        assert_eq!(h[..4], 0x6744_6698u32.to_be_bytes());
        assert_eq!(h[4..8], [0, 0, 0, 0], "error field");
        assert_eq!(u64::from_be_bytes(h[8..16].try_into().unwrap()), cookie);
        let mut data = vec![0u8; len];
        kernel.read_exact(&mut data).unwrap();
        assert!(
            data == raw[offset..offset + len],
            "bytes of cookie {cookie}"
        );
    }
    // The kernel side closing ends the relay.
    drop(kernel);
    let end = rx.recv().unwrap();
    assert!(matches!(end, Event::BackendEnded(_)), "{end:?}");
    let _ = server.kill();
    let _ = server.wait();
    drop(relay);
}
