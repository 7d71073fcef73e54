//! The master's own HTTP endpoint (`metrics.listen`): accepts, reads one request head,
//! answers from figures the master gathers, closes. Everything is non-blocking and
//! bounded (a head size limit, a deadline per connection, a cap on open connections), so
//! a slow or idle client costs a descriptor and never delays a reap, a signal or a spawn.
//! The protocol and pages are `crate::endpoint`'s.

use super::listener::{self, Listener};
use crate::config::{ListenAddress, PoolConfig};
use crate::endpoint::exposition::{MasterView, PoolView};
use crate::endpoint::http::MAX_HEAD;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::errno::Errno;
use nix::sys::socket::{SockFlag, accept4};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::tokens::{
    ENDPOINT_CONNECTIONS as CONNECTION_TOKENS, ENDPOINT_LISTENER as LISTENER_TOKEN,
};
/// Open connections at most; a new one past this closes the oldest, so idle clients
/// cannot lock a scraper out.
pub(super) const MAX_CONNECTIONS: usize = crate::fdplan::METRICS_CONNECTIONS as usize;
/// From accept to the last byte written.
const DEADLINE: Duration = Duration::from_secs(5);
/// Accepted per wake-up at most, so a flood of connections cannot hold the loop; the
/// listener is re-armed to come back for the rest.
const ACCEPT_BATCH: usize = 128;

struct Connection {
    fd: OwnedFd,
    read: Vec<u8>,
    /// The response, once there is one, and how much of it went out.
    out: Option<(Vec<u8>, usize)>,
    deadline: Instant,
}

pub(super) struct Endpoint {
    listener: Listener,
    allowed: Vec<IpAddr>,
    connections: HashMap<Token, Connection>,
    /// Oldest first; may hold tokens gone since.
    order: VecDeque<Token>,
    next: usize,
    /// Accept failing (out of descriptors, most likely): logged once, retried after a
    /// growing pause. Re-arming at once would fire again at once, the backlog being
    /// still readable: the master would spin on it.
    shortage: crate::shortage::Episode,
    retry_at: Option<Instant>,
}

/// The socket `metrics.listen` names: inherited across a reload when it is there. An
/// error names the directive, not the stand-in pool the socket settings come from.
pub(super) fn open(
    address: &ListenAddress,
    inherited: &mut super::inherit::Inherited,
) -> Result<Listener, String> {
    listener::open_at(&listen_settings(address), address, inherited)
        .map_err(|e| e.replacen("[pool metrics] listen", "metrics.listen", 1))
}

/// The socket settings of the endpoint, as if of a pool named `metrics`: mode 0660,
/// owned by the master's user, the default backlog.
fn listen_settings(address: &ListenAddress) -> PoolConfig {
    PoolConfig::new("metrics", address.clone())
}

impl Endpoint {
    pub(super) fn new(listener: Listener, allowed: Vec<IpAddr>) -> Endpoint {
        Endpoint {
            listener,
            allowed,
            connections: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
            shortage: crate::shortage::Episode::default(),
            retry_at: None,
        }
    }

    pub(super) fn raw_fd(&self) -> RawFd {
        self.listener.raw_fd()
    }

    pub(super) fn listener(&self) -> &Listener {
        &self.listener
    }

    pub(super) fn register(&self, registry: &Registry) -> std::io::Result<()> {
        registry.register(
            &mut SourceFd(&self.listener.raw_fd()),
            LISTENER_TOKEN,
            Interest::READABLE,
        )
    }

    pub(super) fn owns(token: Token) -> bool {
        token == LISTENER_TOKEN || CONNECTION_TOKENS.contains(&token.0)
    }

    pub(super) fn open_connections(&self) -> usize {
        self.connections.len()
    }

    /// The earliest deadline of an open connection.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.connections
            .values()
            .map(|c| c.deadline)
            .chain(self.retry_at)
            .min()
    }

    /// Close the connections past their deadline, unanswered.
    pub(super) fn expire(&mut self, registry: &Registry) {
        let now = Instant::now();
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
            self.rearm(registry);
        }
        if self.connections.is_empty() {
            return;
        }
        let late: Vec<Token> = self
            .connections
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            self.close_connection(registry, token);
        }
    }

    /// Handle an event on one of our tokens. `figures` renders a page from the master's
    /// figures, and is called only for requests that need them.
    pub(super) fn on_event<F>(&mut self, registry: &Registry, token: Token, figures: F)
    where
        F: FnOnce(&mut dyn FnMut(&[PoolView<'_>], &MasterView) -> Vec<u8>) -> Vec<u8>,
    {
        if token == LISTENER_TOKEN {
            return self.accept(registry);
        }
        let Some(conn) = self.connections.get_mut(&token) else {
            return;
        };
        if conn.out.is_none() {
            match read_some(conn) {
                ReadOutcome::Open => {}
                ReadOutcome::Closed => return self.close_connection(registry, token),
            }
            match crate::endpoint::answer(&conn.read, figures) {
                None if conn.read.len() < MAX_HEAD => return,
                None => return self.close_connection(registry, token),
                Some(response) => conn.out = Some((response, 0)),
            }
        }
        match write_some(conn) {
            WriteOutcome::Done | WriteOutcome::Failed => self.close_connection(registry, token),
            WriteOutcome::Blocked => {
                let _ = registry.reregister(
                    &mut SourceFd(&conn.fd.as_raw_fd()),
                    token,
                    Interest::WRITABLE,
                );
            }
        }
    }

    fn accept(&mut self, registry: &Registry) {
        for _ in 0..ACCEPT_BATCH {
            let fd = match accept4(
                self.listener.raw_fd(),
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            ) {
                // SAFETY: accept4 returned a new descriptor that nothing else owns.
                Ok(raw) => unsafe { OwnedFd::from_raw_fd(raw) },
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
                Err(e) => {
                    // The backlog waits for the retry (`expire` re-arms).
                    let failure = self.shortage.failed();
                    if failure.first {
                        log::warn!("metrics.listen: accept failed: {e}; retrying with backoff");
                    }
                    self.retry_at = Some(Instant::now() + failure.backoff);
                    return;
                }
            };
            if let Some(failures) = self.shortage.succeeded() {
                log::info!("metrics.listen: accepting again after {failures} failed attempts");
            }
            if !self.admit(&fd) {
                continue;
            }
            if self.connections.len() >= MAX_CONNECTIONS {
                self.close_oldest(registry);
            }
            let token = Token(CONNECTION_TOKENS.start + self.next);
            self.next = (self.next + 1) % CONNECTION_TOKENS.len();
            if registry
                .register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)
                .is_err()
            {
                continue;
            }
            self.connections.insert(
                token,
                Connection {
                    fd,
                    read: Vec::new(),
                    out: None,
                    deadline: Instant::now() + DEADLINE,
                },
            );
            self.order.push_back(token);
            if self.order.len() > 2 * MAX_CONNECTIONS {
                let open = &self.connections;
                self.order.retain(|t| open.contains_key(t));
            }
        }
        // More may wait: come back for them after the rest of this round.
        self.rearm(registry);
    }

    fn rearm(&self, registry: &Registry) {
        let _ = registry.reregister(
            &mut SourceFd(&self.listener.raw_fd()),
            LISTENER_TOKEN,
            Interest::READABLE,
        );
    }

    /// `metrics.allowed_clients`, for TCP peers; refused ones are closed unanswered.
    fn admit(&self, fd: &OwnedFd) -> bool {
        crate::isolation::clients::admit_to("metrics.listen:", &self.allowed, fd)
    }

    fn close_oldest(&mut self, registry: &Registry) {
        while let Some(oldest) = self.order.pop_front() {
            if self.connections.contains_key(&oldest) {
                return self.close_connection(registry, oldest);
            }
        }
    }

    fn close_connection(&mut self, registry: &Registry, token: Token) {
        if let Some(conn) = self.connections.remove(&token) {
            let _ = registry.deregister(&mut SourceFd(&conn.fd.as_raw_fd()));
        }
    }
}

enum ReadOutcome {
    Open,
    Closed,
}

/// Read what is there, up to the head limit.
fn read_some(conn: &mut Connection) -> ReadOutcome {
    let mut chunk = [0u8; 2048];
    loop {
        let room = MAX_HEAD.saturating_sub(conn.read.len());
        if room == 0 {
            return ReadOutcome::Open;
        }
        let want = room.min(chunk.len());
        match nix::unistd::read(&conn.fd, &mut chunk[..want]) {
            Ok(0) => return ReadOutcome::Closed,
            Ok(n) => conn.read.extend_from_slice(&chunk[..n]),
            Err(Errno::EAGAIN) => return ReadOutcome::Open,
            Err(Errno::EINTR) => {}
            Err(_) => return ReadOutcome::Closed,
        }
    }
}

enum WriteOutcome {
    Done,
    Blocked,
    Failed,
}

fn write_some(conn: &mut Connection) -> WriteOutcome {
    let Some((out, sent)) = &mut conn.out else {
        return WriteOutcome::Failed;
    };
    while *sent < out.len() {
        match nix::sys::socket::send(
            conn.fd.as_raw_fd(),
            &out[*sent..],
            nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(n) => *sent += n,
            Err(Errno::EAGAIN) => return WriteOutcome::Blocked,
            Err(Errno::EINTR) => {}
            Err(_) => return WriteOutcome::Failed,
        }
    }
    WriteOutcome::Done
}
