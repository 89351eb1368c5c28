//! `[[attach]]` bookkeeping without a kernel device: the reload plan, messages, and the
//! failures a machine without the nbd module gives.

use std::path::Path;

use super::*;
use crate::daemon::config::{Config, Overrides};
use crate::daemon::snapshots::open_catalog;
use crate::store::{Engine, EngineConfig};

fn key(device: &str, snapshot: &str, path: &str) -> Key {
    Key {
        device: device.into(),
        snapshot: snapshot.into(),
        path: path.into(),
        stream: Stream::Main,
        timeout: 0,
    }
}

#[test]
fn plan_keeps_unchanged_entries_and_replaces_changed_ones() {
    let a0 = key("/dev/nbd0", "a", "/s/a.hxz");
    let b1 = key("/dev/nbd1", "b", "/s/b.hxz");
    let c2 = key("/dev/nbd2", "c", "/s/c.hxz");
    // Unchanged: nothing to do.
    let p = plan(&[a0.clone(), b1.clone()], &[b1.clone(), a0.clone()]);
    assert_eq!(p.keep, [a0.clone(), b1.clone()]);
    assert!(p.stop.is_empty() && p.start.is_empty());
    // Removed, kept, added.
    let p = plan(&[a0.clone(), b1.clone()], &[b1.clone(), c2.clone()]);
    assert_eq!(
        (p.keep, p.stop, p.start),
        (vec![b1.clone()], vec![a0.clone()], vec![c2])
    );
    // Each part of the key counts: snapshot name, archive path, stream, timeout.
    let changed = [
        key("/dev/nbd0", "other", "/s/a.hxz"),
        key("/dev/nbd0", "a", "/s/moved.hxz"),
        Key {
            stream: Stream::Aux,
            ..a0.clone()
        },
        Key {
            timeout: 30,
            ..a0.clone()
        },
    ];
    for new in changed {
        let p = plan(std::slice::from_ref(&a0), std::slice::from_ref(&new));
        assert_eq!(p.stop, std::slice::from_ref(&a0), "{new:?}");
        assert_eq!(p.start, std::slice::from_ref(&new));
        assert!(p.keep.is_empty());
    }
    // Nothing running (start-up, or every entry ended): everything starts.
    let p = plan(&[], std::slice::from_ref(&a0));
    assert_eq!(p.start, [a0]);
}

#[test]
fn key_takes_the_archive_path_from_the_snapshot() {
    let snapshots = [SnapshotConfig {
        name: "a".into(),
        path: "/s/a.hxz".into(),
        default: false,
        password: None,
    }];
    let entry = AttachConfig {
        snapshot: "a".into(),
        device: "/dev/nbd3".into(),
        stream: Stream::Aux,
        timeout: 7,
    };
    assert_eq!(
        Key::of(&entry, &snapshots),
        Key {
            stream: Stream::Aux,
            timeout: 7,
            ..key("/dev/nbd3", "a", "/s/a.hxz")
        }
    );
    assert_eq!(
        describe_entries(std::slice::from_ref(&entry)).as_deref(),
        Some("attaching a (aux) on /dev/nbd3")
    );
    assert_eq!(describe_entries(&[]), None);
}

#[test]
fn failure_reasons_say_what_to_do() {
    let open = |errno| {
        AttachError::Device(KernelError::Open {
            device: "/dev/nbd0".into(),
            errno,
        })
    };
    assert_eq!(
        reason(&open(Errno::ENOENT), &[], false),
        "can't open nbd device /dev/nbd0: No such file or directory; is the nbd module loaded (modprobe nbd)?"
    );
    let r = reason(&open(Errno::ENOENT), &[], true);
    assert!(
        r.contains("PrivateDevices=yes") && r.contains("[[attach]] drop-in"),
        "{r}"
    );
    // By hand the kernel module's own hint is enough; under systemd the drop-in is named.
    let r = reason(&open(Errno::EACCES), &[], false);
    assert_eq!(
        r,
        "can't open nbd device /dev/nbd0: Permission denied (needs root or CAP_SYS_ADMIN)"
    );
    let eperm = AttachError::Device(KernelError::Ioctl {
        device: "/dev/nbd0".into(),
        op: "NBD_CLEAR_QUE",
        errno: Errno::EPERM,
    });
    let r = reason(&eperm, &[], true);
    assert!(
        r.starts_with("nbd device /dev/nbd0: NBD_CLEAR_QUE failed: Operation not permitted (needs root or CAP_SYS_ADMIN); install the [[attach]] drop-in"),
        "{r}"
    );
    let netlink = AttachError::Uevents(io::Error::from_raw_os_error(libc::EAFNOSUPPORT));
    assert!(reason(&netlink, &[], true).contains("[[attach]] drop-in"));
    // A session that ended early: what it said is the reason.
    let ended = AttachError::Ended("/dev/nbd0".into());
    assert_eq!(
        reason(
            &ended,
            &["nbd device /dev/nbd0: the export is empty (0 bytes)".into()],
            true
        ),
        "nbd device /dev/nbd0: the export is empty (0 bytes)"
    );
    assert_eq!(
        reason(&ended, &[], false),
        "the session ended before the device had its capacity"
    );
}

#[test]
fn report_sink_keeps_lines_until_live() {
    let sink = ReportSink::default();
    let mut w = sink.clone();
    w.write_all(b"attach /dev/nbd0: first ").unwrap();
    w.write_all(b"line\nsecond\n").unwrap();
    assert_eq!(sink.captured(), ["attach /dev/nbd0: first line", "second"]);
    sink.go_live();
    w.write_all(b"logged\n").unwrap();
    assert!(sink.captured().is_empty());
}

/// A config with snapshot `a` (a real archive) and `[[attach]]` entries on `devices`.
fn config(devices: &[&str]) -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().unwrap();
    let hello = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hexz-0.8.2/hello-lz4.hxz");
    let mut text = format!(
        "[[snapshot]]\nname = \"a\"\npath = {:?}\n",
        hello.display().to_string()
    );
    for d in devices {
        text += &format!("[[attach]]\nsnapshot = \"a\"\ndevice = \"{d}\"\n");
    }
    let file = dir.path().join("hexzd.toml");
    std::fs::write(&file, text).unwrap();
    let c = Config::load(Some(&file), &Overrides::default()).unwrap();
    (dir, c)
}

#[test]
fn start_all_fails_on_the_first_device_that_cannot_be_attached() {
    let (_dir, c) = config(&["/dev/hexzd-test-no-such-nbd", "/dev/null"]);
    let engine = Engine::new(EngineConfig::default()).unwrap();
    let catalog = open_catalog(&c.snapshots, &engine).unwrap();
    let (tx, _rx) = crossbeam_channel::unbounded();
    let set = Attachments::new(tx, false);
    let e = set
        .start_all(&c.attach, &c.snapshots, &catalog)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "cannot attach snapshot \"a\" to /dev/hexzd-test-no-such-nbd: can't open nbd device \
         /dev/hexzd-test-no-such-nbd: No such file or directory; is the nbd module loaded \
         (modprobe nbd)?"
    );
    assert_eq!(set.describe(), None);

    // A reload reports each failure and leaves the set as it was.
    let (tx, _rx) = crossbeam_channel::unbounded();
    let set = Attachments::new(tx, false);
    let failures = set.apply(&c.attach, &c.snapshots, &catalog);
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert_eq!(
        failures[1],
        "cannot attach snapshot \"a\" to /dev/null: /dev/null is not an NBD device (not a block device)"
    );
    assert_eq!(set.describe(), None);
    assert!(!set.reap());
    set.stop_all();
    assert!(set.apply(&c.attach, &c.snapshots, &catalog).is_empty());
}
