//! libnbd clients against the NBD server (issue 4): nbdinfo, nbdcopy and nbdsh scripts with
//! strict mode off, so the server's own validation answers.

#![allow(clippy::unwrap_used)]

mod nbd_support;

use std::process::Command;
use std::sync::atomic::Ordering;

use nbd_support::*;
use serde_json::Value;

fn nbdinfo_json(uri: &str) -> Value {
    let out = run_ok(Command::new("nbdinfo").arg("--json").arg(uri));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn nbdinfo_json_shows_size_read_only_multi_conn_block_sizes_and_base_allocation() {
    if !have("nbdinfo") {
        return;
    }
    let server = Server::start(&all_fixture_specs());
    let cases = [
        ("", "vm/disk.img"),
        ("disk", "vm/disk.img"),
        ("memory", "vm/memory"),
        ("vm/memory", "vm/memory"),
        ("zeros", "zeros.img"),
        ("hello/disk", "hello.txt"),
        ("child", "mixed-child.img"),
        ("enc", "mixed.img"),
    ];
    for (export, raw) in cases {
        let v = nbdinfo_json(&server.uri(export));
        assert_eq!(v["protocol"], "newstyle-fixed", "{export}");
        assert_eq!(v["structured"], true, "{export}");
        let e = &v["exports"][0];
        let size = std::fs::metadata(data().join(raw)).unwrap().len();
        assert_eq!(e["export-size"], size, "{export}");
        assert_eq!(e["is_read_only"], true, "{export}");
        assert_eq!(e["can_multi_conn"], true, "{export}");
        assert_eq!(e["can_cache"], true, "{export}");
        assert_eq!(e["can_write"], Value::Null, "{export}");
        assert_eq!(e["can_trim"], false, "{export}");
        assert_eq!(e["can_zero"], false, "{export}");
        assert_eq!(e["block_size_minimum"], 1, "{export}");
        assert_eq!(e["block_size_preferred"], 4096, "{export}");
        assert_eq!(e["block_size_maximum"], 33_554_432, "{export}");
        assert!(
            e["contexts"]
                .as_array()
                .unwrap()
                .contains(&Value::from("base:allocation")),
            "{export}: {e}"
        );
    }
}

#[test]
fn nbdinfo_list_shows_every_export() {
    if !have("nbdinfo") {
        return;
    }
    let server = Server::start(&all_fixture_specs());
    let out = run_ok(
        Command::new("nbdinfo")
            .args(["--list", "--json"])
            .arg(server.uri("")),
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let prefix = format!("nbd://127.0.0.1:{}/", server.port);
    let mut listed: Vec<String> = v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert!(
                e["description"]
                    .as_str()
                    .unwrap()
                    .contains("hexzd snapshot")
            );
            e["uri"]
                .as_str()
                .unwrap()
                .strip_prefix(&prefix)
                .unwrap()
                .to_string()
        })
        .collect();
    let mut expected = vec!["".to_string(), "disk".into(), "memory".into()];
    for f in fixtures() {
        expected.extend([
            f.name.to_string(),
            format!("{}/disk", f.name),
            format!("{}/memory", f.name),
        ]);
    }
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);
}

/// Copies `uri` with nbdcopy (plus `extra` arguments) and compares with the raw file.
fn nbdcopy_equals(uri: &str, raw: Option<&str>, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.raw");
    run_ok(Command::new("nbdcopy").args(extra).arg(uri).arg(&out));
    let got = std::fs::read(&out).unwrap();
    let want = raw.map_or_else(Vec::new, |r| std::fs::read(data().join(r)).unwrap());
    assert!(
        got == want,
        "{uri} {extra:?}: {} bytes differ from {raw:?} ({} bytes)",
        got.len(),
        want.len()
    );
}

#[test]
fn nbdcopy_of_every_export_equals_the_raw_input() {
    if !have("nbdcopy") {
        return;
    }
    let server = Server::start(&all_fixture_specs());
    for f in fixtures() {
        for export in [f.name.to_string(), format!("{}/disk", f.name)] {
            nbdcopy_equals(&server.uri(&export), Some(f.main), &[]);
        }
        nbdcopy_equals(&server.uri(&format!("{}/memory", f.name)), f.aux, &[]);
    }
    nbdcopy_equals(&server.uri(""), Some("vm/disk.img"), &[]);
    nbdcopy_equals(&server.uri("disk"), Some("vm/disk.img"), &[]);
    nbdcopy_equals(&server.uri("memory"), Some("vm/memory"), &[]);
    nbdcopy_equals(&server.unix_uri("vm/memory"), Some("vm/memory"), &[]);
}

#[test]
fn nbdcopy_with_four_connections_equals_the_raw_input() {
    if !have("nbdcopy") {
        return;
    }
    let server = Server::start(&all_fixture_specs());
    for f in fixtures() {
        nbdcopy_equals(&server.uri(f.name), Some(f.main), &["--connections", "4"]);
        nbdcopy_equals(
            &server.uri(&format!("{}/memory", f.name)),
            f.aux,
            &["--connections", "4"],
        );
    }
    // 32 MiB requests, no extents: every byte goes through READ.
    nbdcopy_equals(
        &server.uri("mixed-zstd"),
        Some("mixed.img"),
        &[
            "-C",
            "8",
            "--requests",
            "64",
            "--request-size",
            "33554432",
            "--no-extents",
        ],
    );
}

/// A 40 MiB image packed by hexzd, for requests above and at the 32 MiB maximum.
fn big_server() -> (Server, tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("big.img");
    let bytes = write_image(&raw, 40 << 20);
    let hxz = dir.path().join("big.hxz");
    pack(&raw, &hxz, None);
    (Server::start(&[Spec::new("big", &hxz)]), dir, bytes)
}

const PRELUDE: &str = r#"
import errno, os, nbd
h = nbd.NBD()
h.set_strict_mode(0)
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(os.environ["URI"])
size = h.get_size()

def expect_error(code, f, *args):
    try:
        f(*args)
    except nbd.Error as e:
        assert e.errnum == code, (e.errno, e.string)
        return
    raise AssertionError("expected errno %d from %s" % (code, f.__name__))
"#;

fn nbdsh(uri: &str, body: &str) -> String {
    // nbdsh runs `python3 -m nbd` from PATH, which may find a python without libnbd's module
    // (a pyenv shim); put the system python first.
    let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
    let out = run_ok(
        Command::new("nbdsh")
            .env("PATH", path)
            .arg("-c")
            .arg(format!("{PRELUDE}\n{body}"))
            .env("URI", uri),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn nbdsh_read_past_eof_is_einval_and_the_connection_survives() {
    if !have("nbdsh") || !have_python_nbd() {
        return;
    }
    let server = Server::in_process(&all_fixture_specs());
    for export in ["vm/memory", "hello"] {
        nbdsh(
            &server.uri(export),
            r#"
expect_error(errno.EINVAL, h.pread, 512, size)
expect_error(errno.EINVAL, h.pread, 2, size - 1)
expect_error(errno.EINVAL, h.pread, 1, 1 << 62)
assert h.pread(0, size) == b""
assert len(h.pread(1, size - 1)) == 1
expect_error(errno.EINVAL, h.cache, 4096, size)
h.cache(size, 0)
h.flush()
h.shutdown()
"#,
        );
    }
    assert!(server.metrics().requests_total.load(Ordering::Relaxed) >= 16);
}

#[test]
fn nbdsh_write_trim_and_zero_are_eperm_and_the_connection_survives() {
    if !have("nbdsh") || !have_python_nbd() {
        return;
    }
    let server = Server::in_process(&all_fixture_specs());
    let before = server.metrics().requests_total.load(Ordering::Relaxed);
    nbdsh(
        &server.uri("vm"),
        r#"
expect_error(errno.EPERM, h.pwrite, b"x" * 65536, 0)
expect_error(errno.EPERM, h.pwrite, b"y" * 1000, 4096)
expect_error(errno.EPERM, h.trim, 4096, 0)
expect_error(errno.EPERM, h.zero, 4096, 0)
# The WRITE payloads were drained: the stream is still in sync.
data = h.pread(4096, 0)
assert data == open(os.environ["RAW"], "rb").read(4096)
h.shutdown()
"#
        .replace(
            "os.environ[\"RAW\"]",
            &format!("{:?}", data().join("vm/disk.img").display().to_string()),
        )
        .as_str(),
    );
    // Every request reached the server (strict mode off).
    assert_eq!(
        server.metrics().requests_total.load(Ordering::Relaxed) - before,
        5
    );
}

#[test]
fn nbdsh_read_of_33_mib_is_einval_and_32_mib_is_served() {
    if !have("nbdsh") || !have_python_nbd() {
        return;
    }
    let (server, dir, _) = big_server();
    let raw = dir.path().join("big.img");
    nbdsh(
        &server.uri("big"),
        &format!(
            r#"
assert size == 40 << 20
expect_error(errno.EINVAL, h.pread, 33 << 20, 0)
expect_error(errno.EINVAL, h.pread, (32 << 20) + 1, 0)
assert h.pread(32 << 20, 8 << 20) == open({raw:?}, "rb").read()[8 << 20:]
h.shutdown()
"#,
            raw = raw.display().to_string()
        ),
    );
}

#[test]
fn nbdsh_block_status_reports_zero_extents_on_the_sparse_fixture() {
    if !have("nbdsh") || !have_python_nbd() {
        return;
    }
    let server = Server::start(&all_fixture_specs());
    let out = nbdsh(
        &server.uri("zeros"),
        r#"
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
extents = []
def cb(metacontext, offset, entries, err):
    assert metacontext == "base:allocation"
    pos = offset
    for i in range(0, len(entries), 2):
        extents.append((pos, entries[i], entries[i + 1]))
        pos += entries[i]
    return 0
pos = 0
while pos < size:
    before = len(extents)
    h.block_status(size - pos, pos, cb)
    pos = extents[-1][0] + extents[-1][1]
zero = [(o, l) for (o, l, f) in extents if f & nbd.STATE_ZERO]
assert zero, extents
for (o, l) in zero:
    assert h.pread(l, o) == bytes(l), (o, l)
# REQ_ONE: exactly one extent, within the request.
one = []
h.block_status(size, 0, lambda m, o, e, err: one.extend(e) or 0, nbd.CMD_FLAG_REQ_ONE)
assert len(one) == 2 and one[0] <= size, one
print("zero extents:", zero)
h.shutdown()
"#,
    );
    assert!(out.contains("zero extents"), "{out}");
}

#[test]
fn nbdsh_replies_come_out_of_order() {
    if !have("nbdsh") || !have_python_nbd() {
        return;
    }
    let (server, _dir, bytes) = big_server();
    let out = nbdsh(
        &server.uri("big"),
        r#"
# Warm the small reads' blocks: a cold 4 KiB read queues behind the big read's 512 block
# decodes in the shared decompression pool; a cached one does not touch the pool.
h.pread(32 * 4096, size - 32 * 4096)
order = []
def done(i):
    def f(err):
        order.append(i)
        return 1
    return f
big = nbd.Buffer(32 << 20)
h.aio_pread(big, 0, completion=done(0))
small = []
for i in range(1, 33):
    b = nbd.Buffer(4096)
    small.append(b)
    h.aio_pread(b, size - 4096 * i, completion=done(i))
while h.aio_in_flight() > 0:
    h.poll(-1)
print("order:", order)
assert sorted(order) == list(range(33))
assert order[0] != 0, order
import hashlib
print("big:", hashlib.sha256(big.to_bytearray()).hexdigest())
for i, b in enumerate(small, 1):
    print("small", i, hashlib.sha256(b.to_bytearray()).hexdigest())
h.shutdown()
"#,
    );
    use sha2::{Digest, Sha256};
    let hex = |b: &[u8]| {
        Sha256::digest(b)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    };
    assert!(
        out.contains(&format!("big: {}", hex(&bytes[..32 << 20]))),
        "{out}"
    );
    let size = bytes.len();
    for i in 1..33 {
        let want = hex(&bytes[size - 4096 * i..size - 4096 * (i - 1)]);
        assert!(out.contains(&format!("small {i} {want}")), "{i}: {out}");
    }
}
