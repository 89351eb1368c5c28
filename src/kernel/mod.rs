//! The Linux kernel side of nbd-proxy mode and local attach (nbd.md §6): typed wrappers for the
//! NBD ioctls and `BLKROSET` ([`ioctl`]), the [`Device`] trait with its real implementation
//! [`NbdDevice`] and the nbd-client 3.24 set-up order ([`device`]), and the kernel uevent socket
//! ([`uevent`]).
//!
//! This module holds all of hexzd's `unsafe` code: the `ioctl(2)` calls, and taking ownership
//! of the sockets an activator passed ([`passed_fd`]); each block says why it is sound. Everything above it (`proxy/`) talks to a [`Device`], so it is tested with a fake.

pub mod device;
pub mod ioctl;
pub mod passed_fd;
pub mod uevent;

use std::path::PathBuf;

pub use device::{DevNum, Device, NBD_MAJOR, NbdDevice, Setup, configure, teardown};
pub use nix::errno::Errno;
pub use uevent::{Uevent, UeventSocket};

/// A failure of the kernel interface. Every message names the device.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// `stat` or `open` of the device node failed.
    #[error("can't open nbd device {}: {}{}", device.display(), errno.desc(), open_hint(*errno))]
    Open { device: PathBuf, errno: Errno },
    /// The path is not a block device, or not an NBD one.
    #[error("{} is not an NBD device ({what})", device.display())]
    NotNbd { device: PathBuf, what: String },
    /// Another process drives the device (`/sys/block/nbdX/pid` exists).
    #[error("nbd device {} is in use{}", device.display(), match pid { Some(p) => format!(" (by pid {p})"), None => String::new() })]
    InUse {
        device: PathBuf,
        pid: Option<String>,
    },
    /// An ioctl failed.
    #[error("nbd device {}: {op} failed: {}{}", device.display(), errno.desc(), ioctl_hint(*errno))]
    Ioctl {
        device: PathBuf,
        op: &'static str,
        errno: Errno,
    },
    /// The export cannot be given to the kernel as it is.
    #[error("nbd device {}: {reason}", device.display())]
    BadSize { device: PathBuf, reason: String },
}

fn open_hint(e: Errno) -> &'static str {
    match e {
        Errno::ENXIO | Errno::ENODEV => " (is the nbd module loaded?)",
        Errno::EACCES | Errno::EPERM => " (needs root or CAP_SYS_ADMIN)",
        _ => "",
    }
}

fn ioctl_hint(e: Errno) -> &'static str {
    match e {
        Errno::EPERM => " (needs root or CAP_SYS_ADMIN)",
        Errno::EBUSY => " (the device is in use by another process)",
        _ => "",
    }
}
