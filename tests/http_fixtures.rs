//! Every stream of every reference fixture (tests/data/hexz-0.8.2) served over HTTP equals its
//! raw input: whole through curl, for thousands of random ranges through a keep-alive client,
//! and for a sample of ranges through `curl -r`; against the in-process service and against
//! the `hexzd serve` binary (the encrypted fixture with its password file, the thin one with
//! its parent beside it).
#![allow(clippy::unwrap_used)]

mod http_support;

use std::process::Command;
use std::sync::OnceLock;

use hexzd::http::HttpSettings;
use http_support::{Client, Kind, Target, all_fixtures, have, run};

both_kinds!(
    whole_streams_through_curl_equal_the_raw_inputs,
    thousands_of_random_ranges_equal_the_raw_inputs,
    curl_range_sample_equals_the_raw_inputs,
);

/// Every (url path, raw bytes) pair: both streams of every fixture.
fn every_stream() -> &'static [(String, Vec<u8>)] {
    static S: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    S.get_or_init(|| {
        all_fixtures()
            .iter()
            .flat_map(|(a, main, aux)| {
                let aux = aux.as_ref().map(|p| std::fs::read(p).unwrap());
                [
                    (
                        format!("/snapshots/{}/disk", a.name),
                        std::fs::read(main).unwrap(),
                    ),
                    (
                        format!("/snapshots/{}/memory", a.name),
                        aux.unwrap_or_default(),
                    ),
                ]
            })
            .collect()
    })
}

/// True if curl is installed. Otherwise the test prints SKIP and returns, unless
/// `HEXZD_REQUIRE_TOOLS=1` (as CI sets it), where a missing client is a failure.
fn curl_installed() -> bool {
    if have("curl") {
        return true;
    }
    assert!(
        std::env::var("HEXZD_REQUIRE_TOOLS").as_deref() != Ok("1"),
        "curl is required and HEXZD_REQUIRE_TOOLS=1"
    );
    eprintln!("SKIP: curl is not installed");
    false
}

fn server(kind: Kind) -> Box<dyn Target> {
    let archives: Vec<_> = all_fixtures().into_iter().map(|f| f.0).collect();
    http_support::start(kind, HttpSettings::default(), &archives)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn whole_streams_through_curl_equal_the_raw_inputs(kind: Kind) {
    if !curl_installed() {
        return;
    }
    assert!(have("curl"), "curl is required (apt-get install curl)");
    let srv = server(kind);
    let dir = tempfile::tempdir().unwrap();
    for (path, raw) in every_stream() {
        let raw = raw.as_slice();
        let out = dir.path().join("out");
        let o = run(Command::new("curl")
            .args(["-sS", "--fail", "-o"])
            .arg(&out)
            .arg(srv.url(path)));
        assert!(
            o.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let got = std::fs::read(&out).unwrap();
        assert_eq!(got.len(), raw.len(), "{path}");
        assert!(got == raw, "{path}: bytes differ");
    }
}

fn thousands_of_random_ranges_equal_the_raw_inputs(kind: Kind) {
    let srv = server(kind);
    let mut rng = Rng(0x5eed_1234_abcd_9876);
    let mut total = 0usize;
    let mut client = Client::new(srv.addr());
    for (path, raw) in every_stream() {
        let raw = raw.as_slice();
        let len = raw.len() as u64;
        if len == 0 {
            continue;
        }
        for i in 0..2000 {
            let size = match rng.below(100) {
                0..70 => 1 + rng.below(4096),
                70..95 => 1 + rng.below(64 << 10),
                _ => 1 + rng.below(512 << 10),
            };
            let first = rng.below(len);
            let last = (first + size - 1).min(len - 1);
            let (f, l) = (
                usize::try_from(first).unwrap(),
                usize::try_from(last).unwrap(),
            );
            // Every 100th request uses the open and suffix forms.
            let body = match i % 100 {
                0 => {
                    let r = client.get(path, &[("Range", &format!("bytes={first}-"))]);
                    assert_eq!(r.status, 206);
                    assert_eq!(r.body, raw[f..], "{path} {first}-");
                    continue;
                }
                1 => {
                    let n = size.min(len);
                    let r = client.get(path, &[("Range", &format!("bytes=-{size}"))]);
                    assert_eq!(r.status, 206);
                    assert_eq!(r.body, raw[raw.len() - usize::try_from(n).unwrap()..]);
                    continue;
                }
                _ => client.range(path, first, last),
            };
            assert!(body == raw[f..=l], "{path} bytes {first}-{last} differ");
            total += 1;
        }
    }
    assert!(total > 10_000, "{total}");
}

fn curl_range_sample_equals_the_raw_inputs(kind: Kind) {
    if !curl_installed() {
        return;
    }
    assert!(have("curl"), "curl is required (apt-get install curl)");
    let srv = server(kind);
    let mut rng = Rng(77);
    for (path, raw) in every_stream() {
        let raw = raw.as_slice();
        let len = raw.len() as u64;
        if len == 0 {
            continue;
        }
        for _ in 0..10 {
            let first = rng.below(len);
            let last = (first + rng.below(200_000)).min(len - 1);
            let o = run(Command::new("curl")
                .args(["-sS", "--fail", "-r", &format!("{first}-{last}")])
                .arg(srv.url(path)));
            assert!(
                o.status.success(),
                "{path}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let (f, l) = (
                usize::try_from(first).unwrap(),
                usize::try_from(last).unwrap(),
            );
            assert!(o.stdout == raw[f..=l], "{path} curl -r {first}-{last}");
        }
    }
}
