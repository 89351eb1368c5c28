//! `hexzd serve` under a service manager (systemd.md §2, §3, §8): the sd_notify sequence on a
//! private `NOTIFY_SOCKET` (readiness, reload, failed reload, watchdog pings that stop when an
//! accept loop wedges, stop), and socket activation by `systemd-socket-activate` (named
//! sockets) and by libnbd's `nbdinfo -- [ … ]` (one unnamed socket).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod systemd_support;

use std::process::{Command, Stdio};
use std::time::Duration;

use systemd_support::{Daemon, Notify, config, fixture, have, serve_command};

#[test]
fn notify_sequence_ready_reload_failed_reload_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hexzd.toml");
    let hello = fixture("hello-lz4.hxz");
    let mixed = fixture("mixed-lz4.hxz");
    std::fs::write(&cfg, config(&[("a", &hello)], "")).unwrap();
    let notify = Notify::bind();
    let mut cmd = serve_command();
    cmd.args(["--config", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify.path);
    let mut d = Daemon::spawn(cmd);

    let ready = notify.expect("READY=1");
    assert!(
        ready.contains("STATUS=serving 1 snapshot(s): a (default)"),
        "{ready}"
    );
    // Readiness comes after the listeners are up: the readiness lines are already printed.
    d.wait_for("HTTP listening on ");
    d.wait_for("NBD listening on ");

    // A good reload: RELOADING=1 and MONOTONIC_USEC in one datagram, then READY=1.
    std::fs::write(&cfg, config(&[("a", &hello), ("b", &mixed)], "")).unwrap();
    d.signal(libc::SIGHUP);
    let reloading = notify.expect("RELOADING=1");
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC in the RELOADING=1 datagram")
        .parse()
        .unwrap();
    assert!(usec > 0);
    let ready = notify.expect("READY=1");
    assert!(
        ready.contains("serving 2 snapshot(s)") && ready.contains("last reload: ok"),
        "{ready}"
    );

    // A failed reload: still READY=1, with the failure in STATUS=.
    std::fs::write(&cfg, "[http]\nlisten_on = []\n").unwrap();
    d.signal(libc::SIGHUP);
    notify.expect("RELOADING=1");
    let ready = notify.expect("READY=1");
    assert!(
        ready.contains("last reload: FAILED") && ready.contains("listen_on"),
        "{ready}"
    );
    assert!(ready.contains("serving 2 snapshot(s)"), "{ready}");

    d.signal(libc::SIGTERM);
    let stopping = notify.expect("STOPPING=1");
    assert!(stopping.contains("STATUS=stopping"), "{stopping}");
    assert!(d.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn no_notify_socket_in_the_environment_means_nothing_sent_and_no_error() {
    let mut cmd = serve_command();
    cmd.args(["--http", "127.0.0.1:0", "--nbd", "off"])
        .arg(fixture("hello-lz4.hxz"));
    let mut d = Daemon::spawn(cmd);
    d.wait_for("HTTP listening on ");
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(30)).success());
    assert!(
        !d.lines().iter().any(|l| l.contains("sd_notify")),
        "{:?}",
        d.lines()
    );
}

#[test]
fn watchdog_pings_while_accept_loops_answer_and_stop_when_one_wedges() {
    let notify = Notify::bind();
    let mut cmd = serve_command();
    cmd.args(["--http", "127.0.0.1:0", "--nbd", "127.0.0.1:0"])
        .arg(fixture("hello-lz4.hxz"))
        .env("HEXZD_LOG", "debug")
        .env("NOTIFY_SOCKET", &notify.path)
        // 200 ms: a ping every 100 ms.
        .env("WATCHDOG_USEC", "200000")
        // Test hook (debug builds): the NBD accept loop answers 3 checks, then wedges.
        .env("HEXZD_TEST_WEDGE_ACCEPT", "nbd:3");
    let mut d = Daemon::spawn(cmd);
    notify.expect("READY=1");
    for _ in 0..3 {
        notify.expect("WATCHDOG=1");
    }
    d.wait_for("NBD accept loop: wedged on purpose");
    d.wait_for("watchdog: accept loop(s) NBD did not answer");
    // From here on every check fails: wait for two more failed checks, then look at what
    // arrived meanwhile.
    d.wait_for("failed too: no answer from NBD");
    d.wait_for("failed too: no answer from NBD");
    let mut since = Vec::new();
    while let Some(m) = notify.recv_within(Duration::from_millis(1)) {
        since.push(m);
    }
    // A ping already on its way when the loop wedged may be in the queue; none after it.
    let pings = since.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(pings <= 1, "pings after the wedge: {since:?}");
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn watchdog_pid_of_another_process_means_no_pings() {
    let notify = Notify::bind();
    let mut cmd = serve_command();
    cmd.args(["--http", "127.0.0.1:0", "--nbd", "off"])
        .arg(fixture("hello-lz4.hxz"))
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "20000")
        .env("WATCHDOG_PID", "1");
    let mut d = Daemon::spawn(cmd);
    notify.expect("READY=1");
    d.signal(libc::SIGTERM);
    notify.expect("STOPPING=1");
    assert!(d.wait_exit(Duration::from_secs(30)).success());
    // Pings every 10 ms would have filled the queue by now; there must be none at all.
    while let Some(m) = notify.recv_within(Duration::from_millis(1)) {
        assert!(!m.contains("WATCHDOG=1"), "{m}");
    }
}

/// Waits (bounded) until `path` exists (a socket `systemd-socket-activate` binds).
fn wait_for_socket(path: &std::path::Path, child: &mut std::process::Child) {
    let deadline = std::time::Instant::now() + systemd_support::LIMIT;
    while !path.exists() {
        assert!(child.try_wait().unwrap().is_none(), "activator exited");
        assert!(std::time::Instant::now() < deadline, "no {path:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn systemd_socket_activate_with_named_sockets_answers_curl_and_nbdinfo() {
    if !have("systemd-socket-activate") || !have("curl") || !have("nbdinfo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (http, nbd) = (dir.path().join("http.sock"), dir.path().join("nbd.sock"));
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(&http)
        .arg("-l")
        .arg(&nbd)
        .arg("--fdname=http:nbd")
        .arg("-E")
        .arg("HEXZD_LOG=info")
        .arg(env!("CARGO_BIN_EXE_hexzd"))
        .arg("serve")
        .args(["--http", "127.0.0.1:1", "--nbd", "127.0.0.1:1"])
        .arg(fixture("hello-lz4.hxz"));
    let mut d = Daemon::spawn(cmd);
    wait_for_socket(&nbd, &mut d.child);

    // The first connection makes the activator exec hexzd with both sockets.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "--unix-socket"])
        .arg(&http)
        .arg("http://x/disk")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, std::fs::read(fixture("hello.txt")).unwrap());
    // Passed sockets replace the configured addresses (127.0.0.1:1 would fail to bind).
    let line = d.wait_for("HTTP listening on ");
    assert!(line.contains("http.sock"), "{line}");
    let line = d.wait_for("NBD listening on ");
    assert!(line.contains("nbd.sock"), "{line}");

    let out = Command::new("nbdinfo")
        .arg("--size")
        .arg(format!("nbd+unix:///?socket={}", nbd.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1080");

    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn socket_activation_with_an_unknown_name_is_one_clear_error() {
    if !have("systemd-socket-activate") || !have("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("x.sock");
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(&sock)
        .arg("--fdname=hexzd.socket")
        .arg(env!("CARGO_BIN_EXE_hexzd"))
        .args(["serve", "--http", "off", "--nbd", "off"])
        .arg(fixture("hello-lz4.hxz"));
    let mut d = Daemon::spawn(cmd);
    wait_for_socket(&sock, &mut d.child);
    // Trigger the exec; the connection is refused when hexzd exits.
    let _ = Command::new("curl")
        .args(["-s", "--max-time", "60", "--unix-socket"])
        .arg(&sock)
        .arg("http://x/disk")
        .output();
    let status = d.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1));
    let err = d.wait_for("socket activation");
    assert!(
        err.contains("\"hexzd.socket\"") && err.contains("FileDescriptorName"),
        "{err}"
    );
}

#[test]
fn nbdinfo_runs_hexzd_with_one_unnamed_socket_and_activated_protocol_nbd() {
    if !have("nbdinfo") {
        return;
    }
    let out = Command::new("nbdinfo")
        .args(["--size", "--", "["])
        .arg(env!("CARGO_BIN_EXE_hexzd"))
        .args(["serve", "--activated-protocol", "nbd", "--http", "off"])
        .arg(fixture("mixed-lz4.hxz"))
        .arg("]")
        .env("HEXZD_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let size = std::fs::metadata(fixture("mixed.img")).unwrap().len();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        size.to_string()
    );

    // Without the flag, the unnamed socket is one clear error.
    let out = Command::new("nbdinfo")
        .args(["--size", "--", "["])
        .arg(env!("CARGO_BIN_EXE_hexzd"))
        .args(["serve", "--http", "off"])
        .arg(fixture("mixed-lz4.hxz"))
        .arg("]")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--activated-protocol"), "{err}");
}

#[test]
fn an_encrypted_snapshot_extends_the_start_timeout_before_ready() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "correct-horse-battery\n").unwrap();
    let cfg = dir.path().join("hexzd.toml");
    let mut text = config(&[("enc", &fixture("mixed-enc-lz4.hxz"))], "");
    text.push_str(&format!("password_file = {:?}\n", pw.display().to_string()));
    std::fs::write(&cfg, text).unwrap();
    let notify = Notify::bind();
    let mut cmd = serve_command();
    cmd.args(["--config", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify.path);
    let mut d = Daemon::spawn(cmd);
    // Key derivation is slow: systemd is asked for more time before READY=1.
    let extend = notify.expect("EXTEND_TIMEOUT_USEC=");
    assert!(
        extend.contains("EXTEND_TIMEOUT_USEC=30000000")
            && extend.contains("opening snapshot 1 of 1: enc"),
        "{extend}"
    );
    notify.expect("READY=1");
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(30)).success());
}
