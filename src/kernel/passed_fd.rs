//! Taking ownership of the file descriptors a socket activator passed to this process
//! (systemd.md §3: fds 3, 4, … announced by `LISTEN_FDS`). Wrapping a descriptor number as an
//! [`OwnedFd`] is sound only if nothing else owns that number and it is done once; this module
//! is where that promise is kept, so the daemon adopts its sockets through a safe call.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the first [`adopt_passed`]: passed descriptors are adopted once per process.
static ADOPTED: AtomicBool = AtomicBool::new(false);

/// Why passed descriptors could not be adopted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PassedFdError {
    /// A second adoption: the descriptors already have an owner.
    #[error("passed sockets were already adopted")]
    AlreadyAdopted,
    /// A number below the first passed fd (stdin, stdout, stderr belong to the process).
    #[error("fd {0} is not a passed socket (passed fds start at 3)")]
    NotPassed(RawFd),
    /// The activator announced a descriptor that is not open.
    #[error("passed socket fd {0} is not an open file descriptor")]
    NotOpen(RawFd),
}

/// Adopts `fds` (numbers the activator passed, each at least 3) as owned descriptors, once
/// per process. On an error nothing is adopted, and a later call still fails: the caller
/// treats a bad activation as fatal.
pub fn adopt_passed(fds: &[RawFd]) -> Result<Vec<OwnedFd>, PassedFdError> {
    if ADOPTED.swap(true, Ordering::SeqCst) {
        return Err(PassedFdError::AlreadyAdopted);
    }
    for &fd in fds {
        if fd < 3 {
            return Err(PassedFdError::NotPassed(fd));
        }
        // SAFETY: F_GETFD only reads the descriptor flags of `fd`; on a closed fd it fails
        // with EBADF and touches nothing.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            return Err(PassedFdError::NotOpen(fd));
        }
    }
    Ok(fds
        .iter()
        .map(|&fd| {
            // SAFETY: `fd` is open (checked above), is one the activator passed to this
            // process for it to own (not stdio: checked above), and is adopted exactly once:
            // `ADOPTED` lets only the first call through, and nothing else in hexzd refers
            // to descriptors by number. Hooks start without LISTEN_* (proxy::hook), so no
            // child adopts them either.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_is_never_adopted_and_a_second_adoption_is_refused() {
        // The only test in this process that adopts: the flag is process-wide.
        assert_eq!(adopt_passed(&[1]).unwrap_err(), PassedFdError::NotPassed(1));
        assert_eq!(
            adopt_passed(&[]).unwrap_err(),
            PassedFdError::AlreadyAdopted
        );
    }
}
