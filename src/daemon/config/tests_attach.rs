//! `[[attach]]` parsing and validation, one behaviour each.

use std::path::{Path, PathBuf};

use super::*;

/// A config file in a temporary directory with two snapshots, `a` and `b`, and `extra`
/// appended.
fn with_snapshots(extra: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a.hxz", "b.hxz"] {
        std::fs::write(dir.path().join(name), b"x").unwrap();
    }
    let cfg = dir.path().join("hexzd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[snapshot]]\nname = \"a\"\npath = \"a.hxz\"\n[[snapshot]]\nname = \"b\"\npath = \"b.hxz\"\n{extra}"
        ),
    )
    .unwrap();
    (dir, cfg)
}

fn load(extra: &str) -> Result<Config, String> {
    let (_dir, cfg) = with_snapshots(extra);
    Config::load(Some(&cfg), &Overrides::default()).map_err(|e| {
        // Every error names the file.
        let e = e.to_string();
        assert!(e.starts_with(&cfg.display().to_string()), "{e}");
        e
    })
}

#[test]
fn entries_with_defaults_and_every_key() {
    let c = load(
        "[[attach]]\nsnapshot = \"a\"\ndevice = \"/dev/nbd0\"\n\
         [[attach]]\nsnapshot = \"b\"\ndevice = \"/dev/nbd1\"\nstream = \"aux\"\ntimeout = \"30s\"\n\
         [[attach]]\nsnapshot = \"a\"\ndevice = \"/dev/nbd2\"\nstream = \"main\"\ntimeout = 5\n",
    )
    .unwrap();
    assert_eq!(
        c.attach,
        [
            AttachConfig {
                snapshot: "a".into(),
                device: "/dev/nbd0".into(),
                stream: Stream::Main,
                timeout: 0,
            },
            AttachConfig {
                snapshot: "b".into(),
                device: "/dev/nbd1".into(),
                stream: Stream::Aux,
                timeout: 30,
            },
            AttachConfig {
                snapshot: "a".into(),
                device: "/dev/nbd2".into(),
                stream: Stream::Main,
                timeout: 5,
            },
        ]
    );
}

#[test]
fn attach_unknown_snapshot_names_the_key_and_the_known_names() {
    let e = load("[[attach]]\nsnapshot = \"c\"\ndevice = \"/dev/nbd0\"\n").unwrap_err();
    assert!(
        e.ends_with("attach[0].snapshot: no snapshot is named \"c\" (the snapshots are: a, b)"),
        "{e}"
    );
    let e = Config::parse(
        "[[attach]]\nsnapshot = \"a\"\ndevice = \"/dev/nbd0\"\n",
        Path::new("/etc/hexzd/hexzd.toml"),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "/etc/hexzd/hexzd.toml: attach[0].snapshot: no snapshot is named \"a\" (there are no snapshots)"
    );
}

#[test]
fn attach_may_name_a_command_line_archive() {
    let (_dir, cfg) = with_snapshots("[[attach]]\nsnapshot = \"cli\"\ndevice = \"/dev/nbd3\"\n");
    let ov = Overrides {
        archives: vec!["/srv/x.hxz=cli".into()],
        ..Overrides::default()
    };
    let c = Config::load(Some(&cfg), &ov).unwrap();
    assert_eq!(c.attach[0].snapshot, "cli");
    assert_eq!(c.attach[0].device, Path::new("/dev/nbd3"));
}

#[test]
fn attach_duplicate_device_is_an_error() {
    let e = load(
        "[[attach]]\nsnapshot = \"a\"\ndevice = \"/dev/nbd0\"\n\
         [[attach]]\nsnapshot = \"b\"\ndevice = \"/dev//nbd0\"\n",
    )
    .unwrap_err();
    assert!(
        e.contains("attach[1].device: ") && e.contains("already used by attach[0]"),
        "{e}"
    );
}

#[test]
fn attach_device_must_be_an_absolute_dev_path() {
    for device in [
        "nbd0",
        "dev/nbd0",
        "/tmp/nbd0",
        "/dev",
        "/dev/",
        "/dev/../tmp/x",
        "/",
    ] {
        let e = load(&format!(
            "[[attach]]\nsnapshot = \"a\"\ndevice = \"{device}\"\n"
        ))
        .unwrap_err();
        assert!(
            e.contains("attach[0].device: ") && e.contains("give an absolute path under /dev"),
            "{device}: {e}"
        );
    }
    // Devices are never relative to the config file's directory.
    let c = load("[[attach]]\nsnapshot = \"a\"\ndevice = \"/dev/disk/by-id/x\"\n").unwrap();
    assert_eq!(c.attach[0].device, Path::new("/dev/disk/by-id/x"));
}

#[test]
fn attach_bad_stream_timeout_and_keys_are_named() {
    for (entry, needle) in [
        (
            "stream = \"disk\"",
            "attach[0].stream: \"disk\" is not a stream",
        ),
        (
            "timeout = \"500ms\"",
            "attach[0].timeout: the kernel counts whole seconds",
        ),
        ("timeout = \"soon\"", "attach[0].timeout: "),
        (
            "timeout = 99999999999",
            "attach[0].timeout: 99999999999 s is longer than a year",
        ),
        ("timeout = -1", "timeout"),
        ("password_file = \"x\"", "password_file"),
    ] {
        let e = load(&format!(
            "[[attach]]\nsnapshot = \"a\"\ndevice = \"/dev/nbd0\"\n{entry}\n"
        ))
        .unwrap_err();
        assert!(e.contains(needle), "{entry}: {e}");
    }
    // Both keys are required.
    let e = load("[[attach]]\nsnapshot = \"a\"\n").unwrap_err();
    assert!(e.contains("device"), "{e}");
    let e = load("[[attach]]\ndevice = \"/dev/nbd0\"\n").unwrap_err();
    assert!(e.contains("snapshot"), "{e}");
}
