//! qemu's NBD client against the server (issue 4): qemu-img compare, convert, info and map,
//! and qemu-io pattern reads. qemu negotiates structured replies and base:allocation and uses
//! block status with REQ_ONE.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod nbd_support;

use std::process::Command;

use nbd_support::*;

/// (export, raw input) pairs covering both streams, thin, encrypted, zstd and sparse fixtures.
const CASES: &[(&str, &str)] = &[
    ("", "vm/disk.img"),
    ("vm/memory", "vm/memory"),
    ("memory", "vm/memory"),
    ("mixed", "mixed.img"),
    ("mixed-zstd", "mixed.img"),
    ("zeros", "zeros.img"),
    ("child", "mixed-child.img"),
    ("enc", "mixed.img"),
    ("hello", "hello.txt"),
];

/// qemu keeps sizes in 512-byte sectors: an export whose size is not a multiple of 512 shows up
/// rounded up, the tail reading as zeros (qemu 10.0's NBD client pads reads past the real end).
fn same_up_to_qemu_rounding(got: &[u8], raw: &[u8], export: &str) {
    assert_eq!(got.len(), raw.len().div_ceil(512) * 512, "{export}: size");
    assert!(got[..raw.len()] == *raw, "{export}: content differs");
    assert!(got[raw.len()..].iter().all(|&b| b == 0), "{export}: tail");
}

#[test]
fn qemu_img_compare_finds_every_export_identical_to_its_raw_image() {
    if !have("qemu-img") {
        return;
    }
    let server = Server::start(&all_fixture_specs());
    for (export, raw) in CASES {
        let out = run_ok(
            Command::new("qemu-img")
                .args(["compare", "-f", "raw", "-F", "raw"])
                .arg(server.uri(export))
                .arg(data().join(raw)),
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Images are identical"),
            "{export}"
        );
    }
}

#[test]
fn qemu_img_convert_from_nbd_equals_the_raw_image() {
    if !have("qemu-img") {
        return;
    }
    let server = Server::start(&all_fixture_specs());
    let dir = tempfile::tempdir().unwrap();
    for (export, raw) in CASES {
        let out = dir.path().join("out.raw");
        run_ok(
            Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "raw"])
                .arg(server.uri(export))
                .arg(&out),
        );
        same_up_to_qemu_rounding(
            &std::fs::read(&out).unwrap(),
            &std::fs::read(data().join(raw)).unwrap(),
            export,
        );
    }
    // Over the Unix socket too.
    let out = dir.path().join("unix.raw");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(server.unix_uri("vm/disk"))
            .arg(&out),
    );
    same_up_to_qemu_rounding(
        &std::fs::read(&out).unwrap(),
        &std::fs::read(data().join("vm/disk.img")).unwrap(),
        "unix vm/disk",
    );
}

#[test]
fn qemu_img_map_reports_the_sparse_fixture_zero_ranges() {
    if !have("qemu-img") {
        return;
    }
    let server = Server::start(&all_fixture_specs());
    let out = run_ok(
        Command::new("qemu-img")
            .args(["map", "-f", "raw", "--output=json"])
            .arg(server.uri("zeros")),
    );
    let map: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let raw = std::fs::read(data().join("zeros.img")).unwrap();
    let mut zero_bytes = 0;
    for e in map.as_array().unwrap() {
        if e["zero"] == true {
            let (start, len) = (
                e["start"].as_u64().unwrap() as usize,
                e["length"].as_u64().unwrap() as usize,
            );
            let end = (start + len).min(raw.len());
            assert!(raw[start..end].iter().all(|&b| b == 0));
            zero_bytes += len;
        }
    }
    assert!(zero_bytes >= 1 << 20, "{map}");
}

#[test]
fn qemu_io_reads_known_patterns() {
    if !have("qemu-io") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("pattern.img");
    let mut img = vec![0u8; 1 << 20];
    img[..65536].fill(0xab);
    img[65536..131072].fill(0xcd);
    img[300_000..400_000].fill(0x5a);
    std::fs::write(&raw, &img).unwrap();
    let hxz = dir.path().join("pattern.hxz");
    pack(&raw, &hxz, Some(&raw));
    let server = Server::start(&[Spec::new("pat", &hxz)]);
    for export in ["pat", "pat/memory"] {
        let out = run_ok(
            Command::new("qemu-io")
                .args(["-r", "-f", "raw"])
                .args(["-c", "read -P 0xab 0 64k"])
                .args(["-c", "read -P 0xcd 64k 64k"])
                .args(["-c", "read -P 0 128k 64k"])
                .args(["-c", "read -P 0x5a 300000 100000"])
                .args(["-c", "read -P 0 400000 648576"])
                .arg(server.uri(export)),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("Pattern verification failed"), "{text}");
        assert_eq!(text.matches("read ").count(), 5, "{text}");
    }
    // The check above can fail: a wrong pattern is reported.
    let out = Command::new("qemu-io")
        .args(["-r", "-f", "raw", "-c", "read -P 0x11 0 64k"])
        .arg(server.uri("pat"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Pattern verification failed"));
}

#[test]
fn qemu_img_info_reports_the_export_size() {
    if !have("qemu-img") {
        return;
    }
    let server = Server::start(&all_fixture_specs());
    let out = run_ok(
        Command::new("qemu-img")
            .args(["info", "-f", "raw", "--output=json"])
            .arg(server.uri("vm/memory")),
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // 307277 bytes, rounded up to qemu's 512-byte sectors.
    assert_eq!(info["virtual-size"], 307_712);
}
