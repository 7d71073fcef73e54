//! The pools' maintenance: the pool manager's figures gathered, its decisions carried
//! out, and the listen queues watched.

use super::children::SpawnFailure;
use super::pm::{Decision, Figures, IdleWorker, Trigger};
use super::tokens::LISTENER_BASE;
use super::{Master, Pool, PoolKind, pm};
use crate::config::ProcessManager;
use crate::listen_queue::Prober;
use crate::scoreboard::{WorkerState, now_us};
use mio::unix::SourceFd;
use mio::{Interest, Token};
use nix::sys::signal::{Signal, kill};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl Master {
    /// The round of a running master: stop stuck workers, then run the manager of each
    /// pool that has news (every pool at a tick), then arrange the next wake-up.
    pub(super) fn maintain_pools(&mut self, tick: bool, readable: &HashSet<usize>, now: Instant) {
        self.stop_stuck_workers();
        for index in 0..self.pools.len() {
            let pool = &self.pools[index];
            let trigger = if tick {
                Trigger::Tick
            } else if readable.contains(&index) {
                Trigger::Readable
            } else if pool.pm.to_replace > 0 || pool.respawn_at.is_some_and(|at| now >= at) {
                Trigger::Wakeup
            } else {
                // Nothing changed for this pool.
                continue;
            };
            self.maintain_pool(index, trigger);
            if tick {
                self.rearm(index);
            }
        }
        self.sleep_or_schedule();
    }

    /// Run the pool's manager and carry out what it decides.
    pub(super) fn maintain_pool(&mut self, index: usize, trigger: Trigger) {
        let now = Instant::now();
        if self.pools[index].respawn_at.is_some_and(|at| now < at) {
            return;
        }
        let decision = self.decide(index, trigger);
        self.pools[index].respawn_at = None;
        self.carry_out(index, decision);
    }

    /// Gather the pool's figures and ask its manager.
    pub(super) fn decide(&mut self, index: usize, trigger: Trigger) -> Decision {
        let now = now_us();
        let pool = &self.pools[index];
        let mut total = 0;
        let mut stopping = 0;
        let mut idle = Vec::new();
        for child in self.children.values().filter(|c| c.pool == index) {
            if child.stopping {
                stopping += 1;
                continue;
            }
            total += 1;
            if let Some(slot) = pool.scoreboard.slot(child.slot)
                && slot.state() == WorkerState::Idle
            {
                idle.push(IdleWorker {
                    slot: child.slot,
                    idle_for: Duration::from_micros(now.saturating_sub(slot.idle_since_us())),
                });
            }
        }
        // Kept connections handed out but not taken yet wait like queued ones.
        let taken = pool
            .scoreboard
            .counters()
            .handoffs_taken
            .load(Ordering::Relaxed);
        let handoffs = self.channels[index]
            .as_mut()
            .map_or(0, |ch| ch.pending(taken));
        // Unknown figures stay unknown: read as "nothing waits", they kept an ondemand
        // pool from ever starting a worker when the netlink socket could not be opened.
        let queued = match pool.settings.pm {
            ProcessManager::Static => None,
            ProcessManager::Dynamic | ProcessManager::Ondemand => pool
                .queue_figures(&mut self.prober)
                .map(|f| f.queued + handoffs + self.lot.held(index)),
        };
        let figures = Figures {
            total,
            stopping,
            idle: &idle,
            queued,
        };
        let due = pm::tick_due(&pool.settings, &figures);
        let pool = &mut self.pools[index];
        let decision = pm::decide(&pool.settings, &mut pool.pm, &figures, trigger);
        if decision.busy {
            log::info!(
                "[pool {}] seems busy (you may need to increase pm.start_servers, or pm.min/max_spare_servers), spawning {} children, there are {} idle, and {} total children",
                pool.name,
                decision.spawn,
                idle.len(),
                total
            );
        }
        if let Some(due) = due {
            self.schedule_round(due);
        }
        decision
    }

    pub(super) fn carry_out(&mut self, index: usize, decision: Decision) {
        for slot in &decision.stop {
            let stopped = self
                .children
                .iter_mut()
                .find(|(_, c)| c.pool == index && c.slot == *slot && !c.stopping);
            if let Some((pid, child)) = stopped {
                // An idle worker exits on QUIT; one that took a connection meanwhile
                // finishes it first.
                if kill(*pid, Signal::SIGQUIT).is_ok() {
                    child.stopping = true;
                    log::debug!(
                        "[pool {}] stopping idle child {pid}",
                        self.pools[index].name
                    );
                }
            }
        }
        if decision.limit_reached {
            let pool = &self.pools[index];
            pool.scoreboard
                .counters()
                .max_children_reached
                .fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "[pool {}] server reached pm.max_children setting ({}), consider raising it",
                pool.name,
                pool.settings.max_children
            );
        }
        for _ in 0..decision.spawn {
            match self.spawn_worker(index) {
                Ok(()) => {
                    let pool = &mut self.pools[index];
                    if let Some(failures) = pool.spawn_shortage.succeeded() {
                        log::info!(
                            "[pool {}] workers start again after {failures} failed attempt(s)",
                            pool.name
                        );
                    }
                }
                Err(SpawnFailure {
                    message,
                    shortage: true,
                }) => {
                    // Out of descriptors or processes: logged once per episode, and
                    // retried later rather than at every wake-up.
                    let pool = &mut self.pools[index];
                    let failure = pool.spawn_shortage.failed();
                    if failure.first {
                        log::error!("{message}; retrying with backoff");
                    }
                    pool.respawn_at = Some(Instant::now() + failure.backoff);
                    break;
                }
                Err(SpawnFailure { message, .. }) => {
                    log::error!("{message}");
                    break;
                }
            }
        }
    }

    /// ondemand: re-arm the edge-triggered watch on the listening socket once a tick.
    /// Every new connection raises an edge on its own, and the tick looks at the queue
    /// anyway, so this only guards against an edge lost some other way. With connections
    /// waiting it would fire at once and wake the master for nothing, so it waits for an
    /// empty queue.
    pub(super) fn rearm(&mut self, index: usize) {
        let registry = self.poll.registry();
        let pool = &self.pools[index];
        if pool.settings.pm != ProcessManager::Ondemand
            || pool
                .queue_figures(&mut self.prober)
                .is_some_and(|f| f.queued > 0)
        {
            return;
        }
        let fd = pool.listener.raw_fd();
        if let Err(e) = registry.reregister(
            &mut SourceFd(&fd),
            Token(LISTENER_BASE + index),
            Interest::READABLE,
        ) {
            log::warn!(
                "[pool {}] failed to re-arm the listening socket: {e}",
                pool.name
            );
        }
    }

    /// Keep the status page's high-water marks current between status requests.
    pub(super) fn note_figures(&mut self) {
        for (index, pool) in self.pools.iter().enumerate() {
            if pool.kind != PoolKind::Workers {
                continue;
            }
            if let Some(figures) = pool.queue_figures(&mut self.prober) {
                // Those the master holds for a worker were taken from that queue.
                pool.scoreboard
                    .note_listen_queue(figures.queued + self.lot.held(index));
            }
            pool.scoreboard.note_active(pool.scoreboard.active_count());
        }
    }
}

impl Pool {
    /// The listening socket's accept queue, when the kernel tells.
    pub(super) fn queue_figures(
        &self,
        prober: &mut Prober,
    ) -> Option<crate::listen_queue::QueueFigures> {
        prober.figures(self.listener.as_fd()).ok()
    }
}
