//! `hexzd serve` as a daemon: start-up errors, the config file, passwords from files only,
//! SIGHUP reload (good and bad configs, and one naming a FIFO) and SIGTERM, paths that are not
//! archive files. Every wait is on a line the daemon prints or on its exit, never a sleep.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::Duration;

mod systemd_support;

use systemd_support::{Daemon, fixture, serve_command};

const PASSWORD: &str = "correct-horse-battery";

/// Starts `hexzd serve ARGS` with `envs` and no password in the environment.
fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Daemon {
    let mut cmd = serve_command();
    cmd.args(args).env_remove("HEXZ_PASSWORD");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    Daemon::spawn(cmd)
}

/// A GET on a fresh connection; returns (status, body).
fn get(port: u16, path: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, all[split + 4..].to_vec())
}

/// Runs `hexzd serve` expecting a start-up failure; returns its stderr.
fn start_failure(args: &[&str], envs: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hexzd"));
    cmd.arg("serve")
        .args(["--http", "127.0.0.1:0", "--nbd", "off"])
        .args(args)
        .env_remove("HEXZ_PASSWORD")
        .stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = output_within(cmd, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

/// Runs `cmd` to completion, failing the test (and killing it) if it hangs.
fn output_within(mut cmd: Command, limit: Duration) -> std::process::Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: kill(2) with a valid pid and signal number has no memory effects.
            unsafe { libc::kill(i32::try_from(pid).unwrap(), libc::SIGKILL) };
            panic!("hexzd serve hung for {limit:?}");
        }
    }
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn snapshot_entry(name: &str, path: &Path, password_file: Option<&Path>) -> String {
    let mut s = format!(
        "[[snapshot]]\nname = {name:?}\npath = {:?}\n",
        path.display().to_string()
    );
    if let Some(p) = password_file {
        s.push_str(&format!("password_file = {:?}\n", p.display().to_string()));
    }
    s
}

#[test]
fn config_file_serves_thin_and_encrypted_snapshots_with_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let pw = write(dir.path(), "pw", &format!("{PASSWORD}\n"));
    let cfg = format!(
        "[http]\nlisten = [\"127.0.0.1:0\"]\n[nbd]\nlisten = []\n{}{}",
        snapshot_entry("enc", &fixture("mixed-enc-lz4.hxz"), Some(&pw)),
        snapshot_entry("thin", &fixture("mixed-child-thin-lz4.hxz"), None),
    );
    let cfg = write(dir.path(), "hexzd.toml", &cfg);
    let mut d = spawn(&["--config", cfg.to_str().unwrap()], &[]);
    d.wait_for("serving 2 snapshot(s): enc (default), thin");
    let port = d.port("HTTP");
    let mixed = std::fs::read(fixture("mixed.img")).unwrap();
    assert_eq!(get(port, "/disk"), (200, mixed.clone()));
    assert_eq!(get(port, "/snapshots/enc/disk"), (200, mixed));
    let child = std::fs::read(fixture("mixed-child.img")).unwrap();
    assert_eq!(get(port, "/snapshots/thin/disk"), (200, child));
}

#[test]
fn serve_ignores_hexz_password_it_needs_a_password_file() {
    let archive = fixture("mixed-enc-lz4.hxz");
    let err = start_failure(&[archive.to_str().unwrap()], &[("HEXZ_PASSWORD", PASSWORD)]);
    assert!(
        err.contains("needs a password") && err.contains("mixed-enc-lz4.hxz"),
        "{err}"
    );
}

#[test]
fn wrong_password_file_is_a_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let pw = write(dir.path(), "pw", "wrong\n");
    let archive = fixture("mixed-enc-lz4.hxz");
    let err = start_failure(
        &[
            "--password-file",
            pw.to_str().unwrap(),
            archive.to_str().unwrap(),
        ],
        &[],
    );
    assert!(err.contains("wrong password"), "{err}");
}

#[test]
fn start_up_errors_are_one_line_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.hxz");
    let err = start_failure(&[missing.to_str().unwrap()], &[]);
    assert!(err.contains("missing.hxz"), "{err}");

    let cfg = write(dir.path(), "bad.toml", "[http]\nlisten_on = []\n");
    let err = start_failure(&["--config", cfg.to_str().unwrap()], &[]);
    assert!(
        err.contains("bad.toml") && err.contains("listen_on"),
        "{err}"
    );

    let cfg = write(dir.path(), "none.toml", "");
    let err = start_failure(
        &["--config", cfg.with_extension("nope").to_str().unwrap()],
        &[],
    );
    assert!(err.contains("none.nope"), "{err}");

    let a = fixture("hello-lz4.hxz");
    let a = a.to_str().unwrap();
    let err = start_failure(&[&format!("{a}=x"), &format!("{a}=x")], &[]);
    assert!(err.contains("duplicate") && err.contains("\"x\""), "{err}");

    let err = start_failure(&["--http", "not-an-address", a], &[]);
    assert!(err.contains("not-an-address"), "{err}");

    let thin_alone = dir.path().join("thin.hxz");
    std::fs::copy(fixture("mixed-child-thin-lz4.hxz"), &thin_alone).unwrap();
    let err = start_failure(&[thin_alone.to_str().unwrap()], &[]);
    assert!(
        err.contains("parent archive") && err.contains("mixed-lz4.hxz"),
        "{err}"
    );
}

#[test]
fn no_archives_serves_nothing_and_says_so() {
    let mut d = spawn(&["--http", "127.0.0.1:0", "--nbd", "off"], &[]);
    d.wait_for("serving nothing");
    let port = d.port("HTTP");
    assert_eq!(get(port, "/healthz").0, 200);
    assert_eq!(get(port, "/disk").0, 404);
}

#[test]
fn sighup_reloads_snapshots_and_a_bad_config_keeps_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let head = "[http]\nlisten = [\"127.0.0.1:0\"]\n[nbd]\nlisten = []\n";
    let hello = fixture("hello-lz4.hxz");
    let cfg = write(
        dir.path(),
        "hexzd.toml",
        &format!("{head}{}", snapshot_entry("a", &hello, None)),
    );
    let mut d = spawn(&["--config", cfg.to_str().unwrap()], &[]);
    let port = d.port("HTTP");
    let hello_raw = std::fs::read(fixture("hello.txt")).unwrap();
    assert_eq!(get(port, "/snapshots/a/disk"), (200, hello_raw.clone()));
    assert_eq!(get(port, "/snapshots/b/disk").0, 404);

    // A good new config: b appears, a stays.
    let mixed = fixture("mixed-lz4.hxz");
    write(
        dir.path(),
        "hexzd.toml",
        &format!(
            "{head}{}{}",
            snapshot_entry("a", &hello, None),
            snapshot_entry("b", &mixed, None)
        ),
    );
    d.signal(libc::SIGHUP);
    d.wait_for("reloaded");
    let mixed_raw = std::fs::read(fixture("mixed.img")).unwrap();
    assert_eq!(get(port, "/snapshots/b/disk"), (200, mixed_raw.clone()));

    // A bad new config (missing archive): logged, the old set keeps serving.
    write(
        dir.path(),
        "hexzd.toml",
        &format!(
            "{head}{}",
            snapshot_entry("c", &dir.path().join("gone.hxz"), None)
        ),
    );
    d.signal(libc::SIGHUP);
    let line = d.wait_for("reload failed");
    assert!(line.contains("gone.hxz"), "{line}");
    assert_eq!(get(port, "/snapshots/b/disk"), (200, mixed_raw));
    assert_eq!(get(port, "/snapshots/a/disk"), (200, hello_raw));
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let mut d = spawn(
        &[
            "--http",
            "127.0.0.1:0",
            "--nbd",
            "127.0.0.1:0",
            fixture("hello-lz4.hxz").to_str().unwrap(),
        ],
        &[],
    );
    d.wait_for("NBD listening on ");
    let port = d.port("HTTP");
    assert_eq!(get(port, "/healthz").0, 200);
    d.signal(libc::SIGTERM);
    d.wait_for("shutting down");
    let status = d.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn host_names_and_ipv6_literals_are_accepted() {
    let mut d = spawn(
        &[
            "--http",
            "localhost:0",
            "--nbd",
            "off",
            fixture("hello-lz4.hxz").to_str().unwrap(),
        ],
        &[],
    );
    d.wait_for("HTTP listening on ");
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        let mut d6 = spawn(
            &[
                "--http",
                "[::1]:0",
                "--nbd",
                "off",
                fixture("hello-lz4.hxz").to_str().unwrap(),
            ],
            &[],
        );
        let line = d6.wait_for("HTTP listening on ");
        assert!(line.contains("[::1]:"), "{line}");
    } else {
        eprintln!("SKIP: no IPv6 loopback on this machine");
    }
}

#[test]
fn a_fifo_on_the_command_line_is_one_line_exit_1_and_no_hang() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.hxz");
    mkfifo(&fifo);
    // Nothing ever writes to the FIFO: opening it for reading used to wait forever.
    let err = start_failure(&[fifo.to_str().unwrap()], &[]);
    assert!(
        err.contains("pipe.hxz: is a FIFO, not an archive file"),
        "{err}"
    );
    // The same for the config file and the password file.
    let err = start_failure(&["--config", fifo.to_str().unwrap()], &[]);
    assert!(err.contains("is a FIFO, not a config file"), "{err}");
    let a = fixture("hello-lz4.hxz");
    let err = start_failure(
        &[
            "--password-file",
            fifo.to_str().unwrap(),
            a.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        err.contains("--password-file") && err.contains("is a FIFO"),
        "{err}"
    );
}

#[test]
fn a_directory_or_a_socket_as_archive_is_named_for_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let err = start_failure(&[&format!("{}=d", dir.path().display())], &[]);
    assert!(err.contains("is a directory, not an archive file"), "{err}");
    let sock = dir.path().join("s.hxz");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let err = start_failure(&[sock.to_str().unwrap()], &[]);
    assert!(
        err.contains("s.hxz: is a socket, not an archive file"),
        "{err}"
    );
}

#[test]
fn a_symlink_loop_as_archive_is_reported_as_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.hxz"), dir.path().join("b.hxz"));
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    let err = start_failure(&[a.to_str().unwrap()], &[]);
    assert!(err.contains("a.hxz: symbolic link loop"), "{err}");
    assert!(!err.contains("No such file"), "{err}");
}

#[test]
fn sighup_naming_a_fifo_fails_the_reload_and_sigterm_still_stops_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let head = "[http]\nlisten = [\"127.0.0.1:0\"]\n[nbd]\nlisten = []\n";
    let hello = fixture("hello-lz4.hxz");
    let cfg = write(
        dir.path(),
        "hexzd.toml",
        &format!("{head}{}", snapshot_entry("a", &hello, None)),
    );
    let mut d = spawn(&["--config", cfg.to_str().unwrap()], &[]);
    let port = d.port("HTTP");
    let hello_raw = std::fs::read(fixture("hello.txt")).unwrap();
    assert_eq!(get(port, "/snapshots/a/disk"), (200, hello_raw.clone()));

    let fifo = dir.path().join("pipe.hxz");
    mkfifo(&fifo);
    write(
        dir.path(),
        "hexzd.toml",
        &format!(
            "{head}{}{}",
            snapshot_entry("a", &hello, None),
            snapshot_entry("p", &fifo, None)
        ),
    );
    d.signal(libc::SIGHUP);
    let line = d.wait_for("reload failed");
    assert!(
        line.contains("snapshot[1].path") && line.contains("pipe.hxz: is a FIFO"),
        "{line}"
    );
    assert_eq!(get(port, "/snapshots/a/disk"), (200, hello_raw));
    assert_eq!(get(port, "/snapshots/p/disk").0, 404);

    // The same FIFO as a password file, then SIGTERM at once, without waiting for the reload.
    write(
        dir.path(),
        "hexzd.toml",
        &format!("{head}{}", snapshot_entry("a", &hello, Some(&fifo))),
    );
    d.signal(libc::SIGHUP);
    d.signal(libc::SIGTERM);
    d.wait_for("shutting down");
    let status = d.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}
