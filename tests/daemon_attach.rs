//! `[[attach]]` entries of `hexzd serve` where no kernel device can be used (this machine, or
//! any machine without the nbd module): a failing entry stops the start-up with one line naming
//! the device and the reason and no `READY=1`; on reload it fails alone, in `STATUS=`, while
//! the daemon keeps serving; `--check-config` lists the entries and names a bad one. Attaching
//! for real runs in the VM (tests/kernel_proxy.sh, tests/systemd_vm.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod systemd_support;

use std::time::Duration;

use systemd_support::{Daemon, Notify, config, fixture, serve_command};

/// A device path that exists on no machine.
const NO_SUCH: &str = "/dev/hexzd-test-no-such-nbd";

fn attach_entry(snapshot: &str, device: &str) -> String {
    format!("[[attach]]\nsnapshot = {snapshot:?}\ndevice = {device:?}\n")
}

#[test]
fn a_device_that_cannot_be_attached_stops_the_start_up_with_one_line_and_no_ready() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hexzd.toml");
    let hello = fixture("hello-lz4.hxz");
    let text = config(&[("a", &hello)], "") + &attach_entry("a", NO_SUCH);
    std::fs::write(&cfg, text).unwrap();
    let notify = Notify::bind();
    let mut cmd = serve_command();
    cmd.args(["--config", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify.path);
    let mut d = Daemon::spawn(cmd);
    let status = d.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1));
    let lines = d.lines();
    let last = lines.last().unwrap();
    // Under a service manager the hint names the drop-in as well as the module.
    assert!(
        last.starts_with(&format!(
            "hexzd: cannot attach snapshot \"a\" to {NO_SUCH}: can't open nbd device {NO_SUCH}: \
             No such file or directory; is the nbd module loaded? Under systemd, \
             PrivateDevices=yes also hides /dev/nbd*: install the [[attach]] drop-in"
        )),
        "{lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains(NO_SUCH)).count(),
        1,
        "{lines:?}"
    );
    // The service manager hears why, and never READY=1.
    let mut got = Vec::new();
    while let Some(m) = notify.recv_within(Duration::from_millis(200)) {
        got.push(m);
    }
    assert!(!got.iter().any(|m| m.contains("READY=1")), "{got:?}");
    assert!(
        got.iter()
            .any(|m| m.contains("STATUS=failed to start: cannot attach snapshot")),
        "{got:?}"
    );
}

#[test]
fn a_failing_entry_on_reload_fails_alone_and_shows_in_status() {
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
    notify.expect("READY=1");
    let port = d.port("HTTP");

    let text = config(&[("a", &hello), ("b", &mixed)], "") + &attach_entry("b", "/dev/null");
    std::fs::write(&cfg, text).unwrap();
    d.signal(libc::SIGHUP);
    notify.expect("RELOADING=1");
    let ready = notify.expect("READY=1");
    assert!(
        ready.contains("serving 2 snapshot(s)")
            && ready.contains(
                "last reload: snapshots ok, [[attach]] FAILED: cannot attach snapshot \"b\" to \
                 /dev/null: /dev/null is not an NBD device (not a block device)"
            ),
        "{ready}"
    );
    d.wait_for("reload: cannot attach snapshot \"b\" to /dev/null");
    // The new snapshot set is served all the same.
    let (status, _, _) = systemd_support::get(port, "/snapshots/b/disk", Some((0, 0)));
    assert_eq!(status, 206);

    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn check_config_lists_the_entries_and_names_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hexzd.toml");
    let hello = fixture("hello-lz4.hxz");
    let text = config(&[("a", &hello)], "")
        + &attach_entry("a", "/dev/nbd7")
        + "stream = \"aux\"\n"
        + &attach_entry("a", "/dev/nbd8");
    std::fs::write(&cfg, text).unwrap();
    let out = serve_command()
        .args(["--check-config", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("configuration OK; serving 1 snapshot(s): a (default); attaching a (aux) on /dev/nbd7, a on /dev/nbd8"),
        "{said}"
    );

    std::fs::write(
        &cfg,
        config(&[("a", &hello)], "") + &attach_entry("z", "/dev/nbd7"),
    )
    .unwrap();
    let out = serve_command()
        .args(["--check-config", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim_end(),
        format!(
            "hexzd: {}: attach[0].snapshot: no snapshot is named \"z\" (the snapshots are: a)",
            cfg.display()
        )
    );
}

#[test]
fn a_daemon_with_only_attach_entries_needs_no_listener() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hexzd.toml");
    let hello = fixture("hello-lz4.hxz");
    let text = format!(
        "[http]\nlisten = []\n[nbd]\nlisten = []\n[[snapshot]]\nname = \"a\"\npath = {:?}\n{}",
        hello.display().to_string(),
        attach_entry("a", NO_SUCH)
    );
    std::fs::write(&cfg, text).unwrap();
    let mut cmd = serve_command();
    cmd.args(["--config", cfg.to_str().unwrap()]);
    let mut d = Daemon::spawn(cmd);
    assert_eq!(d.wait_exit(Duration::from_secs(30)).code(), Some(1));
    // Past the listeners (none, and that is fine) to the attachment itself.
    let lines = d.lines();
    assert!(
        lines.last().unwrap().starts_with(&format!(
            "hexzd: cannot attach snapshot \"a\" to {NO_SUCH}: "
        )),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("nothing to listen on")),
        "{lines:?}"
    );
}
