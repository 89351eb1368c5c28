//! Remote archives served by a real HTTP server (issue 14): nginx serves the fixture
//! directory on a loopback port; every stream of every fixture, thin chain and encrypted
//! included, read through `hexzd cat URL`, through hexzd's HTTP front end and through its NBD
//! front end (nbdcopy) equals the raw input; thousands of random ranges through `read_at`
//! agree with it. Skips (with a message) without nginx, fails under `HEXZD_REQUIRE_TOOLS=1`.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod common;
mod nbd_support;
mod remote_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{FIXTURE_PASSWORD, FIXTURES, Rng, hexzd, run};
use hexzd::store::{OpenOptions, RemoteConfig, Snapshot, Stream};
use remote_support::{Nginx, engine, fixtures, http_get, read};

/// The fixture's snapshot name (the file stem).
fn name(archive: &str) -> String {
    archive.trim_end_matches(".hxz").to_string()
}

#[test]
fn every_stream_of_every_fixture_through_cat_equals_the_raw_input() {
    let Some(nginx) = Nginx::start(&fixtures()) else {
        return;
    };
    for f in FIXTURES {
        for (stream, arg) in [(Stream::Main, "main"), (Stream::Aux, "aux")] {
            let mut cmd = hexzd();
            cmd.args(["cat", "--stream", arg, &nginx.url(f.archive)]);
            if f.encrypted {
                cmd.env("HEXZ_PASSWORD", FIXTURE_PASSWORD);
            }
            let o = run(&mut cmd);
            assert!(
                o.status.success(),
                "{}: {}",
                f.archive,
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(
                o.stdout == f.expected(stream),
                "{} {arg} differs",
                f.archive
            );
        }
    }
    let o = run(hexzd().args(["verify", &nginx.url("mixed-child-thin-lz4.hxz")]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let o = run(hexzd().args(["inspect", "--json", &nginx.url("mixed-child-thin-lz4.hxz")]));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["parents"][0]["resolved"], nginx.url("mixed-lz4.hxz"));
}

#[test]
fn every_stream_through_the_http_and_nbd_front_ends_equals_the_raw_input() {
    let Some(nginx) = Nginx::start(&fixtures()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, FIXTURE_PASSWORD).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hexzd"));
    cmd.args(["serve", "--http", "127.0.0.1:0", "--nbd", "127.0.0.1:0"]);
    cmd.arg("--password-file").arg(&pw);
    for f in FIXTURES {
        cmd.arg(format!("{}={}", nginx.url(f.archive), name(f.archive)));
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut http, mut nbd, mut seen) = (None, None, Vec::new());
    while http.is_none() || nbd.is_none() {
        let Some(Ok(line)) = lines.next() else {
            panic!("daemon exited: {}", seen.join("\n"));
        };
        if let Some(a) = line.strip_prefix("hexzd: HTTP listening on ") {
            http = a.trim().parse::<std::net::SocketAddr>().ok();
        }
        if let Some(a) = line.strip_prefix("hexzd: NBD listening on ") {
            nbd = a.trim().parse::<std::net::SocketAddr>().ok();
        }
        seen.push(line);
    }
    std::thread::spawn(move || for _ in lines {});
    let (http, nbd) = (http.unwrap(), nbd.unwrap());
    for f in FIXTURES {
        for (stream, route) in [(Stream::Main, "disk"), (Stream::Aux, "memory")] {
            let (status, body) = http_get(http, &format!("/snapshots/{}/{route}", name(f.archive)));
            assert_eq!(status, 200, "{} {route}", f.archive);
            assert!(
                body == f.expected(stream),
                "{} {route} over HTTP differs",
                f.archive
            );
        }
    }
    if nbd_support::have("nbdcopy") {
        for f in FIXTURES.iter().filter(|f| f.main != "empty.img") {
            let out = dir.path().join("copy");
            let uri = format!("nbd://{nbd}/{}", name(f.archive));
            nbd_support::run_ok(Command::new("nbdcopy").arg(&uri).arg(&out));
            assert!(
                read(&out) == f.expected(Stream::Main),
                "{} over NBD differs",
                f.archive
            );
        }
    }
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}

#[test]
fn thousands_of_random_ranges_agree_with_the_raw_input() {
    let Some(nginx) = Nginx::start(&fixtures()) else {
        return;
    };
    let mut rng = Rng::new(14);
    for f in FIXTURES.iter().filter(|f| f.main != "empty.img") {
        let raw = f.expected(Stream::Main);
        // Cache off with read-ahead, and a small chunk memory (eviction under load).
        for remote in [
            RemoteConfig::default(),
            RemoteConfig {
                memory: 256 * 1024,
                readahead: 0,
                ..RemoteConfig::default()
            },
        ] {
            let opts = OpenOptions {
                password: f.encrypted.then(|| FIXTURE_PASSWORD.as_bytes().to_vec()),
                index_only: false,
            };
            let snap = Snapshot::open_with(nginx.url(f.archive), &engine(remote), &opts).unwrap();
            for _ in 0..250 {
                let off = rng.below(raw.len() as u64) as usize;
                let len = (rng.below(300_000) as usize + 1).min(raw.len() - off);
                let mut buf = vec![0u8; len];
                let n = snap.read_at(Stream::Main, off as u64, &mut buf).unwrap();
                assert_eq!(n, len);
                assert!(buf == raw[off..off + len], "{} at {off}+{len}", f.archive);
            }
        }
    }
    assert!(nginx.requests() > 0);
}
