//! A worker process: forked by the master, it accepts connections on its pool's socket
//! and serves one request at a time, each as a CGI child.

mod conn;
mod output;
mod poll;
mod request;
mod signals;

use crate::cgi::EnvPolicy;
use crate::cgi::response::error_response;
use crate::config::PoolConfig;
use crate::fastcgi::record::{ProtocolStatus, RecordType, write_end_request};
use crate::fastcgi::{Event, Limits, ProtocolError, Request, ServerValues, Session};
use crate::scoreboard::{Scoreboard, Slot, WorkerState};
use conn::{Conn, ConnBuffers, Fill};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{SockFlag, accept4};
use poll::PollSet;
use request::Outcome;
use signals::{Request as SignalRequest, WorkerSignals};
use std::ffi::OsString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
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
    pub listener: RawFd,
    /// The master's environment, for pools with `clear_env = no`.
    pub inherited_env: Vec<(OsString, OsString)>,
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
    /// Connection buffers kept between connections.
    buffers: ConnBuffers,
}

impl WorkerCtx<'_> {
    pub fn slot(&self) -> &Slot {
        // The master gives every worker an index within its pool's scoreboard.
        self.scoreboard
            .slot(self.slot_index)
            .unwrap_or_else(|| unreachable_slot(self.slot_index))
    }
}

#[cold]
fn unreachable_slot(index: usize) -> ! {
    log::error!("worker given scoreboard slot {index}, which does not exist");
    exit(70)
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit ends the process at once. This process is a fork of the master, and
    // the master's exit-time work (buffered stdio, its objects' destructors) is not ours.
    unsafe { nix::libc::_exit(code) }
}

/// Run the worker. Called in the child right after fork, with all signals blocked.
pub fn run(spec: WorkerSpec<'_>) -> ! {
    let signals = match WorkerSignals::install() {
        Ok(s) => s,
        Err(e) => {
            log::error!("[pool {}] worker signal set-up failed: {e}", spec.pool.name);
            exit(70);
        }
    };
    close_inherited_fds(&[spec.listener, signals.fd().as_raw_fd()]);
    detach_stdio();
    set_process_name(&spec.pool.name);
    if let Some(dir) = &spec.pool.chdir
        && let Err(e) = nix::unistd::chdir(dir)
    {
        log::error!(
            "[pool {}] failed to chdir('{}'): {e}",
            spec.pool.name,
            dir.display()
        );
        exit(78);
    }

    let max = spec.pool.pm_max_children;
    let mut ctx = WorkerCtx {
        pool: spec.pool,
        scoreboard: spec.scoreboard,
        slot_index: spec.slot_index,
        env_policy: EnvPolicy {
            inherited: if spec.pool.clear_env {
                Vec::new()
            } else {
                spec.inherited_env
            },
            pool_env: spec.pool.env.clone(),
        },
        signals,
        values: ServerValues {
            max_conns: max,
            max_reqs: max,
        },
        quit: false,
        buffers: ConnBuffers::default(),
    };
    // SAFETY: the master keeps this descriptor open for us; we never close it ourselves.
    let listener = unsafe { BorrowedFd::borrow_raw(spec.listener) };
    let code = accept_loop(&mut ctx, listener);
    exit(code)
}

/// Close every descriptor inherited from the master that the worker does not use: other
/// pools' sockets, the master's epoll and signal pipe. They are close-on-exec already,
/// so this is hygiene, not a leak fix for CGI children.
fn close_inherited_fds(keep: &[RawFd]) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: nothing in this process will use these descriptors again: the
            // master's objects that own them are never touched after fork.
            let _ = nix::unistd::close(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
}

/// The worker's own stdin and stdout go nowhere; its stderr stays the error log.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
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
    let epoll = match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
        Ok(e) => e,
        Err(e) => {
            log::error!("[pool {}] epoll_create failed: {e}", ctx.pool.name);
            return 71;
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
    if let Err(e) = registered {
        log::error!("[pool {}] epoll_ctl failed: {e}", ctx.pool.name);
        return 71;
    }
    let mut events = [EpollEvent::empty(); 2];
    loop {
        ctx.slot().set_state(WorkerState::Idle);
        if ctx.quit {
            return 0;
        }
        // After a large response, look before sleeping: memory is handed back only once
        // there is nothing else to do.
        let timeout = if ctx.buffers.trim_pending() {
            EpollTimeout::ZERO
        } else {
            EpollTimeout::NONE
        };
        let n = match epoll.wait(&mut events, timeout) {
            Ok(0) if timeout == EpollTimeout::ZERO => {
                ctx.buffers.trim();
                continue;
            }
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                log::error!("[pool {}] epoll_wait failed: {e}", ctx.pool.name);
                return 71;
            }
        };
        for event in &events[..n] {
            if event.data() == SIGNALS {
                match ctx.signals.take() {
                    Some(SignalRequest::Terminate) => return 0,
                    Some(SignalRequest::Quit) => ctx.quit = true,
                    None => {}
                }
            }
        }
        if ctx.quit {
            return 0;
        }
        if !events[..n].iter().any(|e| e.data() == LISTENER) {
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
            Err(e) => {
                log::warn!("[pool {}] accept() failed: {e}", ctx.pool.name);
                continue;
            }
        };
        ctx.scoreboard
            .counters()
            .accepted_conn
            .fetch_add(1, Ordering::Relaxed);
        if serve_connection(fd, ctx) == ConnEnd::Exit {
            return 0;
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
            Head::Closed => return ConnEnd::Continue,
            Head::Terminate => return ConnEnd::Exit,
        };
        let keep_conn = request.keep_conn;
        let outcome = request::serve(conn, &mut session, request, ctx);
        session.finish();
        ctx.slot().set_state(WorkerState::Idle);
        match outcome {
            Outcome::Terminate => return ConnEnd::Exit,
            Outcome::Close => return ConnEnd::Continue,
            Outcome::Answered { keep_conn: true } if keep_conn && !ctx.quit => continue,
            Outcome::Answered { .. } => return ConnEnd::Continue,
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
/// web server's to hold.
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
            ctx.slot().set_state(WorkerState::Reading);
            deadline = (!limit.is_zero()).then(|| Instant::now() + limit);
        }
        let timeout = match deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    log::warn!(
                        "[pool {}] child {}, the web server did not send a complete request within {}s (cgi.request_header_timeout); closing the connection",
                        ctx.pool.name,
                        std::process::id(),
                        limit.as_secs()
                    );
                    return Head::Closed;
                }
                Some(left)
            }
        };
        let mut conn_events = poll::IN;
        if conn.has_output() {
            conn_events |= poll::OUT;
        }
        let mut set = PollSet::default();
        let conn_index = set.add(conn.fd(), conn_events);
        let signal_index = set.add(ctx.signals.fd(), poll::IN);
        if let Err(e) = set.wait(timeout) {
            log::error!("[pool {}] poll() failed: {e}", ctx.pool.name);
            return Head::Closed;
        }
        let conn_ready = set.revents(conn_index);
        let signal_ready = set.revents(signal_index) != 0;
        if signal_ready {
            match ctx.signals.take() {
                Some(SignalRequest::Terminate) => return Head::Terminate,
                Some(SignalRequest::Quit) => {
                    ctx.quit = true;
                    // Between requests nothing is lost by closing now.
                    if session.is_idle() && conn.buffered_input() == 0 {
                        return Head::Closed;
                    }
                }
                None => {}
            }
        }
        if conn_ready & poll::OUT != 0 && conn.flush().is_err() {
            return Head::Closed;
        }
        if conn_ready & poll::READABLE != 0 {
            match conn.fill() {
                Ok(Fill::Data | Fill::Full | Fill::WouldBlock) => {}
                Ok(Fill::Eof) | Err(_) => {
                    if !session.is_idle() || conn.buffered_input() > 0 {
                        log::debug!(
                            "[pool {}] child {}, the web server closed the connection in the middle of a request head",
                            ctx.pool.name,
                            std::process::id()
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
        "[pool {}] child {}, malformed FastCGI request from the web server: {error}; closing the connection",
        ctx.pool.name,
        std::process::id()
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
        flush_within(conn, REFUSAL_FLUSH_TIMEOUT);
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
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut set = PollSet::default();
        set.add(conn.fd(), poll::OUT);
        if set.wait(Some(left)).is_err() {
            return false;
        }
    }
}
