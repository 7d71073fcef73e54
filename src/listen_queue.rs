//! How many connections wait in a listening socket's accept queue, and how many it may
//! hold: the status page's `listen queue` and `listen queue len`, and what an ondemand
//! pool spawns for.
//!
//! TCP sockets answer `getsockopt(TCP_INFO)` (as php-fpm reads them: `tcpi_unacked` is
//! the queue, `tcpi_sacked` the backlog). Unix sockets have no such option — php-fpm shows
//! 0 for them — but the kernel's sock_diag netlink interface reports the same two figures
//! (`UNIX_DIAG_RQLEN`) for a listening unix socket looked up by its inode.

use nix::libc;
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrLike, SockaddrStorage,
    getsockname, recv, send, socket,
};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// A listening socket's accept queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueFigures {
    /// Connections waiting to be accepted.
    pub queued: u32,
    /// How many may wait (the effective backlog).
    pub backlog: u32,
}

/// The accept-queue figures of a listening TCP or unix socket. Opens (and closes) a
/// netlink socket for a unix one: callers that ask often keep a `Prober` instead.
pub fn figures(fd: BorrowedFd<'_>) -> io::Result<QueueFigures> {
    Prober::default().figures(fd)
}

/// Asks for queue figures through one netlink socket kept open: the master asks for
/// every pool each second, and with hundreds of pools a socket per question cost a
/// descriptor each time, which failed (EMFILE) exactly when descriptors ran short.
#[derive(Default)]
pub struct Prober {
    netlink: Option<OwnedFd>,
}

impl Prober {
    /// A prober with its netlink socket open already, so that it costs no descriptor
    /// later; when that fails it opens one at the next question instead.
    pub fn open() -> Prober {
        Prober {
            netlink: netlink_socket().ok(),
        }
    }

    pub fn figures(&mut self, fd: BorrowedFd<'_>) -> io::Result<QueueFigures> {
        let address: SockaddrStorage = getsockname(fd.as_raw_fd())?;
        match address.family() {
            Some(AddressFamily::Inet | AddressFamily::Inet6) => tcp_figures(fd),
            Some(AddressFamily::Unix) => {
                let netlink = match self.netlink.take() {
                    Some(netlink) => netlink,
                    None => netlink_socket()?,
                };
                let figures = unix_figures(fd, netlink.as_fd());
                // A socket that failed may hold a stale reply: start afresh next time.
                if figures.is_ok() {
                    self.netlink = Some(netlink);
                }
                figures
            }
            other => Err(io::Error::other(format!(
                "no listen-queue figures for address family {other:?}"
            ))),
        }
    }
}

fn netlink_socket() -> io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?)
}

/// Linux's TCP_LISTEN state number, used by both interfaces.
const TCP_LISTEN: u8 = 10;

fn tcp_figures(fd: BorrowedFd<'_>) -> io::Result<QueueFigures> {
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: tcp_info is plain integers, so all-zero is a valid value; getsockopt writes
    // at most `len` bytes (the struct's size) into it and stores the length it wrote.
    let (rc, info) = unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let rc = libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (rc, info)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if info.tcpi_state != TCP_LISTEN {
        return Err(io::Error::other("the socket is not listening"));
    }
    Ok(QueueFigures {
        queued: info.tcpi_unacked,
        backlog: info.tcpi_sacked,
    })
}

// From linux/sock_diag.h, linux/unix_diag.h and linux/netlink.h.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_RQLEN: u16 = 4;
const NLMSG_HEADER_LEN: usize = 16;
const UNIX_DIAG_MSG_LEN: usize = 16;

fn unix_figures(fd: BorrowedFd<'_>, netlink: BorrowedFd<'_>) -> io::Result<QueueFigures> {
    let inode = nix::sys::stat::fstat(fd)?.st_ino;
    let inode = u32::try_from(inode)
        .map_err(|_| io::Error::other(format!("socket inode {inode} does not fit sock_diag")))?;
    send(
        netlink.as_raw_fd(),
        &unix_diag_request(inode),
        MsgFlags::empty(),
    )?;
    // The kernel answers an exact lookup while handling the request, so the reply is
    // already queued: never wait for it.
    let mut reply = [0u8; 512];
    let n = recv(netlink.as_raw_fd(), &mut reply, MsgFlags::MSG_DONTWAIT)?;
    parse_unix_diag_reply(&reply[..n], inode)
}

/// An nlmsghdr and a unix_diag_req asking for one listening socket's queue lengths.
fn unix_diag_request(inode: u32) -> Vec<u8> {
    let mut message = Vec::with_capacity(40);
    message.extend_from_slice(&40u32.to_ne_bytes()); // nlmsg_len
    message.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes()); // nlmsg_type
    message.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes()); // nlmsg_flags
    message.extend_from_slice(&1u32.to_ne_bytes()); // nlmsg_seq
    message.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid
    message.push(libc::AF_UNIX as u8); // sdiag_family
    message.push(0); // sdiag_protocol
    message.extend_from_slice(&0u16.to_ne_bytes()); // pad
    message.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes()); // udiag_states
    message.extend_from_slice(&inode.to_ne_bytes()); // udiag_ino
    message.extend_from_slice(&UDIAG_SHOW_RQLEN.to_ne_bytes()); // udiag_show
    message.extend_from_slice(&u32::MAX.to_ne_bytes()); // udiag_cookie: none
    message.extend_from_slice(&u32::MAX.to_ne_bytes());
    message
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn parse_unix_diag_reply(reply: &[u8], inode: u32) -> io::Result<QueueFigures> {
    let malformed = || io::Error::other("malformed sock_diag reply");
    let length = u32_at(reply, 0).ok_or_else(malformed)? as usize;
    let kind = u16_at(reply, 4).ok_or_else(malformed)?;
    let message = reply.get(..length).ok_or_else(malformed)?;
    if kind == NLMSG_ERROR {
        let errno = u32_at(message, NLMSG_HEADER_LEN).ok_or_else(malformed)? as i32;
        return Err(io::Error::from_raw_os_error(-errno));
    }
    if kind != SOCK_DIAG_BY_FAMILY {
        return Err(malformed());
    }
    let body = message.get(NLMSG_HEADER_LEN..).ok_or_else(malformed)?;
    if u32_at(body, 4) != Some(inode) {
        return Err(io::Error::other("sock_diag answered about another socket"));
    }
    if body.get(2) != Some(&TCP_LISTEN) {
        return Err(io::Error::other("the socket is not listening"));
    }
    let mut attributes = body.get(UNIX_DIAG_MSG_LEN..).ok_or_else(malformed)?;
    while attributes.len() >= 4 {
        let attribute_len = u16_at(attributes, 0).ok_or_else(malformed)? as usize;
        let attribute_type = u16_at(attributes, 2).ok_or_else(malformed)?;
        if attribute_len < 4 || attribute_len > attributes.len() {
            return Err(malformed());
        }
        if attribute_type == UNIX_DIAG_RQLEN {
            let queued = u32_at(attributes, 4).ok_or_else(malformed)?;
            let backlog = u32_at(attributes, 8).ok_or_else(malformed)?;
            return Ok(QueueFigures { queued, backlog });
        }
        let aligned = attribute_len.div_ceil(4) * 4;
        attributes = attributes
            .get(aligned.min(attributes.len())..)
            .unwrap_or(&[]);
    }
    Err(io::Error::other("sock_diag reply without queue lengths"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{Backlog, SockaddrIn, UnixAddr, bind, connect, listen};
    use std::os::fd::{AsFd, OwnedFd};
    use std::time::{Duration, Instant};

    fn wait_for(fd: BorrowedFd<'_>, queued: u32) -> QueueFigures {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let figures = figures(fd).expect("figures");
            if figures.queued == queued || Instant::now() > deadline {
                return figures;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn unix_listener_reports_waiting_connections_and_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.sock");
        let listener = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(listener.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        listen(&listener, Backlog::new(7).unwrap()).unwrap();
        assert_eq!(
            figures(listener.as_fd()).unwrap(),
            QueueFigures {
                queued: 0,
                backlog: 7
            }
        );
        let clients: Vec<_> = (0..3)
            .map(|_| std::os::unix::net::UnixStream::connect(&path).unwrap())
            .collect();
        assert_eq!(
            wait_for(listener.as_fd(), 3),
            QueueFigures {
                queued: 3,
                backlog: 7
            }
        );
        drop(clients);
    }

    #[test]
    fn tcp_listener_reports_waiting_connections_and_backlog() {
        let listener: OwnedFd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(
            listener.as_raw_fd(),
            &SockaddrIn::from(std::net::SocketAddrV4::new([127, 0, 0, 1].into(), 0)),
        )
        .unwrap();
        listen(&listener, Backlog::new(5).unwrap()).unwrap();
        let address: SockaddrIn = getsockname(listener.as_raw_fd()).unwrap();
        let clients: Vec<OwnedFd> = (0..2)
            .map(|_| {
                let c = socket(
                    AddressFamily::Inet,
                    SockType::Stream,
                    SockFlag::SOCK_CLOEXEC,
                    None,
                )
                .unwrap();
                connect(c.as_raw_fd(), &address).unwrap();
                c
            })
            .collect();
        assert_eq!(
            wait_for(listener.as_fd(), 2),
            QueueFigures {
                queued: 2,
                backlog: 5
            }
        );
        drop(clients);
    }

    #[test]
    fn a_connected_socket_is_not_a_listener() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(figures(a.as_fd()).is_err());
    }

    #[test]
    fn replies_are_checked() {
        assert!(parse_unix_diag_reply(&[], 1).is_err());
        // An NLMSG_ERROR carrying -ENOENT.
        let mut error = Vec::new();
        error.extend_from_slice(&36u32.to_ne_bytes());
        error.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        error.extend_from_slice(&[0; 10]);
        error.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        error.extend_from_slice(&[0; 16]);
        let e = parse_unix_diag_reply(&error, 1).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        // A well-formed answer with the queue lengths after an unrelated attribute.
        let mut ok = Vec::new();
        ok.extend_from_slice(&52u32.to_ne_bytes());
        ok.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        ok.extend_from_slice(&[0; 10]);
        ok.extend_from_slice(&[libc::AF_UNIX as u8, 1, TCP_LISTEN, 0]);
        ok.extend_from_slice(&9u32.to_ne_bytes());
        ok.extend_from_slice(&[0; 8]);
        ok.extend_from_slice(&5u16.to_ne_bytes());
        ok.extend_from_slice(&99u16.to_ne_bytes());
        ok.extend_from_slice(&[7, 0, 0, 0]);
        ok.extend_from_slice(&12u16.to_ne_bytes());
        ok.extend_from_slice(&UNIX_DIAG_RQLEN.to_ne_bytes());
        ok.extend_from_slice(&2u32.to_ne_bytes());
        ok.extend_from_slice(&64u32.to_ne_bytes());
        assert_eq!(
            parse_unix_diag_reply(&ok, 9).unwrap(),
            QueueFigures {
                queued: 2,
                backlog: 64
            }
        );
        assert!(parse_unix_diag_reply(&ok, 10).is_err());
    }
}
