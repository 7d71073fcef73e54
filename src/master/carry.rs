//! What of parking crosses a reload's exec.
//!
//! Without this, the exec closed every parked connection at once. nginx had maybe just
//! written a request on one of them; it then got a reset, retried a GET on its next cached
//! connection (closed too) and gave up, and it never retries a POST: requests were lost on
//! every reload behind `keepalive`. So the new image takes over each pool's channels (the
//! old workers, still finishing requests, park into it as they did before) and the
//! connections parked at that moment (a request sent on one meanwhile waits in its
//! socket until the new image hands it out).
//!
//! `CGI_FPM_PARKING` holds one line per item, the pool name last as it may hold spaces:
//! `channels <park_rx> <handoff_tx> <worker_park> <worker_handoff> <pool>` and
//! `parked <fd> <pool>`.

use super::reload::set_cloexec;
use nix::sys::socket::{getsockopt, sockopt};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub const PARKING_ENV: &str = "CGI_FPM_PARKING";

/// Descriptors by pool name, as numbers: what the old image writes and the new reads.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Carried {
    pub channels: Vec<(String, [RawFd; 4])>,
    pub parked: Vec<(String, RawFd)>,
}

impl Carried {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        for (pool, [a, b, c, d]) in &self.channels {
            out.push_str(&format!("channels {a} {b} {c} {d} {pool}\n"));
        }
        for (pool, fd) in &self.parked {
            out.push_str(&format!("parked {fd} {pool}\n"));
        }
        out
    }

    /// Lines that do not parse are skipped: the variable is ours, but a stray one must not
    /// make us take a descriptor we were not given.
    pub fn decode(text: &str) -> Carried {
        let mut carried = Carried::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("channels ") {
                let mut fields = rest.splitn(5, ' ');
                let mut fds = [0; 4];
                let all = fds
                    .iter_mut()
                    .all(|fd| fields.next().and_then(parse_fd).map(|n| *fd = n).is_some());
                if let (true, Some(pool)) = (all, fields.next()) {
                    carried.channels.push((pool.to_string(), fds));
                }
            } else if let Some(rest) = line.strip_prefix("parked ") {
                let mut fields = rest.splitn(2, ' ');
                if let (Some(fd), Some(pool)) = (fields.next().and_then(parse_fd), fields.next()) {
                    carried.parked.push((pool.to_string(), fd));
                }
            }
        }
        carried
    }

    /// Every descriptor named, in order.
    pub fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        let channels = self
            .channels
            .iter()
            .flat_map(|(_, fds)| fds.iter().copied());
        channels.chain(self.parked.iter().map(|(_, fd)| *fd))
    }
}

/// Standard input, output and error are never ours to take.
fn parse_fd(text: &str) -> Option<RawFd> {
    text.parse::<RawFd>().ok().filter(|&fd| fd > 2)
}

/// What the new image took over, owned now.
#[derive(Debug, Default)]
pub struct TakenOver {
    pub channels: Vec<(String, [OwnedFd; 4])>,
    pub parked: Vec<(String, OwnedFd)>,
}

/// Take what the previous image handed over, and remove the variable so that neither
/// CGI children nor a later image see it. Only descriptors of the expected kind are
/// taken: channel ends are sequenced-packet sockets, parked connections are connected
/// stream sockets.
pub fn take_from_environment() -> TakenOver {
    let text = std::env::var(PARKING_ENV).unwrap_or_default();
    // SAFETY: read once at start-up, before anything runs that could read the
    // environment concurrently (the master is single-threaded).
    unsafe { std::env::remove_var(PARKING_ENV) };
    let carried = Carried::decode(&text);
    let mut taken = TakenOver::default();
    let mut seen = std::collections::HashSet::new();
    // A number named twice would be owned, and closed, twice.
    let unique = carried.fds().all(|fd| seen.insert(fd));
    if !unique {
        return taken;
    }
    for (pool, fds) in carried.channels {
        if fds.iter().all(|&fd| is_socket_of(fd, SocketKind::Channel)) {
            // SAFETY: the previous image left these open for us (checked above to be
            // sockets of the right type, each named once) and nothing here owns them yet.
            let owned = fds.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
            owned
                .iter()
                .for_each(|fd| set_cloexec(fd.as_raw_fd(), true));
            taken.channels.push((pool, owned));
        }
    }
    for (pool, fd) in carried.parked {
        if is_socket_of(fd, SocketKind::Connection) {
            // SAFETY: as above.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            set_cloexec(owned.as_raw_fd(), true);
            taken.parked.push((pool, owned));
        }
    }
    taken
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
    fn channels_and_parked_connections_round_trip() {
        let carried = Carried {
            channels: vec![
                ("www".into(), [5, 6, 7, 8]),
                ("two words".into(), [9, 10, 11, 12]),
            ],
            parked: vec![("www".into(), 13), ("two words".into(), 14)],
        };
        assert_eq!(Carried::decode(&carried.encode()), carried);
    }

    #[test]
    fn malformed_lines_and_standard_descriptors_are_skipped() {
        let text = "channels 5 6 7 www\nchannels 1 6 7 8 www\nparked x www\nparked 2 www\n\
                    parked 9\nparked\nsomething 4 www\nparked 10 api\n";
        let carried = Carried::decode(text);
        assert!(carried.channels.is_empty(), "{carried:?}");
        assert_eq!(carried.parked, vec![("api".to_string(), 10)]);
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
