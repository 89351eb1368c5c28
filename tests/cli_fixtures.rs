//! `hexzd cat` of every Hexz 0.8.2 fixture equals its raw input, whole streams and
//! `--offset/--length` slices; the encrypted fixture with `HEXZ_PASSWORD` and with
//! `--password-file`; `inspect` and `verify` accept every fixture.

mod common;

use common::{FIXTURE_PASSWORD, FIXTURES, Fixture, fixture, hexzd, hexzd_ok, run};
use hexzd::format::Stream;

fn cat(f: &Fixture, extra: &[&str]) -> Vec<u8> {
    let mut cmd = hexzd();
    cmd.arg("cat").arg(fixture(f.archive)).args(extra);
    if f.encrypted {
        cmd.env("HEXZ_PASSWORD", FIXTURE_PASSWORD);
    }
    let o = run(&mut cmd);
    assert!(
        o.status.success(),
        "cat {} {extra:?}: {}",
        f.archive,
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

#[test]
fn cat_of_every_stream_of_every_fixture_equals_its_raw_input() {
    for f in FIXTURES {
        for stream in Stream::ALL {
            // Every encrypted open derives a PBKDF2 key (seconds in a debug build); the empty
            // aux stream of the encrypted fixture is covered by the other fixtures.
            if f.encrypted && stream == Stream::Aux {
                continue;
            }
            let got = cat(f, &["--stream", stream.name()]);
            let want = f.expected(stream);
            assert!(
                got == want,
                "{} {stream}: {} bytes, expected {}",
                f.archive,
                got.len(),
                want.len()
            );
        }
    }
}

#[test]
fn cat_offset_and_length_slices_equal_the_raw_input() {
    // The encrypted fixture is sliced in `encrypted_fixture_cats_with_password_file`.
    for f in FIXTURES.iter().filter(|f| !f.encrypted) {
        for stream in Stream::ALL {
            let want = f.expected(stream);
            let size = want.len() as u64;
            let mut cases: Vec<(u64, Option<u64>)> = vec![
                (0, Some(0)),
                (0, Some(1)),
                (size, None),
                (size, Some(10)),
                (size / 2, None),
                (size.saturating_sub(1), Some(1)),
                (size.saturating_sub(1), Some(100)),
                (size / 3, Some(size / 3 + 1)),
                (1.min(size), Some(size)),
                (0, Some(u64::MAX)),
            ];
            // Ranges straddling the block boundaries near the middle of the stream.
            if size > 100_000 {
                cases.push((65_000, Some(200_000)));
                cases.push((262_100, Some(100)));
            }
            for (offset, length) in cases {
                let mut args = vec![
                    "--stream".to_string(),
                    stream.name().to_string(),
                    "--offset".to_string(),
                    offset.to_string(),
                ];
                if let Some(l) = length {
                    args.push("--length".into());
                    args.push(l.to_string());
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                // A range that ends past the end is an error, never a short output.
                if length.is_some_and(|l| offset.checked_add(l).is_none_or(|e| e > size)) {
                    let mut cmd = hexzd();
                    let o = run(cmd.arg("cat").arg(fixture(f.archive)).args(&args));
                    let err = common::assert_clean_failure(&o, "range past the end");
                    assert!(err.contains("past the end"), "{err}");
                    continue;
                }
                let got = cat(f, &args);
                let start = usize::try_from(offset.min(size)).expect("usize");
                let end = usize::try_from(length.map_or(size, |l| offset.saturating_add(l)))
                    .unwrap_or(usize::MAX)
                    .min(want.len());
                assert!(
                    got == want[start..end],
                    "{} {stream} --offset {offset} --length {length:?}: {} bytes, expected {}",
                    f.archive,
                    got.len(),
                    end - start
                );
            }
        }
    }
}

#[test]
fn cat_offset_past_the_end_is_a_clear_error() {
    let o = run(hexzd()
        .arg("cat")
        .arg(fixture("hello-lz4.hxz"))
        .args(["--offset", "1081"]));
    let err = common::assert_clean_failure(&o, "offset past end");
    assert!(err.contains("past the end"), "{err}");
}

#[test]
fn cat_length_past_the_end_is_an_error_like_an_offset_past_the_end() {
    // hello.txt has 1080 bytes: 1000 + 100 ends past it; 1000 + 80 ends exactly at it.
    let o = run(hexzd()
        .arg("cat")
        .arg(fixture("hello-lz4.hxz"))
        .args(["--offset", "1000", "--length", "100"]));
    let err = common::assert_clean_failure(&o, "length past end");
    assert!(
        err.contains("offset 1000 + length 100 is past the end"),
        "{err}"
    );
    assert!(o.stdout.is_empty());
    let f = FIXTURES
        .iter()
        .find(|f| f.archive == "hello-lz4.hxz")
        .expect("fixture");
    assert_eq!(cat(f, &["--offset", "1000", "--length", "80"]).len(), 80);
}

#[test]
fn encrypted_fixture_cats_a_slice_with_password_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{FIXTURE_PASSWORD}\n")).expect("write");
    let got = hexzd_ok([
        "cat".as_ref(),
        fixture("mixed-enc-lz4.hxz").as_os_str(),
        "--password-file".as_ref(),
        pw.as_os_str(),
        "--offset".as_ref(),
        "100000".as_ref(),
        "--length".as_ref(),
        "700001".as_ref(),
    ]);
    assert!(got == common::raw("mixed.img")[100_000..800_001]);
}

#[test]
fn verify_accepts_every_fixture() {
    // `encrypted_archives.rs` verifies the encrypted fixture.
    for f in FIXTURES.iter().filter(|f| !f.encrypted) {
        let o = run(hexzd().arg("verify").arg(fixture(f.archive)));
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && text.contains(": OK"),
            "verify {}: {text}{}",
            f.archive,
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn inspect_describes_every_fixture_without_password_or_parents() {
    for f in FIXTURES {
        let j = common::inspect_json(&fixture(f.archive));
        assert_eq!(j["version"], 1, "{}", f.archive);
        assert_eq!(
            j["main"]["size"].as_u64(),
            Some(f.expected(Stream::Main).len() as u64),
            "{}",
            f.archive
        );
        assert_eq!(
            j["aux"]["size"].as_u64(),
            Some(f.expected(Stream::Aux).len() as u64),
            "{}",
            f.archive
        );
        assert_eq!(j["encryption"].is_null(), !f.encrypted, "{}", f.archive);
        // The text form works too.
        let text = hexzd_ok(["inspect".as_ref(), fixture(f.archive).as_os_str()]);
        assert!(String::from_utf8_lossy(&text).contains("hxz v1"));
    }
    let j = common::inspect_json(&fixture("mixed-zstd.hxz"));
    assert_eq!(j["compression"], "zstd");
    let j = common::inspect_json(&fixture("zeros-serial-lz4.hxz"));
    assert!(j["main"]["sparse_blocks"].as_u64() > Some(0));
}

#[test]
fn cat_inspect_verify_refuse_a_fifo_a_directory_and_a_symlink_loop_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.hxz");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (a, b) = (dir.path().join("a.hxz"), dir.path().join("b.hxz"));
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    let cases = [
        (fifo.as_path(), "is a FIFO, not an archive file"),
        (dir.path(), "is a directory, not an archive file"),
        (a.as_path(), "symbolic link loop"),
    ];
    for command in ["cat", "inspect", "verify"] {
        for (path, want) in cases {
            // `run` fails the test on a hang: opening the FIFO used to wait for a writer.
            let o = run(hexzd().arg(command).arg(path));
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{command} {path:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{command}: one line: {err}");
            assert!(
                err.contains(want) && err.contains(&*path.to_string_lossy()),
                "{err}"
            );
        }
    }
}

#[test]
fn a_parent_behind_a_symlink_loop_is_reported_as_a_loop_not_as_missing() {
    let dir = tempfile::tempdir().unwrap();
    let child = dir.path().join("child.hxz");
    std::fs::copy(fixture("mixed-child-thin-lz4.hxz"), &child).unwrap();
    // The child names its parent "mixed-lz4.hxz", looked up beside the child first.
    let (a, b) = (dir.path().join("mixed-lz4.hxz"), dir.path().join("b.hxz"));
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    let o = run(hexzd().arg("cat").arg(&child));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("parent archive") && err.contains("symbolic link loop"),
        "{err}"
    );
}

#[test]
fn inspect_reports_a_parent_behind_a_symlink_loop_as_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    let child = dir.path().join("child.hxz");
    std::fs::copy(fixture("mixed-child-thin-lz4.hxz"), &child).unwrap();
    let (a, b) = (dir.path().join("mixed-lz4.hxz"), dir.path().join("b.hxz"));
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    let o = run(hexzd().arg("inspect").arg(&child));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("symbolic link loop"), "{out}");
    assert!(!out.contains("not found"), "{out}");
}

/// A read-only loop device over a file, detached on drop.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

#[test]
fn an_archive_on_a_block_device_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("blk.img");
    let mut bytes = std::fs::read(fixture("mixed-lz4.hxz")).unwrap();
    // A loop device's size is whole 512-byte sectors; the padding lies past the index.
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    std::fs::write(&img, bytes).unwrap();
    // Needs root and loop devices; skips (saying so) where there are none.
    let attached = std::process::Command::new("losetup")
        .args(["-f", "--show", "-r"])
        .arg(&img)
        .output();
    let dev = match attached {
        Ok(o) if o.status.success() => Loop(String::from_utf8_lossy(&o.stdout).trim().to_string()),
        Ok(o) => {
            eprintln!(
                "SKIP: no loop device: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("SKIP: losetup: {e}");
            return;
        }
    };
    let o = run(hexzd().arg("cat").arg(&dev.0));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout == std::fs::read(fixture("mixed.img")).unwrap());
}

/// A full disk under stdout is one error line and exit status 1 (not a panic); a reader that
/// went away (`inspect | head`) ends the output quietly.
#[test]
fn inspect_and_verify_report_a_failed_write_to_stdout_in_one_line() {
    let archive = fixture("hello-lz4.hxz");
    for cmd in ["inspect", "verify"] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let o = hexzd()
            .args([cmd.as_ref(), archive.as_os_str()])
            .stdout(full)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{cmd}: {err}");
        assert!(
            err.starts_with("hexzd: cannot write output"),
            "{cmd}: {err}"
        );
        assert!(!err.contains("panicked"), "{cmd}: {err}");
    }
    let mut child = hexzd()
        .args(["inspect".as_ref(), "--json".as_ref(), archive.as_os_str()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
