//! The master process: one thread, one mio loop. It owns the listening sockets and the
//! scoreboards, forks the workers, reaps and replaces them, and acts on signals. It
//! accepts a pool's connections itself only while the pool is full and has a
//! request_queue_timeout (see `queue`).

mod capture;
mod children;
mod control;
mod emergency;
mod endpoint;
mod event_loop;
mod handed_over;
mod inherit;
mod listener;
mod logs;
mod lot;
mod maintenance;
mod old_workers;
mod pm;
mod queue;
mod reexec;
mod refusal;
mod reload;
mod startup;
mod systemd_report;
mod tokens;
mod views;

use crate::config::Config;
use crate::daemon::StartupReport;
use crate::isolation::Privileges;
use crate::listen_queue::Prober;
use crate::scoreboard::Scoreboard;
use capture::Capture;
use emergency::Emergency;
use listener::Listener;
use logs::PoolLogs;
use lot::{Channels, Lot};
use mio::Poll;
use nix::unistd::Pid;
use old_workers::OldWorkers;
use pm::PmState;
pub use reexec::Reexec;
use std::collections::HashMap;
use std::ffi::OsString;
use std::time::{Duration, Instant};

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

struct Master {
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
    /// request_queue_timeout: the pools whose connections the master holds.
    queues: queue::Queues,
    /// Connections parked with the previous image, handed over and watched once the
    /// loop starts, with when the request waiting on one arrived.
    handed_over_parked: Vec<lot::HeldOver>,
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
    fn shutdown(self) {
        if let Some(path) = &self.pid_file {
            let _ = std::fs::remove_file(path);
        }
        // Closes the listening sockets and removes the socket files this master made.
        drop(self);
        log::info!("exiting, bye-bye!");
    }
}
