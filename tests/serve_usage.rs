//! What a newcomer tripped over (issue 9 §3), one test each: bad snapshot names named as such,
//! a port in use as one line, nothing to listen on as an error, usage errors exit 2, the
//! `serve --help` defaults, `--check-config`, and the README's range showing the ext4
//! superblock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod systemd_support;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use systemd_support::{Daemon, fixture, get, serve_command};

fn demo() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("demo/demo.hxz")
        .display()
        .to_string()
}

/// Runs `cmd` to completion (bounded: a hang fails the test).
fn output(mut cmd: Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(o) => o.unwrap(),
        Err(_) => {
            // SAFETY: kill(2) with a valid pid and signal number has no memory effects.
            unsafe { libc::kill(i32::try_from(pid).unwrap(), libc::SIGKILL) };
            panic!("hexzd hung");
        }
    }
}

/// `hexzd serve ARGS` expecting a start-up failure: exit 1 and exactly one line; returns it.
fn serve_fails(args: &[&str]) -> String {
    let mut cmd = serve_command();
    cmd.args(args);
    let o = output(cmd);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn a_reserved_or_invalid_snapshot_name_is_named_not_a_missing_file() {
    let d = demo();
    let err = serve_fails(&[
        "--http",
        "127.0.0.1:0",
        "--nbd",
        "off",
        &format!("{d}=disk"),
    ]);
    assert!(
        err.contains("\"disk\" is not a valid snapshot name") && err.contains("reserved"),
        "{err}"
    );
    assert!(!err.contains("No such file"), "{err}");
    let err = serve_fails(&[
        "--http",
        "127.0.0.1:0",
        "--nbd",
        "off",
        &format!("{d}=bad name"),
    ]);
    assert!(
        err.contains("\"bad name\" is not a valid snapshot name"),
        "{err}"
    );
}

#[test]
fn a_port_in_use_is_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = serve_fails(&["--http", &addr, "--nbd", "off", &demo()]);
    assert!(
        err.contains(&format!("cannot listen on {addr}")) && err.contains("in use"),
        "{err}"
    );
}

#[test]
fn http_and_nbd_both_off_is_an_error_not_a_daemon_without_listeners() {
    let err = serve_fails(&["--http", "off", "--nbd", "off", &demo()]);
    assert!(err.contains("nothing to listen on"), "{err}");
}

#[test]
fn block_size_zero_is_a_usage_error_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.img");
    std::fs::write(&input, [0u8; 4096]).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hexzd"));
    cmd.arg("pack")
        .arg(&input)
        .arg(dir.path().join("out.hxz"))
        .args(["--block-size", "0"]);
    let o = output(cmd);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--block-size") && err.contains("out of range"),
        "{err}"
    );
    assert!(!dir.path().join("out.hxz").exists());
}

#[test]
fn serve_help_shows_the_defaults_of_cache_workers_and_shutdown_timeout() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hexzd"));
    cmd.args(["serve", "--help"]);
    let o = output(cmd);
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout).replace('\n', " ");
    for want in [
        "[default: 1/16 of memory",
        "[default: 0",
        "[default: 10s",
        "--activated-protocol",
        "--check-config",
    ] {
        assert!(help.contains(want), "{want:?} missing from: {help}");
    }
}

#[test]
fn check_config_opens_every_snapshot_and_exits_0_or_1_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hexzd.toml");
    let hello = fixture("hello-lz4.hxz");
    std::fs::write(
        &cfg,
        format!(
            "[daemon]\nshutdown_timeout = \"3s\"\n[[snapshot]]\nname = \"a\"\npath = {:?}\n",
            hello.display().to_string()
        ),
    )
    .unwrap();
    let mut cmd = serve_command();
    cmd.args(["--check-config", "--config", cfg.to_str().unwrap()]);
    let o = output(cmd);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("configuration OK") && out.contains("serving 1 snapshot(s): a"),
        "{out}"
    );

    // A snapshot that does not open (a corrupt archive) fails the check, not only a bad key.
    let bad = dir.path().join("bad.hxz");
    std::fs::write(&bad, b"not an archive at all").unwrap();
    std::fs::write(
        &cfg,
        format!(
            "[[snapshot]]\nname = \"b\"\npath = {:?}\n",
            bad.display().to_string()
        ),
    )
    .unwrap();
    let err = serve_fails(&["--check-config", "--config", cfg.to_str().unwrap()]);
    assert!(err.contains("bad.hxz"), "{err}");
    std::fs::write(&cfg, "[daemon]\nshutdown_timeout = \"soon\"\n").unwrap();
    let err = serve_fails(&["--check-config", "--config", cfg.to_str().unwrap()]);
    assert!(err.contains("daemon.shutdown_timeout"), "{err}");
}

#[test]
fn readme_range_shows_the_ext4_superblock_at_1024() {
    let mut cmd = serve_command();
    cmd.args(["--http", "127.0.0.1:0", "--nbd", "off", &demo()]);
    let mut d = Daemon::spawn(cmd);
    let port = d.port("HTTP");
    let (status, _, body) = get(port, "/disk", Some((1024, 2047)));
    assert_eq!(status, 206);
    assert_eq!(body.len(), 1024);
    // s_magic, 0xEF53 little-endian, at offset 0x38 of the superblock.
    assert_eq!(&body[0x38..0x3a], &[0x53, 0xef]);
    // The range the README used to show was all zeros.
    let (_, _, first) = get(port, "/disk", Some((0, 1023)));
    assert!(first.iter().all(|b| *b == 0));
}

#[test]
fn caps_above_the_open_files_limit_are_lowered_and_said_in_one_line() {
    // A hard limit of 400 descriptors cannot carry 1024 HTTP connections.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 400 && exec \"$0\" serve --http 127.0.0.1:0 --nbd off \"$1\"")
        .arg(env!("CARGO_BIN_EXE_hexzd"))
        .arg(demo())
        .env("HEXZD_LOG", "info");
    let mut d = Daemon::spawn(cmd);
    let line = d.wait_for("connection caps lowered");
    assert!(
        line.contains("HTTP 1024 -> ") && line.contains("open files 400"),
        "{line}"
    );
    d.port("HTTP");
    let lowered = d
        .lines()
        .iter()
        .filter(|l| l.contains("connection caps lowered"))
        .count();
    assert_eq!(lowered, 1);
}

#[test]
fn a_bad_listen_address_fails_serve_and_check_config_alike() {
    let d = demo();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hexzd.toml");
    std::fs::write(&cfg, "[nbd]\nlisten = [\"127.0.0.1\"]\n").unwrap();
    let cfg = cfg.to_str().unwrap();
    for (args, place, why) in [
        (
            vec!["--nbd", "127.0.0.1:99999"],
            "--nbd",
            "the port is not a number",
        ),
        (vec!["--http", "127.0.0.1"], "--http", "no :PORT"),
        (vec!["--nbd", ""], "--nbd", "no :PORT"),
        (vec!["--http", ":8080"], "--http", "no host"),
        (vec!["--config", cfg], "nbd.listen", "no :PORT"),
    ] {
        for check in [false, true] {
            let mut all = args.clone();
            if check {
                all.push("--check-config");
            }
            all.push(&d);
            let err = serve_fails(&all);
            assert!(
                err.contains(place) && err.contains("bad listen address") && err.contains(why),
                "{all:?}: {err}"
            );
        }
    }
}

#[test]
fn check_config_says_when_only_socket_activation_could_give_serve_a_listener() {
    let mut cmd = serve_command();
    cmd.args(["--check-config", "--http", "off", "--nbd", "off", &demo()]);
    let o = output(cmd);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("configuration OK") && out.contains("no listen address"),
        "{out}"
    );
}

/// The start-up lines go to stderr; a stderr that cannot be written (a full disk here, a
/// closed pipe or a hung-up terminal elsewhere) must not stop the daemon from serving.
#[test]
fn serve_runs_when_its_stderr_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nbd.sock");
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut cmd = serve_command();
    cmd.args(["--http", "off", "--nbd", "off", "--nbd-unix"])
        .arg(&sock)
        .arg(demo())
        .stdout(Stdio::null())
        .stderr(full);
    let mut child = cmd.spawn().unwrap();
    // Ready once the socket exists and answers (the NBD greeting starts with "NBDMAGIC").
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut greeting = [0u8; 8];
    loop {
        if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&sock) {
            use std::io::Read;
            s.read_exact(&mut greeting).unwrap();
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "hexzd exited while starting"
        );
        assert!(std::time::Instant::now() < deadline, "never ready");
        std::thread::yield_now();
    }
    assert_eq!(&greeting, b"NBDMAGIC");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
}
