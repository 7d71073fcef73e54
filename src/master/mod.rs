//! The master process: one thread, one mio loop. It owns the listening sockets and the
//! scoreboards, forks the workers, reaps and replaces them, and acts on signals. It never
//! accepts a pool connection itself.

mod capture;
mod emergency;
mod endpoint;
mod handed_over;
mod inherit;
mod listener;
mod logs;
mod lot;
mod pm;
mod reload;

use crate::config::{Config, ProcessManager};
use crate::daemon::StartupReport;
use crate::isolation::Privileges;
use crate::listen_queue::Prober;
use crate::master_signals::{MASTER_SIGNALS, master_signal_set};
use crate::scoreboard::{Scoreboard, WorkerState, now_us};
use crate::worker::{self, StatusSource, WorkerSpec};
use capture::Capture;
use emergency::{Emergency, Verdict};
use listener::Listener;
use logs::PoolLogs;
use lot::{Channels, Lot, LotEvent};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, killpg, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use pm::{Decision, Figures, IdleWorker, PmState, Trigger};
use reload::OldWorkers;
pub use reload::Reexec;
use signal_hook::consts::signal::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook_mio::v1_0::Signals;
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The master's event tokens, one range per kind of source so that none can be taken
/// for another: signals; pool listening sockets (by pool index); catch_workers_output
/// pipes; parking channels (by pool index); parked connections.
const SIGNALS: Token = Token(0);
/// The eventfd workers ring when they get busy while the master sleeps with nothing due.
const DOORBELL: Token = Token(CAPTURE_TOKENS.start - 1);
const CAPTURE_TOKENS: std::ops::Range<usize> = 1 << 20..1 << 30;
const CHANNEL_TOKENS: std::ops::Range<usize> = 1 << 30..1 << 31;
const PARKED_TOKENS: std::ops::Range<usize> = 1 << 31..1 << 62;

/// Token of an ondemand pool's listening socket: this plus the pool's index.
const LISTENER_BASE: usize = 1;
/// The shortest time between two maintenance rounds, php-fpm's tick. Unlike php-fpm's, a
/// round happens only when something is due (see `pm::tick_due`): at rest the master
/// sleeps until a signal, an event or a real deadline.
const TICK: Duration = Duration::from_secs(1);
/// A worker that exits sooner than this after its start counts as failing to start.
const QUICK_EXIT: Duration = Duration::from_secs(1);
/// The longest wait before another start attempt for a pool whose workers keep failing.
const MAX_RESPAWN_DELAY: Duration = Duration::from_secs(10);

/// Command-line settings that shape the run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `-g`: overrides the config's pid file.
    pub pid_file: Option<std::path::PathBuf>,
    /// `-O`: the error log stays standard error, so SIGUSR1 has none to reopen.
    pub force_stderr: bool,
    /// Each pool's worker privileges, in the config's pool order (`isolation::prepare`).
    pub privileges: Vec<Privileges>,
    /// How to re-execute for a reload (SIGUSR2).
    pub reexec: Option<Reexec>,
    /// What the previous image handed over, when this is the new image of a reload.
    pub handover: Option<crate::handover::Handover>,
}

struct Pool {
    config_index: usize,
    /// The name in log lines: the pool's, or `<pool>_status` for its status pool.
    name: String,
    kind: PoolKind,
    listener: Listener,
    scoreboard: Scoreboard,
    logs: PoolLogs,
    settings: pm::Settings,
    pm: PmState,
    /// Consecutive workers that died right after starting.
    quick_failures: u32,
    /// Out of descriptors or processes when starting workers (see `shortage`).
    spawn_shortage: crate::shortage::Episode,
    respawn_at: Option<Instant>,
    /// For the endpoint: workers started, and ended by cause (`exposition::CAUSES`).
    workers_started: u64,
    workers_died: [u64; 3],
    /// Scoreboards of earlier images (handed over by a reload) whose workers are still
    /// finishing: the status page lists them until they exit.
    previous: Vec<Scoreboard>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PoolKind {
    /// A pool of workers serving its `listen` socket.
    Workers,
    /// One worker answering status and ping on the `pm.status_listen` socket of the
    /// pool at this index, so they answer even when all of that pool's workers are busy.
    Status { parent: usize },
}

struct Child {
    pool: usize,
    slot: usize,
    started: Instant,
    /// The pool manager told it to stop (it was idle); it is not replaced.
    stopping: bool,
    /// Killed for a request stuck past request_terminate_timeout; not reaped yet.
    killed_as_stuck: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    /// QUIT: workers finish the request in hand.
    Finishing {
        escalate_at: Option<Instant>,
    },
    /// TERM/INT: workers stop now.
    Terminating {
        kill_at: Instant,
        killed: bool,
    },
}

pub struct Master {
    config: Config,
    pools: Vec<Pool>,
    children: HashMap<Pid, Child>,
    state: State,
    inherited_env: Vec<(OsString, OsString)>,
    pid_file: Option<std::path::PathBuf>,
    /// The next maintenance round, if one is due.
    next_tick: Option<Instant>,
    /// When the last round ran: rounds are at least `TICK` apart.
    last_tick: Instant,
    /// Rung by workers that get busy while no round is scheduled; without it (it could not
    /// be made) the master falls back to a round every `TICK`.
    doorbell: Option<nix::sys::eventfd::EventFd>,
    force_stderr: bool,
    poll: Poll,
    capture: Capture,
    privileges: Vec<Privileges>,
    reexec: Option<Reexec>,
    /// Workers of the image before a reload, finishing their last request.
    old_workers: OldWorkers,
    emergency: Emergency,
    reload_requested: bool,
    /// process.max was in the way of a spawn; logged once until it no longer is.
    process_max_reached: bool,
    /// Each pool's channels for idle kept connections (none for status pools), by index.
    channels: Vec<Option<Channels>>,
    lot: Lot,
    /// Connections parked with the previous image, handed over and watched once the
    /// loop starts.
    handed_over_parked: Vec<(usize, std::os::fd::OwnedFd)>,
    /// Reads the pools' listen queues through one kept netlink socket.
    prober: Prober,
    /// `metrics.listen`, when set.
    endpoint: Option<endpoint::Endpoint>,
    /// The master's figures that outlive a reload.
    figures: crate::handover::MasterFigures,
}

/// Start the master on a checked configuration and run until stopped. `report` is told
/// when the master is ready or why it could not start. Returns the process exit code.
pub fn run(config: Config, options: RunOptions, report: &mut StartupReport) -> i32 {
    let mut master = match Master::start(config, options) {
        Ok(m) => m,
        Err(e) => {
            log::error!("{e}");
            log::error!("FPM initialization failed");
            report.failed(&e);
            return crate::exit_code::CONFIG;
        }
    };
    let code = master.event_loop(report);
    if code != 0 {
        master.stop_children_without_loop();
    }
    master.shutdown();
    code
}

impl Master {
    fn start(config: Config, options: RunOptions) -> Result<Master, String> {
        if options.privileges.len() != config.pools.len() {
            return Err("worker privileges were not prepared for every pool".to_string());
        }
        let handover = options.handover.unwrap_or_default();
        let mut inherited = inherit::Inherited::collect(handover.listeners);
        let mut pools: Vec<Pool> = Vec::with_capacity(config.pools.len());
        for (config_index, pool) in config.pools.iter().enumerate() {
            let opened = listener::open(pool, &mut inherited).and_then(|listener| {
                let rest = Scoreboard::new(pool.pm_max_children as usize)
                    .map_err(|e| format!("[pool {}] cannot create the scoreboard: {e}", pool.name))
                    .and_then(|scoreboard| PoolLogs::open(pool).map(|logs| (scoreboard, logs)));
                match rest {
                    Ok((scoreboard, logs)) => Ok((listener, scoreboard, logs)),
                    Err(e) => {
                        listener.close();
                        Err(e)
                    }
                }
            });
            let opened = opened.and_then(|(listener, scoreboard, logs)| {
                let status = match &pool.pm_status_listen {
                    None => None,
                    Some(address) => match open_status_pool(pool, address, &mut inherited) {
                        Ok(status) => Some(status),
                        Err(e) => {
                            listener.close();
                            return Err(e);
                        }
                    },
                };
                Ok((listener, scoreboard, logs, status))
            });
            match opened {
                Ok((listener, scoreboard, logs, status)) => {
                    log::debug!("[pool {}] listening on {}", pool.name, listener.address);
                    let parent = pools.len();
                    pools.push(Pool {
                        config_index,
                        name: pool.name.clone(),
                        kind: PoolKind::Workers,
                        listener,
                        scoreboard,
                        logs,
                        settings: pm::Settings::from(pool),
                        pm: PmState::default(),
                        quick_failures: 0,
                        spawn_shortage: Default::default(),
                        respawn_at: None,
                        workers_started: 0,
                        workers_died: [0; 3],
                        previous: Vec::new(),
                    });
                    if let Some((listener, scoreboard)) = status {
                        log::debug!(
                            "[pool {}] status listening on {}",
                            pool.name,
                            listener.address
                        );
                        pools.push(Pool {
                            config_index,
                            name: format!("{}_status", pool.name),
                            kind: PoolKind::Status { parent },
                            listener,
                            scoreboard,
                            logs: PoolLogs::default(),
                            settings: pm::Settings {
                                pm: ProcessManager::Static,
                                max_children: 1,
                                ..pm::Settings::from(pool)
                            },
                            pm: PmState::default(),
                            quick_failures: 0,
                            spawn_shortage: Default::default(),
                            respawn_at: None,
                            workers_started: 0,
                            workers_died: [0; 3],
                            previous: Vec::new(),
                        });
                    }
                }
                Err(e) => {
                    // Leave no socket file behind for pools that did open.
                    pools.into_iter().for_each(|p| p.listener.close());
                    return Err(e);
                }
            }
        }
        let endpoint = match &config.global.metrics_listen {
            None => None,
            Some(address) => match endpoint::open(address, &mut inherited) {
                Ok(listener) => {
                    log::debug!("metrics listening on {}", listener.address);
                    Some(endpoint::Endpoint::new(
                        listener,
                        config.global.metrics_allowed_clients.clone(),
                    ))
                }
                Err(e) => {
                    pools.into_iter().for_each(|p| p.listener.close());
                    return Err(e.replacen("[pool metrics] listen", "metrics.listen", 1));
                }
            },
        };
        inherited.close_unused();
        let pid_file = options.pid_file.or_else(|| config.global.pid.clone());
        let poll = match Poll::new() {
            Ok(p) => p,
            Err(e) => {
                pools.into_iter().for_each(|p| p.listener.close());
                endpoint.into_iter().for_each(endpoint::Endpoint::close);
                return Err(format!("epoll_create failed: {e}"));
            }
        };
        let doorbell = nix::sys::eventfd::EventFd::from_value_and_flags(
            0,
            nix::sys::eventfd::EfdFlags::EFD_CLOEXEC | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
        )
        .map_err(|e| {
            log::warn!("cannot create an eventfd ({e}); the master will wake every second")
        })
        .ok();
        let old_workers = OldWorkers::handed_over(&handover.old_workers);
        let emergency = Emergency::resume(
            config.global.emergency_restart_threshold,
            config.global.emergency_restart_interval,
            handover.emergency,
        );
        adopt_scoreboards(&mut pools, handover.scoreboards, &handover.old_workers);
        let mut handed_over = handed_over::take(handover.channels, handover.parked);
        // `main` took the handover out of the environment before anything else ran:
        // workers, and so CGI children, never see it.
        let inherited_env = std::env::vars_os().collect();
        let channels = pools
            .iter()
            .map(|p| match p.kind {
                PoolKind::Status { .. } => None,
                PoolKind::Workers => match handed_over.channels.iter().position(|(name, _)| *name == p.name) {
                    Some(i) => Some(Channels::from_fds(handed_over.channels.swap_remove(i).1)),
                    None => Channels::new()
                    .map_err(|e| {
                        log::warn!(
                            "[pool {}] cannot make the channels for idle kept connections ({e}); they will hold workers",
                            p.name
                        )
                    })
                    .ok(),
                },
            })
            .collect();
        // Connections parked with the previous image, for pools that are still here; the
        // rest are closed, as the channels of pools that are gone.
        let handed_over_parked = handed_over
            .parked
            .into_iter()
            .filter_map(|(name, fd)| {
                let index = pools
                    .iter()
                    .position(|p| p.kind == PoolKind::Workers && p.name == name)?;
                Some((index, fd))
            })
            .collect();
        let lot_capacity = lot_capacity(&config);
        let figures = match handover.master {
            Some(figures) => figures,
            None => crate::handover::MasterFigures {
                started_at_us: now_us(),
                ..Default::default()
            },
        };
        let master = Master {
            config,
            pools,
            children: HashMap::new(),
            state: State::Running,
            inherited_env,
            pid_file,
            next_tick: Some(Instant::now() + TICK),
            last_tick: Instant::now(),
            doorbell,
            force_stderr: options.force_stderr,
            poll,
            capture: Capture::default(),
            privileges: options.privileges,
            reexec: options.reexec,
            old_workers,
            emergency,
            reload_requested: false,
            process_max_reached: false,
            channels,
            lot: Lot::new(lot_capacity),
            handed_over_parked,
            prober: Prober::open(),
            endpoint,
            figures,
        };
        if let Some(path) = &master.pid_file
            && let Err(e) = std::fs::write(path, format!("{}\n", std::process::id()))
        {
            let err = format!("failed to write the pid file '{}': {e}", path.display());
            master.close_listeners();
            return Err(err);
        }
        Ok(master)
    }

    fn close_listeners(self) {
        for pool in self.pools {
            pool.listener.close();
        }
        if let Some(endpoint) = self.endpoint {
            endpoint.close();
        }
    }

    fn event_loop(&mut self, report: &mut StartupReport) -> i32 {
        let mut signals = match Signals::new(MASTER_SIGNALS.map(|s| s as i32)) {
            Ok(s) => s,
            Err(e) => {
                log::error!("failed to install signal handlers: {e}");
                report.failed(&format!("failed to install signal handlers: {e}"));
                return crate::exit_code::OS_ERROR;
            }
        };
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
        {
            log::error!("failed to watch signals: {e}");
            report.failed(&format!("failed to watch signals: {e}"));
            return crate::exit_code::OS_ERROR;
        }
        // A reload blocks these across its exec; now that handlers are in place, whatever
        // arrived meanwhile is delivered.
        let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&master_signal_set()), None);
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
        for (index, channels) in self.channels.iter().enumerate() {
            if let Some(ch) = channels
                && let Err(e) = ch.register(self.poll.registry(), index)
            {
                log::warn!("cannot watch the channel for idle kept connections: {e}");
            }
        }
        // Parked connections that start a request wait here until its head is complete.
        let limits = self
            .pools
            .iter()
            .map(|pool| lot::HeadLimit {
                pool: pool.name.clone(),
                timeout: self.config.pools[pool.config_index]
                    .cgi
                    .request_header_timeout,
            })
            .collect();
        self.lot.set_limits(limits);
        if let Some(endpoint) = &self.endpoint
            && let Err(e) = endpoint.register(self.poll.registry())
        {
            let message = format!("metrics.listen: failed to watch the listening socket: {e}");
            log::error!("{message}");
            report.failed(&message);
            return crate::exit_code::OS_ERROR;
        }
        for (index, fd) in std::mem::take(&mut self.handed_over_parked) {
            self.lot.park(self.poll.registry(), fd, index);
        }
        // ondemand pools start workers when connections arrive.
        for (index, pool) in self.pools.iter().enumerate() {
            if pool.settings.pm != ProcessManager::Ondemand {
                continue;
            }
            let fd = pool.listener.raw_fd();
            if let Err(e) = self.poll.registry().register(
                &mut SourceFd(&fd),
                Token(LISTENER_BASE + index),
                Interest::READABLE,
            ) {
                let message = format!(
                    "[pool {}] failed to watch the listening socket: {e}",
                    pool.name
                );
                log::error!("{message}");
                report.failed(&message);
                return crate::exit_code::OS_ERROR;
            }
        }
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
                let token = event.token();
                if token == DOORBELL {
                    self.answer_doorbell();
                    continue;
                }
                if Capture::is_capture(token) {
                    self.capture.on_readable(self.poll.registry(), token);
                    continue;
                }
                if endpoint::Endpoint::owns(token) {
                    self.on_endpoint_event(token);
                    continue;
                }
                match self
                    .lot
                    .on_event(self.poll.registry(), token, &mut self.channels)
                {
                    LotEvent::HandedOut { pool } => {
                        // A worker may need starting for it (ondemand).
                        readable.insert(pool);
                    }
                    LotEvent::Parked => {}
                    LotEvent::None => {
                        if let Some(index) = token.0.checked_sub(LISTENER_BASE) {
                            readable.insert(index);
                        }
                    }
                }
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
            if self.reload_requested {
                self.reload_requested = false;
                // Returns only when the reload did not happen.
                self.reload();
            }
            self.old_workers.escalate_if_due();
            let now = Instant::now();
            self.lot.expire(self.poll.registry(), now);
            let tick = self.next_tick.is_some_and(|at| now >= at);
            if tick {
                self.next_tick = None;
                self.last_tick = now;
                self.note_figures();
            }
            match self.state {
                State::Running => {
                    self.stop_stuck_workers();
                    for index in 0..self.pools.len() {
                        let pool = &self.pools[index];
                        let trigger = if tick {
                            Trigger::Tick
                        } else if readable.contains(&index) {
                            Trigger::Readable
                        } else if pool.pm.to_replace > 0
                            || pool.respawn_at.is_some_and(|at| now >= at)
                        {
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
                _ => {
                    // Stopping: no kept connection stays parked here (workers that
                    // finish their last request may still park theirs).
                    self.lot.close_all(self.poll.registry());
                    if self.children.is_empty() && self.old_workers.is_empty() {
                        return 0;
                    }
                    self.escalate_stop();
                }
            }
        }
    }

    /// A worker got busy while no round was scheduled: schedule one (at most one per
    /// `TICK`, as always).
    fn answer_doorbell(&mut self) {
        if let Some(doorbell) = &self.doorbell {
            // Non-blocking: reads and resets the counter, or finds it reset already.
            let _ = doorbell.read();
        }
        self.schedule_round(Duration::ZERO);
    }

    /// Want a maintenance round in `due`, but never sooner than `TICK` after the last.
    fn schedule_round(&mut self, due: Duration) {
        let at = (Instant::now() + due).max(self.last_tick + TICK);
        self.next_tick = Some(self.next_tick.map_or(at, |next| next.min(at)));
    }

    /// With no round scheduled the master sleeps until an event; arm every pool's doorbell
    /// first, so that a worker getting busy wakes it. A worker busy already (it got busy
    /// after the round looked) gets a round instead.
    fn sleep_or_schedule(&mut self) {
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

    fn next_timeout(&self, systemd_report_at: Option<Instant>) -> Option<Duration> {
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

    fn on_signal(&mut self, signal: i32) {
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

    /// Fast stop: workers kill their CGI children and exit; KILL after a grace period.
    fn terminate(&mut self) {
        if matches!(self.state, State::Terminating { .. }) {
            return;
        }
        log::info!("Terminating ...");
        crate::systemd::stopping();
        let grace = self
            .config
            .global
            .process_control_timeout
            .max(crate::grace::WORKER);
        self.state = State::Terminating {
            kill_at: Instant::now() + grace,
            killed: false,
        };
        self.signal_children(Signal::SIGTERM);
    }

    /// Graceful stop: workers finish the request in hand, then exit.
    fn finish(&mut self) {
        if self.state != State::Running {
            return;
        }
        log::info!("Finishing ...");
        crate::systemd::stopping();
        let timeout = self.config.global.process_control_timeout;
        self.state = State::Finishing {
            escalate_at: (!timeout.is_zero()).then(|| Instant::now() + timeout),
        };
        self.signal_children(Signal::SIGQUIT);
        self.stop_listening();
    }

    /// On a graceful stop, refuse new connections at once on the sockets this master
    /// made. A web server with another upstream then retries there straight away, a POST
    /// too (nothing was sent), instead of waiting in the listen queue until this master
    /// exits and being reset then. shutdown() reaches the socket the workers share as well.
    /// Sockets systemd holds stay open: they queue connections for the next start.
    fn stop_listening(&mut self) {
        for pool in &self.pools {
            if pool.listener.held_by_systemd() {
                continue;
            }
            let fd = pool.listener.raw_fd();
            // An ondemand pool's socket must not wake the master for connections
            // nobody will take (deregistering one that was never watched is harmless).
            if pool.settings.pm == ProcessManager::Ondemand {
                let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
            }
            if let Err(e) = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Read) {
                log::warn!(
                    "[pool {}] cannot stop listening on {} (new connections wait until exit): {e}",
                    pool.name,
                    pool.listener.address
                );
            }
        }
    }

    fn escalate_stop(&mut self) {
        let now = Instant::now();
        match self.state {
            State::Finishing {
                escalate_at: Some(at),
            } if now >= at => {
                log::warn!(
                    "process_control_timeout ({}s) passed with {} worker(s) still busy; terminating them",
                    self.config.global.process_control_timeout.as_secs(),
                    self.children.len()
                );
                self.state = State::Running;
                self.terminate();
            }
            State::Terminating {
                kill_at,
                killed: false,
            } if now >= kill_at => {
                log::warn!(
                    "{} worker(s) still running after SIGTERM; sending SIGKILL",
                    self.children.len()
                );
                self.signal_children(Signal::SIGKILL);
                self.state = State::Terminating {
                    kill_at,
                    killed: true,
                };
            }
            _ => {}
        }
    }

    fn signal_children(&self, signal: Signal) {
        for pid in self.children.keys() {
            let _ = kill(*pid, signal);
        }
        self.old_workers.signal(signal);
        if signal == Signal::SIGKILL {
            // A worker killed outright cannot stop its CGI child; do it for it.
            for pool in &self.pools {
                for slot in pool.scoreboard.slots() {
                    let cgi = slot.cgi_pid.load(Ordering::Relaxed);
                    if cgi > 0 {
                        let _ = killpg(Pid::from_raw(cgi), Signal::SIGKILL);
                    }
                }
            }
        }
    }

    fn reap_children(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                    self.on_child_exit(status)
                }
                Ok(_) => {}
                Err(Errno::EINTR) => {}
                Err(e) => {
                    log::error!("waitpid() failed: {e}");
                    return;
                }
            }
        }
    }

    fn on_child_exit(&mut self, status: WaitStatus) {
        let Some(pid) = status.pid() else { return };
        let Some(child) = self.children.remove(&pid) else {
            if self.old_workers.remove(pid) {
                for pool in &mut self.pools {
                    // Its row leaves the status page; a scoreboard nobody writes any more
                    // is let go.
                    pool.previous
                        .retain(|board| board.release_pid(pid.as_raw()));
                }
                log::info!(
                    "child {pid} of the previous configuration {}; {} left",
                    crate::wait_status::describe(status),
                    self.old_workers.len()
                );
            }
            return;
        };
        if let WaitStatus::Signaled(_, Signal::SIGSEGV | Signal::SIGBUS, _) = status
            && self.state == State::Running
        {
            let global = &self.config.global;
            match self.emergency.record_crash(std::time::SystemTime::now()) {
                Verdict::Nothing => {}
                Verdict::Reload { crashes } => {
                    self.figures.emergency_restarts += 1;
                    log::error!(
                        target: crate::logging::ALERT,
                        "failed processes threshold ({crashes} in {} sec) is reached, initiating reload",
                        global.emergency_restart_interval.as_secs()
                    );
                    self.reload_requested = true;
                }
                Verdict::HeldBack { for_secs } => log::error!(
                    target: crate::logging::ALERT,
                    "failed processes threshold is reached again soon after an emergency reload; holding the next one back for {for_secs} sec"
                ),
            }
        }
        let Some(pool) = self.pools.get_mut(child.pool) else {
            return;
        };
        let name = &pool.name;
        let lived = child.started.elapsed();
        let stopping = self.state != State::Running;
        let clean = match status {
            WaitStatus::Exited(_, code) => code == 0,
            WaitStatus::Signaled(_, sig, _) => {
                stopping && matches!(sig, Signal::SIGTERM | Signal::SIGQUIT | Signal::SIGKILL)
            }
            _ => return,
        };
        let line = format!(
            "[pool {name}] child {pid} {} after {}.{:06} seconds from start",
            crate::wait_status::describe(status),
            lived.as_secs(),
            lived.subsec_micros()
        );
        if clean {
            log::info!("{line}");
        } else {
            log::warn!("{line}");
        }
        if !child.stopping && !stopping {
            pool.pm.to_replace += 1;
        }
        let cause = match status {
            WaitStatus::Exited(_, 0) => 0,
            WaitStatus::Exited(..) => 1,
            _ => 2,
        };
        pool.workers_died[cause] += 1;
        if let Some(slot) = pool.scoreboard.slot(child.slot) {
            // A worker that died abruptly leaves its CGI child behind; nobody else will
            // ever read its output or stop it.
            let cgi = slot.cgi_pid.load(Ordering::Relaxed);
            if cgi > 0 && matches!(status, WaitStatus::Signaled(..)) {
                let _ = killpg(Pid::from_raw(cgi), Signal::SIGKILL);
                log::warn!("[pool {name}] killed CGI process group {cgi} left by child {pid}");
            }
            slot.release();
        }
        if stopping {
            return;
        }
        if lived < QUICK_EXIT && !clean {
            pool.quick_failures += 1;
            if pool.quick_failures >= 2 {
                let delay = Duration::from_millis(100 << (pool.quick_failures - 2).min(7))
                    .min(MAX_RESPAWN_DELAY);
                pool.respawn_at = Some(Instant::now() + delay);
                log::warn!(
                    "[pool {name}] workers keep exiting right after they start; next start in {}.{:03}s",
                    delay.as_secs(),
                    delay.subsec_millis()
                );
            }
        } else {
            pool.quick_failures = 0;
        }
    }

    /// Run the pool's manager and carry out what it decides.
    fn maintain_pool(&mut self, index: usize, trigger: Trigger) {
        let now = Instant::now();
        if self.pools[index].respawn_at.is_some_and(|at| now < at) {
            return;
        }
        let decision = self.decide(index, trigger);
        self.pools[index].respawn_at = None;
        self.carry_out(index, decision);
    }

    /// Gather the pool's figures and ask its manager.
    fn decide(&mut self, index: usize, trigger: Trigger) -> Decision {
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
                .map(|f| f.queued + handoffs),
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

    fn carry_out(&mut self, index: usize, decision: Decision) {
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
    fn rearm(&mut self, index: usize) {
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
    fn note_figures(&mut self) {
        for pool in &self.pools {
            if pool.kind != PoolKind::Workers {
                continue;
            }
            if let Some(figures) = pool.queue_figures(&mut self.prober) {
                pool.scoreboard.note_listen_queue(figures.queued);
            }
            pool.scoreboard.note_active(pool.scoreboard.active_count());
        }
    }

    fn spawn_worker(&mut self, index: usize) -> Result<(), SpawnFailure> {
        let max = self.config.global.process_max as usize;
        let running = self.children.len() + self.old_workers.len();
        if max > 0 && running >= max {
            if !self.process_max_reached {
                self.process_max_reached = true;
                log::warn!(
                    "the maximum number of processes has been reached (process.max = {max}); [pool {}] cannot start another worker",
                    self.pools[index].name
                );
            }
            return Ok(());
        }
        self.process_max_reached = false;
        let pool = &self.pools[index];
        let config = &self.config.pools[pool.config_index];
        let slot_index = pool
            .scoreboard
            .free_slot()
            .ok_or_else(|| format!("[pool {}] no free scoreboard slot", pool.name))?;
        let slot = pool
            .scoreboard
            .slot(slot_index)
            .ok_or_else(|| format!("[pool {}] no free scoreboard slot", pool.name))?;
        let status_source = match pool.kind {
            PoolKind::Workers => StatusSource {
                scoreboard: &pool.scoreboard,
                listener: pool.listener.as_fd(),
                previous: &pool.previous,
            },
            PoolKind::Status { parent } => {
                let parent = &self.pools[parent];
                StatusSource {
                    scoreboard: &parent.scoreboard,
                    listener: parent.listener.as_fd(),
                    previous: &parent.previous,
                }
            }
        };
        let privileges = &self.privileges[pool.config_index];
        // Reserve before forking so the worker never races our bookkeeping.
        slot.claim(-1);
        let pipes = if config.catch_workers_output {
            match capture::pipes() {
                Ok(p) => Some(p),
                Err(e) => {
                    slot.release();
                    return Err(SpawnFailure {
                        message: format!(
                            "[pool {}] cannot create pipes for catch_workers_output: {e}",
                            pool.name
                        ),
                        shortage: crate::shortage::is_shortage(e),
                    });
                }
            }
        } else {
            None
        };

        // Signals stay blocked across fork: the worker must not run the master's handlers
        // before it has replaced them.
        let mut saved = SigSet::empty();
        let _ = sigprocmask(
            SigmaskHow::SIG_SETMASK,
            Some(&SigSet::all()),
            Some(&mut saved),
        );
        // Taken before the fork: the worker compares it with getppid() to know whether
        // its master is still there.
        let master_pid = std::process::id() as i32;
        // SAFETY: the master is single-threaded, so the child inherits no lock held by
        // another thread. The child never returns into the master's code: worker::run
        // ends with _exit.
        let forked = unsafe { fork() };
        match forked {
            Ok(ForkResult::Child) => worker::run(WorkerSpec {
                pool: config,
                scoreboard: &pool.scoreboard,
                slot_index,
                listener: pool.listener.as_fd(),
                inherited_env: self.inherited_env.clone(),
                access_log_fd: pool.logs.access_fd(),
                slowlog_fd: pool.logs.slow_fd(),
                output_pipes: pipes.as_ref().map(|(_, worker)| worker.raw()),
                privileges,
                status_source,
                status_only: matches!(pool.kind, PoolKind::Status { .. }),
                parking: self.channels[index].as_ref().map(Channels::for_worker),
                doorbell: self.doorbell.as_ref().map(|d| d.as_fd().as_raw_fd()),
                master_pid,
                orphan_grace: match self.config.global.process_control_timeout {
                    t if t.is_zero() => worker::ORPHAN_GRACE,
                    t => t,
                },
                proctitle_prefix: self.config.global.proctitle_prefix.as_deref(),
            }),
            Ok(ForkResult::Parent { child }) => {
                let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&saved), None);
                slot.pid.store(child.as_raw(), Ordering::Release);
                log::info!("[pool {}] child {} started", pool.name, child);
                if let Some((ours, theirs)) = pipes {
                    drop(theirs);
                    self.capture.add(
                        self.poll.registry(),
                        ours,
                        &pool.name,
                        child.as_raw(),
                        config.decorate_workers_output,
                    );
                }
                self.children.insert(
                    child,
                    Child {
                        pool: index,
                        slot: slot_index,
                        started: Instant::now(),
                        stopping: false,
                        killed_as_stuck: false,
                    },
                );
                self.pools[index].workers_started += 1;
                Ok(())
            }
            Err(e) => {
                let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&saved), None);
                slot.release();
                Err(SpawnFailure {
                    message: format!("[pool {}] fork() failed: {e}", pool.name),
                    shortage: crate::shortage::is_shortage(e) || e == Errno::EAGAIN,
                })
            }
        }
    }

    /// SIGUSR1 (logrotate): reopen the error log and the pools' logs, then restart the
    /// workers gracefully so they pick up the new files, as php-fpm does; each finishes the
    /// request in hand first.
    fn reopen_logs(&mut self) {
        log::info!("reopening log files");
        if !self.force_stderr {
            let g = &self.config.global;
            if let Err(e) =
                crate::logging::open_error_log(&g.error_log, &g.syslog_ident, &g.syslog_facility)
            {
                log::error!("{e}; still logging to the old error log");
            }
        }
        for pool in &mut self.pools {
            if pool.kind != PoolKind::Workers {
                continue;
            }
            match PoolLogs::open(&self.config.pools[pool.config_index]) {
                Ok(logs) => pool.logs = logs,
                Err(e) => log::error!("{e}; keeping the old file"),
            }
        }
        log::info!("log files reopened");
        if self.state == State::Running {
            self.signal_children(Signal::SIGQUIT);
        }
    }

    /// The worker enforces request_terminate_timeout itself; a worker that failed to (it
    /// is stuck, or stopped) is killed here, with its CGI process group, once the timeout
    /// and the worker's own grace period have both passed.
    fn stop_stuck_workers(&mut self) {
        let now = now_us();
        for (pid, child) in &mut self.children {
            let pool = &self.pools[child.pool];
            let limit = self.config.pools[pool.config_index].request_terminate_timeout;
            let Some(slot) = pool.scoreboard.slot(child.slot) else {
                continue;
            };
            if slot.state() != WorkerState::Running {
                continue;
            }
            let started = slot.request_started_at_us.load(Ordering::Relaxed);
            let running = Duration::from_micros(now.saturating_sub(started));
            if !is_stuck(limit, running, child.killed_as_stuck) {
                continue;
            }
            log::warn!(
                "[pool {}] child {pid}, request running for {}.{:06} sec, past request_terminate_timeout, and the worker did not stop it; killing the worker",
                pool.name,
                running.as_secs(),
                running.subsec_micros()
            );
            let cgi = slot.cgi_pid.load(Ordering::Relaxed);
            if cgi > 0 {
                let _ = killpg(Pid::from_raw(cgi), Signal::SIGKILL);
            }
            let _ = kill(*pid, Signal::SIGKILL);
            child.killed_as_stuck = true;
        }
    }

    /// The loop failed (epoll_wait, or its set-up after a reload handed old workers
    /// over): stop every worker before exiting, rather than leave orphans that nobody
    /// reaps, replaces or stops. As a fast stop, without the loop: TERM, a short wait
    /// for them to go, then KILL.
    fn stop_children_without_loop(&mut self) {
        if self.children.is_empty() && self.old_workers.is_empty() {
            return;
        }
        log::warn!(
            "stopping {} worker(s) before exiting",
            self.children.len() + self.old_workers.len()
        );
        self.terminate();
        let State::Terminating { kill_at, .. } = self.state else {
            return;
        };
        let all_gone = |master: &mut Master, until: Instant| loop {
            master.reap_children();
            if master.children.is_empty() && master.old_workers.is_empty() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            // No event loop to wake us on SIGCHLD any more; exiting, a short poll will do.
            std::thread::sleep(Duration::from_millis(10));
        };
        if !all_gone(self, kill_at) {
            self.signal_children(Signal::SIGKILL);
            all_gone(self, Instant::now() + Duration::from_secs(1));
        }
    }

    /// A request or a connection on the master's endpoint.
    fn on_endpoint_event(&mut self, token: Token) {
        let Master {
            endpoint,
            pools,
            prober,
            lot,
            figures,
            poll,
            config,
            ..
        } = self;
        let Some(endpoint) = endpoint else { return };
        let open = endpoint.open_connections() as u64;
        endpoint.on_event(poll.registry(), token, |render| {
            let now = now_us();
            let mut parked = vec![0u64; pools.len()];
            for (index, _) in lot.parked_fds() {
                if let Some(count) = parked.get_mut(index) {
                    *count += 1;
                }
            }
            let gathered: Vec<(usize, crate::scoreboard::PoolSnapshot, _)> = pools
                .iter()
                .enumerate()
                .filter(|(_, p)| p.kind == PoolKind::Workers)
                .map(|(index, p)| {
                    let queue = p.queue_figures(prober).unwrap_or_default();
                    let mut snapshot = p.scoreboard.snapshot();
                    for board in &p.previous {
                        snapshot.previous.extend(board.finishing_workers());
                    }
                    (index, snapshot, queue)
                })
                .collect();
            let views: Vec<crate::endpoint::exposition::PoolView<'_>> = gathered
                .iter()
                .map(|(index, snapshot, queue)| {
                    let pool = &pools[*index];
                    crate::endpoint::exposition::PoolView {
                        report: crate::status::Report {
                            pool: &pool.name,
                            settings: crate::status::PmSettings::from(
                                &config.pools[pool.config_index],
                            ),
                            snapshot,
                            queue: *queue,
                            now_us: now,
                        },
                        parked: parked[*index],
                        workers_started: pool.workers_started,
                        workers_died: pool.workers_died,
                    }
                })
                .collect();
            let master = crate::endpoint::exposition::MasterView {
                now_us: now,
                started_at_us: figures.started_at_us,
                reloads: figures.reloads,
                emergency_restarts: figures.emergency_restarts,
                endpoint_connections: open,
            };
            render(&views, &master)
        });
    }

    fn shutdown(self) {
        if let Some(path) = &self.pid_file {
            let _ = std::fs::remove_file(path);
        }
        self.close_listeners();
        log::info!("exiting, bye-bye!");
    }
}

impl Pool {
    /// The listening socket's accept queue, when the kernel tells.
    fn queue_figures(&self, prober: &mut Prober) -> Option<crate::listen_queue::QueueFigures> {
        prober.figures(self.listener.as_fd()).ok()
    }
}

/// Why a worker was not started.
struct SpawnFailure {
    message: String,
    /// For want of descriptors or processes: it passes, so retry with backoff.
    shortage: bool,
}

impl From<String> for SpawnFailure {
    fn from(message: String) -> SpawnFailure {
        SpawnFailure {
            message,
            shortage: false,
        }
    }
}

/// Map the scoreboards a reload handed over into the pools of the same name, for their
/// status pages; only the slots of workers still finishing stay. Others are closed.
fn adopt_scoreboards(
    pools: &mut [Pool],
    handed: Vec<crate::handover::PoolScoreboard>,
    old_workers: &[i32],
) {
    for crate::handover::PoolScoreboard { pool, fd } in handed {
        if fd <= 2 || !is_regular_file(fd) {
            continue;
        }
        // SAFETY: the previous image left this descriptor open for us (checked to be a
        // regular file above; a memfd is one) and nothing here owns it yet.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        crate::handover::set_cloexec(fd.as_raw_fd(), true);
        let Some(target) = pools
            .iter_mut()
            .find(|p| p.kind == PoolKind::Workers && p.name == pool)
        else {
            continue;
        };
        match Scoreboard::adopt(fd) {
            Ok(board) => {
                board.keep_only(old_workers);
                if board.in_use() {
                    target.previous.push(board);
                }
            }
            Err(e) => log::debug!("[pool {pool}] previous scoreboard not shown: {e}"),
        }
    }
}

fn is_regular_file(fd: std::os::fd::RawFd) -> bool {
    // SAFETY: fstat only reads the descriptor's metadata; the borrow ends with the call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFREG)
}

/// The socket and one-slot scoreboard of a pool's status worker.
fn open_status_pool(
    pool: &crate::config::PoolConfig,
    address: &crate::config::ListenAddress,
    inherited: &mut inherit::Inherited,
) -> Result<(Listener, Scoreboard), String> {
    let listener = listener::open_at(pool, address, inherited)?;
    match Scoreboard::new(1) {
        Ok(scoreboard) => Ok((listener, scoreboard)),
        Err(e) => {
            listener.close();
            Err(format!(
                "[pool {}] cannot create the status scoreboard: {e}",
                pool.name
            ))
        }
    }
}

/// The periodic systemd status line (php-fpm's), with the watchdog ping when enabled.
struct SystemdReport {
    every: Duration,
    watchdog: bool,
    next: Instant,
    last_requests: u64,
}

impl SystemdReport {
    fn new(systemd_interval: Duration) -> Option<SystemdReport> {
        let (every, watchdog) = crate::systemd::report_interval(systemd_interval)?;
        Some(SystemdReport {
            every,
            watchdog,
            next: Instant::now() + every,
            last_requests: 0,
        })
    }

    fn tick(&mut self, pools: &[Pool]) {
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

/// How many idle kept connections the master holds at most: each costs it a descriptor,
/// so they get what the pools leave of the limit (see `fdplan`).
fn lot_capacity(config: &Config) -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    crate::fdplan::held_capacity(&crate::fdplan::budget(config), soft)
}

/// Whether the master steps in for a worker whose request has run `running` under
/// request_terminate_timeout `limit`: once past the worker's own grace, and once only. A
/// worker in uninterruptible sleep is not reaped at once, and killing it (and saying so)
/// on every wake-up until it is flooded the log.
fn is_stuck(limit: Duration, running: Duration, killed_already: bool) -> bool {
    !killed_already && !limit.is_zero() && running > limit + crate::grace::STUCK_WORKER
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stuck_worker_is_killed_once_past_its_grace() {
        let limit = Duration::from_secs(10);
        let past = limit + crate::grace::STUCK_WORKER + Duration::from_millis(1);
        assert!(
            !is_stuck(limit, limit, false),
            "the worker's own grace first"
        );
        assert!(!is_stuck(limit, limit + crate::grace::STUCK_WORKER, false));
        assert!(is_stuck(limit, past, false));
        assert!(
            !is_stuck(limit, past, true),
            "killed once, not on every wake-up"
        );
        assert!(
            !is_stuck(Duration::ZERO, past * 100, false),
            "no limit, no kill"
        );
    }
}
