//! request_queue_timeout: a request waits at most that long for a worker of a full pool,
//! then the master answers it 503 (see DESIGN.md, "Connections the master holds").
//!
//! Below the limit nothing changes: workers accept on the pool's socket themselves. The
//! worker that takes the last idle slot rings the master's doorbell; if the pool cannot
//! grow (every slot taken), the master watches the pool's socket and, for as long as no
//! worker is free, accepts the connections that arrive itself, stamps their arrival, and
//! keeps them in the lot (`lot.rs`) with the pool's kept connections whose next request
//! has come. While requests wait there the master *holds* for the pool: a worker that
//! turns idle rings the doorbell, and one that accepts a connection itself hands it to
//! the master too, so that each idle worker gets the oldest request, from the lot. A
//! request still there at its deadline is answered 503 with Retry-After. Once nothing
//! waits and a worker is free, the master stops watching and workers accept directly
//! again; a pool that was full for a moment with nothing waiting costs two epoll_ctl
//! calls and one accept that finds nothing.

use super::tokens::LISTENER_BASE;
use super::{Master, PoolKind, State};
use crate::config::ProcessManager;
use mio::unix::SourceFd;
use mio::{Interest, Token};
use nix::errno::Errno;
use nix::sys::socket::{SockFlag, accept4};
use std::collections::HashSet;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Each pool's request_queue_timeout and whether the master holds connections for it.
#[derive(Default)]
pub(super) struct Queues {
    pools: Vec<PoolQueue>,
}

#[derive(Default)]
struct PoolQueue {
    /// request_queue_timeout; zero is off.
    timeout: Duration,
    /// Requests wait for a worker in the lot: the scoreboard's flag is up.
    holding: bool,
    /// The pool is full: the master registered its listening socket, to take what
    /// arrives (an ondemand pool's is registered anyway).
    watching: bool,
    /// Out of descriptors at accept (see `shortage`).
    accept_shortage: crate::shortage::Episode,
}

impl Queues {
    /// Pools by index, with their request_queue_timeout (zero: off; always off for a
    /// status pool, which has no queue of its own to bound).
    pub(super) fn new(timeouts: impl IntoIterator<Item = Duration>) -> Queues {
        Queues {
            pools: timeouts
                .into_iter()
                .map(|timeout| PoolQueue {
                    timeout,
                    ..PoolQueue::default()
                })
                .collect(),
        }
    }

    fn timeout(&self, pool: usize) -> Duration {
        self.pools.get(pool).map_or(Duration::ZERO, |p| p.timeout)
    }

    fn holding(&self, pool: usize) -> bool {
        self.pools.get(pool).is_some_and(|p| p.holding)
    }

    fn watching(&self, pool: usize) -> bool {
        self.pools.get(pool).is_some_and(|p| p.watching)
    }
}

impl Master {
    /// The pools' request_queue_timeout, by pool index, for `Queues::new` and the lot.
    pub(super) fn queue_timeouts(&self) -> Vec<Duration> {
        self.pools
            .iter()
            .map(|pool| match pool.kind {
                PoolKind::Workers => self.config.pools[pool.config_index].request_queue_timeout,
                PoolKind::Status { .. } => Duration::ZERO,
            })
            .collect()
    }

    /// Once per pass, before deadlines are looked at: hand waiting connections to idle
    /// workers, oldest first, and start or stop holding. A pool without the limit (or any
    /// pool, stopping) gets every waiting connection at once, as before. Pools that got
    /// one go into `handed` (an ondemand pool may need a worker started for it).
    pub(super) fn serve_queues(&mut self, handed: &mut HashSet<usize>) {
        let running = self.state == State::Running;
        for index in 0..self.pools.len() {
            if self.pools[index].kind != PoolKind::Workers {
                continue;
            }
            // Without channels nothing can be handed to a worker: no holding then.
            let limited =
                running && !self.queues.timeout(index).is_zero() && self.channels[index].is_some();
            if !limited {
                if self.queues.holding(index) || self.queues.watching(index) {
                    self.stop_holding(index);
                }
                if self.lot.held(index) > 0
                    && self.lot.dispatch(
                        self.poll.registry(),
                        index,
                        usize::MAX,
                        &mut self.channels,
                    ) > 0
                {
                    handed.insert(index);
                }
                continue;
            }
            let mut available = self.available_workers(index);
            let sent =
                self.lot
                    .dispatch(self.poll.registry(), index, available, &mut self.channels);
            if sent > 0 {
                handed.insert(index);
            }
            available -= sent;
            // Connections are taken from the socket only while no worker can take them;
            // the socket is watched for as long as that lasts.
            let full = available == 0 && self.cannot_grow(index);
            if full {
                self.watch(index);
                self.accept_waiting(index);
            }
            let waiting = self.lot.held(index) > 0;
            if waiting != self.queues.holding(index) {
                self.set_holding(index, waiting);
            }
            if !full && !waiting {
                self.unwatch(index);
            }
            self.publish_held(index);
        }
    }

    /// After the lot's deadlines: count the requests it answered 503.
    pub(super) fn count_refusals(&mut self) {
        for index in self.lot.take_refused() {
            if let Some(pool) = self.pools.get(index) {
                pool.scoreboard
                    .counters()
                    .queue_refusals
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Idle workers of the pool not already sent a connection they have yet to take.
    fn available_workers(&mut self, index: usize) -> usize {
        let board = &self.pools[index].scoreboard;
        let idle = board.idle_count() as usize;
        let taken = board.counters().handoffs_taken.load(Ordering::Relaxed);
        let pending = self.channels[index]
            .as_mut()
            .map_or(0, |ch| ch.pending(taken)) as usize;
        idle.saturating_sub(pending)
    }

    /// Every slot has a worker (or one starting): the pool manager can add none.
    fn cannot_grow(&self, index: usize) -> bool {
        self.pools[index].scoreboard.free_slot().is_none() || self.process_max_reached
    }

    /// Watch the pool's socket: connections that arrive while it is full are taken and
    /// stamped at once (an ondemand pool's socket is watched anyway).
    fn watch(&mut self, index: usize) {
        let pool = &self.pools[index];
        let queue = &mut self.queues.pools[index];
        if queue.watching || pool.settings.pm == ProcessManager::Ondemand {
            return;
        }
        match self.poll.registry().register(
            &mut SourceFd(&pool.listener.raw_fd()),
            Token(LISTENER_BASE + index),
            Interest::READABLE,
        ) {
            Ok(()) => queue.watching = true,
            Err(e) => log::warn!(
                "[pool {}] cannot watch the listening socket ({e}); requests waiting there are not timed",
                pool.name
            ),
        }
    }

    fn unwatch(&mut self, index: usize) {
        let queue = &mut self.queues.pools[index];
        if std::mem::take(&mut queue.watching) {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&self.pools[index].listener.raw_fd()));
        }
    }

    /// Connections wait in the lot (`true`) or no longer do: the pool's workers hand the
    /// master what they accept and ring when they turn idle for as long as some wait.
    fn set_holding(&mut self, index: usize, holding: bool) {
        log::debug!(
            "[pool {}] {}",
            self.pools[index].name,
            if holding {
                "requests wait for a worker in the master (request_queue_timeout)"
            } else {
                "no request waits for a worker in the master"
            }
        );
        self.queues.pools[index].holding = holding;
        // A worker that turned idle before the flag was up did not ring: look again.
        if self.pools[index].scoreboard.set_holding(holding) {
            let available = self.available_workers(index);
            self.lot
                .dispatch(self.poll.registry(), index, available, &mut self.channels);
        }
    }

    /// The count of connections held for a worker, for the status page's `listen queue`.
    fn publish_held(&self, index: usize) {
        self.pools[index]
            .scoreboard
            .counters()
            .held_for_worker
            .store(self.lot.held(index), Ordering::Relaxed);
    }

    /// The pool no longer has the limit (the master is stopping): back to workers alone.
    fn stop_holding(&mut self, index: usize) {
        self.set_holding(index, false);
        self.unwatch(index);
        self.publish_held(index);
    }

    /// Take every connection waiting on the pool's socket into the lot, stamped with the
    /// time it was taken (as close to its arrival as the master can tell: while it holds,
    /// it takes them as they come). Stops when the lot is full; the rest wait in the
    /// socket's queue.
    fn accept_waiting(&mut self, index: usize) {
        let pool = &self.pools[index];
        let config = &self.config.pools[pool.config_index];
        let listener = pool.listener.raw_fd();
        while self.lot.has_room() {
            let fd = match accept4(listener, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK) {
                // SAFETY: accept4 returned a new descriptor that nothing else owns.
                Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
                Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
                Err(Errno::EAGAIN) => break,
                Err(e) if crate::shortage::is_shortage(e) => {
                    let failure = self.queues.pools[index].accept_shortage.failed();
                    if failure.first {
                        log::error!(
                            "[pool {}] the master cannot accept a waiting connection: {e}; it waits in the queue, untimed",
                            pool.name
                        );
                    }
                    break;
                }
                Err(e) => {
                    log::warn!(
                        "[pool {}] the master cannot accept a waiting connection: {e}",
                        pool.name
                    );
                    break;
                }
            };
            if let Some(failures) = self.queues.pools[index].accept_shortage.succeeded() {
                log::info!(
                    "[pool {}] the master accepts again after {failures} failure(s)",
                    pool.name
                );
            }
            if !crate::isolation::clients::admit(config, &fd) {
                continue;
            }
            self.lot
                .hold(self.poll.registry(), fd, index, Instant::now());
        }
    }
}
