//! Listening sockets the master did not create: handed over by systemd (socket
//! activation, `LISTEN_FDS`) or by the previous master image in the reload handover
//! (`crate::handover`, keyed by address as php-fpm's FPM_SOCKETS). Each is matched to a
//! pool by its address; the rest are closed.

use crate::config::ListenAddress;
use nix::sys::socket::{SockaddrLike, SockaddrStorage, getsockname};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    Systemd,
    Handover,
}

#[derive(Debug)]
pub(super) struct InheritedSocket {
    pub key: String,
    pub fd: OwnedFd,
    pub origin: Origin,
}

#[derive(Debug, Default)]
pub(super) struct Inherited {
    sockets: Vec<InheritedSocket>,
}

/// The key an address is known by: the socket path, or `ip:port` as Rust prints it.
pub(super) fn address_keys(address: &ListenAddress) -> Vec<String> {
    match address {
        ListenAddress::Unix(path) => vec![path.display().to_string()],
        ListenAddress::Tcp(addr) => vec![addr.to_string()],
        // Whichever of the two a bare port ended up bound to.
        ListenAddress::AnyPort(port) => vec![format!("[::]:{port}"), format!("0.0.0.0:{port}")],
    }
}

/// The key of a bound socket, from the kernel.
pub(super) fn socket_key(fd: RawFd) -> Option<String> {
    let addr: SockaddrStorage = getsockname(fd).ok()?;
    if let Some(unix) = addr.as_unix_addr() {
        return unix.path().map(|p| p.display().to_string());
    }
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(std::net::SocketAddrV4::from(*v4).to_string());
    }
    if let Some(v6) = addr.as_sockaddr_in6() {
        return Some(std::net::SocketAddrV6::from(*v6).to_string());
    }
    let _ = addr.family();
    None
}

fn prepare(fd: &OwnedFd) {
    // Workers accept after a readiness wake-up and must never block in accept().
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    if let Ok(flags) = fcntl(fd, FcntlArg::F_GETFL) {
        let _ = fcntl(
            fd,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        );
    }
    crate::handover::set_cloexec(fd.as_raw_fd(), true);
}

impl Inherited {
    /// Collect what systemd's environment and the reload handover hand us, and remove
    /// systemd's variables so that neither CGI children nor a later image see stale
    /// descriptors.
    pub(super) fn collect(handed_over: Vec<crate::handover::Listener>) -> Inherited {
        let mut sockets = Vec::new();
        if let Ok(fds) = sd_notify::listen_fds() {
            for raw in fds {
                // SAFETY: systemd passed this descriptor to us (LISTEN_PID matched), and
                // nothing else in the process has taken ownership of it.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                match socket_key(raw) {
                    Some(key) => sockets.push(InheritedSocket {
                        key,
                        fd,
                        origin: Origin::Systemd,
                    }),
                    None => log::warn!(
                        "systemd passed fd {raw}, which is not a listening socket; closing it"
                    ),
                }
            }
        }
        for crate::handover::Listener { key, fd: raw } in handed_over {
            // Only take descriptors that really are open sockets with the said address.
            if raw <= 2 || socket_key(raw).as_deref() != Some(key.as_str()) {
                log::warn!("handed-over socket \"{key}\" (fd {raw}) does not match; ignoring it");
                continue;
            }
            // SAFETY: the previous image of this process left this descriptor open for
            // us under this key (checked just above) and nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            sockets.push(InheritedSocket {
                key,
                fd,
                origin: Origin::Handover,
            });
        }
        for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            // SAFETY: called once at start-up, before the master forks or starts anything
            // that could read the environment concurrently (it is single-threaded).
            unsafe { std::env::remove_var(var) };
        }
        for s in &sockets {
            prepare(&s.fd);
        }
        Inherited { sockets }
    }

    /// The inherited socket for `address`, if there is one.
    pub(super) fn take(&mut self, address: &ListenAddress) -> Option<InheritedSocket> {
        let keys = address_keys(address);
        let i = self.sockets.iter().position(|s| keys.contains(&s.key))?;
        let socket = self.sockets.swap_remove(i);
        log::info!(
            "using inherited socket fd={}, \"{}\"",
            socket.fd.as_raw_fd(),
            socket.key
        );
        Some(socket)
    }

    /// Close what no pool claimed. A unix socket file of ours (handed over by a reload) is
    /// removed with it; systemd's stay, they are systemd's to manage.
    pub(super) fn close_unused(self) {
        for s in self.sockets {
            log::info!(
                "closing inherited socket \"{}\": no pool listens there any more",
                s.key
            );
            if s.origin == Origin::Handover && s.key.starts_with('/') {
                let _ = std::fs::remove_file(&s.key);
            }
        }
    }
}
