//! The periodic systemd status line.

use super::{Pool, PoolKind};
use crate::scoreboard::WorkerState;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The periodic systemd status line (php-fpm's), with the watchdog ping when enabled.
pub(super) struct SystemdReport {
    every: Duration,
    watchdog: bool,
    pub(super) next: Instant,
    last_requests: u64,
}

impl SystemdReport {
    pub(super) fn new(systemd_interval: Duration) -> Option<SystemdReport> {
        let (every, watchdog) = crate::systemd::report_interval(systemd_interval)?;
        Some(SystemdReport {
            every,
            watchdog,
            next: Instant::now() + every,
            last_requests: 0,
        })
    }

    pub(super) fn tick(&mut self, pools: &[Pool]) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        let (mut active, mut idle, mut requests, mut slow) = (0, 0, 0u64, 0u64);
        for pool in pools.iter().filter(|p| p.kind == PoolKind::Workers) {
            for slot in pool.scoreboard.slots() {
                if slot.pid.load(Ordering::Relaxed) <= 0 {
                    continue;
                }
                if slot.state() == WorkerState::Idle {
                    idle += 1;
                } else {
                    active += 1;
                }
            }
            let counters = pool.scoreboard.counters();
            requests += counters.requests.load(Ordering::Relaxed);
            slow += counters.slow_requests.load(Ordering::Relaxed);
        }
        let rate = requests.saturating_sub(self.last_requests) as f64 / self.every.as_secs_f64();
        self.last_requests = requests;
        let line = format!(
            "Processes active: {active}, idle: {idle}, Requests: {requests}, slow: {slow}, Traffic: {rate:.3}req/sec"
        );
        crate::systemd::status(&line, self.watchdog);
        self.next = now + self.every;
    }
}
