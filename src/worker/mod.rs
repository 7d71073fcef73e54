//! A worker process: forked by the master, it accepts connections on its pool's socket
//! and serves one request at a time, each as a CGI child.

mod accept;
mod account;
mod conn;
mod connection;
mod exchange;
mod output;
mod park;
pub(crate) mod poll;
mod pump;
mod refusal;
mod request;
mod request_head;
mod request_log;
mod resident;
mod setup;
mod signals;
mod slowlog;
mod status;
mod wait;

use crate::cgi::EnvPolicy;
use crate::config::PoolConfig;
use crate::fastcgi::ServerValues;
use crate::isolation::Privileges;
use crate::scoreboard::{Scoreboard, Slot, WorkerState};
use crate::shortage::Episode;
use conn::ConnBuffers;
use signals::WorkerSignals;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// What the master hands a freshly forked worker.
pub(crate) struct WorkerSpec<'a> {
    pub pool: &'a PoolConfig,
    pub scoreboard: &'a Scoreboard,
    pub slot_index: usize,
    /// The pool's listening socket (non-blocking, shared with the master and siblings).
    pub listener: BorrowedFd<'a>,
    /// The master's environment, for pools with `clear_env = no`.
    pub inherited_env: Vec<(OsString, OsString)>,
    /// The pool's access log and slowlog, opened by the master (so it can reopen them).
    pub access_log_fd: Option<BorrowedFd<'a>>,
    pub slowlog_fd: Option<BorrowedFd<'a>>,
    /// `catch_workers_output`: write ends of the pipes the master reads the worker's
    /// stdout and stderr from, the worker's to keep (as its stdout and stderr).
    pub output_pipes: Option<(OwnedFd, OwnedFd)>,
    /// Identity, jail and limits to take on before serving.
    pub privileges: &'a Privileges,
    /// The pool the status page reports on: this worker's own, or the one a
    /// `pm.status_listen` worker serves.
    pub status_source: StatusSource<'a>,
    /// A `pm.status_listen` worker: it answers status and ping only.
    pub status_only: bool,
    /// The pool's channels for idle kept connections (see `parking`).
    pub parking: Option<Parking<'a>>,
    /// The master's eventfd, rung when this worker gets busy while the master sleeps.
    pub doorbell: Option<BorrowedFd<'a>>,
    /// The master's pid: once `getppid()` says otherwise, the master is gone.
    pub master_pid: i32,
    /// How long a worker whose master died may take to finish the request in hand
    /// (process_control_timeout, or `ORPHAN_GRACE` when that is 0).
    pub orphan_grace: Duration,
    /// `proctitle_prefix`: what the process title starts with instead of `cgi-fpm`.
    pub proctitle_prefix: Option<&'a str>,
}

/// An orphaned worker's time to finish its request when process_control_timeout is 0
/// (no limit): bounded all the same, so a stuck script cannot keep it alive for ever.
pub(crate) const ORPHAN_GRACE: Duration = Duration::from_secs(10);

/// A worker's ends of its pool's parking channels. The master keeps them open for the
/// worker's lifetime (the forked copy of its objects is never dropped).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Parking<'a> {
    /// Where the worker sends an idle kept connection.
    pub park: BorrowedFd<'a>,
    /// Where the master hands out parked connections that have a request waiting.
    pub handoff: BorrowedFd<'a>,
}

/// Where a status page's figures come from.
#[derive(Clone, Copy)]
pub(crate) struct StatusSource<'a> {
    pub scoreboard: &'a Scoreboard,
    /// The pool's listening socket, for its queue figures.
    pub listener: BorrowedFd<'a>,
    /// Scoreboards of earlier images whose workers are still finishing (after a reload).
    pub previous: &'a [Scoreboard],
}

/// The access log as a worker writes it.
pub(crate) struct AccessLog<'a> {
    fd: BorrowedFd<'a>,
    format: crate::accesslog::Format,
    suppress: Vec<String>,
}

impl<'a> AccessLog<'a> {
    fn for_pool(pool: &PoolConfig, fd: BorrowedFd<'a>) -> Option<AccessLog<'a>> {
        // The loader checked the format with this same parser, so this cannot fail.
        match crate::accesslog::Format::parse(&pool.access_format) {
            Ok(format) => Some(AccessLog {
                fd,
                format,
                suppress: pool.access_suppress_path.clone(),
            }),
            Err(e) => {
                log::error!("[pool {}] access.format: {e}", pool.name);
                None
            }
        }
    }
}

/// The worker's state while it serves.
pub(crate) struct WorkerCtx<'a> {
    pub pool: &'a PoolConfig,
    pub scoreboard: &'a Scoreboard,
    slot_index: usize,
    pub env_policy: EnvPolicy,
    signals: WorkerSignals,
    values: ServerValues,
    /// The master asked us to exit once the request in hand is done.
    quit: bool,
    access_log: Option<AccessLog<'a>>,
    slowlog_fd: Option<BorrowedFd<'a>>,
    /// What the last CGI child used, from wait4 (for the status page).
    last_usage: Option<crate::cgi::Usage>,
    status_source: StatusSource<'a>,
    status_only: bool,
    /// The request being read has been published in the slot.
    request_begun: bool,
    parking: Option<Parking<'a>>,
    doorbell: Option<BorrowedFd<'a>>,
    /// Connection buffers kept between connections.
    buffers: ConnBuffers,
    master_pid: i32,
    orphan_grace: Duration,
    /// The master died: the request in hand must be done by then.
    orphan_deadline: Option<Instant>,
    /// The sockets this worker accepts on, closed once its master is gone.
    listeners: Vec<RawFd>,
    /// Out of descriptors at accept, and at starting scripts (see `shortage`).
    accept_shortage: Episode,
    pub spawn_shortage: Episode,
    /// Resident FastCGI applications this worker has started.
    residents: resident::Residents,
}

/// `[pool www] child 1234,`: how every log line of a worker about its own work starts,
/// as php-fpm's do.
pub(crate) struct LogPrefix<'a> {
    pool: &'a str,
}

impl std::fmt::Display for LogPrefix<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[pool {}] child {},", self.pool, std::process::id())
    }
}

impl WorkerCtx<'_> {
    pub(crate) fn log_prefix(&self) -> LogPrefix<'_> {
        LogPrefix {
            pool: &self.pool.name,
        }
    }

    pub(crate) fn slot(&self) -> &Slot {
        // The master gives every worker an index within its pool's scoreboard.
        self.scoreboard
            .slot(self.slot_index)
            .unwrap_or_else(|| unreachable_slot(self.slot_index))
    }

    /// A request has started to arrive: publish it and count it (php-fpm's "accepted
    /// conn" counts requests).
    fn begin_request(&mut self) {
        if self.request_begun {
            return;
        }
        self.request_begun = true;
        self.slot().begin_request(crate::scoreboard::now_us());
        self.wake_master_if_asleep();
        self.scoreboard
            .counters()
            .accepted_conn
            .fetch_add(1, Ordering::Relaxed);
        self.scoreboard.note_active(self.scoreboard.active_count());
    }

    /// A connection is in hand: busy from now on. The master must not count this worker as
    /// free for the next waiting connection while the request is still on its way, and
    /// if it sleeps with nothing scheduled it is woken to watch over the request.
    fn go_busy(&self) {
        self.slot().set_state(WorkerState::Reading);
        self.wake_master_if_asleep();
        // The last idle worker of a pool with request_queue_timeout tells the master,
        // which holds new connections if the pool cannot grow (see `master::queue`).
        if self.queue_timed() && self.scoreboard.none_idle() {
            self.ring_doorbell();
        }
    }

    /// Just turned idle: while the master holds connections for the pool, it hands this
    /// worker the oldest; ring so that it knows.
    fn offer_idle(&self) {
        if self.queue_timed() && self.scoreboard.idle_wanted() {
            self.ring_doorbell();
        }
    }

    /// The pool has request_queue_timeout (a status worker answers apart from that queue).
    fn queue_timed(&self) -> bool {
        !self.status_only && !self.pool.request_queue_timeout.is_zero()
    }

    /// After any change from idle to busy (a new connection, or the next request on a
    /// kept one).
    fn wake_master_if_asleep(&self) {
        if self.scoreboard.take_doorbell() {
            self.ring_doorbell();
        }
    }

    fn ring_doorbell(&self) {
        if let Some(fd) = self.doorbell {
            // Non-blocking; a full counter already means "wake up".
            let _ = nix::unistd::write(fd, &1u64.to_ne_bytes());
        }
    }

    /// A QUIT arrived: from the master (finish the request in hand, then exit), or from
    /// the kernel because the master died (PR_SET_PDEATHSIG). An orphan stops accepting at
    /// once — closing its listening sockets, so that a new master can take them over —
    /// and gets `orphan_grace` for the request in hand.
    fn on_quit(&mut self) {
        self.quit = true;
        if self.orphan_deadline.is_some() || nix::unistd::getppid().as_raw() == self.master_pid {
            return;
        }
        self.orphan_deadline = Some(Instant::now() + self.orphan_grace);
        log::warn!(
            "{} the master process {} is gone; no longer accepting connections, finishing the request in hand within {}s",
            self.log_prefix(),
            self.master_pid,
            self.orphan_grace.as_secs()
        );
        for fd in std::mem::take(&mut self.listeners) {
            // SAFETY: the master handed these to the worker for its lifetime; once the
            // worker is an orphan nothing uses them again (accept_loop returns at once).
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        // The parking channels lead to the dead master: nothing more is parked there.
        self.parking = None;
    }

    /// The master is gone.
    fn orphaned(&self) -> bool {
        self.orphan_deadline.is_some()
    }

    /// pm.max_requests is reached: the worker exits once the request is answered.
    fn served_enough(&self) -> bool {
        let max = self.pool.pm_max_requests;
        !self.status_only && max > 0 && self.slot().requests.load(Ordering::Relaxed) >= max
    }
}

#[cold]
fn unreachable_slot(index: usize) -> ! {
    log::error!("worker given scoreboard slot {index}, which does not exist");
    exit(crate::exit_code::SOFTWARE)
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit ends the process at once. This process is a fork of the master, and
    // the master's exit-time work (buffered stdio, its objects' destructors) is not ours.
    unsafe { nix::libc::_exit(code) }
}

/// Run the worker. Called in the child right after fork, with all signals blocked.
pub(crate) fn run(mut spec: WorkerSpec<'_>) -> ! {
    let signals = setup::set_up(&mut spec);
    let listener = spec.listener;
    let mut ctx = WorkerCtx::new(spec, signals);
    resident::start_at_worker_start(&mut ctx);
    let code = accept::accept_loop(&mut ctx, listener);
    let mut residents = std::mem::take(&mut ctx.residents);
    residents.stop_all(&ctx);
    exit(code)
}

impl<'a> WorkerCtx<'a> {
    /// The state of a worker set up for `spec` (see `setup`).
    fn new(spec: WorkerSpec<'a>, signals: WorkerSignals) -> WorkerCtx<'a> {
        let max = spec.pool.pm_max_children;
        let mut listeners = vec![spec.listener.as_raw_fd()];
        if spec.status_source.listener.as_raw_fd() != spec.listener.as_raw_fd() {
            listeners.push(spec.status_source.listener.as_raw_fd());
        }
        WorkerCtx {
            pool: spec.pool,
            scoreboard: spec.scoreboard,
            slot_index: spec.slot_index,
            env_policy: spec.privileges.env_policy(spec.pool, spec.inherited_env),
            signals,
            values: ServerValues {
                max_conns: max,
                max_reqs: max,
            },
            quit: false,
            access_log: spec
                .access_log_fd
                .and_then(|fd| AccessLog::for_pool(spec.pool, fd)),
            slowlog_fd: spec.slowlog_fd,
            last_usage: None,
            status_source: spec.status_source,
            status_only: spec.status_only,
            request_begun: false,
            parking: spec.parking,
            doorbell: spec.doorbell,
            buffers: ConnBuffers::default(),
            master_pid: spec.master_pid,
            orphan_grace: spec.orphan_grace,
            orphan_deadline: None,
            listeners,
            accept_shortage: Episode::default(),
            spawn_shortage: Episode::default(),
            residents: resident::Residents::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LogPrefix;

    #[test]
    fn the_log_prefix_names_pool_and_child() {
        let prefix = LogPrefix { pool: "www" }.to_string();
        assert_eq!(prefix, format!("[pool www] child {},", std::process::id()));
    }
}
