//! A worker process: forked by the master, it accepts connections on its pool's socket
//! and serves one request at a time, each as a CGI child.

mod account;
mod conn;
mod output;
pub(crate) mod poll;
mod pump;
mod request;
mod resident;
mod signals;
mod slowlog;
mod status;
mod wait;

use crate::cgi::EnvPolicy;
use crate::cgi::response::error_response;
use crate::config::PoolConfig;
use crate::fastcgi::record::{ProtocolStatus, RecordType, write_end_request};
use crate::fastcgi::{Event, Limits, ProtocolError, Request, ServerValues, Session};
use crate::isolation::{self, Privileges};
use crate::scoreboard::{Scoreboard, Slot, WorkerState};
use crate::shortage::Episode;
use conn::{Conn, ConnBuffers, Fill};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{SockFlag, accept4};
use poll::PollSet;
use pump::Outcome;
use signals::{Request as SignalRequest, WorkerSignals};
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long we try to deliver a refusal before giving up on a misbehaving peer.
const REFUSAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// What the master hands a freshly forked worker.
pub struct WorkerSpec<'a> {
    pub pool: &'a PoolConfig,
    pub scoreboard: &'a Scoreboard,
    pub slot_index: usize,
    /// The pool's listening socket (non-blocking, shared with the master and siblings).
    pub listener: BorrowedFd<'a>,
    /// The master's environment, for pools with `clear_env = no`.
    pub inherited_env: Vec<(OsString, OsString)>,
    /// The pool's access log and slowlog, opened by the master (so it can reopen them).
    pub access_log_fd: Option<RawFd>,
    pub slowlog_fd: Option<RawFd>,
    /// `catch_workers_output`: write ends of the pipes the master reads the worker's
    /// stdout and stderr from.
    pub output_pipes: Option<(RawFd, RawFd)>,
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
    pub doorbell: Option<RawFd>,
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
pub const ORPHAN_GRACE: Duration = Duration::from_secs(10);

/// A worker's ends of its pool's parking channels. The master keeps them open for the
/// worker's lifetime (the forked copy of its objects is never dropped).
#[derive(Debug, Clone, Copy)]
pub struct Parking<'a> {
    /// Where the worker sends an idle kept connection.
    pub park: BorrowedFd<'a>,
    /// Where the master hands out parked connections that have a request waiting.
    pub handoff: BorrowedFd<'a>,
}

/// Where a status page's figures come from.
#[derive(Clone, Copy)]
pub struct StatusSource<'a> {
    pub scoreboard: &'a Scoreboard,
    /// The pool's listening socket, for its queue figures.
    pub listener: BorrowedFd<'a>,
    /// Scoreboards of earlier images whose workers are still finishing (after a reload).
    pub previous: &'a [Scoreboard],
}

/// The access log as a worker writes it.
pub struct AccessLog {
    fd: RawFd,
    format: crate::accesslog::Format,
    suppress: Vec<String>,
}

/// The worker's state while it serves.
pub struct WorkerCtx<'a> {
    pub pool: &'a PoolConfig,
    pub scoreboard: &'a Scoreboard,
    slot_index: usize,
    pub env_policy: EnvPolicy,
    signals: WorkerSignals,
    values: ServerValues,
    /// The master asked us to exit once the request in hand is done.
    quit: bool,
    access_log: Option<AccessLog>,
    slowlog_fd: Option<RawFd>,
    /// What the last CGI child used, from wait4 (for the status page).
    last_usage: Option<crate::cgi::Usage>,
    status_source: StatusSource<'a>,
    status_only: bool,
    /// The request being read has been published in the slot.
    request_begun: bool,
    parking: Option<Parking<'a>>,
    doorbell: Option<RawFd>,
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
pub struct LogPrefix<'a> {
    pool: &'a str,
}

impl std::fmt::Display for LogPrefix<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[pool {}] child {},", self.pool, std::process::id())
    }
}

impl WorkerCtx<'_> {
    pub fn log_prefix(&self) -> LogPrefix<'_> {
        LogPrefix {
            pool: &self.pool.name,
        }
    }

    pub fn slot(&self) -> &Slot {
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
    }

    /// After any change from idle to busy (a new connection, or the next request on a
    /// kept one).
    fn wake_master_if_asleep(&self) {
        if self.scoreboard.take_doorbell()
            && let Some(fd) = self.doorbell
        {
            // SAFETY: the master keeps its eventfd open for the worker's lifetime (after a
            // reload the worker keeps its own copy); the borrow ends with the call.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
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
pub fn run(spec: WorkerSpec<'_>) -> ! {
    // The master stores the pid too, once fork returns there; doing it here as well means
    // anyone who can see this process also finds it on the status page.
    if let Some(slot) = spec.scoreboard.slot(spec.slot_index) {
        slot.pid.store(std::process::id() as i32, Ordering::Release);
    }
    let signals = match WorkerSignals::install() {
        Ok(s) => s,
        Err(e) => {
            log::error!("[pool {}] worker signal set-up failed: {e}", spec.pool.name);
            exit(crate::exit_code::SOFTWARE);
        }
    };
    let mut keep = vec![
        spec.listener.as_raw_fd(),
        spec.status_source.listener.as_raw_fd(),
        signals.fd().as_raw_fd(),
    ];
    keep.extend(spec.access_log_fd);
    keep.extend(spec.slowlog_fd);
    if let Some((out, err)) = spec.output_pipes {
        keep.extend([out, err]);
    }
    if let Some(parking) = spec.parking {
        keep.extend([parking.park.as_raw_fd(), parking.handoff.as_raw_fd()]);
    }
    keep.extend(spec.doorbell);
    close_inherited_fds(&keep);
    set_up_stdio(spec.output_pipes);
    set_process_name(&spec.pool.name);
    crate::proctitle::set(&crate::proctitle::worker(
        spec.proctitle_prefix,
        &spec.pool.name,
        spec.status_only,
    ));
    if let Err(e) = spec.privileges.apply() {
        log::error!("{e}");
        exit(crate::exit_code::CONFIG);
    }
    // After the identity switch, which clears it. A worker must not outlive its master:
    // left alone it would keep accepting on the pool's socket, and a new master could
    // not start. The master's re-exec for a reload keeps its pid and thread, so this does
    // not fire then. The master may have died before this line: getppid() tells.
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Some(nix::sys::signal::Signal::SIGQUIT)) {
        log::warn!(
            "{} cannot ask to be told of the master's death: {e}",
            LogPrefix {
                pool: &spec.pool.name
            }
        );
    }
    if nix::unistd::getppid().as_raw() != spec.master_pid {
        log::warn!(
            "{} the master process {} died before this worker started; exiting",
            LogPrefix {
                pool: &spec.pool.name
            },
            spec.master_pid
        );
        exit(0);
    }

    let max = spec.pool.pm_max_children;
    let access_log = spec.access_log_fd.and_then(|fd| {
        // The loader checked the format with this same parser, so this cannot fail.
        match crate::accesslog::Format::parse(&spec.pool.access_format) {
            Ok(format) => Some(AccessLog {
                fd,
                format,
                suppress: spec.pool.access_suppress_path.clone(),
            }),
            Err(e) => {
                log::error!("[pool {}] access.format: {e}", spec.pool.name);
                None
            }
        }
    });
    let mut ctx = WorkerCtx {
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
        access_log,
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
        listeners: {
            let mut fds = vec![spec.listener.as_raw_fd()];
            if spec.status_source.listener.as_raw_fd() != spec.listener.as_raw_fd() {
                fds.push(spec.status_source.listener.as_raw_fd());
            }
            fds
        },
        accept_shortage: Episode::default(),
        spawn_shortage: Episode::default(),
        residents: resident::Residents::default(),
    };
    let listener = spec.listener;
    let code = accept_loop(&mut ctx, listener);
    let mut residents = std::mem::take(&mut ctx.residents);
    residents.stop_all(&ctx);
    exit(code)
}

/// Close every descriptor inherited from the master that the worker does not use: other
/// pools' sockets, the master's epoll and signal pipe, and the `-D` report pipe (while a
/// worker holds it, the command that started the daemon never sees it ready). They are
/// close-on-exec already, so for CGI children this is hygiene. close_range needs no
/// /proc, which may be missing or unreadable (a chroot, a restricted mount namespace);
/// the /proc scan is only the fallback for kernels before 5.9.
fn close_inherited_fds(keep: &[RawFd]) {
    let mut closed_all = true;
    for (first, last) in ranges_to_close(keep) {
        // SAFETY: nothing in this process will use these descriptors again: the master's
        // objects that own them are never touched after fork.
        let rc = unsafe { nix::libc::syscall(nix::libc::SYS_close_range, first, last, 0u32) };
        closed_all &= rc == 0;
    }
    if closed_all {
        return;
    }
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: as above.
            let _ = nix::unistd::close(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
}

/// The inclusive ranges of descriptors above 2 that are not in `keep`.
fn ranges_to_close(keep: &[RawFd]) -> Vec<(u32, u32)> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .filter(|&fd| fd > 2)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut ranges = Vec::new();
    let mut first = 3u32;
    for fd in keep {
        if fd > first {
            ranges.push((first, fd - 1));
        }
        first = fd + 1;
    }
    ranges.push((first, u32::MAX));
    ranges
}

/// The worker's own stdin reads nothing. Its stdout goes nowhere, and its stderr stays
/// the error log — unless `catch_workers_output` hands both to the master, which logs what
/// arrives there with the pool and pid; our own log lines then keep going straight to the
/// error log through a copy of the old stderr.
fn set_up_stdio(pipes: Option<(RawFd, RawFd)>) {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    let _ = nix::unistd::dup2_stdin(&null);
    match pipes {
        None => {
            let _ = nix::unistd::dup2_stdout(&null);
        }
        Some((out, err)) => {
            // SAFETY: 2 is our stderr, open for the process's lifetime; the copy is ours.
            let stderr = unsafe { BorrowedFd::borrow_raw(2) };
            if let Ok(copy) = nix::fcntl::fcntl(stderr, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3)) {
                crate::logging::set_fd(copy);
            }
            // SAFETY: the master created these pipe ends for this worker and keeps its
            // own copies closed; after dup2 the originals are not needed.
            let (out, err) = unsafe { (OwnedFd::from_raw_fd(out), OwnedFd::from_raw_fd(err)) };
            let _ = nix::unistd::dup2_stdout(&out);
            let _ = nix::unistd::dup2_stderr(&err);
        }
    }
}

fn set_process_name(pool: &str) {
    // The kernel keeps 15 bytes of a process name; `ps -o comm` and top show it.
    let mut name = format!("cgi-fpm: {pool}");
    name.truncate(15);
    if let Ok(c) = std::ffi::CString::new(name) {
        let _ = nix::sys::prctl::set_name(&c);
    }
}

/// Accept and serve connections until told to stop. Returns the exit code.
fn accept_loop(ctx: &mut WorkerCtx<'_>, listener: BorrowedFd<'_>) -> i32 {
    const LISTENER: u64 = 1;
    const SIGNALS: u64 = 2;
    const HANDOFF: u64 = 3;
    let epoll = match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
        Ok(e) => e,
        Err(e) => {
            log::error!("[pool {}] epoll_create failed: {e}", ctx.pool.name);
            return crate::exit_code::OS_ERROR;
        }
    };
    // EPOLLEXCLUSIVE wakes one idle worker per connection instead of all of them.
    let registered = epoll
        .add(
            listener,
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE, LISTENER),
        )
        .and_then(|()| {
            epoll.add(
                ctx.signals.fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, SIGNALS),
            )
        });
    // Like the listener: one idle worker is woken per handed-out connection.
    let registered = registered.and_then(|()| match ctx.parking {
        Some(p) => epoll.add(
            p.handoff,
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE, HANDOFF),
        ),
        None => Ok(()),
    });
    if let Err(e) = registered {
        log::error!("[pool {}] epoll_ctl failed: {e}", ctx.pool.name);
        return crate::exit_code::OS_ERROR;
    }
    let mut events = [EpollEvent::empty(); 3];
    let mut handoff_turn = true;
    // Out of descriptors at accept: the listener is out of the epoll set until then, so
    // that the waiting connection does not wake us in a loop.
    let mut accept_paused_until: Option<Instant> = None;
    loop {
        ctx.slot().set_state(WorkerState::Idle);
        if ctx.quit {
            return 0;
        }
        if let Some(until) = accept_paused_until
            && Instant::now() >= until
        {
            accept_paused_until = None;
            // An orphan's listening sockets are closed: nothing to watch again.
            if ctx.orphaned() {
                return 0;
            }
            if let Err(e) = epoll.add(
                listener,
                EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE, LISTENER),
            ) {
                log::error!("[pool {}] epoll_ctl failed: {e}", ctx.pool.name);
                return 71;
            }
        }
        // After a large response, look before sleeping: memory is handed back only once
        // there is nothing else to do.
        let timeout = if ctx.buffers.trim_pending() {
            EpollTimeout::ZERO
        } else if let Some(until) = accept_paused_until {
            let left = until.saturating_duration_since(Instant::now());
            // Rounded up: waking a millisecond early would only loop once more.
            let millis = u16::try_from(left.as_millis() + 1).unwrap_or(u16::MAX);
            EpollTimeout::from(millis)
        } else {
            EpollTimeout::NONE
        };
        let n = match epoll.wait(&mut events, timeout) {
            Ok(0) if timeout == EpollTimeout::ZERO => {
                ctx.buffers.trim();
                continue;
            }
            Ok(0) => continue,
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                log::error!("[pool {}] epoll_wait failed: {e}", ctx.pool.name);
                return crate::exit_code::OS_ERROR;
            }
        };
        for event in &events[..n] {
            if event.data() == SIGNALS {
                match ctx.signals.take() {
                    Some(SignalRequest::Terminate) => return 0,
                    Some(SignalRequest::Quit) => ctx.on_quit(),
                    None => {}
                }
            }
        }
        // An orphan takes nothing new: its listening sockets are closed already.
        if ctx.orphaned() {
            return 0;
        }
        let listener_ready = events[..n].iter().any(|e| e.data() == LISTENER);
        let handoff_ready = events[..n].iter().any(|e| e.data() == HANDOFF);
        // With both a kept connection handed out and a new one waiting, take turns:
        // either kind always first would starve the other under steady load.
        let take_handoff_now = handoff_ready && (!listener_ready || handoff_turn);
        if listener_ready && handoff_ready {
            handoff_turn = !handoff_turn;
        }
        if take_handoff_now && let Some(fd) = take_handoff(ctx, &epoll) {
            // A request is already waiting on it: serve it as a new connection's.
            ctx.go_busy();
            if serve_connection(fd, ctx) == ConnEnd::Exit {
                return 0;
            }
            continue;
        }
        // A quitting worker still takes the connection it was woken for: with
        // EPOLLEXCLUSIVE no other worker was woken for it.
        if ctx.quit && !listener_ready {
            return 0;
        }
        if !listener_ready {
            continue;
        }
        let fd = match accept4(
            listener.as_raw_fd(),
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        ) {
            Ok(fd) => {
                // SAFETY: accept4 returned a new descriptor that nothing else owns.
                unsafe { OwnedFd::from_raw_fd(fd) }
            }
            // Another worker took it, or the client gave up before we got to it.
            Err(Errno::EAGAIN | Errno::EINTR | Errno::ECONNABORTED) => continue,
            Err(e) if crate::shortage::is_shortage(e) => {
                let failure = ctx.accept_shortage.failed();
                if failure.first {
                    log::error!(
                        "[pool {}] child {}, accept() failed: {e}; out of descriptors, the connection waits in the queue and accept is retried with backoff",
                        ctx.pool.name,
                        std::process::id()
                    );
                }
                let _ = epoll.delete(listener);
                accept_paused_until = Some(Instant::now() + failure.backoff);
                continue;
            }
            // The socket no longer listens: the master shut it down on a graceful stop
            // (its QUIT may not have reached this worker yet). Nothing more to take.
            Err(Errno::EINVAL) => return 0,
            Err(e) => {
                log::warn!("[pool {}] accept() failed: {e}", ctx.pool.name);
                continue;
            }
        };
        if let Some(failures) = ctx.accept_shortage.succeeded() {
            log::info!(
                "[pool {}] child {}, accept() works again after {failures} failure(s)",
                ctx.pool.name,
                std::process::id()
            );
        }
        if !isolation::clients::admit(ctx.pool, &fd) {
            continue;
        }
        // A head that is not there at once waits with the master, not with a worker: a
        // client that trickles it then costs a descriptor in the master, never a worker.
        if ctx.parking.is_some()
            && !head_arrives_within(fd.as_fd(), HEAD_PATIENCE)
            && park(ctx, fd.as_fd(), crate::parking::Kind::AwaitingHead)
        {
            continue;
        }
        ctx.go_busy();
        if serve_connection(fd, ctx) == ConnEnd::Exit {
            return 0;
        }
    }
}

/// A parked connection the master handed out, if this worker got it.
fn take_handoff(ctx: &mut WorkerCtx<'_>, epoll: &Epoll) -> Option<OwnedFd> {
    let parking = ctx.parking?;
    // SAFETY: the master keeps the channel open for the worker's lifetime.
    let channel = parking.handoff;
    match crate::parking::receive(channel) {
        Ok(crate::parking::Received::Fd(fd)) => {
            ctx.scoreboard
                .counters()
                .handoffs_taken
                .fetch_add(1, Ordering::Relaxed);
            Some(fd)
        }
        Ok(crate::parking::Received::Empty) => None,
        Ok(crate::parking::Received::Closed) => {
            forget_parking(ctx, epoll, channel);
            None
        }
        Err(e) if channel_is_broken(e) => {
            log::warn!(
                "{} the hand-off channel failed ({e}); parking no more",
                ctx.log_prefix()
            );
            forget_parking(ctx, epoll, channel);
            None
        }
        // Out of descriptors or memory for the moment (the message may be lost, the
        // channel is not): later hand-offs still work.
        Err(e) => {
            log::warn!("{} cannot take a kept connection: {e}", ctx.log_prefix());
            None
        }
    }
}

/// The channel is gone for good: the master that made it has exited (a stop), or it is
/// not what it should be.
fn forget_parking(ctx: &mut WorkerCtx<'_>, epoll: &Epoll, channel: BorrowedFd<'_>) {
    let _ = epoll.delete(channel);
    ctx.parking = None;
}

/// Whether a receive error means the channel will never work again. Only those do: one
/// error of the moment (ENOBUFS when the descriptor did not fit, EMFILE, ENOMEM) used to
/// cost the worker its channel for the rest of its life.
fn channel_is_broken(error: Errno) -> bool {
    matches!(
        error,
        Errno::EBADF | Errno::ENOTSOCK | Errno::EINVAL | Errno::ENOTCONN | Errno::ECONNRESET
    )
}

/// How long a worker waits for the request head of a connection it accepted before it
/// hands the connection to the master to wait for it. A web server writes the head right
/// after connecting, so it is nearly always there at once; this only absorbs the gap.
const HEAD_PATIENCE: Duration = Duration::from_millis(5);

/// Whether `fd`'s request head is complete (or the peer closed, or sent something else a
/// worker must answer) within `patience`, judged by peeking: nothing is read.
fn head_arrives_within(fd: BorrowedFd<'_>, patience: Duration) -> bool {
    use crate::parking::{Peeked, peek_head};
    let deadline = Instant::now() + patience;
    loop {
        if !matches!(peek_head(fd), Peeked::Partial(_)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        if poll::wait_one(fd, poll::IN, deadline).is_err() {
            return true;
        }
    }
}

/// Hand a connection without a request in hand to the master (an idle kept one, or one
/// whose head has not arrived); false if that is not possible (the caller keeps it).
fn park(ctx: &WorkerCtx<'_>, fd: BorrowedFd<'_>, kind: crate::parking::Kind) -> bool {
    let Some(parking) = ctx.parking else {
        return false;
    };
    let channel = parking.park;
    match crate::parking::send_as(channel, fd, kind) {
        Ok(()) => true,
        Err(e) => {
            log::debug!("{} cannot park a kept connection: {e}", ctx.log_prefix());
            false
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum ConnEnd {
    Continue,
    Exit,
}

/// Serve requests on one connection until it closes or is not kept.
fn serve_connection(fd: OwnedFd, ctx: &mut WorkerCtx<'_>) -> ConnEnd {
    let mut conn = Conn::new(fd, std::mem::take(&mut ctx.buffers));
    let end = serve_requests(&mut conn, ctx);
    ctx.buffers = conn.into_buffers();
    end
}

fn serve_requests(conn: &mut Conn, ctx: &mut WorkerCtx<'_>) -> ConnEnd {
    let mut session = Session::new(ctx.values, Limits::default());
    let mut fresh = true;
    loop {
        let head = read_request(conn, &mut session, ctx, fresh);
        fresh = false;
        let request = match head {
            Head::Request(r) => r,
            Head::Closed => {
                ctx.request_begun = false;
                return ConnEnd::Continue;
            }
            Head::Terminate => return ConnEnd::Exit,
        };
        let keep_conn = request.keep_conn;
        ctx.begin_request();
        ctx.slot()
            .set_request_info(&account::request_info(&request.params));
        let page = status::page_for(&request, ctx);
        let outcome = match page {
            Some(page) => status::answer(conn, &mut session, &request, page, ctx),
            None => request::serve(conn, &mut session, request, ctx),
        };
        session.finish();
        // What the CGI child used, from wait4: the same figures as the access log's %C
        // and %M. Requests without a child (status, ping, refusals) used none.
        let (cpu_us, memory) = ctx.last_usage.take().map_or((0, 0), |u| {
            ((u.user + u.system).as_micros() as u64, u.max_rss_bytes)
        });
        ctx.slot()
            .end_request(crate::scoreboard::now_us(), cpu_us, memory);
        ctx.request_begun = false;
        let leaving = ctx.served_enough();
        if leaving {
            log::debug!(
                "[pool {}] child {} has served pm.max_requests ({}); exiting",
                ctx.pool.name,
                std::process::id(),
                ctx.pool.pm_max_requests
            );
        }
        let end = if leaving {
            ConnEnd::Exit
        } else {
            ConnEnd::Continue
        };
        match outcome {
            Outcome::Terminate => return ConnEnd::Exit,
            Outcome::Close => return end,
            Outcome::Answered { keep_conn: true } if keep_conn => {
                // Idle kept connections wait with the master, not here, so they never
                // pin a worker; one that is leaving hands its connection on as well.
                if conn.buffered_input() == 0 && park(ctx, conn.fd(), crate::parking::Kind::Idle) {
                    return end;
                }
                if leaving || ctx.quit {
                    return end;
                }
                continue;
            }
            Outcome::Answered { .. } => return end,
        }
    }
}

enum Head {
    Request(Request),
    /// The connection ended (cleanly or not) before a request was complete.
    Closed,
    Terminate,
}

/// Read until a request's params are complete, answering management records and
/// refusing what we do not serve along the way.
///
/// The head must arrive within `cgi.request_header_timeout`, counted from the accept on
/// a `fresh` connection (a client that connects and sends nothing is cut off too), and
/// from the first byte of the next request on a kept one: an idle kept connection is the
/// web server's to hold. A QUIT does not close a fresh connection (that would fail a
/// request already on its way); it closes a kept one between requests.
fn read_request(
    conn: &mut Conn,
    session: &mut Session,
    ctx: &mut WorkerCtx<'_>,
    fresh: bool,
) -> Head {
    let limit = ctx.pool.cgi.request_header_timeout;
    let mut started = false;
    let mut deadline: Option<Instant> = None;
    loop {
        match conn.next_event(session) {
            Ok(Some(Event::Request(request))) => return Head::Request(request),
            Ok(Some(Event::Rejected { keep_conn })) => {
                if !flush_within(conn, REFUSAL_FLUSH_TIMEOUT) || !keep_conn {
                    return Head::Closed;
                }
                continue;
            }
            Ok(Some(Event::Abort)) => {
                // Abandoned before it started: acknowledge, and be ready for the next.
                if let Some(id) = session.active_id() {
                    write_end_request(conn.output_mut(), id, 0, ProtocolStatus::RequestComplete);
                }
                session.finish();
                continue;
            }
            // Body records cannot arrive before the params end (the session refuses them).
            Ok(Some(Event::Stdin(_) | Event::StdinEnd | Event::None)) => continue,
            Ok(None) => {}
            Err(e) => {
                refuse_malformed(conn, session, ctx, &e);
                return Head::Closed;
            }
        }
        if conn.has_output() && conn.flush().is_err() {
            return Head::Closed;
        }
        if !started && (fresh || conn.buffered_input() > 0 || !session.is_idle()) {
            started = true;
            deadline = (!limit.is_zero()).then(|| Instant::now() + limit);
        }
        if conn.buffered_input() > 0 || !session.is_idle() {
            ctx.begin_request();
        }
        if let Some(at) = ctx.orphan_deadline
            && Instant::now() >= at
        {
            log::warn!(
                "{} the master is gone and the request head did not arrive in time; closing the connection",
                ctx.log_prefix()
            );
            return Head::Closed;
        }
        if let Some(at) = deadline
            && Instant::now() >= at
        {
            log::warn!(
                "{} the web server did not send a complete request within {}s (cgi.request_header_timeout); closing the connection",
                ctx.log_prefix(),
                limit.as_secs()
            );
            return Head::Closed;
        }
        let mut conn_events = poll::IN;
        if conn.has_output() {
            conn_events |= poll::OUT;
        }
        let mut set = PollSet::default();
        let conn_index = set.add(conn.fd(), conn_events);
        let wake_by = [deadline, ctx.orphan_deadline].into_iter().flatten().min();
        match ctx.wait(&mut set, wake_by) {
            Ok(Some(SignalRequest::Terminate)) => return Head::Terminate,
            // Between requests on a kept connection nothing is lost by closing now:
            // nginx retries a request on another connection when a cached one turns
            // out closed.
            Ok(Some(SignalRequest::Quit))
                if !fresh && session.is_idle() && conn.buffered_input() == 0 =>
            {
                return Head::Closed;
            }
            Ok(_) => {}
            Err(e) => {
                log::error!("[pool {}] poll() failed: {e}", ctx.pool.name);
                return Head::Closed;
            }
        }
        let conn_ready = set.revents(conn_index);
        if conn_ready & poll::OUT != 0 && conn.flush().is_err() {
            return Head::Closed;
        }
        if conn_ready & poll::READABLE != 0 {
            match conn.fill() {
                Ok(Fill::Data | Fill::Full | Fill::WouldBlock) => {}
                Ok(Fill::Eof) | Err(_) => {
                    if !session.is_idle() || conn.buffered_input() > 0 {
                        log::debug!(
                            "{} the web server closed the connection in the middle of a request head",
                            ctx.log_prefix()
                        );
                    }
                    return Head::Closed;
                }
            }
        }
    }
}

/// A peer that broke the protocol gets one log line and, where a request is identifiable
/// and the web server can still show it, an error response; then the connection closes.
fn refuse_malformed(
    conn: &mut Conn,
    session: &mut Session,
    ctx: &WorkerCtx<'_>,
    error: &ProtocolError,
) {
    log::warn!(
        "{} malformed FastCGI request from the web server: {error}; closing the connection",
        ctx.log_prefix()
    );
    let status = match error {
        ProtocolError::TooManyParams { .. } | ProtocolError::ParamsTooLarge { .. } => 431,
        _ => return,
    };
    if let Some(id) = session.active_id() {
        let body = error_response(status, "Request header fields too large.");
        conn.queue_stream(RecordType::Stdout, id, &body);
        conn.queue_record(RecordType::Stdout, id, &[]);
        write_end_request(conn.output_mut(), id, 0, ProtocolStatus::RequestComplete);
        if flush_within(conn, REFUSAL_FLUSH_TIMEOUT) {
            linger_close(conn);
        }
    }
}

/// How long, and how much, a refused peer's unread input is drained before closing.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 16 << 20;

/// Close without losing the answer just sent: closing a socket whose peer is still
/// sending makes the kernel reset the connection, and a reset can discard our response
/// before the peer has read it. So signal the end of our output, then read and drop what
/// the peer still sends, for a bounded time.
fn linger_close(conn: &mut Conn) {
    let _ = nix::sys::socket::shutdown(conn.fd().as_raw_fd(), nix::sys::socket::Shutdown::Write);
    let deadline = Instant::now() + LINGER_TIME;
    let mut drained = 0;
    while drained < LINGER_BYTES {
        if Instant::now() >= deadline {
            return;
        }
        if poll::wait_one(conn.fd(), poll::IN, deadline).is_err() {
            return;
        }
        match conn.discard_input() {
            Ok(Some(0)) | Err(_) => return,
            Ok(Some(n)) => drained += n,
            Ok(None) => {}
        }
    }
}

/// Flush queued output, waiting at most `limit`. True when everything went out.
fn flush_within(conn: &mut Conn, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match conn.flush() {
            Ok(true) => return true,
            Ok(false) => {}
            Err(_) => return false,
        }
        if Instant::now() >= deadline {
            return false;
        }
        if poll::wait_one(conn.fd(), poll::OUT, deadline).is_err() {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_prefix_names_pool_and_child() {
        let prefix = LogPrefix { pool: "www" }.to_string();
        assert_eq!(prefix, format!("[pool www] child {},", std::process::id()));
    }

    #[test]
    fn only_a_broken_hand_off_channel_is_given_up() {
        for passing in [Errno::ENOBUFS, Errno::EMFILE, Errno::ENFILE, Errno::ENOMEM] {
            assert!(!channel_is_broken(passing), "{passing}");
        }
        for broken in [Errno::EBADF, Errno::ENOTSOCK, Errno::ENOTCONN] {
            assert!(channel_is_broken(broken), "{broken}");
        }
    }

    #[test]
    fn everything_but_the_kept_descriptors_is_closed() {
        let max = u32::MAX;
        assert_eq!(ranges_to_close(&[]), vec![(3, max)]);
        assert_eq!(
            ranges_to_close(&[9, 3, 5, 6, 9, 1, -1]),
            vec![(4, 4), (7, 8), (10, max)]
        );
    }
}
