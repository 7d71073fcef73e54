//! The master's loop: its set-up, then one pass per wake-up over events, signals,
//! children and the pools' maintenance; and when to wake next.

use super::capture::Capture;
use super::lot::LotEvent;
use super::pm::Trigger;
use super::systemd_report::SystemdReport;
use super::tokens::{DOORBELL, LISTENER_BASE, SIGNALS};
use super::{Master, State, TICK, endpoint, lot};
use crate::config::ProcessManager;
use crate::daemon::StartupReport;
use crate::master_signals::{MASTER_SIGNALS, master_signal_set};
use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use nix::sys::signal::{SigmaskHow, sigprocmask};
use signal_hook::consts::signal::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook_mio::v1_0::Signals;
use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

impl Master {
    /// Run until stopped; returns the exit code. Like nginx's master cycle, each pass is
    /// one wait, then each kind of news in turn, each a call.
    pub(super) fn event_loop(&mut self, report: &mut StartupReport) -> i32 {
        let mut signals = match self.watch_sources() {
            Ok(signals) => signals,
            Err(message) => {
                log::error!("{message}");
                report.failed(&message);
                return crate::exit_code::OS_ERROR;
            }
        };
        self.open_for_business(report);
        let mut systemd_report = SystemdReport::new(self.config.global.systemd_interval);
        let mut events = Events::with_capacity(64);
        let mut readable = HashSet::new();
        loop {
            let timeout = self.next_timeout(systemd_report.as_ref().map(|r| r.next));
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                log::error!("epoll_wait failed: {e}");
                return crate::exit_code::OS_ERROR;
            }
            readable.clear();
            for event in &events {
                self.on_event(event.token(), &mut readable);
            }
            if let Some(endpoint) = &mut self.endpoint {
                endpoint.expire(self.poll.registry());
            }
            for signal in signals.pending() {
                self.on_signal(signal);
            }
            if let Some(report) = &mut systemd_report {
                report.tick(&self.pools);
            }
            self.reap_children();
            if std::mem::take(&mut self.reload_requested) {
                // Returns only when the reload did not happen.
                self.reload();
            }
            self.old_workers.escalate_if_due();
            // A worker may need starting for a connection handed out (ondemand).
            self.serve_queues(&mut readable);
            let now = Instant::now();
            self.lot.expire(self.poll.registry(), now);
            self.count_refusals();
            let tick = self.tick_if_due(now);
            if self.state == State::Running {
                self.maintain_pools(tick, &readable, now);
            } else if self.wind_down() {
                return 0;
            }
        }
    }

    /// Install the signal handlers and watch every source the loop waits on. The error
    /// is the message to log and report: without these the master cannot run.
    fn watch_sources(&mut self) -> Result<Signals, String> {
        let mut signals = Signals::new(MASTER_SIGNALS.map(|s| s as i32))
            .map_err(|e| format!("failed to install signal handlers: {e}"))?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(|e| format!("failed to watch signals: {e}"))?;
        // A reload blocks these across its exec; now that handlers are in place, whatever
        // arrived meanwhile is delivered.
        let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&master_signal_set()), None);
        self.watch_doorbell();
        self.watch_parking();
        if let Some(endpoint) = &self.endpoint {
            endpoint.register(self.poll.registry()).map_err(|e| {
                format!("metrics.listen: failed to watch the listening socket: {e}")
            })?;
        }
        for (index, fd, arrived) in std::mem::take(&mut self.handed_over_parked) {
            self.lot.restore(self.poll.registry(), fd, index, arrived);
        }
        self.watch_ondemand_listeners().map(|()| signals)
    }

    fn watch_doorbell(&mut self) {
        if let Some(doorbell) = &self.doorbell
            && let Err(e) = self.poll.registry().register(
                &mut SourceFd(&doorbell.as_fd().as_raw_fd()),
                DOORBELL,
                Interest::READABLE,
            )
        {
            log::warn!("cannot watch the eventfd ({e}); the master will wake every second");
            self.doorbell = None;
        }
    }

    /// The channels workers park idle kept connections through, how long a parked
    /// connection that starts a request may wait here for its head to be complete, and
    /// then, under request_queue_timeout, for a worker.
    fn watch_parking(&mut self) {
        for (index, channels) in self.channels.iter().enumerate() {
            if let Some(ch) = channels
                && let Err(e) = ch.register(self.poll.registry(), index)
            {
                log::warn!("cannot watch the channel for idle kept connections: {e}");
            }
        }
        let queue_timeouts = self.queue_timeouts();
        let limits = self
            .pools
            .iter()
            .zip(&queue_timeouts)
            .map(|(pool, queue_timeout)| lot::PoolLimits {
                pool: pool.name.clone(),
                header_timeout: self.config.pools[pool.config_index]
                    .cgi
                    .request_header_timeout,
                queue_timeout: *queue_timeout,
            })
            .collect();
        self.lot.set_limits(limits);
        self.queues = super::queue::Queues::new(queue_timeouts);
    }

    /// ondemand pools start workers when connections arrive.
    fn watch_ondemand_listeners(&self) -> Result<(), String> {
        for (index, pool) in self.pools.iter().enumerate() {
            if pool.settings.pm != ProcessManager::Ondemand {
                continue;
            }
            let fd = pool.listener.raw_fd();
            self.poll
                .registry()
                .register(
                    &mut SourceFd(&fd),
                    Token(LISTENER_BASE + index),
                    Interest::READABLE,
                )
                .map_err(|e| {
                    format!(
                        "[pool {}] failed to watch the listening socket: {e}",
                        pool.name
                    )
                })?;
        }
        Ok(())
    }

    /// Start the pools' workers, retire a previous image's, and say so.
    fn open_for_business(&mut self, report: &mut StartupReport) {
        log::info!("fpm is running, pid {}", std::process::id());
        for index in 0..self.pools.len() {
            self.maintain_pool(index, Trigger::Start);
        }
        log::info!("ready to handle connections");
        if !self.old_workers.is_empty() {
            log::info!(
                "{} worker(s) of the previous configuration finish their requests and exit",
                self.old_workers.len()
            );
            self.old_workers
                .retire(self.config.global.process_control_timeout);
        }
        report.ready();
        crate::systemd::ready("Ready to handle connections");
    }

    /// One event: the doorbell, a worker's output, the endpoint, the lot, or a pool's
    /// listening socket (whose pool goes into `readable`).
    fn on_event(&mut self, token: Token, readable: &mut HashSet<usize>) {
        if token == DOORBELL {
            return self.answer_doorbell();
        }
        if Capture::is_capture(token) {
            return self.capture.on_readable(self.poll.registry(), token);
        }
        if endpoint::Endpoint::owns(token) {
            return self.on_endpoint_event(token);
        }
        match self
            .lot
            .on_event(self.poll.registry(), token, &mut self.channels)
        {
            // Handed out (or held) in `serve_queues`.
            LotEvent::Queued { .. } | LotEvent::Parked => {}
            LotEvent::None => {
                if let Some(index) = token.0.checked_sub(LISTENER_BASE) {
                    readable.insert(index);
                }
            }
        }
    }

    /// Whether a maintenance round is due now; if so, it starts here.
    fn tick_if_due(&mut self, now: Instant) -> bool {
        let tick = self.next_tick.is_some_and(|at| now >= at);
        if tick {
            self.next_tick = None;
            self.last_tick = now;
            self.note_figures();
        }
        tick
    }

    /// A worker got busy while no round was scheduled: schedule one (at most one per
    /// `TICK`, as always).
    pub(super) fn answer_doorbell(&mut self) {
        if let Some(doorbell) = &self.doorbell {
            // Non-blocking: reads and resets the counter, or finds it reset already.
            let _ = doorbell.read();
        }
        self.schedule_round(Duration::ZERO);
    }

    /// Want a maintenance round in `due`, but never sooner than `TICK` after the last.
    pub(super) fn schedule_round(&mut self, due: Duration) {
        let at = (Instant::now() + due).max(self.last_tick + TICK);
        self.next_tick = Some(self.next_tick.map_or(at, |next| next.min(at)));
    }

    /// With no round scheduled the master sleeps until an event; arm every pool's doorbell
    /// first, so that a worker getting busy wakes it. A worker busy already (it got busy
    /// after the round looked) gets a round instead.
    pub(super) fn sleep_or_schedule(&mut self) {
        if self.next_tick.is_some() {
            return;
        }
        if self.doorbell.is_none() {
            return self.schedule_round(Duration::ZERO);
        }
        let mut busy = false;
        for pool in &self.pools {
            busy |= pool.scoreboard.arm_doorbell();
        }
        if busy {
            self.schedule_round(Duration::ZERO);
        }
    }

    pub(super) fn next_timeout(&self, systemd_report_at: Option<Instant>) -> Option<Duration> {
        let now = Instant::now();
        let mut next = self.next_tick;
        let mut sooner = |at: Instant| next = Some(next.map_or(at, |n: Instant| n.min(at)));
        if let Some(at) = systemd_report_at {
            sooner(at);
        }
        if let Some(at) = self.old_workers.deadline() {
            sooner(at);
        }
        if let Some(at) = self.lot.next_deadline() {
            sooner(at);
        }
        if let Some(at) = self
            .endpoint
            .as_ref()
            .and_then(endpoint::Endpoint::deadline)
        {
            sooner(at);
        }
        for pool in &self.pools {
            if let Some(at) = pool.respawn_at {
                sooner(at);
            }
        }
        match self.state {
            State::Finishing {
                escalate_at: Some(at),
            } => sooner(at),
            State::Terminating {
                kill_at,
                killed: false,
            } => sooner(kill_at),
            _ => {}
        }
        next.map(|at| at.saturating_duration_since(now))
    }

    pub(super) fn on_signal(&mut self, signal: i32) {
        match signal {
            SIGCHLD => {}
            SIGTERM | SIGINT => self.terminate(),
            SIGQUIT => self.finish(),
            SIGUSR1 => self.reopen_logs(),
            // HUP as well, for init systems and habits that reload with it.
            SIGUSR2 | SIGHUP => self.reload_requested = true,
            _ => {}
        }
    }
}
