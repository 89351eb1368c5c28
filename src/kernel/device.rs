//! The NBD block device (nbd.md §6): the [`Device`] operations, their real implementation on
//! `/dev/nbdX` ([`NbdDevice`]), and the set-up and teardown sequences, which are generic so that
//! their order is tested against a fake device.
//!
//! Set-up follows nbd-client 3.24 with `-n -L` (nbd.md §6.2 steps 4–9): `NBD_SET_BLKSIZE`,
//! `NBD_SET_SIZE_BLOCKS`, `NBD_CLEAR_SOCK` (result ignored), `NBD_SET_FLAGS` (error ignored),
//! `BLKROSET`, `NBD_SET_TIMEOUT` (only when non-zero), `NBD_SET_SOCK`; then `NBD_DO_IT` on a
//! thread of its own. Whatever fails, a device that was touched is cleared before the error is
//! returned, and an [`NbdDevice`] dropped after any set-up ioctl clears itself too.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::sys::stat::{SFlag, major, minor, stat};

use super::KernelError;
use super::ioctl::*;

/// The block major of the nbd driver.
pub const NBD_MAJOR: u32 = 43;
/// The kernel keeps capacities in 512-byte sectors; hexzd uses it as the block size too, as
/// nbd-client does by default.
pub const SECTOR: u64 = 512;

/// A block device number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevNum {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

impl DevNum {
    /// The device number of a `st_rdev`.
    pub fn from_rdev(rdev: u64) -> DevNum {
        DevNum {
            major: u32::try_from(major(rdev)).unwrap_or(u32::MAX),
            minor: u32::try_from(minor(rdev)).unwrap_or(u32::MAX),
        }
    }

    /// The device's directory in sysfs, `/sys/dev/block/MAJOR:MINOR` (it resolves whatever
    /// the device node is called).
    pub fn sysfs(&self) -> PathBuf {
        PathBuf::from(format!("/sys/dev/block/{}:{}", self.major, self.minor))
    }
}

impl std::fmt::Display for DevNum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// The operations hexzd performs on an NBD device: one method per ioctl (nbd.md §6.1), plus the
/// capacity the kernel reports. Implemented by [`NbdDevice`] and by the tests' fake.
pub trait Device: Send + Sync {
    /// The device node, for messages.
    fn path(&self) -> &Path;
    /// The device number (uevents carry it).
    fn devnum(&self) -> DevNum;
    /// `NBD_SET_BLKSIZE`.
    fn set_blksize(&self, bytes: u64) -> Result<(), Errno>;
    /// `NBD_SET_SIZE_BLOCKS`.
    fn set_size_blocks(&self, blocks: u64) -> Result<(), Errno>;
    /// `NBD_CLEAR_SOCK`.
    fn clear_sock(&self) -> Result<(), Errno>;
    /// `NBD_CLEAR_QUE`.
    fn clear_que(&self) -> Result<(), Errno>;
    /// `NBD_SET_FLAGS`.
    fn set_flags(&self, flags: u16) -> Result<(), Errno>;
    /// `BLKROSET`.
    fn set_read_only(&self, read_only: bool) -> Result<(), Errno>;
    /// `NBD_SET_TIMEOUT`, in seconds.
    fn set_timeout(&self, seconds: u32) -> Result<(), Errno>;
    /// `NBD_SET_SOCK`.
    fn set_sock(&self, sock: BorrowedFd<'_>) -> Result<(), Errno>;
    /// `NBD_DO_IT`: blocks until the device's socket dies (call it with signals blocked).
    fn do_it(&self) -> Result<(), Errno>;
    /// `NBD_DISCONNECT`.
    fn disconnect(&self) -> Result<(), Errno>;
    /// The capacity in 512-byte sectors (`/sys/dev/block/M:m/size`); non-zero once `NBD_DO_IT`
    /// has applied the size.
    fn capacity_sectors(&self) -> io::Result<u64>;
}

/// What the kernel is told about an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    /// Export size in bytes: non-zero and a multiple of [`SECTOR`].
    pub size: u64,
    /// Transmission flags (`NBD_FLAG_*`).
    pub flags: u16,
    /// Mark the block device read-only.
    pub read_only: bool,
    /// Per-request timeout in seconds; 0 sets none.
    pub timeout: u32,
}

/// Refuses sizes the kernel would silently change: 0, or not a whole number of sectors (the
/// kernel would drop the tail, and those bytes would be unreadable).
pub fn check_size(device: &Path, size: u64) -> Result<(), KernelError> {
    let reason = if size == 0 {
        "the export is empty (0 bytes)".to_string()
    } else if size % SECTOR != 0 {
        format!(
            "the export's size, {size} bytes, is not a multiple of {SECTOR} (the kernel would \
             drop the last {} bytes)",
            size % SECTOR
        )
    } else {
        return Ok(());
    };
    Err(KernelError::BadSize {
        device: device.to_path_buf(),
        reason,
    })
}

/// Configures `dev` for `setup` with `sock` as its socket, in nbd-client 3.24's order. On error
/// the device is cleared again before returning.
pub fn configure<D: Device + ?Sized>(
    dev: &D,
    setup: &Setup,
    sock: BorrowedFd<'_>,
) -> Result<(), KernelError> {
    check_size(dev.path(), setup.size)?;
    let fail = |op: &'static str, errno: Errno| {
        teardown(dev);
        KernelError::Ioctl {
            device: dev.path().to_path_buf(),
            op,
            errno,
        }
    };
    dev.set_blksize(SECTOR)
        .map_err(|e| fail("NBD_SET_BLKSIZE", e))?;
    dev.set_size_blocks(setup.size / SECTOR)
        .map_err(|e| fail("NBD_SET_SIZE_BLOCKS", e))?;
    // nbd-client ignores both results: a fresh device has no socket to clear, and old kernels
    // do not know every flag.
    let _ = dev.clear_sock();
    if let Err(e) = dev.set_flags(setup.flags) {
        log::debug!("{}: NBD_SET_FLAGS: {}", dev.path().display(), e.desc());
    }
    dev.set_read_only(setup.read_only)
        .map_err(|e| fail("BLKROSET", e))?;
    if setup.timeout != 0 {
        dev.set_timeout(setup.timeout)
            .map_err(|e| fail("NBD_SET_TIMEOUT", e))?;
    }
    dev.set_sock(sock).map_err(|e| fail("NBD_SET_SOCK", e))?;
    Ok(())
}

/// Clears the device: shuts its sockets down, fails queued I/O, capacity 0. Safe to repeat.
pub fn teardown<D: Device + ?Sized>(dev: &D) {
    let _ = dev.clear_sock();
    let _ = dev.clear_que();
}

/// An open `/dev/nbdX`. Dropped after any set-up ioctl, it clears the device.
#[derive(Debug)]
pub struct NbdDevice {
    path: PathBuf,
    file: File,
    devnum: DevNum,
    /// Set by the first ioctl that changes the device's state.
    touched: AtomicBool,
}

impl NbdDevice {
    /// Opens an NBD device for a new session: it must be an NBD block device, not in use by
    /// another process, and this process must be allowed to configure it (probed with the
    /// harmless `NBD_CLEAR_QUE`). Nothing about the device is changed.
    pub fn open(path: &Path) -> Result<NbdDevice, KernelError> {
        let dev = NbdDevice::open_node(path)?;
        if let Some(pid) = in_use(dev.devnum) {
            return Err(KernelError::InUse {
                device: path.to_path_buf(),
                pid,
            });
        }
        match ioctl_none(dev.file.as_fd(), NBD_CLEAR_QUE) {
            Ok(()) => Ok(dev),
            Err(e @ (Errno::ENOTTY | Errno::EINVAL)) => Err(KernelError::NotNbd {
                device: path.to_path_buf(),
                what: format!("NBD_CLEAR_QUE: {}", e.desc()),
            }),
            Err(errno) => Err(KernelError::Ioctl {
                device: path.to_path_buf(),
                op: "NBD_CLEAR_QUE",
                errno,
            }),
        }
    }

    /// Opens the device node read-write after checking it is an NBD block device.
    fn open_node(path: &Path) -> Result<NbdDevice, KernelError> {
        let open_err = |errno| KernelError::Open {
            device: path.to_path_buf(),
            errno,
        };
        let st = stat(path).map_err(open_err)?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFBLK {
            return Err(KernelError::NotNbd {
                device: path.to_path_buf(),
                what: "not a block device".into(),
            });
        }
        let devnum = DevNum::from_rdev(st.st_rdev);
        if devnum.major != NBD_MAJOR {
            return Err(KernelError::NotNbd {
                device: path.to_path_buf(),
                what: format!("block device {devnum}; the nbd driver's major is {NBD_MAJOR}"),
            });
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| open_err(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
        Ok(NbdDevice {
            path: path.to_path_buf(),
            file,
            devnum,
            touched: AtomicBool::new(false),
        })
    }

    fn ioctl(&self, request: u32, arg: u64) -> Result<(), Errno> {
        ioctl_ulong(self.file.as_fd(), request, arg)
    }

    fn touch(&self) {
        self.touched.store(true, Ordering::Relaxed);
    }
}

/// `Some(pid)` when the device is being served (`/sys/dev/block/M:m/pid` exists, as
/// nbd-client's `-c` checks); the pid is `None` if the file vanished meanwhile.
pub fn in_use(devnum: DevNum) -> Option<Option<String>> {
    match std::fs::read_to_string(devnum.sysfs().join("pid")) {
        Ok(s) => Some(Some(s.trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(_) => Some(None),
    }
}

/// Reads the capacity of a block device in 512-byte sectors from sysfs.
pub fn read_capacity(devnum: DevNum) -> io::Result<u64> {
    let text = std::fs::read_to_string(devnum.sysfs().join("size"))?;
    text.trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not a number"))
}

/// Ends whatever session drives `path`, as `nbd-client -d` does: `NBD_DISCONNECT` (the server
/// is sent NBD_CMD_DISC, the session's `NBD_DO_IT` returns), then `NBD_CLEAR_SOCK`. A device
/// that is not attached is left as it is.
pub fn detach(path: &Path) -> Result<(), KernelError> {
    let dev = NbdDevice::open_node(path)?;
    let fail = |op, errno| KernelError::Ioctl {
        device: path.to_path_buf(),
        op,
        errno,
    };
    dev.disconnect().map_err(|e| fail("NBD_DISCONNECT", e))?;
    dev.clear_sock().map_err(|e| fail("NBD_CLEAR_SOCK", e))
}

impl Device for NbdDevice {
    fn path(&self) -> &Path {
        &self.path
    }
    fn devnum(&self) -> DevNum {
        self.devnum
    }
    fn set_blksize(&self, bytes: u64) -> Result<(), Errno> {
        self.touch();
        self.ioctl(NBD_SET_BLKSIZE, bytes)
    }
    fn set_size_blocks(&self, blocks: u64) -> Result<(), Errno> {
        self.touch();
        self.ioctl(NBD_SET_SIZE_BLOCKS, blocks)
    }
    fn clear_sock(&self) -> Result<(), Errno> {
        self.ioctl(NBD_CLEAR_SOCK, 0)
    }
    fn clear_que(&self) -> Result<(), Errno> {
        self.ioctl(NBD_CLEAR_QUE, 0)
    }
    fn set_flags(&self, flags: u16) -> Result<(), Errno> {
        self.touch();
        self.ioctl(NBD_SET_FLAGS, u64::from(flags))
    }
    fn set_read_only(&self, read_only: bool) -> Result<(), Errno> {
        self.touch();
        blkroset(self.file.as_fd(), read_only)
    }
    fn set_timeout(&self, seconds: u32) -> Result<(), Errno> {
        self.touch();
        self.ioctl(NBD_SET_TIMEOUT, u64::from(seconds))
    }
    fn set_sock(&self, sock: BorrowedFd<'_>) -> Result<(), Errno> {
        use std::os::fd::AsRawFd;
        self.touch();
        let fd = u64::try_from(sock.as_raw_fd()).map_err(|_| Errno::EBADF)?;
        self.ioctl(NBD_SET_SOCK, fd)
    }
    fn do_it(&self) -> Result<(), Errno> {
        self.touch();
        self.ioctl(NBD_DO_IT, 0)
    }
    fn disconnect(&self) -> Result<(), Errno> {
        self.ioctl(NBD_DISCONNECT, 0)
    }
    fn capacity_sectors(&self) -> io::Result<u64> {
        read_capacity(self.devnum)
    }
}

impl Drop for NbdDevice {
    fn drop(&mut self) {
        if self.touched.load(Ordering::Relaxed) {
            teardown(self);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_the_kernel_would_change_are_refused() {
        let p = Path::new("/dev/nbd7");
        assert!(check_size(p, 4096).is_ok());
        let zero = check_size(p, 0).unwrap_err().to_string();
        assert_eq!(zero, "nbd device /dev/nbd7: the export is empty (0 bytes)");
        let odd = check_size(p, 1000).unwrap_err().to_string();
        assert!(
            odd.contains("1000 bytes, is not a multiple of 512"),
            "{odd}"
        );
        assert!(odd.starts_with("nbd device /dev/nbd7: "), "{odd}");
    }

    #[test]
    fn non_block_devices_and_missing_nodes_are_named() {
        let e = NbdDevice::open(Path::new("/dev/null"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "/dev/null is not an NBD device (not a block device)");
        let e = NbdDevice::open(Path::new("/nonexistent/nbd0"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "can't open nbd device /nonexistent/nbd0: No such file or directory"
        );
        assert!(detach(Path::new("/dev/null")).is_err());
    }

    #[test]
    fn ioctl_and_open_errors_say_what_to_do() {
        let e = KernelError::Ioctl {
            device: "/dev/nbd0".into(),
            op: "NBD_SET_SOCK",
            errno: Errno::EPERM,
        };
        assert_eq!(
            e.to_string(),
            "nbd device /dev/nbd0: NBD_SET_SOCK failed: Operation not permitted (needs root or \
             CAP_SYS_ADMIN)"
        );
        let e = KernelError::Open {
            device: "/dev/nbd0".into(),
            errno: Errno::ENXIO,
        };
        assert_eq!(
            e.to_string(),
            "can't open nbd device /dev/nbd0: No such device or address (is the nbd module \
             loaded?)"
        );
        let e = KernelError::InUse {
            device: "/dev/nbd0".into(),
            pid: Some("42".into()),
        };
        assert_eq!(e.to_string(), "nbd device /dev/nbd0 is in use (by pid 42)");
    }

    #[test]
    fn devnum_from_rdev_and_sysfs_path() {
        let d = DevNum::from_rdev(libc::makedev(43, 16));
        assert_eq!(
            d,
            DevNum {
                major: 43,
                minor: 16
            }
        );
        assert_eq!(d.sysfs(), PathBuf::from("/sys/dev/block/43:16"));
    }
}
