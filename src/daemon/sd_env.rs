//! The environment systemd hands the service (systemd.md §2, §3): `NOTIFY_SOCKET`,
//! `WATCHDOG_USEC`, `WATCHDOG_PID`, `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`, read once
//! at start.
//!
//! Nothing hexzd spawns inherits them: the only programs it starts, the state hooks of
//! `[[attach]]` entries and nbd-proxy mode (`proxy::hook`), are started with these variables
//! removed from their environment (`Command::env_remove`). The process's own environment is
//! left as it is: editing it is unsound once other threads may read it, and a child started
//! with an explicit environment needs no such edit.

use std::ffi::OsString;

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
    /// Reads the variables.
    pub fn read() -> SystemdEnv {
        let text = |k: &str| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned());
        SystemdEnv {
            notify_socket: std::env::var_os("NOTIFY_SOCKET"),
            watchdog_usec: text("WATCHDOG_USEC"),
            watchdog_pid: text("WATCHDOG_PID"),
            listen_pid: text("LISTEN_PID"),
            listen_fds: text("LISTEN_FDS"),
            listen_fdnames: text("LISTEN_FDNAMES"),
        }
    }
}

/// Parses a PID variable; `None` when absent or not a number.
pub fn parse_pid(v: Option<&str>) -> Option<u32> {
    v.and_then(|s| s.trim().parse().ok())
}
