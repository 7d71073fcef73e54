//! The connections the master holds (see `crate::parking` and DESIGN.md, "Connections the
//! master holds"): idle kept connections and new ones whose head has not arrived, which
//! workers send it, and, under request_queue_timeout, new connections it accepts itself
//! while their pool is full. It watches them in its event loop without reading them; once
//! a request's head is complete the connection waits in its pool's queue, and the master
//! hands the oldest to each idle worker, or answers 503 when its wait runs out.

use crate::parking::{self, Peeked, Received};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::sys::socket::{MsgFlags, recv};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::tokens::{CHANNEL_TOKENS, PARKED_TOKENS};

/// One pool's channel: the master's end and the end its workers inherit. Workers park
/// connections by sending on their end, and the master hands them out by sending on its
/// own: a socket pair carries each direction apart, so one pair serves both, which keeps
/// a pool at two descriptors in the master (hundreds of pools add up; see `fdplan`).
pub(super) struct Channels {
    master: OwnedFd,
    worker: OwnedFd,
    /// Connections handed out; workers count those they took (pending = the difference).
    pub handed_out: u64,
}

impl Channels {
    pub(super) fn new() -> nix::Result<Channels> {
        let (master, worker) = parking::channel()?;
        Ok(Channels {
            master,
            worker,
            handed_out: 0,
        })
    }

    /// The channels a previous image handed over (see `handed_over`), in the order of
    /// `raw_fds`.
    pub(super) fn from_fds([master, worker]: [OwnedFd; 2]) -> Channels {
        Channels {
            master,
            worker,
            handed_out: 0,
        }
    }

    pub(super) fn raw_fds(&self) -> [RawFd; 2] {
        [self.master.as_raw_fd(), self.worker.as_raw_fd()]
    }

    /// Connections handed out that no worker has taken yet, given how many the pool's
    /// workers say they took. Counting alone drifts: across a reload, workers of the old
    /// image take some on their own scoreboard. So whenever the channel is seen empty the
    /// count starts again from there.
    pub(super) fn pending(&mut self, taken: u64) -> u32 {
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

    pub(super) fn for_worker(&self) -> crate::worker::Parking<'_> {
        crate::worker::Parking {
            park: self.worker.as_fd(),
            handoff: self.worker.as_fd(),
        }
    }

    pub(super) fn register(&self, registry: &Registry, pool: usize) -> std::io::Result<()> {
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
    /// rest, never a worker); the pool's cgi.request_header_timeout runs from here. For a
    /// new connection, from its accept (as a worker counts it).
    head_since: Option<Instant>,
    /// When the request on it reached cgi-fpm: a new connection's accept, or the first
    /// byte of the next request on a kept one (none yet: an idle kept connection). The
    /// pool's request_queue_timeout runs from here.
    arrived: Option<Instant>,
    /// Its head is complete: it waits in its pool's queue for a worker.
    queued: bool,
}

/// A connection the previous image held, for [`Lot::restore`]: its pool's index, the
/// connection, and when the request waiting on it arrived.
pub(super) type HeldOver = (usize, OwnedFd, Option<Instant>);

/// A pool's name and the limits on the connections the master holds for it (zero: none).
#[derive(Debug, Clone, Default)]
pub(super) struct PoolLimits {
    pub pool: String,
    /// cgi.request_header_timeout: for a head to complete.
    pub header_timeout: Duration,
    /// request_queue_timeout: for a request with its head complete to reach a worker.
    pub queue_timeout: Duration,
}

/// What an event on a parking token asks of the master.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum LotEvent {
    /// Not a parking token.
    None,
    /// Workers parked connections, or a held one changed: nothing more to do.
    Parked,
    /// A request head completed: the connection waits in the pool's queue for the master
    /// to hand it to a worker (see [`Lot::dispatch`]).
    Queued { pool: usize },
}

/// One pool's connections with a complete head, waiting for a worker.
#[derive(Default)]
struct Waiting {
    /// Oldest arrival first; may hold tokens no longer waiting (handed out, refused,
    /// closed), skipped when met.
    tokens: VecDeque<(Instant, Token)>,
    /// How many of them still wait.
    live: u32,
}

pub(super) struct Lot {
    parked: HashMap<Token, Parked>,
    /// By pool index; a pool missing here has no limits.
    limits: Vec<PoolLimits>,
    /// By pool index.
    waiting: Vec<Waiting>,
    /// Every head and queue deadline, soonest first. An entry is only a reminder to look:
    /// what is due is worked out from the connection when it comes up, and entries of
    /// connections gone since are dropped then (or when they pile up, see `tidy`). So
    /// the next deadline is a peek, and expiring costs only what is due.
    deadlines: BinaryHeap<Reverse<(Instant, Token)>>,
    /// Oldest first, to make room when full; may hold tokens already gone.
    order: VecDeque<Token>,
    /// Pools of the requests refused since the master last asked (one entry each).
    refused: Vec<usize>,
    next: usize,
    capacity: usize,
}

impl Lot {
    /// At most `capacity` parked connections (they cost the master a descriptor each);
    /// beyond that the oldest idle one is closed, which nginx takes as a closed idle
    /// connection.
    pub(super) fn new(capacity: usize) -> Lot {
        Lot {
            parked: HashMap::new(),
            limits: Vec::new(),
            waiting: Vec::new(),
            deadlines: BinaryHeap::new(),
            order: VecDeque::new(),
            refused: Vec::new(),
            next: 0,
            capacity: capacity.max(1),
        }
    }

    /// The pools' names and limits, by pool index.
    pub(super) fn set_limits(&mut self, limits: Vec<PoolLimits>) {
        self.waiting.resize_with(limits.len(), Waiting::default);
        self.limits = limits;
    }

    fn header_limit(&self, pool: usize) -> Option<Duration> {
        self.limits
            .get(pool)
            .map(|l| l.header_timeout)
            .filter(|t| !t.is_zero())
    }

    fn queue_limit(&self, pool: usize) -> Option<Duration> {
        self.limits
            .get(pool)
            .map(|l| l.queue_timeout)
            .filter(|t| !t.is_zero())
    }

    fn pool_name(&self, pool: usize) -> &str {
        self.limits.get(pool).map_or("?", |l| l.pool.as_str())
    }

    /// When something held is next due: a head that must be complete, or a wait for a
    /// worker that ends. May be early (a connection gone since): the master then wakes
    /// once for nothing.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    /// Close the connections whose head did not complete in time, as a worker would, and
    /// answer 503 to the requests that waited for a worker past request_queue_timeout.
    pub(super) fn expire(&mut self, registry: &Registry, now: Instant) {
        while let Some(&Reverse((at, token))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let Some(parked) = self.parked.get(&token) else {
                continue;
            };
            let pool = parked.pool;
            if parked.queued {
                let due = self
                    .queue_limit(pool)
                    .zip(parked.arrived)
                    .is_some_and(|(limit, arrived)| now >= arrived + limit);
                if due {
                    self.refuse(registry, token, now, true);
                }
            } else if self
                .header_limit(pool)
                .zip(parked.head_since)
                .is_some_and(|(limit, since)| now >= since + limit)
            {
                self.close_late_head(registry, token);
            }
        }
        self.tidy();
    }

    /// The pools of the requests answered 503 since the last call, one entry per request.
    pub(super) fn take_refused(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.refused)
    }

    fn close_late_head(&mut self, registry: &Registry, token: Token) {
        let Some(gone) = self.remove(registry, token) else {
            return;
        };
        // Closing with unread bytes would reset the connection; what the peer sent is
        // less than PEEK_LIMIT, so one read takes it.
        let mut sink = [0u8; parking::PEEK_LIMIT];
        let _ = recv(gone.fd.as_raw_fd(), &mut sink, MsgFlags::MSG_DONTWAIT);
        log::warn!(
            "[pool {}] the web server did not send a complete request within {}s (cgi.request_header_timeout); closing the connection",
            self.pool_name(gone.pool),
            self.header_limit(gone.pool).unwrap_or_default().as_secs()
        );
    }

    /// Answer the request waiting on `token` 503 with Retry-After, log it, and count it.
    /// A kept connection whose request was read whole goes on as an idle kept one if
    /// `may_keep`; any other is closed once the answer is written.
    fn refuse(&mut self, registry: &Registry, token: Token, now: Instant, may_keep: bool) {
        let Some(gone) = self.remove(registry, token) else {
            return;
        };
        let limit = self.queue_limit(gone.pool).unwrap_or_default();
        let waited = gone.arrived.map_or(Duration::ZERO, |arrived| {
            now.saturating_duration_since(arrived)
        });
        // The head is complete (and under PEEK_LIMIT, or its start is all that is needed).
        let mut sent = vec![0u8; parking::PEEK_LIMIT];
        let n = recv(gone.fd.as_raw_fd(), &mut sent, MsgFlags::MSG_DONTWAIT).unwrap_or(0);
        let answer = super::refusal::refuse(&sent[..n], super::refusal::retry_after(limit));
        let request = answer
            .as_ref()
            .and_then(|a| a.request.clone())
            .unwrap_or_else(|| "a request".to_string());
        log::warn!(
            "[pool {}] {request} waited {}.{:03}s for a free worker, past request_queue_timeout ({}s); answered 503 Service Unavailable",
            self.pool_name(gone.pool),
            waited.as_secs(),
            waited.subsec_millis(),
            limit.as_secs()
        );
        self.refused.push(gone.pool);
        let Some(answer) = answer else {
            return;
        };
        let written = write_now(gone.fd.as_fd(), &answer.bytes);
        if may_keep && written && answer.keep_conn && answer.complete {
            self.park(registry, gone.fd, gone.pool);
            return;
        }
        // The web server reads the answer before it sees the end of the connection; what
        // it sends meanwhile (the rest of a body) is read off so that closing does not
        // reset the connection under the answer.
        let _ = nix::sys::socket::shutdown(gone.fd.as_raw_fd(), nix::sys::socket::Shutdown::Write);
        let _ = recv(gone.fd.as_raw_fd(), &mut sent, MsgFlags::MSG_DONTWAIT);
    }

    /// Forget a parked connection (dropping it closes it unless the caller keeps it).
    fn remove(&mut self, registry: &Registry, token: Token) -> Option<Parked> {
        let parked = self.parked.remove(&token)?;
        let _ = registry.deregister(&mut SourceFd(&parked.fd.as_raw_fd()));
        if parked.queued
            && let Some(waiting) = self.waiting.get_mut(parked.pool)
        {
            waiting.live = waiting.live.saturating_sub(1);
        }
        Some(parked)
    }

    /// Drop the reminders and queue entries of connections gone since, once they make up
    /// most of what is kept (a steady stream of short waits would otherwise grow them).
    fn tidy(&mut self) {
        let parked = &self.parked;
        if self.deadlines.len() > 2 * parked.len() + 64 {
            self.deadlines
                .retain(|Reverse((_, token))| parked.contains_key(token));
        }
        for (pool, waiting) in self.waiting.iter_mut().enumerate() {
            let still = |token: &Token| {
                parked
                    .get(token)
                    .is_some_and(|p| p.queued && p.pool == pool)
            };
            while waiting.tokens.front().is_some_and(|(_, t)| !still(t)) {
                waiting.tokens.pop_front();
            }
            if waiting.tokens.len() > 2 * waiting.live as usize + 16 {
                waiting.tokens.retain(|(_, t)| still(t));
            }
        }
    }

    /// Handle an event on `token`, if it is a parking one.
    pub(super) fn on_event(
        &mut self,
        registry: &Registry,
        token: Token,
        channels: &mut [Option<Channels>],
    ) -> LotEvent {
        if PARKED_TOKENS.contains(&token.0) {
            return self.on_parked_ready(registry, token);
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
    pub(super) fn park(&mut self, registry: &Registry, fd: OwnedFd, pool: usize) {
        self.park_as(registry, fd, pool, parking::Kind::Idle);
    }

    /// Hold `fd`, a new connection of pool `pool` that reached cgi-fpm at `arrived`, until
    /// its head is complete and a worker is free (request_queue_timeout).
    pub(super) fn hold(&mut self, registry: &Registry, fd: OwnedFd, pool: usize, arrived: Instant) {
        self.insert(registry, fd, pool, Some(arrived), Some(arrived));
    }

    /// A connection the previous image held (see `parked_fds`): idle if it had no request
    /// yet, else waiting since `arrived`, as before the reload.
    pub(super) fn restore(
        &mut self,
        registry: &Registry,
        fd: OwnedFd,
        pool: usize,
        arrived: Option<Instant>,
    ) {
        self.insert(registry, fd, pool, arrived, arrived);
    }

    /// [`Lot::park`]; a connection still awaiting its head has cgi.request_header_timeout
    /// to complete it, counted from now (as its wait for a worker).
    fn park_as(&mut self, registry: &Registry, fd: OwnedFd, pool: usize, kind: parking::Kind) {
        let since = (kind == parking::Kind::AwaitingHead).then(Instant::now);
        self.insert(registry, fd, pool, since, since);
    }

    fn insert(
        &mut self,
        registry: &Registry,
        fd: OwnedFd,
        pool: usize,
        head_since: Option<Instant>,
        arrived: Option<Instant>,
    ) {
        // Full of requests waiting for a worker, nothing else: an idle kept connection
        // is the one to close (the web server opens another when it needs one).
        if self.parked.len() >= self.capacity && !self.make_room(registry, arrived.is_some()) {
            return;
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
        if let Some((since, limit)) = head_since.zip(self.header_limit(pool)) {
            self.deadlines.push(Reverse((since + limit, token)));
        }
        self.parked.insert(
            token,
            Parked {
                fd,
                pool,
                head_since,
                arrived,
                queued: false,
            },
        );
        self.order.push_back(token);
        // `order` keeps tokens of connections gone since; drop them now and then.
        if self.order.len() > 2 * self.capacity {
            let parked = &self.parked;
            self.order.retain(|t| parked.contains_key(t));
        }
    }

    /// Whether another connection fits without closing one.
    pub(super) fn has_room(&self) -> bool {
        self.parked.len() < self.capacity
    }

    /// Connections of pool `pool` with a complete head waiting for a worker.
    pub(super) fn held(&self, pool: usize) -> u32 {
        self.waiting.get(pool).map_or(0, |w| w.live)
    }

    /// Hand at most `available` of the pool's waiting connections to its workers, oldest
    /// first. Returns how many went.
    pub(super) fn dispatch(
        &mut self,
        registry: &Registry,
        pool: usize,
        available: usize,
        channels: &mut [Option<Channels>],
    ) -> usize {
        let mut handed = 0;
        while handed < available {
            let Some(token) = self.pop_oldest(pool) else {
                break;
            };
            let Some(parked) = self.remove(registry, token) else {
                continue;
            };
            // A pool without channels parks nothing; dropping closes it.
            let Some(ch) = channels.get_mut(pool).and_then(Option::as_mut) else {
                continue;
            };
            match parking::send(ch.master.as_fd(), parked.fd.as_fd()) {
                Ok(()) => {
                    ch.handed_out += 1;
                    handed += 1;
                }
                // Closing it is what nginx expects of an upstream that cannot go on: it
                // retries the request on a new connection.
                Err(e) => {
                    log::warn!("cannot hand a kept connection to a worker: {e}; closing it")
                }
            }
        }
        handed
    }

    /// The token of the pool's oldest waiting connection, taken off its queue.
    fn pop_oldest(&mut self, pool: usize) -> Option<Token> {
        let waiting = self.waiting.get_mut(pool)?;
        while let Some((_, token)) = waiting.tokens.pop_front() {
            if self
                .parked
                .get(&token)
                .is_some_and(|p| p.queued && p.pool == pool)
            {
                return Some(token);
            }
        }
        None
    }

    /// Take what workers have sent on every channel (before a reload counts them).
    pub(super) fn receive_all(&mut self, registry: &Registry, channels: &[Option<Channels>]) {
        for pool in 0..channels.len() {
            self.receive(registry, pool, channels);
        }
    }

    /// Every parked connection, with its pool's index and when its request arrived (none
    /// for an idle kept one).
    pub(super) fn parked_fds(&self) -> impl Iterator<Item = (usize, RawFd, Option<Instant>)> + '_ {
        self.parked
            .values()
            .map(|p| (p.pool, p.fd.as_raw_fd(), p.arrived))
    }

    /// Close every parked connection (stopping): nginx drops a cached connection that
    /// closes while idle and opens another, to a server that still listens, rather than
    /// send its next request into one that would be reset when this master exits.
    pub(super) fn close_all(&mut self, registry: &Registry) {
        for (_, parked) in self.parked.drain() {
            let _ = registry.deregister(&mut SourceFd(&parked.fd.as_raw_fd()));
        }
        self.order.clear();
        self.deadlines.clear();
        for waiting in &mut self.waiting {
            *waiting = Waiting::default();
        }
    }

    /// Full: close the oldest idle kept connection, else the oldest still sending its
    /// head. When every one held waits for a worker, the oldest of them is answered 503
    /// now rather than dropped unanswered, if `for_request` (the newcomer has one).
    /// Returns whether there is room now.
    fn make_room(&mut self, registry: &Registry, for_request: bool) -> bool {
        let parked = &self.parked;
        let oldest = |wanted: &dyn Fn(&Parked) -> bool| {
            self.order
                .iter()
                .position(|t| parked.get(t).is_some_and(wanted))
        };
        let (at, refuse) = match oldest(&|p| p.arrived.is_none()).or_else(|| oldest(&|p| !p.queued))
        {
            Some(at) => (at, false),
            None => match oldest(&|p| p.queued) {
                Some(at) if for_request => (at, true),
                Some(_) => return false,
                // Only tokens of connections gone: there is room.
                None => return true,
            },
        };
        let Some(token) = self.order.remove(at) else {
            return true;
        };
        if refuse {
            // Not kept: parking it again would need the room being made.
            self.refuse(registry, token, Instant::now(), false);
        } else {
            self.remove(registry, token);
        }
        true
    }

    /// A parked connection woke: closed by the web server (forget it), part of a request
    /// head arrived (wait for the rest: it stays registered, and the next bytes wake us
    /// again), or a whole head (it joins its pool's queue, unread).
    fn on_parked_ready(&mut self, registry: &Registry, token: Token) -> LotEvent {
        let now = Instant::now();
        let Some(parked) = self.parked.get_mut(&token) else {
            return LotEvent::None;
        };
        let peeked = parking::peek_head(parked.fd.as_fd());
        if parked.queued {
            // More of its request (a body), or the web server gave up waiting.
            if peeked == Peeked::Closed {
                self.remove(registry, token);
            }
            return LotEvent::Parked;
        }
        match peeked {
            Peeked::Ready => {}
            Peeked::Partial(None) => return LotEvent::Parked,
            Peeked::Partial(Some(_)) => {
                if parked.head_since.is_none() {
                    parked.head_since = Some(now);
                    parked.arrived.get_or_insert(now);
                    let pool = parked.pool;
                    if let Some(limit) = self.header_limit(pool) {
                        self.deadlines.push(Reverse((now + limit, token)));
                    }
                }
                return LotEvent::Parked;
            }
            // Closed or broken: it is done with.
            Peeked::Closed => {
                self.remove(registry, token);
                return LotEvent::Parked;
            }
        }
        let pool = parked.pool;
        let arrived = *parked.arrived.get_or_insert(now);
        parked.queued = true;
        if pool >= self.waiting.len() {
            self.waiting.resize_with(pool + 1, Waiting::default);
        }
        let waiting = &mut self.waiting[pool];
        // Arrivals are nearly always in order: this is a push at the back.
        let at = waiting.tokens.partition_point(|(t, _)| *t <= arrived);
        waiting.tokens.insert(at, (arrived, token));
        waiting.live += 1;
        if let Some(limit) = self.queue_limit(pool) {
            self.deadlines.push(Reverse((arrived + limit, token)));
        }
        LotEvent::Queued { pool }
    }
}

/// Write all of `bytes` to a non-blocking socket at once, or report that it could not:
/// a few hundred bytes on a connection with nothing else in flight always fit.
fn write_now(fd: BorrowedFd<'_>, bytes: &[u8]) -> bool {
    loop {
        match nix::sys::socket::send(
            fd.as_raw_fd(),
            bytes,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(n) => return n == bytes.len(),
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fastcgi::record::{RecordType, Role, write_begin_request, write_stream_end};
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    /// A lot for one pool `www` with request_queue_timeout `queue`, and its poll.
    fn lot(queue: Duration, capacity: usize) -> (mio::Poll, Lot) {
        let poll = mio::Poll::new().unwrap();
        let mut lot = Lot::new(capacity);
        lot.set_limits(vec![PoolLimits {
            pool: "www".into(),
            header_timeout: Duration::from_secs(30),
            queue_timeout: queue,
        }]);
        (poll, lot)
    }

    /// A connection whose whole request (id `id`, not kept) has arrived, held by the lot
    /// as arrived `ago`; returns the web server's end.
    fn held(poll: &mio::Poll, lot: &mut Lot, ago: Duration, id: u16) -> UnixStream {
        let (mut web, ours) = UnixStream::pair().unwrap();
        let mut request = Vec::new();
        write_begin_request(&mut request, id, Role::Responder, 0);
        write_stream_end(&mut request, RecordType::Params, id);
        write_stream_end(&mut request, RecordType::Stdin, id);
        web.write_all(&request).unwrap();
        web.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        lot.hold(poll.registry(), ours.into(), 0, Instant::now() - ago);
        web
    }

    /// Feed the lot its events, as the master's loop does.
    fn pass(poll: &mut mio::Poll, lot: &mut Lot, channels: &mut [Option<Channels>]) {
        let mut events = mio::Events::with_capacity(16);
        poll.poll(&mut events, Some(Duration::ZERO)).unwrap();
        for event in &events {
            lot.on_event(poll.registry(), event.token(), channels);
        }
    }

    fn answer(web: &mut UnixStream) -> Vec<u8> {
        let mut out = Vec::new();
        web.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn waiting_connections_go_out_oldest_first_and_the_overdue_get_503() {
        let (mut poll, mut lot) = lot(Duration::from_secs(2), 8);
        let mut channels = vec![Some(Channels::new().unwrap())];
        let mut overdue = held(&poll, &mut lot, Duration::from_secs(3), 1);
        let _young = held(&poll, &mut lot, Duration::ZERO, 2);
        let _older = held(&poll, &mut lot, Duration::from_secs(1), 3);
        pass(&mut poll, &mut lot, &mut channels);
        assert_eq!(lot.held(0), 3);
        // The overdue one's deadline is the first, and passed.
        assert!(lot.next_deadline().unwrap() <= Instant::now());
        lot.expire(poll.registry(), Instant::now());
        assert_eq!(lot.take_refused(), vec![0]);
        assert_eq!(lot.held(0), 2);
        let got = String::from_utf8_lossy(&answer(&mut overdue)).into_owned();
        assert!(got.contains("Status: 503 Service Unavailable\r\nRetry-After: 2\r\n"));
        // Next due: the older of the two left, a second from now.
        let next = lot.next_deadline().unwrap();
        assert!(next > Instant::now() && next <= Instant::now() + Duration::from_secs(1));
        // One worker free: it gets the older.
        assert_eq!(lot.dispatch(poll.registry(), 0, 1, &mut channels), 1);
        let worker = channels[0].as_ref().unwrap().worker.as_fd();
        let Received::Fd(fd) = parking::receive(worker).unwrap() else {
            panic!("nothing handed out");
        };
        let mut handed = UnixStream::from(fd);
        handed.set_nonblocking(true).unwrap();
        let mut first = [0u8; 8];
        handed.read_exact(&mut first).unwrap();
        assert_eq!(first[1], RecordType::BeginRequest.as_u8());
        assert_eq!(u16::from_be_bytes([first[2], first[3]]), 3, "the older");
        assert_eq!(lot.held(0), 1);
        // Nothing else is due before the young one's deadline.
        lot.expire(poll.registry(), Instant::now());
        assert!(lot.take_refused().is_empty());
        lot.expire(poll.registry(), Instant::now() + Duration::from_secs(2));
        assert_eq!(lot.take_refused(), vec![0]);
        assert_eq!(lot.held(0), 0);
    }

    #[test]
    fn a_full_lot_of_waiting_connections_answers_the_oldest_rather_than_drop_one() {
        let (mut poll, mut lot) = lot(Duration::from_secs(60), 2);
        let mut channels = vec![Some(Channels::new().unwrap())];
        let mut oldest = held(&poll, &mut lot, Duration::from_secs(2), 1);
        let _next = held(&poll, &mut lot, Duration::from_secs(1), 2);
        pass(&mut poll, &mut lot, &mut channels);
        assert!(!lot.has_room());
        let _newest = held(&poll, &mut lot, Duration::ZERO, 3);
        assert_eq!(lot.take_refused(), vec![0]);
        let got = answer(&mut oldest);
        assert!(String::from_utf8_lossy(&got).contains("Status: 503"));
        pass(&mut poll, &mut lot, &mut channels);
        assert_eq!(lot.held(0), 2);
        // An idle kept connection does not take a waiting one's place: it is closed.
        let (mut web, idle) = UnixStream::pair().unwrap();
        lot.park(poll.registry(), idle.into(), 0);
        assert!(lot.take_refused().is_empty());
        assert!(answer(&mut web).is_empty(), "closed");
        assert_eq!(lot.held(0), 2);
    }

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
