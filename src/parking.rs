//! Passing idle kept connections between workers and the master.
//!
//! An idle kept connection (nginx `fastcgi_keep_conn on` with an upstream `keepalive`)
//! would otherwise pin a worker while new connections wait in the listen queue: with
//! `keepalive 8` in front of 4 workers the p99 latency was seconds, in php-fpm as here.
//! So after answering on a kept connection a worker parks it with the master (which only
//! watches it, never reads it) and goes back to accepting. When the web server sends the
//! next request on it, the master hands it to whichever worker is idle.
//!
//! Each direction is a SOCK_SEQPACKET socket pair; every message carries exactly one
//! descriptor (SCM_RIGHTS) and one byte, so that an empty read can only mean the far end
//! is gone. Many workers share one end; each message goes to exactly one of them.

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A connected pair; `(one end, the other end)`, both close-on-exec.
pub fn channel() -> nix::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
}

/// Send `fd` over `channel` without blocking. The caller still owns `fd` and closes its
/// copy afterwards.
pub fn send(channel: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> nix::Result<()> {
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let byte = [0u8];
    let iov = [IoSlice::new(&byte)];
    loop {
        match sendmsg::<()>(
            channel.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
            Ok(_) => return Ok(()),
        }
    }
}

/// What a non-blocking receive found.
#[derive(Debug)]
pub enum Received {
    Fd(OwnedFd),
    /// Nothing waiting (or another reader took it first).
    Empty,
    /// The other end is closed: nothing will ever come.
    Closed,
}

/// Take one descriptor from `channel` without blocking.
pub fn receive(channel: BorrowedFd<'_>) -> nix::Result<Received> {
    let mut byte = [0u8; 1];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    loop {
        let mut iov = [IoSliceMut::new(&mut byte)];
        let msg = match recvmsg::<()>(
            channel.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(Received::Empty),
            Err(e) => return Err(e),
            Ok(msg) => msg,
        };
        if msg.bytes == 0 {
            return Ok(Received::Closed);
        }
        let mut received = None;
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for raw in fds {
                    // SAFETY: the kernel just installed this descriptor in our table for
                    // this message; nothing else refers to it.
                    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                    // One per message; any extra would be a peer's mistake, and closing
                    // it (by dropping) is all there is to do.
                    if received.is_none() {
                        received = Some(fd);
                    }
                }
            }
        }
        // A message without a descriptor carries nothing for us; look at the next one.
        if let Some(fd) = received {
            return Ok(Received::Fd(fd));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_connection_travels_and_stays_usable() {
        let (a, b) = channel().unwrap();
        let (mut near, far) = UnixStream::pair().unwrap();
        send(a.as_fd(), far.as_fd()).unwrap();
        drop(far);
        let Received::Fd(fd) = receive(b.as_fd()).unwrap() else {
            panic!("no descriptor");
        };
        let mut passed = UnixStream::from(fd);
        near.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        passed.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[test]
    fn empty_and_closed_are_told_apart() {
        let (a, b) = channel().unwrap();
        assert!(matches!(receive(b.as_fd()).unwrap(), Received::Empty));
        drop(a);
        assert!(matches!(receive(b.as_fd()).unwrap(), Received::Closed));
    }

    #[test]
    fn each_message_goes_to_one_reader() {
        let (a, b) = channel().unwrap();
        let b2 = b.try_clone().unwrap();
        let (_x, y) = UnixStream::pair().unwrap();
        send(a.as_fd(), y.as_fd()).unwrap();
        let first = receive(b.as_fd()).unwrap();
        let second = receive(b2.as_fd()).unwrap();
        assert!(matches!(first, Received::Fd(_)));
        assert!(matches!(second, Received::Empty));
    }
}
