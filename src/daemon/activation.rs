//! Socket activation (systemd.md §3): listening sockets passed as fds 3, 4, … with
//! `LISTEN_PID` (must be this process), `LISTEN_FDS` (how many) and `LISTEN_FDNAMES`
//! (`FileDescriptorName=` of the socket units). hexzd knows each socket by its **name**,
//! `http`, `https` or `nbd`, never by its port. A generic activator that passes no names (libnbd's
//! `nbdinfo -- [ hexzd serve … ]` passes one fd on fd 3) needs `--activated-protocol http|nbd`,
//! which then applies to every socket whose name is missing or unknown.
//!
//! Every fd is checked to be a listening stream socket (`SO_TYPE`, `SO_ACCEPTCONN`,
//! `getsockname`) and gets `FD_CLOEXEC`. The sockets are adopted once, at start-up; a reload
//! never touches them.

use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::socket::{AddressFamily, SockType, SockaddrLike, SockaddrStorage, getsockopt};
use nix::sys::socket::{getsockname, sockopt};

use super::listener::{ListenError, Listener, Protocol};
use super::sd_env::{SystemdEnv, parse_pid};

/// `SD_LISTEN_FDS_START`: the first passed fd.
pub const LISTEN_FDS_START: RawFd = 3;
/// Most sockets accepted from an activator (a sanity bound on `LISTEN_FDS`).
const MAX_LISTEN_FDS: usize = 64;

/// The protocol a `FileDescriptorName=` stands for.
pub fn protocol_of_name(name: &str) -> Option<Protocol> {
    match name {
        "http" => Some(Protocol::Http),
        "nbd" => Some(Protocol::Nbd),
        "https" => Some(Protocol::Https),
        _ => None,
    }
}

/// The fds systemd passed and what each serves, decided from the variables alone (pure):
/// `Ok(vec![])` when nothing was passed to this process.
pub fn plan(
    env: &SystemdEnv,
    own_pid: u32,
    flag: Option<Protocol>,
) -> Result<Vec<(RawFd, Protocol)>, ListenError> {
    let err = |m: String| Err(ListenError::Activation(m));
    let for_us = env.listen_pid.is_some() && parse_pid(env.listen_pid.as_deref()) == Some(own_pid);
    if !for_us {
        if env.listen_pid.is_some() {
            log::debug!(
                "LISTEN_PID={} is not this process; passed sockets ignored",
                env.listen_pid.as_deref().unwrap_or_default()
            );
        }
        if flag.is_some() {
            return err(
                "--activated-protocol was given, but no socket was passed (LISTEN_PID/LISTEN_FDS \
                 are not set for this process)"
                    .into(),
            );
        }
        return Ok(Vec::new());
    }
    let n: usize = match env.listen_fds.as_deref().map(|v| v.trim().parse()) {
        Some(Ok(n)) if n <= MAX_LISTEN_FDS => n,
        Some(_) => {
            return err(format!(
                "LISTEN_FDS={:?} is not a number of sockets (0 to {MAX_LISTEN_FDS})",
                env.listen_fds.as_deref().unwrap_or_default()
            ));
        }
        None => return err("LISTEN_PID is set but LISTEN_FDS is not".into()),
    };
    let names: Vec<&str> = match env.listen_fdnames.as_deref() {
        Some(v) => v.split(':').collect(),
        None => Vec::new(),
    };
    if env.listen_fdnames.is_some() && names.len() != n {
        return err(format!(
            "LISTEN_FDNAMES={:?} names {} socket(s) but LISTEN_FDS={n}",
            env.listen_fdnames.as_deref().unwrap_or_default(),
            names.len()
        ));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let fd = LISTEN_FDS_START + RawFd::try_from(i).unwrap_or(RawFd::MAX - LISTEN_FDS_START);
        let name = names.get(i).copied();
        let protocol = match (name.and_then(protocol_of_name), flag) {
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => {
                return err(match name {
                    Some(name) => format!(
                        "passed socket fd {fd} is named {name:?}; hexzd knows the names \"http\" \
                         and \"nbd\" (FileDescriptorName= in the .socket unit), or give \
                         --activated-protocol http|nbd"
                    ),
                    None => format!(
                        "passed socket fd {fd} has no name (LISTEN_FDNAMES unset); give \
                         --activated-protocol http|nbd to say what it serves"
                    ),
                });
            }
        };
        out.push((fd, protocol));
    }
    Ok(out)
}

/// Adopts the sockets of [`plan`]: checks each, sets `FD_CLOEXEC`, and wraps it as a
/// [`Listener`].
pub fn adopt(plan: &[(RawFd, Protocol)]) -> Result<Vec<(Protocol, Listener)>, ListenError> {
    let fds: Vec<RawFd> = plan.iter().map(|&(fd, _)| fd).collect();
    let owned = crate::kernel::passed_fd::adopt_passed(&fds)
        .map_err(|e| ListenError::Activation(e.to_string()))?;
    owned
        .into_iter()
        .zip(plan)
        .map(|(fd, &(_, protocol))| Ok((protocol, check(fd)?)))
        .collect()
}

fn bad(fd: RawFd, problem: String) -> ListenError {
    ListenError::Activation(format!("passed socket fd {fd} {problem}"))
}

/// Checks that `fd` is a listening stream socket of a family hexzd serves, and wraps it.
fn check(fd: OwnedFd) -> Result<Listener, ListenError> {
    let raw = fd.as_raw_fd();
    let e = |what: &str, err: nix::Error| bad(raw, format!("cannot be checked ({what}: {err})"));
    match getsockopt(&fd, sockopt::SockType) {
        Ok(SockType::Stream) => {}
        Ok(t) => return Err(bad(raw, format!("is a {t:?} socket, not a stream socket"))),
        Err(nix::errno::Errno::ENOTSOCK) => return Err(bad(raw, "is not a socket".into())),
        Err(err) => return Err(e("SO_TYPE", err)),
    }
    if !getsockopt(&fd, sockopt::AcceptConn).map_err(|err| e("SO_ACCEPTCONN", err))? {
        return Err(bad(raw, "is not listening".into()));
    }
    let addr: SockaddrStorage = getsockname(raw).map_err(|err| e("getsockname", err))?;
    fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|err| e("FD_CLOEXEC", err))?;
    match addr.family() {
        Some(AddressFamily::Inet | AddressFamily::Inet6) => {
            Ok(Listener::from_tcp(TcpListener::from(fd)))
        }
        Some(AddressFamily::Unix) => Ok(Listener::Unix(UnixListener::from(fd), None)),
        other => Err(bad(
            raw,
            format!("has address family {other:?}; hexzd serves TCP and Unix sockets"),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env(pid: &str, fds: &str, names: Option<&str>) -> SystemdEnv {
        SystemdEnv {
            listen_pid: Some(pid.into()),
            listen_fds: Some(fds.into()),
            listen_fdnames: names.map(Into::into),
            ..SystemdEnv::default()
        }
    }

    #[test]
    fn sockets_are_known_by_name() {
        let p = plan(&env("7", "2", Some("nbd:http")), 7, None).unwrap();
        assert_eq!(p, [(3, Protocol::Nbd), (4, Protocol::Http)]);
    }

    #[test]
    fn without_names_the_flag_decides_and_without_it_is_an_error() {
        let p = plan(&env("7", "1", None), 7, Some(Protocol::Nbd)).unwrap();
        assert_eq!(p, [(3, Protocol::Nbd)]);
        let e = plan(&env("7", "1", None), 7, None).unwrap_err().to_string();
        assert!(e.contains("--activated-protocol"), "{e}");
        let e = plan(&env("7", "1", Some("hexzd.socket")), 7, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"hexzd.socket\"") && e.contains("FileDescriptorName"),
            "{e}"
        );
        // A known name wins over the flag.
        let p = plan(&env("7", "2", Some("http:x")), 7, Some(Protocol::Nbd)).unwrap();
        assert_eq!(p, [(3, Protocol::Http), (4, Protocol::Nbd)]);
    }

    #[test]
    fn another_pid_or_nothing_passed_means_no_sockets() {
        assert!(
            plan(&env("8", "1", Some("http")), 7, None)
                .unwrap()
                .is_empty()
        );
        assert!(plan(&SystemdEnv::default(), 7, None).unwrap().is_empty());
        assert!(plan(&SystemdEnv::default(), 7, Some(Protocol::Http)).is_err());
    }

    #[test]
    fn bad_counts_are_errors() {
        assert!(plan(&env("7", "x", None), 7, Some(Protocol::Http)).is_err());
        assert!(plan(&env("7", "2", Some("http")), 7, None).is_err());
        assert!(plan(&env("7", "1000", None), 7, Some(Protocol::Http)).is_err());
    }

    #[test]
    fn check_refuses_what_is_not_a_listening_stream_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(check(OwnedFd::from(l)).is_ok());
        let unbound = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = check(OwnedFd::from(unbound)).unwrap_err().to_string();
        assert!(e.contains("not a stream socket"), "{e}");
        let file = std::fs::File::open("/dev/null").unwrap();
        let e = check(OwnedFd::from(file)).unwrap_err().to_string();
        assert!(e.contains("not a socket"), "{e}");
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = check(OwnedFd::from(a)).unwrap_err().to_string();
        assert!(e.contains("not listening"), "{e}");
    }
}
