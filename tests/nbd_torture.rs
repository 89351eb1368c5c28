//! Byte-level tests of the NBD server with a raw client: handshake torture (bad magic, truncated
//! headers, a 4 GiB option, 10 000 options, clients that stop), transmission edge cases
//! (pipelining, DISC after in-flight requests, WRITE draining, EIO without payload, structured
//! chunks). After each abuse the server must still serve other connections. Most run against
//! the `hexzd serve` process; those that read counters or need a short handshake timeout run
//! `NbdService` in-process.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod nbd_support;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hexzd::nbd::NbdSettings;
use hexzd::nbd::handshake::MAX_OPTIONS;
use hexzd::nbd::proto::*;
use nbd_support::*;

const FLAGS: u32 = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;

/// The daemon serving every fixture: torture goes through its real accept loop.
fn server() -> Server {
    Server::start(&all_fixture_specs())
}

/// The same in this process, for the counters.
fn counted() -> Server {
    Server::in_process(&all_fixture_specs())
}

fn raw(path: &str) -> Vec<u8> {
    std::fs::read(data().join(path)).unwrap()
}

/// A fresh connection negotiates and reads correct data: the server is still serving.
fn assert_serves(server: &Server) {
    let mut c = RawClient::connect(server, "vm/memory", false);
    c.request(NBD_CMD_READ, 0, 42, 1000, 5000, &[]);
    let (error, cookie, d) = c.simple_reply(5000);
    assert_eq!((error, cookie), (0, 42));
    assert_eq!(d, raw("vm/memory")[1000..6000]);
}

#[test]
fn bad_option_magic_closes_only_that_connection() {
    let server = counted();
    let mut s = server.connect();
    RawClient::greet(&mut s, FLAGS);
    s.write_all(b"NOTMAGIC\0\0\0\x07\0\0\0\0").unwrap();
    assert!(RawClient::closed(&mut s));
    assert_serves(&server);
    assert_eq!(server.metrics().protocol_errors.load(Ordering::Relaxed), 1);
}

#[test]
fn bad_request_magic_closes_only_that_connection() {
    let server = server();
    let mut c = RawClient::connect(&server, "", false);
    c.s.write_all(&[0x12, 0x56, 0x09, 0x53]).unwrap();
    c.s.write_all(&[0u8; 24]).unwrap();
    assert!(RawClient::closed(&mut c.s));
    assert_serves(&server);
}

#[test]
fn unknown_client_flags_close_the_connection() {
    let server = server();
    let mut s = server.connect();
    RawClient::greet(&mut s, 0xff);
    assert!(RawClient::closed(&mut s));
    assert_serves(&server);
}

#[test]
fn truncated_option_headers_close_only_that_connection() {
    let server = server();
    for cut in [1usize, 8, 12, 15] {
        let mut s = server.connect();
        RawClient::greet(&mut s, FLAGS);
        let h = OptionHeader {
            option: NBD_OPT_GO,
            length: 6,
        }
        .encode();
        s.write_all(&h[..cut]).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert!(RawClient::closed(&mut s), "cut at {cut}");
    }
    // Client flags cut short.
    let mut s = server.connect();
    let mut g = [0u8; GREETING_LEN];
    s.read_exact(&mut g).unwrap();
    s.write_all(&[0, 0]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert!(RawClient::closed(&mut s));
    assert_serves(&server);
}

#[test]
fn a_stalled_handshake_is_closed_by_the_handshake_timeout() {
    let server = Server::with_settings(
        &all_fixture_specs(),
        NbdSettings {
            handshake_timeout: Duration::from_secs(2),
            ..NbdSettings::default()
        },
    );
    let mut s = server.connect();
    RawClient::greet(&mut s, FLAGS);
    s.write_all(
        &OptionHeader {
            option: NBD_OPT_GO,
            length: 6,
        }
        .encode()[..5],
    )
    .unwrap();
    // While it stalls, others are served.
    assert_serves(&server);
    // The server closes it (2 s handshake timeout); the read waits for exactly that.
    assert!(RawClient::closed(&mut s));
}

#[test]
fn option_length_of_4_gib_closes_the_connection_without_reading_the_data() {
    let server = server();
    let mut s = server.connect();
    RawClient::greet(&mut s, FLAGS);
    s.write_all(
        &OptionHeader {
            option: NBD_OPT_GO,
            length: u32::MAX,
        }
        .encode(),
    )
    .unwrap();
    // Closed at once: the server did not wait for 4 GiB of data.
    assert!(RawClient::closed(&mut s));
    assert_serves(&server);
}

#[test]
fn ten_thousand_unknown_options_are_answered_up_to_the_cap_then_closed() {
    let server = server();
    let mut s = server.connect();
    RawClient::greet(&mut s, FLAGS);
    // One option at a time, as clients do (nbd.md §2.2). Pipelining them all would make the
    // server's close a reset that discards replies still unread on this side.
    let mut answered = 0usize;
    for i in 0..10_000u32 {
        RawClient::send_option(&mut s, 0x1000 + i, &i.to_be_bytes());
        match RawClient::read_option_reply(&mut s) {
            Ok((h, _)) => {
                assert_eq!(h.reply_type, NBD_REP_ERR_UNSUP);
                assert_eq!(h.option, 0x1000 + i);
                answered += 1;
            }
            Err(_) => break,
        }
    }
    assert_eq!(answered, MAX_OPTIONS);
    assert_serves(&server);
}

#[test]
fn a_client_that_stops_mid_request_closes_only_its_connection() {
    let server = server();
    // Half a request header, then EOF.
    let mut c = RawClient::connect(&server, "", false);
    c.s.write_all(
        &Request {
            flags: 0,
            command: NBD_CMD_READ,
            cookie: 1,
            offset: 0,
            length: 512,
        }
        .encode()[..10],
    )
    .unwrap();
    c.s.shutdown(Shutdown::Write).unwrap();
    assert!(RawClient::closed(&mut c.s));
    // A WRITE whose payload stops short, then EOF.
    let mut c = RawClient::connect(&server, "", false);
    c.request(NBD_CMD_WRITE, 0, 2, 0, 65536, &[7u8; 1000]);
    c.s.shutdown(Shutdown::Write).unwrap();
    assert!(RawClient::closed(&mut c.s));
    // Half a request and then silence: the connection just waits (no idle timeout by
    // default), and the server goes on serving others meanwhile.
    let mut stalled = RawClient::connect(&server, "", false);
    stalled.s.write_all(&[0x25, 0x60]).unwrap();
    assert_serves(&server);
    drop(stalled);
    assert_serves(&server);
}

#[test]
fn eof_at_a_request_boundary_is_a_clean_end() {
    let server = counted();
    let c = RawClient::connect(&server, "", false);
    drop(c);
    assert_serves(&server);
    assert_eq!(server.metrics().protocol_errors.load(Ordering::Relaxed), 0);
}

#[test]
fn idle_timeout_closes_a_connection_with_nothing_in_flight() {
    let server = Server::with_settings(
        &all_fixture_specs(),
        NbdSettings {
            idle_timeout: Some(Duration::from_millis(300)),
            ..NbdSettings::default()
        },
    );
    let mut c = RawClient::connect(&server, "", false);
    assert!(RawClient::closed(&mut c.s));
}

#[test]
fn pipelined_requests_are_all_answered_with_their_cookies() {
    let server = server();
    let mut c = RawClient::connect(&server, "mixed", false);
    let want = raw("mixed.img");
    let mut batch = Vec::new();
    let mut expected = std::collections::HashMap::new();
    let mut x: u64 = 12345;
    for cookie in 0..128u64 {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let len = 4096 + (x >> 40) as usize % 65536;
        let off = (x >> 20) as usize % (want.len() - len);
        batch.extend_from_slice(
            &Request {
                flags: 0,
                command: NBD_CMD_READ,
                cookie: cookie << 32 | 7,
                offset: off as u64,
                length: len as u32,
            }
            .encode(),
        );
        expected.insert(cookie << 32 | 7, (off, len));
    }
    c.s.write_all(&batch).unwrap();
    for _ in 0..128 {
        let mut h = [0u8; SIMPLE_REPLY_LEN];
        c.s.read_exact(&mut h).unwrap();
        let ReplyHeader::Simple { error, cookie } = ReplyHeader::decode(&h).unwrap() else {
            panic!("simple replies only without structured replies");
        };
        assert_eq!(error, 0);
        let (off, len) = expected.remove(&cookie).expect("known, unanswered cookie");
        let mut d = vec![0u8; len];
        c.s.read_exact(&mut d).unwrap();
        assert!(d == want[off..off + len], "cookie {cookie:#x}");
    }
    assert!(expected.is_empty());
}

#[test]
fn disc_finishes_in_flight_replies_then_closes() {
    let server = server();
    let mut c = RawClient::connect(&server, "mixed", false);
    let mut batch = Vec::new();
    for cookie in 0..32u64 {
        batch.extend_from_slice(
            &Request {
                flags: 0,
                command: NBD_CMD_READ,
                cookie,
                offset: cookie * 40_000,
                length: 40_000,
            }
            .encode(),
        );
    }
    batch.extend_from_slice(
        &Request {
            flags: 0,
            command: NBD_CMD_DISC,
            cookie: 99,
            offset: 0,
            length: 0,
        }
        .encode(),
    );
    c.s.write_all(&batch).unwrap();
    let mut seen = [false; 32];
    for _ in 0..32 {
        let (error, cookie, _) = c.simple_reply(40_000);
        assert_eq!(error, 0);
        seen[cookie as usize] = true;
    }
    assert!(seen.iter().all(|&s| s));
    assert!(RawClient::closed(&mut c.s));
}

#[test]
fn write_payload_is_drained_and_refused_with_eperm() {
    let server = server();
    let mut c = RawClient::connect(&server, "vm", false);
    c.request(NBD_CMD_WRITE, 0, 1, 0, 100_000, &vec![0xee; 100_000]);
    c.request(NBD_CMD_READ, 0, 2, 0, 4096, &[]);
    assert_eq!(c.simple_reply(0).0, NBD_EPERM);
    let (error, cookie, d) = c.simple_reply(4096);
    assert_eq!((error, cookie), (0, 2));
    assert_eq!(d, raw("vm/disk.img")[..4096]);
}

#[test]
fn unknown_commands_and_flags_are_einval_and_the_connection_survives() {
    let server = server();
    let mut c = RawClient::connect(&server, "vm", false);
    c.request(77, 0, 1, 0, 0, &[]);
    assert_eq!(c.simple_reply(0), (NBD_EINVAL, 1, vec![]));
    c.request(NBD_CMD_READ, 0x40, 2, 0, 512, &[]);
    assert_eq!(c.simple_reply(0), (NBD_EINVAL, 2, vec![]));
    c.request(NBD_CMD_READ, NBD_CMD_FLAG_DF, 3, 0, 512, &[]);
    assert_eq!(c.simple_reply(0), (NBD_EINVAL, 3, vec![]));
    c.request(NBD_CMD_BLOCK_STATUS, 0, 4, 0, 512, &[]);
    assert_eq!(c.simple_reply(0), (NBD_EINVAL, 4, vec![]));
    c.request(NBD_CMD_READ, 0, 5, 1 << 20, 1, &[]);
    assert_eq!(c.simple_reply(0), (NBD_EINVAL, 5, vec![]));
    c.request(NBD_CMD_READ, 0, 6, 0, 0, &[]);
    assert_eq!(c.simple_reply(0), (0, 6, vec![]));
    c.request(NBD_CMD_FLUSH, 0, 7, 0, 0, &[]);
    assert_eq!(c.simple_reply(0), (0, 7, vec![]));
    c.request(NBD_CMD_CACHE, 0, 8, 0, 1 << 20, &[]);
    assert_eq!(c.simple_reply(0), (0, 8, vec![]));
    c.request(NBD_CMD_TRIM, 0, 9, 0, 4096, &[]);
    assert_eq!(c.simple_reply(0), (NBD_EPERM, 9, vec![]));
    c.request(NBD_CMD_WRITE_ZEROES, 0, 10, 0, 4096, &[]);
    assert_eq!(c.simple_reply(0), (NBD_EPERM, 10, vec![]));
    c.request(NBD_CMD_READ, 0, 11, 4096, 4096, &[]);
    assert_eq!(c.simple_reply(4096).2, raw("vm/disk.img")[4096..8192]);
}

/// Copies `mixed-lz4.hxz` with one byte of stored block data flipped.
fn corrupt_archive(dir: &std::path::Path) -> std::path::PathBuf {
    let mut bytes = std::fs::read(data().join("mixed-lz4.hxz")).unwrap();
    bytes[200_000] ^= 0x55;
    let p = dir.join("corrupt.hxz");
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn a_read_error_is_eio_without_payload_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::in_process(&[Spec::new("bad", corrupt_archive(dir.path()))]);
    let want = raw("mixed.img");
    let mut c = RawClient::connect(&server, "bad", false);
    let mut failed = 0;
    for (i, off) in (0..want.len()).step_by(65536).enumerate() {
        let len = 65536.min(want.len() - off);
        c.request(NBD_CMD_READ, 0, i as u64, off as u64, len as u32, &[]);
        // `simple_reply` reads a payload only on success: if the server sent data after an
        // EIO header, the next reply header would not decode.
        let (error, cookie, d) = c.simple_reply(len);
        assert_eq!(cookie, i as u64);
        match error {
            0 => assert!(d == want[off..off + len], "offset {off}"),
            NBD_EIO => failed += 1,
            e => panic!("error {e}"),
        }
    }
    assert!(failed >= 1);
    assert_eq!(server.metrics().read_errors.load(Ordering::Relaxed), failed);
}

#[test]
fn a_read_error_is_logged_with_archive_block_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let archive = corrupt_archive(dir.path());
    let server = Server::start(&[Spec::new("bad", &archive)]);
    let mut c = RawClient::connect(&server, "bad", false);
    let size = u32::try_from(c.size).unwrap();
    c.request(NBD_CMD_READ, 0, 1, 0, size, &[]);
    assert_eq!(c.simple_reply(0).0, NBD_EIO);
    let line = server.wait_for_log("failed");
    assert!(line.starts_with("WARN"), "{line}");
    assert!(line.contains(&archive.display().to_string()), "{line}");
    assert!(line.contains("block "), "{line}");
    assert!(line.contains("offset "), "{line}");
}

#[test]
fn structured_read_errors_are_error_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&[Spec::new("bad", corrupt_archive(dir.path()))]);
    let mut c = RawClient::connect(&server, "bad", true);
    c.request(NBD_CMD_READ, 0, 1, 0, u32::try_from(c.size).unwrap(), &[]);
    let (flags, t, cookie, p) = c.chunk();
    assert_eq!(
        (flags, t, cookie),
        (NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, 1)
    );
    assert_eq!(p[..4], NBD_EIO.to_be_bytes());
    // Out of range in structured mode: an error chunk too, never a simple reply.
    c.request(NBD_CMD_READ, 0, 2, c.size, 1, &[]);
    let (_, t, _, p) = c.chunk();
    assert_eq!(t, NBD_REPLY_TYPE_ERROR);
    assert_eq!(p[..4], NBD_EINVAL.to_be_bytes());
}

#[test]
fn structured_reads_send_holes_for_zero_extents_unless_df() {
    let server = server();
    let want = raw("zeros.img");
    let mut c = RawClient::connect(&server, "zeros", true);
    let size = u32::try_from(c.size).unwrap();
    c.request(NBD_CMD_READ, 0, 1, 0, size, &[]);
    let mut got = vec![0xffu8; want.len()];
    let mut holes = 0;
    loop {
        let (flags, t, cookie, p) = c.chunk();
        assert_eq!(cookie, 1);
        let off = u64::from_be_bytes(p[..8].try_into().unwrap()) as usize;
        match t {
            NBD_REPLY_TYPE_OFFSET_DATA => got[off..off + p.len() - 8].copy_from_slice(&p[8..]),
            NBD_REPLY_TYPE_OFFSET_HOLE => {
                let n = u32::from_be_bytes(p[8..12].try_into().unwrap()) as usize;
                got[off..off + n].fill(0);
                holes += 1;
            }
            t => panic!("chunk type {t}"),
        }
        if flags & NBD_REPLY_FLAG_DONE != 0 {
            break;
        }
    }
    assert!(holes > 0);
    assert!(got == want);
    // DF: one data chunk with everything.
    c.request(NBD_CMD_READ, NBD_CMD_FLAG_DF, 2, 0, size, &[]);
    let (flags, t, _, p) = c.chunk();
    assert_eq!(
        (flags, t),
        (NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA)
    );
    assert!(p[8..] == want[..]);
    // Zero length: a NONE chunk.
    c.request(NBD_CMD_READ, 0, 3, 0, 0, &[]);
    assert_eq!(
        c.chunk(),
        (NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, 3, vec![])
    );
    // Block status with REQ_ONE: one extent, inside the request.
    c.request(NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_REQ_ONE, 4, 0, size, &[]);
    let (flags, t, _, p) = c.chunk();
    assert_eq!(
        (flags, t, p.len()),
        (NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, 12)
    );
    assert_eq!(p[..4], 1u32.to_be_bytes());
    assert!(u32::from_be_bytes(p[4..8].try_into().unwrap()) <= size);
}

#[test]
fn a_client_that_never_reads_replies_gets_backpressure_not_unbounded_buffering() {
    let server = server();
    let mut c = RawClient::connect(&server, "mixed", false);
    c.s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut batch = Vec::new();
    for cookie in 0..1000u64 {
        batch.extend_from_slice(
            &Request {
                flags: 0,
                command: NBD_CMD_READ,
                cookie,
                offset: 0,
                length: 1 << 20,
            }
            .encode(),
        );
    }
    // Requests for ever more data, no reply read: the server stops reading requests once its
    // reply buffers, the in-flight budget and the socket buffers are full, so writing stalls
    // (within a few MiB of requests; 100 MiB of them would ask for 3.5 PiB of replies).
    let mut stalled = false;
    for _ in 0..(100 << 20) / batch.len() {
        if let Err(e) = c.s.write_all(&batch) {
            assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "{e}"
            );
            stalled = true;
            break;
        }
    }
    assert!(
        stalled,
        "the server kept reading requests it could not answer"
    );
    // Others are unaffected.
    assert_serves(&server);
}
