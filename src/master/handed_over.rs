//! The parking part of the reload handover, taken by the new image; and the probe that
//! tells what any handed-over number really holds.
//!
//! Without it, the exec closed every parked connection at once. nginx had maybe just
//! written a request on one of them; it then got a reset, retried a GET on its next cached
//! connection (closed too) and gave up, and it never retries a POST: requests were lost on
//! every reload behind `keepalive`. So the new image takes each pool's channels (the
//! old workers, still finishing requests, park into it as they did before) and the
//! connections parked at that moment (a request sent on one meanwhile waits in its
//! socket until the new image hands it out).

use crate::handover::{Found, Parked, PoolChannels, set_cloexec};
use nix::sys::socket::{getsockopt, sockopt};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The parking descriptors the new image took, owned now, by pool name.
#[derive(Debug, Default)]
pub(super) struct HandedOver {
    pub channels: Vec<(String, [OwnedFd; 2])>,
    /// With when the request waiting on it arrived (see `handover::Parked`).
    pub parked: Vec<(String, OwnedFd, Option<std::time::Instant>)>,
}

/// Standard input, output and error are never ours to take.
fn takeable(fd: RawFd) -> bool {
    fd > 2
}

/// Take the parking descriptors of the handover. Only descriptors of the expected kind
/// are taken: channel ends are sequenced-packet sockets, parked connections are connected
/// stream sockets; a number named twice makes the whole lot suspect, so none is taken.
pub(super) fn take(channels: Vec<PoolChannels>, parked: Vec<Parked>) -> HandedOver {
    let mut taken = HandedOver::default();
    let mut seen = std::collections::HashSet::new();
    let all = channels
        .iter()
        .flat_map(|c| c.fds.iter().copied())
        .chain(parked.iter().map(|p| p.fd));
    // A number named twice would be owned, and closed, twice.
    let unique = all.into_iter().all(|fd| seen.insert(fd));
    if !unique {
        return taken;
    }
    for PoolChannels { pool, fds } in channels {
        if fds
            .iter()
            .all(|&fd| takeable(fd) && is_socket_of(fd, SocketKind::Channel))
        {
            // SAFETY: the previous image left these open for us (checked above to be
            // sockets of the right type, each named once) and nothing here owns them yet.
            let owned: Vec<OwnedFd> = fds
                .iter()
                .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
                .collect();
            owned
                .iter()
                .for_each(|fd| set_cloexec(fd.as_raw_fd(), true));
            // An older image's two pairs are closed here (dropped): its workers then
            // stop parking, and the pool gets a new channel.
            if let Ok(pair) = <[OwnedFd; 2]>::try_from(owned) {
                taken.channels.push((pool, pair));
            }
        }
    }
    for Parked {
        pool,
        fd,
        arrived_monotonic_us,
    } in parked
    {
        if takeable(fd) && is_socket_of(fd, SocketKind::Connection) {
            // SAFETY: as above.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            set_cloexec(owned.as_raw_fd(), true);
            let arrived = arrived_monotonic_us.map(crate::handover::monotonic_us_to_instant);
            taken.parked.push((pool, owned, arrived));
        }
    }
    taken
}

/// What `fd` is in this process, asked of the kernel (`/proc` only to tell a memfd from
/// another file, where it can be read).
pub(super) fn probe(fd: RawFd) -> Found {
    use nix::sys::socket::{SockType, getsockopt, sockopt};
    use nix::sys::stat::SFlag;
    let flags = match nix::fcntl::fcntl(
        // SAFETY: only borrowed for this call; a number that is not open fails it.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    ) {
        Ok(flags) => flags,
        Err(_) => return Found::NotOpen,
    };
    if nix::fcntl::FdFlag::from_bits_truncate(flags).contains(nix::fcntl::FdFlag::FD_CLOEXEC) {
        return Found::OpenedHere;
    }
    // SAFETY: as above, borrowed for the calls below only; the number is open.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let Ok(stat) = nix::sys::stat::fstat(borrowed) else {
        return Found::NotOpen;
    };
    let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
    if kind == SFlag::S_IFREG {
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}"));
        return match link {
            Ok(path) if !path.to_string_lossy().starts_with("/memfd:") => {
                Found::Other(format!("the file {}", path.display()))
            }
            _ => Found::Memfd,
        };
    }
    if kind != SFlag::S_IFSOCK {
        return Found::Other(format!(
            "not a socket nor a memory file (mode {:o})",
            stat.st_mode
        ));
    }
    match getsockopt(&borrowed, sockopt::SockType) {
        Ok(SockType::SeqPacket) => Found::SeqPacket,
        Ok(SockType::Stream) if getsockopt(&borrowed, sockopt::AcceptConn) == Ok(true) => {
            Found::Listening(super::inherit::socket_key(fd))
        }
        Ok(SockType::Stream) => Found::Connected,
        Ok(other) => Found::Other(format!("a socket of type {other:?}")),
        Err(e) => Found::Other(format!("a socket that cannot be asked its type ({e})")),
    }
}

#[derive(Clone, Copy)]
enum SocketKind {
    Channel,
    Connection,
}

fn is_socket_of(fd: RawFd, kind: SocketKind) -> bool {
    // SAFETY: only borrowed for two getsockopt calls; an fd that is not open fails them.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let Ok(ty) = getsockopt(&fd, sockopt::SockType) else {
        return false;
    };
    match kind {
        SocketKind::Channel => ty == nix::sys::socket::SockType::SeqPacket,
        SocketKind::Connection => {
            ty == nix::sys::socket::SockType::Stream
                && getsockopt(&fd, sockopt::AcceptConn) == Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_descriptors_and_numbers_named_twice_are_not_taken() {
        let channel = |fds| PoolChannels {
            pool: "www".into(),
            fds,
        };
        let parked = |fd| Parked {
            pool: "www".into(),
            fd,
            arrived_monotonic_us: None,
        };
        // Not sockets at all here, so nothing could be taken anyway; what matters is that
        // no descriptor gets owned (and closed) by mistake: stdin stays open.
        let taken = take(vec![channel(vec![0, 1, 2, 0])], vec![parked(1)]);
        assert!(taken.channels.is_empty() && taken.parked.is_empty());
        let (conn, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = conn.as_raw_fd();
        let taken = take(Vec::new(), vec![parked(fd), parked(fd)]);
        assert!(taken.parked.is_empty(), "named twice: not taken");
        assert!(is_socket_of(fd, SocketKind::Connection), "still open");
    }

    #[test]
    fn the_probe_tells_what_a_number_holds_and_whether_it_crossed_the_exec() {
        let handed = |fd: &dyn AsRawFd| {
            set_cloexec(fd.as_raw_fd(), false);
            probe(fd.as_raw_fd())
        };
        let board = crate::scoreboard::Scoreboard::new(1).unwrap();
        let memfd = board.fd().expect("a memfd");
        set_cloexec(memfd, false);
        assert_eq!(probe(memfd), Found::Memfd);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_eq!(
            handed(&listener),
            Found::Listening(Some(path.display().to_string()))
        );
        let (a, _b) = crate::parking::channel().unwrap();
        assert_eq!(handed(&a), Found::SeqPacket);
        let (conn, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(handed(&conn), Found::Connected);
        let file = tempfile::tempfile().unwrap();
        assert!(matches!(handed(&file), Found::Other(what) if what.starts_with("the file")));
        let (pipe, _) = nix::unistd::pipe().unwrap();
        assert!(matches!(handed(&pipe), Found::Other(_)));
        // Opened here, close-on-exec set as Rust sets it: not handed over.
        let mine = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(probe(mine.as_raw_fd()), Found::OpenedHere);
        assert_eq!(probe(mine.as_raw_fd() + 1000), Found::NotOpen);
    }

    #[test]
    fn only_sockets_of_the_expected_kind_are_taken() {
        use std::os::fd::AsRawFd;
        let (a, b) = crate::parking::channel().unwrap();
        let (c, d) = crate::parking::channel().unwrap();
        let (conn, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let listener = std::os::unix::net::UnixListener::bind(
            tempfile::tempdir().unwrap().path().join("l.sock"),
        )
        .unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(is_socket_of(a.as_raw_fd(), SocketKind::Channel));
        assert!(is_socket_of(d.as_raw_fd(), SocketKind::Channel));
        assert!(!is_socket_of(conn.as_raw_fd(), SocketKind::Channel));
        assert!(is_socket_of(conn.as_raw_fd(), SocketKind::Connection));
        assert!(!is_socket_of(listener.as_raw_fd(), SocketKind::Connection));
        assert!(!is_socket_of(b.as_raw_fd(), SocketKind::Connection));
        assert!(!is_socket_of(file.as_raw_fd(), SocketKind::Connection));
        assert!(!is_socket_of(c.as_raw_fd() + 1000, SocketKind::Channel));
    }
}
