//! The kernel's uevent socket (nbd.md §6.4): a `NETLINK_KOBJECT_UEVENT` socket bound to
//! multicast group 1, libudev's "kernel" source, which needs no udevd. Only datagrams sent by
//! the kernel itself (sender port id 0) are accepted; anything else could be forged by any
//! process allowed to send to the group.
//!
//! A datagram is `ACTION@DEVPATH`, NUL, then NUL-separated `KEY=VALUE` pairs; [`parse`] decodes
//! it without I/O.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recvfrom, setsockopt,
    socket, sockopt,
};

use super::device::DevNum;

/// The multicast group of kernel-originated uevents.
const KERNEL_GROUP: u32 = 1;
/// Receive buffer requested: a burst of events while hexzd is busy must not be dropped.
const RCVBUF: usize = 1 << 20;
/// Largest datagram read (the kernel's own buffer is 2 KiB).
const DATAGRAM: usize = 8192;

/// The fields of a uevent hexzd looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    /// `ACTION`: add, remove, change, ...
    pub action: String,
    /// `SUBSYSTEM`, e.g. `block`.
    pub subsystem: String,
    /// `DEVTYPE`, e.g. `disk`.
    pub devtype: String,
    /// `MAJOR`:`MINOR`, when the event carries them.
    pub devnum: Option<DevNum>,
}

impl Uevent {
    /// True for a `change` of the block disk `devnum` (the original nbd-proxy's trigger).
    pub fn is_change_of(&self, devnum: DevNum) -> bool {
        self.action == "change"
            && self.subsystem == "block"
            && self.devtype == "disk"
            && self.devnum == Some(devnum)
    }
}

/// Decodes a kernel uevent datagram; `None` if it is not one (libudev's own format starts with
/// `libudev\0`, and has no `@` in its first field).
pub fn parse(datagram: &[u8]) -> Option<Uevent> {
    let mut fields = datagram.split(|&b| b == 0);
    let header = fields.next()?;
    if !header.contains(&b'@') {
        return None;
    }
    let (mut action, mut subsystem, mut devtype) = (None, String::new(), String::new());
    let (mut major, mut minor) = (None, None);
    for field in fields {
        let Some(eq) = field.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (key, value) = (&field[..eq], &field[eq + 1..]);
        let text = || String::from_utf8_lossy(value).into_owned();
        let number = || std::str::from_utf8(value).ok()?.parse::<u32>().ok();
        match key {
            b"ACTION" => action = Some(text()),
            b"SUBSYSTEM" => subsystem = text(),
            b"DEVTYPE" => devtype = text(),
            b"MAJOR" => major = number(),
            b"MINOR" => minor = number(),
            _ => {}
        }
    }
    Some(Uevent {
        action: action?,
        subsystem,
        devtype,
        devnum: match (major, minor) {
            (Some(major), Some(minor)) => Some(DevNum { major, minor }),
            _ => None,
        },
    })
}

/// A socket receiving the kernel's uevents. Open it before the event of interest can happen
/// (before `NBD_DO_IT`): events are not queued for sockets that do not exist yet.
#[derive(Debug)]
pub struct UeventSocket {
    fd: OwnedFd,
}

impl UeventSocket {
    /// Opens and binds the socket (close-on-exec, blocking).
    pub fn open() -> io::Result<UeventSocket> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkKObjectUEvent,
        )?;
        // Best effort: the default buffer is enough for the few events of one attach.
        let _ = setsockopt(&fd, sockopt::RcvBuf, &RCVBUF);
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, KERNEL_GROUP))?;
        Ok(UeventSocket { fd })
    }

    /// Receives one datagram; `Ok(None)` for one that is not a kernel uevent. `ENOBUFS` means
    /// events were lost (the receive buffer overflowed): the caller should re-check the state
    /// it waits for.
    pub fn recv(&self) -> io::Result<Option<Uevent>> {
        let mut buf = [0u8; DATAGRAM];
        loop {
            match recvfrom::<NetlinkAddr>(self.fd.as_raw_fd(), &mut buf) {
                Ok((n, Some(from))) if from.pid() == 0 => return Ok(parse(&buf[..n])),
                Ok(_) => return Ok(None),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl AsFd for UeventSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(fields: &[&str]) -> Vec<u8> {
        let mut v = Vec::new();
        for f in fields {
            v.extend_from_slice(f.as_bytes());
            v.push(0);
        }
        v
    }

    #[test]
    fn a_kernel_change_event_for_nbd0() {
        let d = datagram(&[
            "change@/devices/virtual/block/nbd0",
            "ACTION=change",
            "DEVPATH=/devices/virtual/block/nbd0",
            "SUBSYSTEM=block",
            "MAJOR=43",
            "MINOR=0",
            "DEVNAME=nbd0",
            "DEVTYPE=disk",
            "DISKSEQ=9",
            "SEQNUM=2510",
        ]);
        let e = parse(&d).unwrap();
        let nbd0 = DevNum {
            major: 43,
            minor: 0,
        };
        assert!(e.is_change_of(nbd0));
        assert!(!e.is_change_of(DevNum {
            major: 43,
            minor: 32
        }));
    }

    #[test]
    fn other_actions_partitions_and_libudev_messages_do_not_match() {
        let nbd0 = DevNum {
            major: 43,
            minor: 0,
        };
        let add = datagram(&[
            "add@/devices/virtual/block/nbd0",
            "ACTION=add",
            "SUBSYSTEM=block",
            "DEVTYPE=disk",
            "MAJOR=43",
            "MINOR=0",
        ]);
        assert!(!parse(&add).unwrap().is_change_of(nbd0));
        let part = datagram(&[
            "change@/devices/virtual/block/nbd0/nbd0p1",
            "ACTION=change",
            "SUBSYSTEM=block",
            "DEVTYPE=partition",
            "MAJOR=43",
            "MINOR=0",
        ]);
        assert!(!parse(&part).unwrap().is_change_of(nbd0));
        assert_eq!(parse(b"libudev\0\xfe\xed\xca\xfe"), None);
        assert_eq!(parse(b""), None);
        // No ACTION key: not a uevent.
        assert_eq!(parse(&datagram(&["change@/x", "MAJOR=43"])), None);
        // A malformed number is no device number.
        let bad = parse(&datagram(&[
            "change@/x",
            "ACTION=change",
            "MAJOR=4x",
            "MINOR=0",
        ]));
        assert_eq!(bad.unwrap().devnum, None);
    }
}
