//! `listen.allowed_clients`: which web servers may talk to a TCP pool, checked by the
//! worker right after accept (php-fpm's `fcgi_is_allowed`); `metrics.allowed_clients`
//! for the master's endpoint, the same way.
//!
//! A client not on the list is closed without a word and logged, in php-fpm's words.
//! Unix-socket peers are always let in (file permissions guard those). An IPv4 client seen
//! on an IPv6 socket as `::ffff:a.b.c.d` matches the entry `a.b.c.d`, as in php-fpm; we
//! also let an entry written `::ffff:a.b.c.d` match that client on an IPv4 socket, and
//! compare IPv6 addresses in full (php-fpm compares their first 12 bytes only).

use crate::config::PoolConfig;
use nix::sys::socket::{SockaddrStorage, getpeername};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

/// Whether `client` may connect; an empty list allows everyone.
pub fn is_allowed(allowed: &[IpAddr], client: IpAddr) -> bool {
    let client = client.to_canonical();
    allowed.is_empty()
        || allowed
            .iter()
            .any(|address| address.to_canonical() == client)
}

/// Check a connection the worker just accepted. `false` means: close it, unanswered (the
/// refusal is logged here).
pub fn admit(pool: &PoolConfig, connection: &OwnedFd) -> bool {
    admit_to(
        format_args!("[pool {}]", pool.name),
        &pool.listen_allowed_clients,
        connection,
    )
}

/// Check a connection just accepted on a socket guarded by `allowed` (a pool's, or the
/// master's `metrics.listen`); `listener` starts the log line of a refusal. `false`
/// means: close it, unanswered.
pub fn admit_to(
    listener: impl std::fmt::Display,
    allowed: &[IpAddr],
    connection: &OwnedFd,
) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let peer = match getpeername::<SockaddrStorage>(connection.as_raw_fd()) {
        Ok(peer) => peer,
        Err(e) => {
            // Gone already, most likely; with no address there is nothing to allow.
            log::warn!(
                "{listener} cannot tell which address connected ({e}); closing the connection"
            );
            return false;
        }
    };
    let client = if let Some(v4) = peer.as_sockaddr_in() {
        IpAddr::V4(v4.ip())
    } else if let Some(v6) = peer.as_sockaddr_in6() {
        IpAddr::V6(v6.ip())
    } else {
        // A unix-socket peer: its file's permissions decided already.
        return true;
    };
    if is_allowed(allowed, client) {
        return true;
    }
    log::error!(
        "{listener} Connection disallowed: IP address '{}' has been dropped.",
        client.to_canonical()
    );
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter()
            .map(|ip| ip.parse().expect("an address"))
            .collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn empty_allows_all() {
        assert!(is_allowed(&[], ip("192.0.2.1")));
        assert!(is_allowed(&[], ip("2001:db8::1")));
    }

    #[test]
    fn exact_matches_only() {
        let allowed = ips(&["127.0.0.1", "::1", "2001:db8::10"]);
        assert!(is_allowed(&allowed, ip("127.0.0.1")));
        assert!(is_allowed(&allowed, ip("::1")));
        assert!(is_allowed(&allowed, ip("2001:db8::10")));
        assert!(!is_allowed(&allowed, ip("127.0.0.2")));
        assert!(!is_allowed(&allowed, ip("192.0.2.1")));
        // Full 16 bytes: same first 12 bytes is not enough.
        assert!(!is_allowed(&allowed, ip("2001:db8::11")));
        assert!(!is_allowed(&allowed, ip("::2")));
    }

    #[test]
    fn ipv4_mapped_clients_match_ipv4_entries_and_back() {
        let allowed = ips(&["127.0.0.1"]);
        assert!(is_allowed(&allowed, ip("::ffff:127.0.0.1")));
        assert!(!is_allowed(&allowed, ip("::ffff:127.0.0.2")));
        let mapped_entry = ips(&["::ffff:10.0.0.1"]);
        assert!(is_allowed(&mapped_entry, ip("10.0.0.1")));
        assert!(is_allowed(&mapped_entry, ip("::ffff:10.0.0.1")));
        // ::1 is loopback, not a mapped 0.0.0.1.
        assert!(!is_allowed(&ips(&["0.0.0.1"]), ip("::1")));
    }
}
