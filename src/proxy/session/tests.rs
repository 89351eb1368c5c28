//! The session controller against a fake device: ioctl order and arguments, hook timing and
//! failure rules, messages and exit statuses per phase (nbd-proxy.md §7–§10).

use std::io::Read;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use super::*;
use crate::kernel::DevNum;

#[derive(Default)]
struct FakeState {
    calls: Vec<String>,
    capacity: u64,
    clears: u64,
    running: bool,
    detached: bool,
}

/// Records every ioctl; `NBD_DO_IT` blocks until a later `NBD_CLEAR_SOCK` or [`Fake::detach`].
struct Fake {
    path: PathBuf,
    fail: Option<(&'static str, Errno)>,
    state: Mutex<FakeState>,
    cv: Condvar,
}

impl Fake {
    fn new(fail: Option<(&'static str, Errno)>) -> Arc<Fake> {
        Arc::new(Fake {
            path: "/dev/nbd9".into(),
            fail,
            state: Mutex::default(),
            cv: Condvar::new(),
        })
    }

    fn call(&self, what: String) -> Result<(), Errno> {
        let op = what.split(' ').next().unwrap_or_default().to_string();
        self.state.lock().unwrap().calls.push(what);
        match self.fail {
            Some((f, e)) if f == op => Err(e),
            _ => Ok(()),
        }
    }

    fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Waits until `NBD_DO_IT` is running, then gives the device its capacity as the kernel
    /// does inside it.
    fn wait_running_and_set_capacity(&self, sectors: u64) {
        let mut s = self.state.lock().unwrap();
        while !s.running {
            s = self.cv.wait(s).unwrap();
        }
        s.capacity = sectors;
    }

    /// An outside `nbd-client -d`: DO_IT returns.
    fn detach(&self) {
        self.state.lock().unwrap().detached = true;
        self.cv.notify_all();
    }
}

impl Device for Fake {
    fn path(&self) -> &Path {
        &self.path
    }
    fn devnum(&self) -> DevNum {
        DevNum {
            major: 43,
            minor: 144,
        }
    }
    fn set_blksize(&self, bytes: u64) -> Result<(), Errno> {
        self.call(format!("SET_BLKSIZE {bytes}"))
    }
    fn set_size_blocks(&self, blocks: u64) -> Result<(), Errno> {
        self.call(format!("SET_SIZE_BLOCKS {blocks}"))
    }
    fn clear_sock(&self) -> Result<(), Errno> {
        let r = self.call("CLEAR_SOCK".into());
        let mut s = self.state.lock().unwrap();
        s.clears += 1;
        s.capacity = 0;
        self.cv.notify_all();
        r
    }
    fn clear_que(&self) -> Result<(), Errno> {
        self.call("CLEAR_QUE".into())
    }
    fn set_flags(&self, flags: u16) -> Result<(), Errno> {
        self.call(format!("SET_FLAGS {flags:#x}"))
    }
    fn set_read_only(&self, read_only: bool) -> Result<(), Errno> {
        self.call(format!("BLKROSET {}", u8::from(read_only)))
    }
    fn set_timeout(&self, seconds: u32) -> Result<(), Errno> {
        self.call(format!("SET_TIMEOUT {seconds}"))
    }
    fn set_sock(&self, _sock: BorrowedFd<'_>) -> Result<(), Errno> {
        self.call("SET_SOCK".into())
    }
    fn do_it(&self) -> Result<(), Errno> {
        self.call("DO_IT".into())?;
        let mut s = self.state.lock().unwrap();
        let clears = s.clears;
        s.running = true;
        self.cv.notify_all();
        while s.clears == clears && !s.detached {
            s = self.cv.wait(s).unwrap();
        }
        s.running = false;
        Ok(())
    }
    fn disconnect(&self) -> Result<(), Errno> {
        self.call("DISCONNECT".into())
    }
    fn capacity_sectors(&self) -> std::io::Result<u64> {
        Ok(self.state.lock().unwrap().capacity)
    }
}

/// Reports a fixed export, then holds its socket until the session shuts it down.
struct FakeBackend(Result<Export, String>);

impl Backend for FakeBackend {
    fn connect(&mut self) -> Result<Export, String> {
        self.0.clone()
    }
    fn serve(self: Box<Self>, mut sock: UnixStream, events: Sender<Event>) {
        let mut buf = [0u8; 64];
        while sock.read(&mut buf).is_ok_and(|n| n > 0) {}
        let _ = events.send(Event::BackendEnded(RelayEnd::Eof));
    }
}

const EXPORT: Export = Export {
    size: 4096,
    flags: 0x0003,
    read_only: true,
};

/// A running session on a fake device, driven by the test through `tx`.
struct Harness {
    fake: Arc<Fake>,
    tx: Sender<Event>,
    run: JoinHandle<(End, Vec<Notice>)>,
    messages: Arc<Mutex<Vec<u8>>>,
    _dir: tempfile::TempDir,
    fifo: PathBuf,
}

/// A `Write` into a shared buffer.
struct Shared(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `hook`: the body of the state hook script; `$FIFO` is a FIFO the test reads, which makes
/// each hook run a synchronisation point (no sleeps).
fn start(
    fake: Arc<Fake>,
    backend: Result<Export, String>,
    timeout: u32,
    hook: Option<&str>,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let hook = hook.map(|body| {
        let p = dir.path().join("state");
        let body = body.replace("$FIFO", &fifo.display().to_string());
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        StateHook::new(p, "cfg")
    });
    let messages = Arc::new(Mutex::new(Vec::new()));
    let report = Reporter::new("nbd-proxy", Box::new(Shared(Arc::clone(&messages))));
    let (tx, rx) = crossbeam_channel::unbounded();
    let spec = Spec {
        device: Arc::clone(&fake),
        timeout,
        hook,
        wording: Wording::NbdProxy,
    };
    let rtx = tx.clone();
    let run = std::thread::spawn(move || {
        let mut notices = Vec::new();
        let end = run(
            &spec,
            Box::new(FakeBackend(backend)),
            None,
            &rtx,
            &rx,
            &report,
            &mut |n| notices.push(n),
        );
        (end, notices)
    });
    Harness {
        fake,
        tx,
        run,
        messages,
        _dir: dir,
        fifo,
    }
}

impl Harness {
    /// Reads what one hook run wrote to the FIFO.
    fn hook_said(&self) -> String {
        let mut s = String::new();
        std::fs::File::open(&self.fifo)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        s
    }

    fn finish(self) -> (End, Vec<Notice>, String, Vec<String>) {
        let (end, notices) = self.run.join().unwrap();
        let msgs = String::from_utf8(self.messages.lock().unwrap().clone()).unwrap();
        (end, notices, msgs, self.fake.calls())
    }
}

const HOOK_LOG: &str = r#"echo "$1 $2" > $FIFO"#;

#[test]
fn ioctls_in_nbd_client_order_and_a_clean_teardown_on_sigterm() {
    let h = start(Fake::new(None), Ok(EXPORT), 30, None);
    h.fake.wait_running_and_set_capacity(8);
    h.tx.send(Event::Change).unwrap();
    h.tx.send(Event::Stop).unwrap();
    let (end, notices, msgs, calls) = h.finish();
    assert_eq!(end, End::Stopped);
    assert_eq!(end.status(), 0);
    assert_eq!(notices, [Notice::Ready, Notice::Stopping]);
    assert_eq!(msgs, "");
    assert_eq!(
        calls,
        [
            "SET_BLKSIZE 512",
            "SET_SIZE_BLOCKS 8",
            "CLEAR_SOCK",
            "SET_FLAGS 0x3",
            "BLKROSET 1",
            "SET_TIMEOUT 30",
            "SET_SOCK",
            "DO_IT",
            // teardown: clear while DO_IT runs, join it, clear again
            "CLEAR_SOCK",
            "CLEAR_SOCK",
            "CLEAR_QUE",
        ]
    );
}

#[test]
fn no_timeout_ioctl_for_a_zero_timeout_and_read_write_exports_stay_writable() {
    let export = Export {
        read_only: false,
        flags: 0x0001,
        ..EXPORT
    };
    let h = start(Fake::new(None), Ok(export), 0, None);
    h.fake.wait_running_and_set_capacity(8);
    h.tx.send(Event::Stop).unwrap();
    let (_, notices, _, calls) = h.finish();
    assert!(
        !calls.iter().any(|c| c.starts_with("SET_TIMEOUT")),
        "{calls:?}"
    );
    assert!(calls.contains(&"BLKROSET 0".to_string()));
    // Stopped before any change event: never ready, the stop hook moment still comes.
    assert_eq!(notices, [Notice::Stopping]);
}

#[test]
fn start_runs_once_on_the_first_change_with_capacity_and_stop_runs_at_the_end() {
    let h = start(Fake::new(None), Ok(EXPORT), 30, Some(HOOK_LOG));
    // Before the device is configured and while its capacity is 0, a change is not enough.
    h.tx.send(Event::Change).unwrap();
    h.fake.wait_running_and_set_capacity(0);
    h.tx.send(Event::Change).unwrap();
    h.fake.wait_running_and_set_capacity(8);
    h.tx.send(Event::Change).unwrap();
    assert_eq!(h.hook_said(), "start cfg\n");
    h.tx.send(Event::Change).unwrap();
    h.tx.send(Event::Stop).unwrap();
    assert_eq!(h.hook_said(), "stop cfg\n");
    let (end, notices, msgs, _) = h.finish();
    assert_eq!((end, msgs.as_str()), (End::Stopped, ""));
    assert_eq!(notices, [Notice::Ready, Notice::Stopping]);
}

#[test]
fn a_failing_start_hook_ends_the_session_with_status_0() {
    let body = format!("{HOOK_LOG}\n[ \"$1\" = start ] && exit 3\nexit 0");
    let h = start(Fake::new(None), Ok(EXPORT), 30, Some(&body));
    h.fake.wait_running_and_set_capacity(8);
    h.tx.send(Event::Change).unwrap();
    assert_eq!(h.hook_said(), "start cfg\n");
    assert_eq!(h.hook_said(), "stop cfg\n");
    let (end, _, msgs, calls) = h.finish();
    assert_eq!(end, End::HookFailed);
    assert_eq!(end.status(), 0);
    assert_eq!(msgs, "nbd-proxy: state hook failed (rc: 3); exiting\n");
    assert_eq!(calls.last().map(String::as_str), Some("CLEAR_QUE"));
}

#[test]
fn a_failing_stop_hook_is_reported_and_changes_nothing() {
    let dir_hook = format!("{HOOK_LOG}\n[ \"$1\" = stop ] && exit 1\nexit 0");
    let h = start(Fake::new(None), Ok(EXPORT), 30, Some(&dir_hook));
    h.fake.wait_running_and_set_capacity(8);
    h.tx.send(Event::BackendEnded(RelayEnd::Eof)).unwrap();
    assert_eq!(h.hook_said(), "stop cfg\n");
    let (end, _, msgs, _) = h.finish();
    assert_eq!(end, End::Eof);
    assert!(msgs.starts_with("nbd-proxy: hook /"), "{msgs}");
    assert!(msgs.ends_with("/state failed\n"), "{msgs}");
}

#[test]
fn a_failed_handshake_is_nbd_client_stopping_with_rc_1() {
    let h = start(
        Fake::new(None),
        Err("the NBD server closed the connection during the handshake".into()),
        30,
        Some(HOOK_LOG),
    );
    assert_eq!(h.hook_said(), "stop cfg\n");
    let (end, notices, msgs, calls) = h.finish();
    assert_eq!(end, End::SetupFailed);
    assert_eq!(end.status(), 0);
    assert_eq!(notices, [Notice::Stopping]);
    assert_eq!(
        msgs,
        "nbd-proxy: nbd device /dev/nbd9: the NBD server closed the connection during the \
         handshake\nnbd-proxy: nbd client stopped (rc: 1); exiting\n"
    );
    // The device was never touched.
    assert!(calls.is_empty(), "{calls:?}");
}

#[test]
fn an_ioctl_failure_clears_the_half_configured_device() {
    let h = start(
        Fake::new(Some(("SET_SOCK", Errno::EBUSY))),
        Ok(EXPORT),
        30,
        None,
    );
    let (end, _, msgs, calls) = h.finish();
    assert_eq!(end, End::SetupFailed);
    assert_eq!(
        msgs,
        "nbd-proxy: nbd device /dev/nbd9: NBD_SET_SOCK failed: Device or resource busy (the \
         device is in use by another process)\nnbd-proxy: nbd client stopped (rc: 1); exiting\n"
    );
    let tail: Vec<_> = calls.iter().rev().take(3).rev().cloned().collect();
    assert_eq!(tail, ["SET_SOCK", "CLEAR_SOCK", "CLEAR_QUE"]);
    assert!(!calls.contains(&"DO_IT".to_string()));
}

#[test]
fn sizes_the_kernel_cannot_hold_are_refused_before_any_ioctl() {
    let odd = Export {
        size: 1000,
        ..EXPORT
    };
    let h = start(Fake::new(None), Ok(odd), 30, None);
    let (end, _, msgs, calls) = h.finish();
    assert_eq!(end, End::SetupFailed);
    assert!(msgs.contains("not a multiple of 512"), "{msgs}");
    assert!(calls.is_empty(), "{calls:?}");
}

#[test]
fn do_it_returning_ends_the_session_as_nbd_client_exiting() {
    let h = start(Fake::new(None), Ok(EXPORT), 30, Some(HOOK_LOG));
    h.fake.wait_running_and_set_capacity(8);
    h.fake.detach();
    assert_eq!(h.hook_said(), "stop cfg\n");
    let (end, _, msgs, _) = h.finish();
    assert_eq!(end, End::Detached);
    assert_eq!(end.status(), 0);
    assert_eq!(msgs, "nbd-proxy: nbd client stopped (rc: 0); exiting\n");
}

#[test]
fn relay_errors_exit_1_and_eof_exits_0() {
    let h = start(Fake::new(None), Ok(EXPORT), 30, None);
    h.fake.wait_running_and_set_capacity(8);
    let e = RelayEnd::Error("read failure: Input/output error".into());
    h.tx.send(Event::BackendEnded(e)).unwrap();
    let (end, _, msgs, _) = h.finish();
    assert_eq!((end, end.status()), (End::RelayError, 1));
    assert_eq!(msgs, "nbd-proxy: read failure: Input/output error\n");
}
