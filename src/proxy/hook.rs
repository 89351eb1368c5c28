//! The state hook (nbd-proxy.md §9): `/etc/nbd-proxy/state start|stop CONFIG`, run when the
//! device becomes usable (asynchronously, once) and when the session ends (synchronously).
//!
//! As in the original: skipped silently unless `access(X_OK)` succeeds; stdin and stdout are
//! /dev/null, stderr and the working directory are inherited; an exec failure counts as the
//! hook exiting with status 1. Differences (§11): `argv[0]` is the file name (`state`), not the
//! full path; systemd's `NOTIFY_SOCKET`, `WATCHDOG_*` and `LISTEN_*` are removed from the
//! environment so they do not leak to children.

use std::fmt;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use nix::unistd::{AccessFlags, access};

/// How a hook ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookStatus {
    /// Exited with this status.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

impl HookStatus {
    /// True for exit status 0.
    pub fn success(self) -> bool {
        self == HookStatus::Exited(0)
    }

    fn of(status: ExitStatus) -> HookStatus {
        match (status.code(), status.signal()) {
            (Some(c), _) => HookStatus::Exited(c),
            (None, Some(s)) => HookStatus::Signaled(s),
            (None, None) => HookStatus::Exited(1),
        }
    }
}

/// `(rc: N)` or `(sig: N)`, as the original prints it.
impl fmt::Display for HookStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookStatus::Exited(c) => write!(f, "(rc: {c})"),
            HookStatus::Signaled(s) => write!(f, "(sig: {s})"),
        }
    }
}

/// The hook could not even be forked (the original's "can't fork to execute hook" case).
#[derive(Debug, thiserror::Error)]
#[error("can't fork to execute hook {}: {source}", path.display())]
pub struct ForkError {
    path: PathBuf,
    source: io::Error,
}

/// A configuration's state hook.
#[derive(Debug, Clone)]
pub struct StateHook {
    path: PathBuf,
    config: String,
}

/// Environment variables of systemd's that must not reach children (systemd.md §2).
fn is_systemd_var(name: &std::ffi::OsStr) -> bool {
    let n = name.as_encoded_bytes();
    n == b"NOTIFY_SOCKET" || n.starts_with(b"WATCHDOG_") || n.starts_with(b"LISTEN_")
}

/// A hook that was started, or the status it already has (exec failure).
enum Spawned {
    Child(std::process::Child),
    Done(HookStatus),
}

impl StateHook {
    /// The hook at `path` for configuration `config`.
    pub fn new(path: impl Into<PathBuf>, config: impl Into<String>) -> StateHook {
        StateHook {
            path: path.into(),
            config: config.into(),
        }
    }

    /// The hook's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn spawn(&self, action: &str) -> Result<Option<Spawned>, ForkError> {
        if access(&self.path, AccessFlags::X_OK).is_err() {
            return Ok(None);
        }
        let argv0 = self.path.file_name().unwrap_or(self.path.as_os_str());
        let mut cmd = Command::new(&self.path);
        cmd.arg0(argv0)
            .arg(action)
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (name, _) in std::env::vars_os() {
            if is_systemd_var(&name) {
                cmd.env_remove(name);
            }
        }
        match cmd.spawn() {
            Ok(child) => Ok(Some(Spawned::Child(child))),
            // fork/clone itself failed: the process is out of resources.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOMEM)) => {
                Err(ForkError {
                    path: self.path.clone(),
                    source: e,
                })
            }
            // exec failed in the child: the original's child exits 1 silently.
            Err(e) => {
                log::debug!("{}: exec failed: {e}", self.path.display());
                Ok(Some(Spawned::Done(HookStatus::Exited(1))))
            }
        }
    }

    /// Runs `start` without waiting; `on_exit` is called with its status from a thread of its
    /// own when it ends. A hook still running when the process exits is left running.
    /// Returns `Ok(false)` when the hook is skipped (not executable).
    pub fn start(
        &self,
        on_exit: impl FnOnce(HookStatus) + Send + 'static,
    ) -> Result<bool, ForkError> {
        let child = match self.spawn("start")? {
            None => return Ok(false),
            Some(Spawned::Done(status)) => {
                on_exit(status);
                return Ok(true);
            }
            Some(Spawned::Child(c)) => c,
        };
        let waiter = std::thread::Builder::new()
            .name("state-hook".into())
            .spawn(move || {
                let mut child = child;
                let status = child.wait().map_or(HookStatus::Exited(1), HookStatus::of);
                on_exit(status);
            });
        if let Err(e) = waiter {
            // Without a thread to wait for it the hook still runs; its status is lost.
            log::warn!(
                "{}: cannot wait for the start hook: {e}",
                self.path.display()
            );
        }
        Ok(true)
    }

    /// Runs `stop` and waits for it (no time limit, as in the original). `Ok(None)` when the
    /// hook is skipped.
    pub fn stop(&self) -> Result<Option<HookStatus>, ForkError> {
        match self.spawn("stop")? {
            None => Ok(None),
            Some(Spawned::Done(status)) => Ok(Some(status)),
            Some(Spawned::Child(mut c)) => {
                Ok(Some(c.wait().map_or(HookStatus::Exited(1), HookStatus::of)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("state");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn arguments_argv0_stdio_and_a_scrubbed_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let hook = script(
            dir.path(),
            &format!(
                "{{ echo \"$# $1 $2\"; env | grep -E '^(NOTIFY_SOCKET|WATCHDOG_|LISTEN_)' ; \
                 if read x; then echo \"stdin: $x\"; fi; }} > {}",
                out.display()
            ),
        );
        let h = StateHook::new(&hook, "cfg 1");
        assert_eq!(h.stop().unwrap(), Some(HookStatus::Exited(0)));
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "2 stop cfg 1\n");
    }

    #[test]
    fn systemd_variables_are_recognised() {
        for v in [
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "LISTEN_FDS",
            "LISTEN_PID",
        ] {
            assert!(is_systemd_var(v.as_ref()), "{v}");
        }
        for v in ["PATH", "NOTIFY_SOCKETX", "MY_LISTEN_FDS", "HOME"] {
            assert!(!is_systemd_var(v.as_ref()), "{v}");
        }
    }

    #[test]
    fn exit_statuses_and_signals() {
        let dir = tempfile::tempdir().unwrap();
        let h = StateHook::new(script(dir.path(), "exit 3"), "c");
        assert_eq!(h.stop().unwrap(), Some(HookStatus::Exited(3)));
        assert_eq!(HookStatus::Exited(3).to_string(), "(rc: 3)");
        let h = StateHook::new(script(dir.path(), "kill -TERM $$"), "c");
        let s = h.stop().unwrap().unwrap();
        assert_eq!(s, HookStatus::Signaled(15));
        assert_eq!(s.to_string(), "(sig: 15)");
    }

    #[test]
    fn a_missing_or_non_executable_hook_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let h = StateHook::new(dir.path().join("none"), "c");
        assert_eq!(h.stop().unwrap(), None);
        assert!(!h.start(|_| panic!("skipped hooks do not run")).unwrap());
        let p = dir.path().join("plain");
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        // Root may execute files with any x bit; 0644 has none.
        assert_eq!(StateHook::new(&p, "c").stop().unwrap(), None);
    }

    #[test]
    fn an_exec_failure_is_status_1() {
        let dir = tempfile::tempdir().unwrap();
        // Executable, but not a valid program: exec fails with ENOEXEC.
        let p = dir.path().join("state");
        std::fs::write(&p, [0u8, 1, 2, 3]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            StateHook::new(&p, "c").stop().unwrap(),
            Some(HookStatus::Exited(1))
        );
    }

    #[test]
    fn start_reports_its_status_from_another_thread() {
        let dir = tempfile::tempdir().unwrap();
        let h = StateHook::new(script(dir.path(), "exit 7"), "c");
        let (tx, rx) = std::sync::mpsc::channel();
        assert!(h.start(move |s| tx.send(s).unwrap()).unwrap());
        assert_eq!(rx.recv().unwrap(), HookStatus::Exited(7));
    }
}
