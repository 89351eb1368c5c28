//! The environment systemd hands the service (systemd.md §2, §3): `NOTIFY_SOCKET`,
//! `WATCHDOG_USEC`, `WATCHDOG_PID`, `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`, read once
//! and removed from the process environment, so nothing hexzd ever spawns (hooks, later)
//! inherits them and mistakes itself for the service.

use std::ffi::OsString;

/// The variables [`SystemdEnv::take`] reads and removes.
pub const VARIABLES: [&str; 6] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
];

/// What systemd (or a test harness, or a generic socket activator) put in the environment.
/// Values are kept raw; [`notify`](super::notify), [`watchdog`](super::watchdog) and
/// [`activation`](super::activation) interpret them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemdEnv {
    /// `NOTIFY_SOCKET`: where sd_notify datagrams go.
    pub notify_socket: Option<OsString>,
    /// `WATCHDOG_USEC`: the watchdog interval in microseconds.
    pub watchdog_usec: Option<String>,
    /// `WATCHDOG_PID`: the process the watchdog is meant for.
    pub watchdog_pid: Option<String>,
    /// `LISTEN_PID`: the process the passed sockets are meant for.
    pub listen_pid: Option<String>,
    /// `LISTEN_FDS`: how many sockets were passed, from fd 3 up.
    pub listen_fds: Option<String>,
    /// `LISTEN_FDNAMES`: their names, `:`-separated.
    pub listen_fdnames: Option<String>,
}

impl SystemdEnv {
    /// Reads the variables and removes them from the environment.
    ///
    /// Call it once, first thing, while the process has a single thread (`hexzd serve` does
    /// so before it reads its configuration): removing environment variables is only sound
    /// when no other thread can be reading the environment at the same time.
    pub fn take() -> SystemdEnv {
        let text = |k: &str| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned());
        let env = SystemdEnv {
            notify_socket: std::env::var_os("NOTIFY_SOCKET"),
            watchdog_usec: text("WATCHDOG_USEC"),
            watchdog_pid: text("WATCHDOG_PID"),
            listen_pid: text("LISTEN_PID"),
            listen_fds: text("LISTEN_FDS"),
            listen_fdnames: text("LISTEN_FDNAMES"),
        };
        for k in VARIABLES {
            if std::env::var_os(k).is_some() {
                // SAFETY: `remove_var` races only with other threads touching the environment;
                // this runs at the start of `serve`, before the store engine, the signal
                // thread or any connection thread exists (see the doc comment above).
                unsafe { std::env::remove_var(k) };
            }
        }
        env
    }
}

/// Parses a PID variable; `None` when absent or not a number.
pub fn parse_pid(v: Option<&str>) -> Option<u32> {
    v.and_then(|s| s.trim().parse().ok())
}
