//! Serving one FastCGI request: resolve the script, spawn it, and pump bytes between the
//! connection and the child in both directions at once until both sides are done.
//!
//! Memory stays bounded whatever the sizes: at most one body chunk waits for the child's
//! stdin, and at most one output record waits for the web server; while either is full,
//! the side that fills it is not read (backpressure).

use super::WorkerCtx;
use super::conn::{Conn, Fill, OUTPUT_CHUNK};
use super::poll::{self, PollSet};
use super::signals::Request as SignalRequest;
use crate::cgi::response::{error_response, public_message};
use crate::cgi::{CgiChild, ScriptRequest, build_env, resolve, spawn};
use crate::config::StderrMode;
use crate::fastcgi::record::{ProtocolStatus, RecordType, write_end_request};
use crate::fastcgi::{Event, Request, Session};
use crate::scoreboard::{WorkerState, now_us};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Body bytes we hold for the child before we stop reading the connection.
const STDIN_HIGH_WATER: usize = 64 * 1024;
/// How long a child gets between TERM and KILL when we stop it.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// After the response is complete, how long the web server may take to finish sending a
/// body the child did not read before we give up on the connection.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Without a pidfd, how often to look for the child's exit.
const EXIT_POLL: Duration = Duration::from_millis(20);
/// A stderr line longer than this is logged in pieces rather than held without bound.
const STDERR_LINE_MAX: usize = 1 << 20;

/// How a request ended, for the connection loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered; read the next request if `keep_conn`.
    Answered { keep_conn: bool },
    /// The connection is unusable (peer gone, protocol error, drain timeout).
    Close,
    /// The master told us to stop now.
    Terminate,
}

/// Serve `request`, whose params are complete, on `conn`.
pub fn serve(
    conn: &mut Conn,
    session: &mut Session,
    request: Request,
    ctx: &mut WorkerCtx,
) -> Outcome {
    let slot = ctx.slot();
    slot.request_started_at_us
        .store(now_us(), Ordering::Relaxed);
    slot.set_state(WorkerState::Running);
    ctx.scoreboard
        .counters()
        .requests
        .fetch_add(1, Ordering::Relaxed);

    let mut pump = Pump::new(conn, session, request.id, ctx.pool.cgi.stderr);
    match start_child(&request, ctx) {
        Ok(child) => {
            ctx.slot()
                .cgi_pid
                .store(child.pid.as_raw(), Ordering::Relaxed);
            pump.script = request
                .params
                .get_str("SCRIPT_FILENAME")
                .unwrap_or("-")
                .to_string();
            pump.child = Some(child);
        }
        Err((status, reason)) => {
            log_refusal(ctx, &request, status, &reason);
            pump.answer_without_child(status);
        }
    }
    let outcome = pump.run(ctx, request.keep_conn);
    ctx.slot().cgi_pid.store(0, Ordering::Relaxed);
    outcome
}

fn log_refusal(ctx: &WorkerCtx, request: &Request, status: u16, reason: &str) {
    let message = format!(
        "[pool {}] child {}, request \"{} {}\": {}; answered {}",
        ctx.pool.name,
        std::process::id(),
        request.params.get_str("REQUEST_METHOD").unwrap_or("-"),
        request.params.get_str("REQUEST_URI").unwrap_or("-"),
        reason,
        status
    );
    if status >= 500 {
        log::error!("{message}");
    } else {
        log::warn!("{message}");
    }
}

/// Resolve and spawn the script, or say which status to answer with and why.
fn start_child(request: &Request, ctx: &WorkerCtx) -> Result<CgiChild, (u16, String)> {
    let params = &request.params;
    let script_request = ScriptRequest {
        script_filename: params.get("SCRIPT_FILENAME"),
        document_root: params.get("DOCUMENT_ROOT"),
        script_name: params.get("SCRIPT_NAME"),
    };
    let script = resolve(&script_request, ctx.pool).map_err(|r| (r.status, r.reason))?;
    let env = build_env(params, &ctx.env_policy, &script);
    spawn(&script, &env, ctx.pool.cgi.stderr).map_err(|e| {
        let program = script
            .argv
            .first()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        (502, format!("cannot execute '{program}': {e}"))
    })
}

/// The exit status as END_REQUEST's appStatus: the code, or 128 + signal as shells do.
fn app_status(status: WaitStatus) -> u32 {
    match status {
        WaitStatus::Exited(_, code) => code as u32,
        WaitStatus::Signaled(_, sig, _) => 128 + sig as u32,
        _ => 0,
    }
}

fn describe_exit(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with code {code}"),
        WaitStatus::Signaled(_, sig, _) => {
            format!("killed by signal {} ({})", sig as i32, sig.as_str())
        }
        other => format!("{other:?}"),
    }
}

/// Which descriptor each entry of the poll set is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Signals,
    Conn,
    ChildStdin,
    ChildStdout,
    ChildStderr,
    ChildExit,
}

struct Pump<'a> {
    conn: &'a mut Conn,
    session: &'a mut Session,
    id: u16,
    stderr_mode: StderrMode,
    script: String,
    child: Option<CgiChild>,
    /// Body bytes waiting for the child's stdin.
    stdin_buf: Vec<u8>,
    exit: Option<WaitStatus>,
    stdout_bytes: u64,
    stderr_records: bool,
    stderr_line: Vec<u8>,
    /// The response is queued up to the end of its stdout stream.
    response_done: bool,
    /// END_REQUEST is queued.
    end_queued: bool,
    /// The web server is gone or broke the protocol: nothing more can be sent.
    broken: bool,
    aborted: bool,
    terminate: bool,
    drain_deadline: Option<Instant>,
    poll_set: PollSet,
}

impl<'a> Pump<'a> {
    fn new(
        conn: &'a mut Conn,
        session: &'a mut Session,
        id: u16,
        stderr_mode: StderrMode,
    ) -> Pump<'a> {
        if !session.stdin_done() {
            conn.hold_output();
        }
        Pump {
            conn,
            session,
            id,
            stderr_mode,
            script: String::new(),
            child: None,
            stdin_buf: Vec::new(),
            exit: None,
            stdout_bytes: 0,
            stderr_records: false,
            stderr_line: Vec::new(),
            response_done: false,
            end_queued: false,
            broken: false,
            aborted: false,
            terminate: false,
            drain_deadline: None,
            poll_set: PollSet::default(),
        }
    }

    /// Answer with our own error response; the body, if any, is still drained.
    fn answer_without_child(&mut self, status: u16) {
        let body = error_response(status, public_message(status));
        self.conn.queue_stream(RecordType::Stdout, self.id, &body);
        self.conn.queue_record(RecordType::Stdout, self.id, &[]);
        self.response_done = true;
    }

    fn child_done(&self) -> bool {
        match &self.child {
            None => true,
            Some(c) => c.stdout.is_none() && c.stderr.is_none() && self.exit.is_some(),
        }
    }

    /// The web server will send no more body for this request (or we no longer care).
    fn stdin_settled(&self) -> bool {
        self.session.stdin_done() || self.aborted
    }

    fn run(mut self, ctx: &mut WorkerCtx, keep_conn: bool) -> Outcome {
        loop {
            if self.terminate {
                self.kill_child();
                return Outcome::Terminate;
            }
            if self.broken {
                self.kill_child();
                return Outcome::Close;
            }
            if self.conn.output_held() && self.stdin_settled() {
                self.conn.release_output();
            }
            if !self.response_done && self.child_done() {
                self.finish_response(ctx);
            }
            if self.response_done && !self.end_queued && self.stdin_settled() {
                let status = self.exit.map(app_status).unwrap_or(0);
                write_end_request(
                    self.conn.output_mut(),
                    self.id,
                    status,
                    ProtocolStatus::RequestComplete,
                );
                self.end_queued = true;
            }
            if self.end_queued {
                self.flush();
                if !self.conn.has_output() && !self.broken {
                    break;
                }
            }
            if self.response_done && !self.stdin_settled() {
                let deadline = *self
                    .drain_deadline
                    .get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
                if Instant::now() >= deadline {
                    log::warn!(
                        "[pool {}] child {}, the web server did not finish sending the request body within {}s after the response; closing the connection",
                        ctx.pool.name,
                        std::process::id(),
                        DRAIN_TIMEOUT.as_secs()
                    );
                    return Outcome::Close;
                }
            }
            if let Err(e) = self.wait_and_handle(ctx) {
                log::error!(
                    "[pool {}] child {}, waiting for the request's descriptors failed: {e}",
                    ctx.pool.name,
                    std::process::id()
                );
                self.broken = true;
            }
        }
        Outcome::Answered {
            keep_conn: keep_conn && self.session.stdin_done() && !self.aborted,
        }
    }

    /// Queue the end of the response: our own 502 when the script said nothing, then the
    /// end of the stdout stream.
    fn finish_response(&mut self, ctx: &WorkerCtx) {
        ctx.slot().set_state(WorkerState::Finishing);
        self.flush_stderr_line(ctx);
        if let (Some(child), Some(exit)) = (&self.child, self.exit) {
            if let WaitStatus::Signaled(_, sig, core) = exit {
                log::warn!(
                    "[pool {}] child {}, script '{}' (CGI process {}) was killed by signal {} ({}){}",
                    ctx.pool.name,
                    std::process::id(),
                    self.script,
                    child.pid,
                    sig as i32,
                    sig.as_str(),
                    if core { " - core dumped" } else { "" }
                );
            }
            if self.stdout_bytes == 0 {
                log::warn!(
                    "[pool {}] child {}, script '{}' (CGI process {}) produced no output and {}; answered 502",
                    ctx.pool.name,
                    std::process::id(),
                    self.script,
                    child.pid,
                    describe_exit(exit)
                );
                let body = error_response(502, "The script produced no response.");
                self.conn.queue_stream(RecordType::Stdout, self.id, &body);
            }
        }
        if !self.aborted {
            self.conn.queue_record(RecordType::Stdout, self.id, &[]);
            if self.stderr_records {
                self.conn.queue_record(RecordType::Stderr, self.id, &[]);
            }
        }
        self.response_done = true;
    }

    /// Wait until something can move, then move it.
    fn wait_and_handle(&mut self, ctx: &mut WorkerCtx) -> Result<(), Errno> {
        // Records already buffered may be decodable now that the child took some body;
        // if they changed anything, let the caller re-evaluate before sleeping.
        if self.decode_buffered(ctx) {
            return Ok(());
        }

        let mut timeout = self
            .drain_deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        let mut sources: Vec<(Source, usize)> = Vec::with_capacity(6);
        let set = &mut self.poll_set;
        set.clear();
        sources.push((Source::Signals, set.add(ctx.signals.fd(), poll::IN)));
        let mut conn_events = 0;
        if !self.conn.eof && self.stdin_buf.len() < STDIN_HIGH_WATER {
            conn_events |= poll::IN | poll::RDHUP;
        }
        if self.conn.has_output() && !self.conn.output_held() {
            conn_events |= poll::OUT;
        }
        if conn_events != 0 {
            sources.push((Source::Conn, set.add(self.conn.fd(), conn_events)));
        }
        if let Some(child) = &self.child {
            if let Some(fd) = &child.stdin
                && !self.stdin_buf.is_empty()
            {
                sources.push((Source::ChildStdin, set.add(fd.as_fd(), poll::OUT)));
            }
            // Output waits while the web server has not taken the previous record; held
            // output never waits (it spills instead), so the child never blocks on it.
            let room = !self.conn.has_output() || self.conn.output_held();
            if let Some(fd) = &child.stdout
                && room
            {
                sources.push((Source::ChildStdout, set.add(fd.as_fd(), poll::IN)));
            }
            if let Some(fd) = &child.stderr
                && (room || self.stderr_mode == StderrMode::Log)
            {
                sources.push((Source::ChildStderr, set.add(fd.as_fd(), poll::IN)));
            }
            if self.exit.is_none() {
                match &child.pidfd {
                    Some(fd) => sources.push((Source::ChildExit, set.add(fd.as_fd(), poll::IN))),
                    None => timeout = Some(timeout.map_or(EXIT_POLL, |t| t.min(EXIT_POLL))),
                }
            }
        }
        set.wait(timeout)?;

        for (source, index) in sources {
            let events = self.poll_set.revents(index);
            if events == 0 {
                continue;
            }
            match source {
                Source::Signals => self.on_signal(ctx),
                Source::Conn => {
                    if events & poll::READABLE != 0 {
                        self.read_conn(ctx);
                    }
                    if events & (poll::OUT | poll::ERR) != 0 {
                        self.flush();
                    }
                }
                Source::ChildStdin => self.write_child_stdin(),
                Source::ChildStdout => self.read_child_stdout(ctx),
                Source::ChildStderr => self.read_child_stderr(ctx),
                Source::ChildExit => self.reap(),
            }
        }
        if self.exit.is_none() && self.child.as_ref().is_some_and(|c| c.pidfd.is_none()) {
            self.reap();
        }
        self.flush();
        Ok(())
    }

    fn on_signal(&mut self, ctx: &mut WorkerCtx) {
        match ctx.signals.take() {
            Some(SignalRequest::Terminate) => self.terminate = true,
            Some(SignalRequest::Quit) => ctx.quit = true,
            None => {}
        }
    }

    fn read_conn(&mut self, ctx: &WorkerCtx) {
        match self.conn.fill() {
            Ok(Fill::Data) | Ok(Fill::Full) => {
                self.decode_buffered(ctx);
            }
            Ok(Fill::WouldBlock) => {}
            Ok(Fill::Eof) => {
                // nginx and other web servers close (never half-close) an upstream
                // connection when their client goes away.
                log::debug!(
                    "[pool {}] child {}, the web server closed the connection during the request",
                    ctx.pool.name,
                    std::process::id()
                );
                self.broken = true;
            }
            Err(e) => {
                log::debug!(
                    "[pool {}] child {}, reading from the web server failed: {e}",
                    ctx.pool.name,
                    std::process::id()
                );
                self.broken = true;
            }
        }
    }

    /// Decode records while there is room for body bytes. True if any record meant
    /// something (body, its end, an abort, an error).
    fn decode_buffered(&mut self, ctx: &WorkerCtx) -> bool {
        let mut progressed = false;
        while self.stdin_buf.len() < STDIN_HIGH_WATER && !self.broken {
            let child_reads_stdin = self.child.as_ref().is_some_and(|c| c.stdin.is_some());
            let event = self.conn.next_event(self.session);
            progressed |= !matches!(event, Ok(None));
            match event {
                Ok(None) => break,
                Ok(Some(Event::Stdin(data))) => {
                    // A child that stopped reading its body (or never had one) loses it.
                    if child_reads_stdin {
                        self.stdin_buf.extend_from_slice(data);
                    }
                }
                Ok(Some(Event::StdinEnd | Event::None)) => {}
                Ok(Some(Event::Abort)) => {
                    log::info!(
                        "[pool {}] child {}, the web server aborted the request for '{}'",
                        ctx.pool.name,
                        std::process::id(),
                        self.script
                    );
                    self.aborted = true;
                    self.kill_child();
                    self.response_done = true;
                }
                // Neither can happen while a request is active; the session answers
                // other BEGIN_REQUESTs itself.
                Ok(Some(Event::Request(_))) | Ok(Some(Event::Rejected { .. })) => {}
                Err(e) => {
                    log::warn!(
                        "[pool {}] child {}, protocol error from the web server during the request: {e}",
                        ctx.pool.name,
                        std::process::id()
                    );
                    self.broken = true;
                }
            }
        }
        self.write_child_stdin();
        progressed
    }

    fn write_child_stdin(&mut self) {
        let Some(child) = &mut self.child else {
            return;
        };
        if let Some(fd) = &child.stdin {
            while !self.stdin_buf.is_empty() {
                match nix::unistd::write(fd, &self.stdin_buf) {
                    Ok(n) => {
                        self.stdin_buf.drain(..n);
                    }
                    Err(Errno::EINTR) => continue,
                    Err(Errno::EAGAIN) => break,
                    Err(_) => {
                        // EPIPE: the child closed its stdin or exited; the rest of the
                        // body has nowhere to go.
                        child.stdin = None;
                        self.stdin_buf.clear();
                        break;
                    }
                }
            }
        }
        if self.stdin_buf.is_empty() && self.session.stdin_done() {
            // End of body: closing the pipe is the child's EOF.
            child.stdin = None;
        }
    }

    fn read_child_stdout(&mut self, ctx: &WorkerCtx) {
        let Some(child) = &mut self.child else {
            return;
        };
        let Some(fd) = &child.stdout else {
            return;
        };
        loop {
            match self
                .conn
                .queue_read_from(fd.as_fd(), RecordType::Stdout, self.id)
            {
                Ok(0) => {
                    child.stdout = None;
                    break;
                }
                Ok(n) => {
                    self.stdout_bytes += n as u64;
                    if let Err(e) = self.conn.spill_output() {
                        log_spool_failure(ctx, &e);
                    }
                    if self.conn.pending_output() >= OUTPUT_CHUNK && !self.conn.output_held() {
                        break;
                    }
                }
                Err(Errno::EAGAIN) => break,
                Err(e) => {
                    log::warn!(
                        "[pool {}] child {}, reading the script's output failed: {e}",
                        ctx.pool.name,
                        std::process::id()
                    );
                    child.stdout = None;
                    break;
                }
            }
        }
    }

    fn read_child_stderr(&mut self, ctx: &WorkerCtx) {
        let Some(child) = &mut self.child else {
            return;
        };
        let Some(fd) = &child.stderr else {
            return;
        };
        let to_fastcgi = matches!(self.stderr_mode, StderrMode::Fastcgi | StderrMode::Both);
        let to_log = matches!(self.stderr_mode, StderrMode::Log | StderrMode::Both);
        let mut buf = [0u8; 16 * 1024];
        loop {
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) => {
                    child.stderr = None;
                    break;
                }
                Ok(n) => {
                    if to_fastcgi {
                        self.conn
                            .queue_stream(RecordType::Stderr, self.id, &buf[..n]);
                        self.stderr_records = true;
                    }
                    if to_log {
                        self.stderr_line.extend_from_slice(&buf[..n]);
                    }
                    if to_fastcgi
                        && self.conn.pending_output() >= OUTPUT_CHUNK
                        && !self.conn.output_held()
                    {
                        break;
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => break,
                Err(_) => {
                    child.stderr = None;
                    break;
                }
            }
        }
        if to_log {
            self.log_stderr_lines(ctx);
        }
    }

    /// Log each complete line of the child's stderr.
    fn log_stderr_lines(&mut self, ctx: &WorkerCtx) {
        let mut start = 0;
        while let Some(pos) = self.stderr_line[start..].iter().position(|&b| b == b'\n') {
            log_stderr(ctx, &self.script, &self.stderr_line[start..start + pos]);
            start += pos + 1;
        }
        self.stderr_line.drain(..start);
        if self.stderr_line.len() >= STDERR_LINE_MAX {
            let line = std::mem::take(&mut self.stderr_line);
            log_stderr(ctx, &self.script, &line);
        }
    }

    fn flush_stderr_line(&mut self, ctx: &WorkerCtx) {
        if !self.stderr_line.is_empty() {
            let line = std::mem::take(&mut self.stderr_line);
            log_stderr(ctx, &self.script, &line);
        }
    }

    fn reap(&mut self) {
        let Some(child) = &mut self.child else {
            return;
        };
        if self.exit.is_some() {
            return;
        }
        match waitpid(child.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                self.exit = Some(status);
                child.pidfd = None;
            }
            Ok(_) => {}
            Err(_) => {
                // ECHILD: nothing left to wait for.
                self.exit = Some(WaitStatus::Exited(child.pid, 0));
                child.pidfd = None;
            }
        }
    }

    /// Stop the child and everything it started, and reap it: TERM to the group, KILL
    /// after a grace period, then KILL again for stragglers that outlived the leader.
    fn kill_child(&mut self) {
        let Some(child) = &mut self.child else {
            return;
        };
        child.stdin = None;
        if self.exit.is_none() {
            child.signal_group(Signal::SIGTERM);
            let deadline = Instant::now() + KILL_GRACE;
            while self.exit.is_none() && Instant::now() < deadline {
                wait_exit(child, deadline);
                if let Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) =
                    waitpid(child.pid, Some(WaitPidFlag::WNOHANG))
                {
                    self.exit = Some(status);
                }
            }
            if self.exit.is_none() {
                child.signal_group(Signal::SIGKILL);
                self.exit = waitpid(child.pid, None).ok();
            }
        }
        child.signal_group(Signal::SIGKILL);
        child.stdout = None;
        child.stderr = None;
        child.pidfd = None;
        if self.exit.is_none() {
            self.exit = Some(WaitStatus::Signaled(child.pid, Signal::SIGKILL, false));
        }
    }

    fn flush(&mut self) {
        if self.broken {
            self.conn.discard_output();
            return;
        }
        if self.conn.has_output() && self.conn.flush().is_err() {
            self.broken = true;
            self.conn.discard_output();
        }
    }
}

/// Wait (bounded) for the child's exit to become observable.
fn wait_exit(child: &CgiChild, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    let step = left.min(Duration::from_millis(50));
    match &child.pidfd {
        Some(fd) => {
            let mut set = PollSet::default();
            set.add(fd.as_fd(), poll::IN);
            let _ = set.wait(Some(step));
        }
        None => std::thread::sleep(step.min(EXIT_POLL)),
    }
}

fn log_spool_failure(ctx: &WorkerCtx, error: &std::io::Error) {
    log::warn!(
        "[pool {}] child {}, cannot spool a response held until the request body is complete ({error}); sending it now, which nginx may not wait for",
        ctx.pool.name,
        std::process::id()
    );
}

fn log_stderr(ctx: &WorkerCtx, script: &str, line: &[u8]) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    log::warn!(
        "[pool {}] child {}, script '{}' said into stderr: \"{}\"",
        ctx.pool.name,
        std::process::id(),
        script,
        String::from_utf8_lossy(line)
    );
}
