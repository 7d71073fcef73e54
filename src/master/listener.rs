//! Pool listening sockets, created by the master and shared with its workers.

use super::inherit::{Inherited, Origin};
use crate::config::{ListenAddress, PoolConfig};
use crate::isolation;
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, UnixAddr, bind, listen,
    setsockopt, socket, sockopt,
};
use nix::sys::stat::{Mode, umask};
use nix::unistd::{Gid, Group, Uid, User, chown};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// A bound, listening, non-blocking socket. Dropping it closes the socket and removes the
/// socket file this process made (or took over from the image before a reload), so every
/// way out of start-up, a reload or the run leaves no file behind without a ladder of
/// `close` calls. A socket systemd passed has no file of ours and is only closed.
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) address: ListenAddress,
    fd: OwnedFd,
    /// The socket file removed on drop.
    unix_path: Option<PathBuf>,
    /// systemd created it and keeps it open across our restarts.
    from_systemd: bool,
    /// The process that may remove the file: a forked worker holds a copy of the
    /// master's listeners, and must not remove the file if it ever drops one (a panic
    /// unwinding out of the worker into the master's code would).
    owner: u32,
}

impl Listener {
    fn new(
        address: ListenAddress,
        fd: OwnedFd,
        unix_path: Option<PathBuf>,
        from_systemd: bool,
    ) -> Self {
        Listener {
            address,
            fd,
            unix_path,
            from_systemd,
            owner: std::process::id(),
        }
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub(crate) fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.fd)
    }

    /// The socket file this listener removes when dropped.
    pub(crate) fn owned_path(&self) -> Option<&Path> {
        self.unix_path.as_deref()
    }

    /// Whether systemd holds this socket too (socket activation): it keeps queueing
    /// connections for the next start, so it must never be shut down.
    pub(crate) fn held_by_systemd(&self) -> bool {
        self.from_systemd
    }

    /// Close the socket and remove its file now (what dropping it does).
    pub(crate) fn close(self) {
        drop(self);
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(path) = &self.unix_path
            && std::process::id() == self.owner
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The pool's socket: one inherited (from systemd, or from before a reload) when there is
/// one for its address, else a new one. Errors name the pool and address.
pub(crate) fn open(pool: &PoolConfig, inherited: &mut Inherited) -> Result<Listener, String> {
    open_at(pool, &pool.listen, inherited)
}

/// A socket at `address` with the pool's settings (also its `pm.status_listen` socket).
pub(crate) fn open_at(
    pool: &PoolConfig,
    address: &ListenAddress,
    inherited: &mut Inherited,
) -> Result<Listener, String> {
    if let Some(socket) = inherited.take(address) {
        // The socket file of a reload is ours to remove on exit; systemd's is not.
        let unix_path = match (address, socket.origin) {
            (ListenAddress::Unix(path), Origin::Handover) => Some(path.clone()),
            _ => None,
        };
        let from_systemd = matches!(socket.origin, Origin::Systemd);
        return Ok(Listener::new(
            address.clone(),
            socket.fd,
            unix_path,
            from_systemd,
        ));
    }
    create(pool, address)
}

fn create(pool: &PoolConfig, address: &ListenAddress) -> Result<Listener, String> {
    let context = |what: &str, e: &dyn std::fmt::Display| {
        format!("[pool {}] listen {}: {what}: {e}", pool.name, address)
    };
    let backlog = Backlog::new(pool.listen_backlog.clamp(-1, i32::MAX))
        .map_err(|e| context("invalid listen.backlog", &e))?;
    match address {
        ListenAddress::Unix(path) => open_unix(pool, address, path, backlog),
        ListenAddress::Tcp(addr) => {
            let fd = open_tcp(*addr, false).map_err(|e| context("bind", &e))?;
            listen(&fd, backlog).map_err(|e| context("listen", &e))?;
            Ok(Listener::new(address.clone(), fd, None, false))
        }
        ListenAddress::AnyPort(port) => {
            // Every address: IPv6 with IPv4-mapped, or IPv4 alone where IPv6 is off.
            let v6 = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, *port, 0, 0));
            let fd = match open_tcp(v6, true) {
                Ok(fd) => fd,
                Err(nix::errno::Errno::EAFNOSUPPORT) => {
                    let v4 = SocketAddr::from(([0, 0, 0, 0], *port));
                    open_tcp(v4, false).map_err(|e| context("bind", &e))?
                }
                Err(e) => return Err(context("bind", &e)),
            };
            listen(&fd, backlog).map_err(|e| context("listen", &e))?;
            Ok(Listener::new(address.clone(), fd, None, false))
        }
    }
}

fn open_tcp(addr: SocketAddr, dual_stack: bool) -> nix::Result<OwnedFd> {
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    let fd = match addr {
        SocketAddr::V4(a) => {
            let fd = socket(AddressFamily::Inet, SockType::Stream, flags, None)?;
            setsockopt(&fd, sockopt::ReuseAddr, &true)?;
            bind(fd.as_raw_fd(), &SockaddrIn::from(a))?;
            fd
        }
        SocketAddr::V6(a) => {
            let fd = socket(AddressFamily::Inet6, SockType::Stream, flags, None)?;
            setsockopt(&fd, sockopt::ReuseAddr, &true)?;
            setsockopt(&fd, sockopt::Ipv6V6Only, &!dual_stack)?;
            bind(fd.as_raw_fd(), &SockaddrIn6::from(a))?;
            fd
        }
    };
    Ok(fd)
}

fn open_unix(
    pool: &PoolConfig,
    address: &ListenAddress,
    path: &Path,
    backlog: Backlog,
) -> Result<Listener, String> {
    let context = |what: &str, e: &dyn std::fmt::Display| {
        format!(
            "[pool {}] listen {}: {what}: {e}",
            pool.name,
            path.display()
        )
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(format!(
                    "[pool {}] listen {}: another cgi-fpm (or php-fpm) instance seems to already listen on it",
                    pool.name,
                    path.display()
                ));
            }
            // A socket file nobody answers on is left over from a crash: replace it.
            std::fs::remove_file(path).map_err(|e| context("removing the stale socket", &e))?;
        }
        Ok(_) => {
            return Err(context(
                "refusing to replace it",
                &"it exists and is not a socket",
            ));
        }
        Err(_) => {}
    }
    // With an ACL, php-fpm leaves the owner and group alone.
    let acl = isolation::acl::resolve(pool)?;
    let owner = match acl {
        Some(_) => None,
        None => resolve_owner(pool)?,
    };
    let addr = UnixAddr::new(path).map_err(|e| context("invalid socket path", &e))?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| context("socket", &e))?;
    // The mode is set through the umask at bind time, so the socket never exists with
    // looser permissions than configured, not even for an instant.
    let mode = Mode::from_bits_truncate(pool.listen_mode & 0o777);
    let saved = umask(Mode::from_bits_truncate(0o777) & !mode);
    let bound = bind(fd.as_raw_fd(), &addr);
    umask(saved);
    bound.map_err(|e| context("bind", &e))?;
    // From here on an error drops the listener, which removes the file it bound.
    let listener = Listener::new(address.clone(), fd, Some(path.to_path_buf()), false);
    if let Some((uid, gid)) = owner {
        chown(path, uid, gid).map_err(|e| context("chown", &e))?;
    }
    if let Some(acl) = &acl {
        isolation::acl::apply(path, pool.listen_mode & 0o777, acl)
            .map_err(|e| format!("[pool {}] {e}", pool.name))?;
    }
    listen(&listener.fd, backlog).map_err(|e| context("listen", &e))?;
    Ok(listener)
}

/// The owner to give a socket file: user and group, each left alone when `None`.
type SocketOwner = (Option<Uid>, Option<Gid>);

/// listen.owner / listen.group as ids, when either is set.
fn resolve_owner(pool: &PoolConfig) -> Result<Option<SocketOwner>, String> {
    if pool.listen_owner.is_none() && pool.listen_group.is_none() {
        return Ok(None);
    }
    let uid = match &pool.listen_owner {
        None => None,
        Some(name) => Some(lookup_user(name).ok_or_else(|| {
            format!(
                "[pool {}] listen.owner: cannot get uid for user '{name}'",
                pool.name
            )
        })?),
    };
    let gid = match &pool.listen_group {
        None => None,
        Some(name) => Some(lookup_group(name).ok_or_else(|| {
            format!(
                "[pool {}] listen.group: cannot get gid for group '{name}'",
                pool.name
            )
        })?),
    };
    Ok(Some((uid, gid)))
}

fn lookup_user(name: &str) -> Option<Uid> {
    if let Ok(id) = name.parse::<u32>() {
        return Some(Uid::from_raw(id));
    }
    User::from_name(name).ok().flatten().map(|u| u.uid)
}

fn lookup_group(name: &str) -> Option<Gid> {
    if let Ok(id) = name.parse::<u32>() {
        return Some(Gid::from_raw(id));
    }
    Group::from_name(name).ok().flatten().map(|g| g.gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(path: &Path) -> OwnedFd {
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        bind(fd.as_raw_fd(), &UnixAddr::new(path).expect("address")).expect("bind");
        fd
    }

    #[test]
    fn dropping_removes_the_file_only_in_the_process_that_owns_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("www.sock");
        let address = ListenAddress::Unix(path.clone());
        let listener = Listener::new(address, bound(&path), Some(path.clone()), false);
        // SAFETY: the child only drops its copy of the listener and exits at once.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                drop(listener);
                // SAFETY: _exit ends the forked test process without running the
                // harness's code.
                unsafe { nix::libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                nix::sys::wait::waitpid(child, None).expect("waitpid");
            }
        }
        assert!(path.exists(), "a forked worker's drop removed the file");
        drop(listener);
        assert!(!path.exists(), "the owner's drop left the file");
    }

    #[test]
    fn a_socket_systemd_passed_keeps_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("www.sock");
        let address = ListenAddress::Unix(path.clone());
        drop(Listener::new(address, bound(&path), None, true));
        assert!(
            path.exists(),
            "systemd's socket file is systemd's to remove"
        );
    }
}
