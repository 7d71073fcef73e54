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

/// Why a worker hands a connection to the master: the byte each message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An idle kept connection: the web server's to hold, for as long as it likes.
    Idle = 0,
    /// A new connection whose request head has not arrived: cgi.request_header_timeout
    /// runs from now.
    AwaitingHead = 1,
}

/// Send `fd` over `channel` without blocking. The caller still owns `fd` and closes its
/// copy afterwards.
pub fn send(channel: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> nix::Result<()> {
    send_as(channel, fd, Kind::Idle)
}

/// [`send`], saying why.
pub fn send_as(channel: BorrowedFd<'_>, fd: BorrowedFd<'_>, kind: Kind) -> nix::Result<()> {
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let byte = [kind as u8];
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

/// Most of a connection's first bytes looked at to judge whether its request head is
/// complete: nginx's heads are a few KiB. A head longer than this is handed to a worker
/// as it stands, which reads the rest under cgi.request_header_timeout.
pub const PEEK_LIMIT: usize = 32 * 1024;

/// What a connection's socket holds, looked at without taking anything from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peeked {
    /// A complete request head, or something else a worker must see (see `fastcgi::head`),
    /// or more than `PEEK_LIMIT` bytes.
    Ready,
    /// Part of a head (`Some(bytes)`), or nothing yet (`None`).
    Partial(Option<usize>),
    /// The peer closed, or the socket failed.
    Closed,
}

/// Peek at `fd` without blocking and judge its request head.
pub fn peek_head(fd: BorrowedFd<'_>) -> Peeked {
    let mut buf = [0u8; PEEK_LIMIT];
    peek_head_into(fd, &mut buf)
}

/// [`peek_head`] with the caller's buffer, of which the first `PEEK_LIMIT` bytes are
/// used: a worker peeks into its connection buffer, which spares zeroing 32 KiB of stack
/// on every connection.
pub fn peek_head_into(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Peeked {
    let limit = buf.len().min(PEEK_LIMIT);
    let buf = &mut buf[..limit];
    loop {
        return match nix::sys::socket::recv(
            fd.as_raw_fd(),
            buf,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => Peeked::Partial(None),
            Err(_) | Ok(0) => Peeked::Closed,
            Ok(n) if n == limit => Peeked::Ready,
            Ok(n) => match crate::fastcgi::head::scan(&buf[..n]) {
                crate::fastcgi::head::Head::Ready => Peeked::Ready,
                // Data waiting hides the peer's close from a peek: ask poll.
                crate::fastcgi::head::Head::Partial if peer_closed(fd) => Peeked::Closed,
                crate::fastcgi::head::Head::Partial => Peeked::Partial(Some(n)),
            },
        };
    }
}

/// Whether the peer has shut down its side (or the socket failed), without waiting.
fn peer_closed(fd: BorrowedFd<'_>) -> bool {
    use crate::worker::poll::{ERR, HUP, PollSet, RDHUP};
    let mut set = PollSet::default();
    let index = set.add(fd, RDHUP);
    set.wait(Some(std::time::Duration::ZERO)).is_err()
        || set.revents(index) & (RDHUP | HUP | ERR) != 0
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
    receive_with_kind(channel).map(|(received, _)| received)
}

/// [`receive`], with why it was sent (an unknown byte counts as [`Kind::Idle`]).
pub fn receive_with_kind(channel: BorrowedFd<'_>) -> nix::Result<(Received, Kind)> {
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
            Err(Errno::EAGAIN) => return Ok((Received::Empty, Kind::Idle)),
            Err(e) => return Err(e),
            Ok(msg) => msg,
        };
        if msg.bytes == 0 {
            return Ok((Received::Closed, Kind::Idle));
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
            let kind = if byte[0] == Kind::AwaitingHead as u8 {
                Kind::AwaitingHead
            } else {
                Kind::Idle
            };
            return Ok((Received::Fd(fd), kind));
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
