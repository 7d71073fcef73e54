//! The master's side of parking idle kept connections (see `crate::parking`): it receives
//! them from workers, watches them in its event loop without ever reading them, and hands
//! each to the pool's idle workers once the web server sends the next request on it.

use crate::parking::{self, Peeked, Received};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::sys::socket::{MsgFlags, recv};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::{CHANNEL_TOKENS, PARKED_TOKENS};

/// One pool's channel: the master's end and the end its workers inherit. Workers park
/// connections by sending on their end, and the master hands them out by sending on its
/// own: a socket pair carries each direction apart, so one pair serves both, which keeps
/// a pool at two descriptors in the master (hundreds of pools add up; see `fdplan`).
pub struct Channels {
    master: OwnedFd,
    worker: OwnedFd,
    /// Connections handed out; workers count those they took (pending = the difference).
    pub handed_out: u64,
}

impl Channels {
    pub fn new() -> nix::Result<Channels> {
        let (master, worker) = parking::channel()?;
        Ok(Channels {
            master,
            worker,
            handed_out: 0,
        })
    }

    /// The channels a previous image handed over (see `handed_over`), in the order of
    /// `raw_fds`.
    pub fn from_fds([master, worker]: [OwnedFd; 2]) -> Channels {
        Channels {
            master,
            worker,
            handed_out: 0,
        }
    }

    pub fn raw_fds(&self) -> [RawFd; 2] {
        [self.master.as_raw_fd(), self.worker.as_raw_fd()]
    }

    /// Connections handed out that no worker has taken yet, given how many the pool's
    /// workers say they took. Counting alone drifts: across a reload, workers of the old
    /// image take some on their own scoreboard. So whenever the channel is seen empty the
    /// count starts again from there.
    pub fn pending(&mut self, taken: u64) -> u32 {
        let mut byte = [0u8; 1];
        // Peeking without room for control data takes no descriptor.
        let queued = recv(
            self.worker.as_raw_fd(),
            &mut byte,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        )
        .is_ok_and(|n| n > 0);
        if !queued {
            self.handed_out = taken;
            return 0;
        }
        self.handed_out.saturating_sub(taken).max(1) as u32
    }

    pub fn for_worker(&self) -> crate::worker::Parking<'_> {
        crate::worker::Parking {
            park: self.worker.as_fd(),
            handoff: self.worker.as_fd(),
        }
    }

    pub fn register(&self, registry: &Registry, pool: usize) -> std::io::Result<()> {
        registry.register(
            &mut SourceFd(&self.master.as_raw_fd()),
            Token(CHANNEL_TOKENS.start + pool),
            Interest::READABLE,
        )
    }
}

struct Parked {
    fd: OwnedFd,
    pool: usize,
    /// Part of a request head has arrived on it since then (the master waits for the
    /// rest, never a worker); the pool's cgi.request_header_timeout runs from here.
    head_since: Option<Instant>,
}

/// A pool's name and cgi.request_header_timeout, for heads the master waits for.
#[derive(Debug, Clone)]
pub struct HeadLimit {
    pub pool: String,
    pub timeout: Duration,
}

/// What an event on a parking token asks of the master.
#[derive(Debug, PartialEq, Eq)]
pub enum LotEvent {
    /// Not a parking token.
    None,
    /// Workers parked connections: nothing more to do.
    Parked,
    /// A connection was handed to the pool's workers (it may need a worker started).
    HandedOut { pool: usize },
}

pub struct Lot {
    parked: HashMap<Token, Parked>,
    /// By pool index; a pool missing here has no limit.
    limits: Vec<HeadLimit>,
    /// How many parked connections have part of a head (`head_since` is set).
    partial: usize,
    /// Oldest first, to make room when full; may hold tokens already gone.
    order: VecDeque<Token>,
    next: usize,
    capacity: usize,
}

impl Lot {
    /// At most `capacity` parked connections (they cost the master a descriptor each);
    /// beyond that the oldest is closed, which nginx takes as a closed idle connection.
    pub fn new(capacity: usize) -> Lot {
        Lot {
            parked: HashMap::new(),
            limits: Vec::new(),
            partial: 0,
            order: VecDeque::new(),
            next: 0,
            capacity: capacity.max(1),
        }
    }

    /// The pools' names and head timeouts, by pool index.
    pub fn set_limits(&mut self, limits: Vec<HeadLimit>) {
        self.limits = limits;
    }

    fn limit(&self, pool: usize) -> Option<Duration> {
        self.limits
            .get(pool)
            .map(|l| l.timeout)
            .filter(|t| !t.is_zero())
    }

    /// When the next partial head runs out of time.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.partial == 0 {
            return None;
        }
        self.parked
            .values()
            .filter_map(|p| Some(p.head_since? + self.limit(p.pool)?))
            .min()
    }

    /// Close the connections whose head did not complete in time, as a worker would.
    pub fn expire(&mut self, registry: &Registry, now: Instant) {
        if self.partial == 0 {
            return;
        }
        let late: Vec<Token> = self
            .parked
            .iter()
            .filter(|(_, p)| {
                p.head_since
                    .zip(self.limit(p.pool))
                    .is_some_and(|(since, limit)| now >= since + limit)
            })
            .map(|(token, _)| *token)
            .collect();
        for token in late {
            if let Some(gone) = self.remove(registry, token) {
                // Closing with unread bytes would reset the connection; what the peer sent
                // is less than PEEK_LIMIT, so one read takes it.
                let mut sink = [0u8; parking::PEEK_LIMIT];
                let _ = recv(gone.fd.as_raw_fd(), &mut sink, MsgFlags::MSG_DONTWAIT);
                let limit = &self.limits[gone.pool];
                log::warn!(
                    "[pool {}] the web server did not send a complete request within {}s (cgi.request_header_timeout); closing the connection",
                    limit.pool,
                    limit.timeout.as_secs()
                );
            }
        }
    }

    /// Forget a parked connection (dropping it closes it unless the caller keeps it).
    fn remove(&mut self, registry: &Registry, token: Token) -> Option<Parked> {
        let parked = self.parked.remove(&token)?;
        let _ = registry.deregister(&mut SourceFd(&parked.fd.as_raw_fd()));
        if parked.head_since.is_some() {
            self.partial -= 1;
        }
        Some(parked)
    }

    /// Handle an event on `token`, if it is a parking one.
    pub fn on_event(
        &mut self,
        registry: &Registry,
        token: Token,
        channels: &mut [Option<Channels>],
    ) -> LotEvent {
        if PARKED_TOKENS.contains(&token.0) {
            return self.on_parked_ready(registry, token, channels);
        }
        if CHANNEL_TOKENS.contains(&token.0)
            && let pool = token.0 - CHANNEL_TOKENS.start
            && pool < channels.len()
        {
            self.receive(registry, pool, channels);
            return LotEvent::Parked;
        }
        LotEvent::None
    }

    /// Take every connection workers have sent, and watch each.
    fn receive(&mut self, registry: &Registry, pool: usize, channels: &[Option<Channels>]) {
        let Some(ch) = channels.get(pool).and_then(Option::as_ref) else {
            return;
        };
        loop {
            let (fd, kind) = match parking::receive_with_kind(ch.master.as_fd()) {
                Ok((Received::Fd(fd), kind)) => (fd, kind),
                Ok((Received::Empty | Received::Closed, _)) => return,
                Err(e) => {
                    log::debug!("receiving a parked connection failed: {e}");
                    return;
                }
            };
            self.park_as(registry, fd, pool, kind);
        }
    }

    /// Watch `fd`, an idle kept connection of pool `pool`, until a request arrives on it.
    pub fn park(&mut self, registry: &Registry, fd: OwnedFd, pool: usize) {
        self.park_as(registry, fd, pool, parking::Kind::Idle);
    }

    /// [`Lot::park`]; a connection still awaiting its head has cgi.request_header_timeout
    /// to complete it, counted from now.
    fn park_as(&mut self, registry: &Registry, fd: OwnedFd, pool: usize, kind: parking::Kind) {
        if self.parked.len() >= self.capacity {
            self.evict_oldest(registry);
        }
        let token = Token(PARKED_TOKENS.start + self.next);
        self.next = (self.next + 1) % PARKED_TOKENS.len();
        // Registering a descriptor that is readable already reports it at once, so a
        // request that arrived on the way here is not missed.
        if registry
            .register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)
            .is_err()
        {
            return;
        }
        self.parked.insert(
            token,
            Parked {
                fd,
                pool,
                head_since: (kind == parking::Kind::AwaitingHead).then(Instant::now),
            },
        );
        if kind == parking::Kind::AwaitingHead {
            self.partial += 1;
        }
        self.order.push_back(token);
        // `order` keeps tokens of connections gone since; drop them now and then.
        if self.order.len() > 2 * self.capacity {
            let parked = &self.parked;
            self.order.retain(|t| parked.contains_key(t));
        }
    }

    /// Take what workers have sent on every channel (before a reload counts them).
    pub fn receive_all(&mut self, registry: &Registry, channels: &[Option<Channels>]) {
        for pool in 0..channels.len() {
            self.receive(registry, pool, channels);
        }
    }

    /// Every parked connection, with its pool's index.
    pub fn parked_fds(&self) -> impl Iterator<Item = (usize, RawFd)> + '_ {
        self.parked.values().map(|p| (p.pool, p.fd.as_raw_fd()))
    }

    /// Close every parked connection (stopping): nginx drops a cached connection that
    /// closes while idle and opens another, to a server that still listens, rather than
    /// send its next request into one that would be reset when this master exits.
    pub fn close_all(&mut self, registry: &Registry) {
        for (_, parked) in self.parked.drain() {
            let _ = registry.deregister(&mut SourceFd(&parked.fd.as_raw_fd()));
        }
        self.order.clear();
        self.partial = 0;
    }

    fn evict_oldest(&mut self, registry: &Registry) {
        while let Some(oldest) = self.order.pop_front() {
            if self.remove(registry, oldest).is_some() {
                return;
            }
        }
    }

    /// A parked connection woke: closed by the web server (forget it), part of a request
    /// head arrived (wait for the rest: it stays registered, and the next bytes wake us
    /// again), or a whole head (hand it out, unread).
    fn on_parked_ready(
        &mut self,
        registry: &Registry,
        token: Token,
        channels: &mut [Option<Channels>],
    ) -> LotEvent {
        let Some(parked) = self.parked.get_mut(&token) else {
            return LotEvent::None;
        };
        match parking::peek_head(parked.fd.as_fd()) {
            Peeked::Ready => {}
            Peeked::Partial(None) => return LotEvent::Parked,
            Peeked::Partial(Some(_)) => {
                if parked.head_since.is_none() {
                    parked.head_since = Some(Instant::now());
                    self.partial += 1;
                }
                return LotEvent::Parked;
            }
            // Closed or broken: it is done with.
            Peeked::Closed => {
                self.remove(registry, token);
                return LotEvent::Parked;
            }
        }
        let Some(parked) = self.remove(registry, token) else {
            return LotEvent::None;
        };
        let Some(ch) = channels.get_mut(parked.pool).and_then(Option::as_mut) else {
            return LotEvent::Parked;
        };
        match parking::send(ch.master.as_fd(), parked.fd.as_fd()) {
            Ok(()) => {
                ch.handed_out += 1;
                LotEvent::HandedOut { pool: parked.pool }
            }
            Err(e) => {
                // Closing it is what nginx expects of an upstream that cannot go on: it
                // retries the request on a new connection.
                log::warn!("cannot hand a kept connection to a worker: {e}; closing it");
                LotEvent::Parked
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn pending_handoffs_follow_the_channel_not_only_the_counts() {
        let mut ch = Channels::new().unwrap();
        let (conn, _peer) = UnixStream::pair().unwrap();
        parking::send(ch.master.as_fd(), conn.as_fd()).unwrap();
        ch.handed_out = 3;
        assert_eq!(ch.pending(0), 3);
        // Counts that say none while one waits (old workers took some): still one.
        assert_eq!(ch.pending(5), 1);
        // Peeking took nothing: a worker still receives it.
        let received = parking::receive(ch.worker.as_fd()).unwrap();
        assert!(matches!(received, Received::Fd(_)));
        // Empty: nothing pending, and counting starts again from the workers' count.
        assert_eq!(ch.pending(7), 0);
        assert_eq!(ch.handed_out, 7);
    }
}
