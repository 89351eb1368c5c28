//! Typed wrappers for the NBD ioctls and `BLKROSET` (nbd.md §6.1). The NBD ioctls are `_IO`
//! requests of type 0xab whose argument is passed by value as an `unsigned long`; `BLKROSET`
//! takes a pointer to an `int`. All need CAP_SYS_ADMIN (`EPERM` otherwise).
//!
//! Each wrapper issues exactly one `ioctl(2)` on a descriptor the caller borrows, so the
//! descriptor is open for the whole call.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

/// Add a socket (argument: the socket's descriptor).
pub const NBD_SET_SOCK: u32 = 0xab00;
/// Logical and physical block size in bytes (a power of two, 512..=page size).
pub const NBD_SET_BLKSIZE: u32 = 0xab01;
/// Size in bytes (unused: hexzd sets the size in blocks, as nbd-client does).
pub const NBD_SET_SIZE: u32 = 0xab02;
/// Serve the device until its sockets die; blocks the calling thread.
pub const NBD_DO_IT: u32 = 0xab03;
/// Shut the sockets down, fail queued I/O, set the capacity to 0.
pub const NBD_CLEAR_SOCK: u32 = 0xab04;
/// A no-op on current kernels (kept for older ones, as nbd-client does).
pub const NBD_CLEAR_QUE: u32 = 0xab05;
/// Size in blocks of the block size.
pub const NBD_SET_SIZE_BLOCKS: u32 = 0xab07;
/// Send NBD_CMD_DISC on every socket and mark a disconnect as requested.
pub const NBD_DISCONNECT: u32 = 0xab08;
/// Per-request timeout in seconds.
pub const NBD_SET_TIMEOUT: u32 = 0xab09;
/// Transmission flags of the export (`NBD_FLAG_*`).
pub const NBD_SET_FLAGS: u32 = 0xab0a;
/// `_IO(0x12, 93)`: set a block device's read-only flag (argument: pointer to an int).
pub const BLKROSET: u32 = 0x125d;

/// Issues an ioctl whose argument is an `unsigned long` passed by value.
pub fn ioctl_ulong(fd: BorrowedFd<'_>, request: u32, arg: u64) -> Result<(), Errno> {
    let arg = libc::c_ulong::try_from(arg).map_err(|_| Errno::EOVERFLOW)?;
    // SAFETY: `fd` is a live descriptor for the duration of the borrow. The request is one of
    // the NBD ioctls above, all defined by the kernel to take their argument by value as an
    // unsigned long; the kernel reads no user memory through it, so any value is sound (a
    // wrong one is reported as an errno).
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::c_ulong::from(request), arg) };
    Errno::result(rc).map(drop)
}

/// Issues an ioctl without argument.
pub fn ioctl_none(fd: BorrowedFd<'_>, request: u32) -> Result<(), Errno> {
    ioctl_ulong(fd, request, 0)
}

/// `BLKROSET`: marks the block device read-only (or read-write).
pub fn blkroset(fd: BorrowedFd<'_>, read_only: bool) -> Result<(), Errno> {
    let value: libc::c_int = read_only.into();
    // SAFETY: `fd` is live for the borrow; BLKROSET reads one `int` through its pointer
    // argument, and `value` is a properly aligned int that lives until the call returns.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::c_ulong::from(BLKROSET),
            &raw const value,
        )
    };
    Errno::result(rc).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values are `_IO(0xab, nr)` and `_IO(0x12, 93)` (nbd.md §6.1).
    #[test]
    fn request_numbers_match_the_kernel_headers() {
        let io = |ty: u32, nr: u32| (ty << 8) | nr;
        assert_eq!(NBD_SET_SOCK, io(0xab, 0));
        assert_eq!(NBD_SET_BLKSIZE, io(0xab, 1));
        assert_eq!(NBD_SET_SIZE, io(0xab, 2));
        assert_eq!(NBD_DO_IT, io(0xab, 3));
        assert_eq!(NBD_CLEAR_SOCK, io(0xab, 4));
        assert_eq!(NBD_CLEAR_QUE, io(0xab, 5));
        assert_eq!(NBD_SET_SIZE_BLOCKS, io(0xab, 7));
        assert_eq!(NBD_DISCONNECT, io(0xab, 8));
        assert_eq!(NBD_SET_TIMEOUT, io(0xab, 9));
        assert_eq!(NBD_SET_FLAGS, io(0xab, 10));
        assert_eq!(BLKROSET, io(0x12, 93));
    }

    /// On a descriptor that is not a block device the kernel refuses, with no harm done.
    #[test]
    fn ioctls_on_a_regular_file_fail_cleanly() {
        let f = tempfile::tempfile().unwrap();
        use std::os::fd::AsFd;
        assert!(ioctl_none(f.as_fd(), NBD_CLEAR_QUE).is_err());
        assert!(blkroset(f.as_fd(), true).is_err());
    }
}
