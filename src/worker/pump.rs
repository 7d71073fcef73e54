//! The request's I/O loop: body to the child and output to the web server at the same time,
//! with bounded buffers, until both sides are done — and the request's deadlines:
//! request_terminate_timeout, request_slowlog_timeout, and processes that outlive the
//! script while holding its output.
//!
//! Memory stays bounded whatever the sizes: at most STDIN_HIGH_WATER of body (and the
//! record that crossed it) waits for the child's stdin, and about one output record waits
//! for the web server; while either is full, the side that fills it is not read
//! (backpressure). A response is held back until the request body is complete, spilling
//! to a file up to cgi.held_output_limit (see `output`).

use super::WorkerCtx;
use super::conn::{Conn, Fill, OUTPUT_CHUNK};
use super::exchange::{Exchange, Outcome, Settled};
use super::poll::{self, EXIT_POLL, PollSet, wait_for};
use super::request_log::log_spool_failure;
use super::signals::Request as SignalRequest;
use super::slowlog::SlowRecord;
use crate::cgi::response::error_response;
use crate::cgi::{CgiChild, Usage, reap};
use crate::config::StderrMode;
use crate::fastcgi::record::RecordType;
use crate::fastcgi::{Event, Session};
use crate::scoreboard::WorkerState;
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// Body bytes we hold for the child before we stop reading the connection.
const STDIN_HIGH_WATER: usize = 64 * 1024;
/// After the script exits, how long processes it left behind may keep its output open
/// before they are stopped (fcgiwrap waits for them for ever, gnosek/fcgiwrap#40).
pub(super) const BACKGROUND_GRACE: Duration = Duration::from_secs(1);

/// What the access log needs to know once the request is over.
#[derive(Debug, Default)]
pub(super) struct Summary {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub usage: Usage,
}

/// Which descriptor each entry of the poll set is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Conn,
    ChildStdin,
    ChildStdout,
    ChildStderr,
    ChildExit,
    Trace,
}

pub(super) struct Pump<'a> {
    x: Exchange<'a>,
    child: Option<CgiChild>,
    /// Body bytes waiting for the child's stdin.
    stdin_buf: Vec<u8>,
    exit: Option<WaitStatus>,
    usage: Usage,
    background_at: Option<Instant>,
    poll_set: PollSet,
    /// What each entry of `poll_set` is (see `fill_poll_set`).
    sources: Vec<(Source, usize)>,
}

impl<'a> Pump<'a> {
    pub(super) fn new(
        conn: &'a mut Conn,
        session: &'a mut Session,
        id: u16,
        ctx: &WorkerCtx<'_>,
        started: Instant,
        script: String,
        request_line: String,
    ) -> Pump<'a> {
        let mut x = Exchange::new(conn, session, id, ctx, started, script, request_line);
        // A script's output comes in pieces as it writes them: small ones are gathered.
        x.coalesce = true;
        Pump {
            x,
            child: None,
            stdin_buf: Vec::new(),
            exit: None,
            usage: Usage::default(),
            background_at: None,
            poll_set: PollSet::default(),
            sources: Vec::with_capacity(6),
        }
    }

    pub(super) fn attach(&mut self, child: CgiChild) {
        self.child = Some(child);
    }

    /// Answer with our own error response; the body, if any, is still drained.
    pub(super) fn answer_without_child(&mut self, status: u16) {
        self.x.own_status = Some(status);
        self.x.end_response();
        self.x.response_done = true;
    }

    /// What the access log needs; the response headers are taken, not copied (the
    /// request is over).
    fn summary(&mut self) -> Summary {
        Summary {
            status: self.x.own_status.unwrap_or_else(|| {
                if self.child.is_some() && self.x.stdout_bytes == 0 {
                    502
                } else {
                    self.x.headers.status()
                }
            }),
            headers: self.x.headers.take_headers(),
            usage: self.usage,
        }
    }

    fn child_done(&self) -> bool {
        match &self.child {
            None => true,
            Some(c) => c.stdout.is_none() && c.stderr.is_none() && self.exit.is_some(),
        }
    }

    pub(super) fn run(mut self, ctx: &mut WorkerCtx<'_>, keep_conn: bool) -> (Outcome, Summary) {
        let outcome = self.run_loop(ctx, keep_conn);
        let answered = matches!(outcome, Outcome::Answered { .. });
        self.x.finish_slow_record(ctx, answered);
        let summary = self.summary();
        (outcome, summary)
    }

    fn run_loop(&mut self, ctx: &mut WorkerCtx<'_>, keep_conn: bool) -> Outcome {
        loop {
            if self.x.terminate {
                self.kill_child();
                return Outcome::Terminate;
            }
            if self.x.broken {
                self.kill_child();
                return Outcome::Close;
            }
            self.check_deadlines(ctx);
            if !self.x.response_done && self.child_done() {
                self.finish_response(ctx);
            }
            match self.x.settle(ctx, self.exit.map(app_status).unwrap_or(0)) {
                Settled::Answered => return self.x.answered(keep_conn),
                Settled::GaveUp => return Outcome::Close,
                Settled::Open => {}
            }
            if let Err(e) = self.wait_and_handle(ctx) {
                log::error!(
                    "{} waiting for the request's descriptors failed: {e}",
                    ctx.log_prefix()
                );
                self.x.broken = true;
            }
        }
    }

    /// Act on whichever deadline has passed.
    fn check_deadlines(&mut self, ctx: &mut WorkerCtx<'_>) {
        let now = Instant::now();
        if self
            .x
            .orphan_time_is_up(ctx, now, format_args!("terminating"))
        {
            self.x.terminate = true;
            return;
        }
        let track_finished = ctx.pool.request_terminate_timeout_track_finished;
        if let Some(at) = self.x.terminate_at
            && now >= at
            && !self.x.timed_out
            && (!self.child_done() || (track_finished && !self.x.end_queued))
        {
            self.on_terminate_timeout(ctx);
        }
        let pid = self
            .child
            .as_ref()
            .filter(|_| self.exit.is_none())
            .map(|c| c.pid.as_raw());
        self.x.slow_time_is_up(ctx, now, pid);
        let holding = self
            .child
            .as_ref()
            .is_some_and(|c| c.stdout.is_some() || c.stderr.is_some());
        if self.exit.is_some() && holding {
            let at = *self.background_at.get_or_insert(now + BACKGROUND_GRACE);
            if now >= at {
                log::warn!(
                    "{} script '{}' exited, but processes it started still hold its output after {} s; stopping them",
                    ctx.log_prefix(),
                    self.x.script,
                    BACKGROUND_GRACE.as_secs()
                );
                self.kill_child();
            }
        }
    }

    fn on_terminate_timeout(&mut self, ctx: &WorkerCtx<'_>) {
        self.x.timed_out = true;
        let elapsed = self.x.started.elapsed();
        log::warn!(
            "{} script '{}' (request: \"{}\") execution timed out ({}.{:06} sec), terminating",
            ctx.log_prefix(),
            self.x.script,
            self.x.request_line,
            elapsed.as_secs(),
            elapsed.subsec_micros()
        );
        self.kill_child();
        self.x.answer_timeout();
    }

    /// Queue the end of the response: our own answer when there is one, a 502 when the
    /// script said nothing, then the end of the stdout stream.
    fn finish_response(&mut self, ctx: &WorkerCtx<'_>) {
        ctx.slot().set_state(WorkerState::Finishing);
        self.x.flush_stderr_line(ctx);
        self.x.response_done = true;
        if self.x.aborted {
            return;
        }
        if self.x.own_status.is_none()
            && let (Some(child), Some(exit)) = (&self.child, self.exit)
        {
            if let WaitStatus::Signaled(_, sig, core) = exit {
                log::warn!(
                    "{} script '{}' (CGI process {}) was killed by signal {} ({}){}",
                    ctx.log_prefix(),
                    self.x.script,
                    child.pid,
                    sig as i32,
                    sig.as_str(),
                    if core { " - core dumped" } else { "" }
                );
            }
            if self.x.stdout_bytes == 0 {
                log::warn!(
                    "{} script '{}' (CGI process {}) produced no output and {}; answered 502",
                    ctx.log_prefix(),
                    self.x.script,
                    child.pid,
                    crate::wait_status::describe(exit)
                );
                let body = error_response(502, "The script produced no response.");
                self.x
                    .conn
                    .queue_stream(RecordType::Stdout, self.x.id, &body);
            }
        }
        self.x.end_response();
    }

    /// The next moment something must happen without any descriptor waking us.
    fn next_deadline(&self) -> Option<Instant> {
        let running = !self.child_done();
        let traceable = self.child.is_some() && self.exit.is_none();
        self.x
            .deadlines(running, traceable)
            .into_iter()
            .chain([self.background_at])
            .flatten()
            .min()
    }

    /// Wait until something can move, then move it.
    fn wait_and_handle(&mut self, ctx: &mut WorkerCtx<'_>) -> Result<(), Errno> {
        // Records already buffered may be decodable now that the child took some body;
        // if they changed anything, let the caller re-evaluate before sleeping.
        if self.decode_buffered(ctx) {
            return Ok(());
        }
        let (mut sources, deadline) = self.fill_poll_set();
        match ctx.wait(&mut self.poll_set, deadline)? {
            Some(SignalRequest::Terminate) => self.x.terminate = true,
            // An orphan's request gets its grace from now.
            Some(SignalRequest::Quit) => self.x.orphan_deadline = ctx.orphan_deadline,
            None => {}
        }
        for &(source, index) in &sources {
            let events = self.poll_set.revents(index);
            if events == 0 {
                continue;
            }
            match source {
                Source::Conn => {
                    if events & poll::READABLE != 0 {
                        self.read_conn(ctx);
                    }
                    if events & (poll::OUT | poll::ERR) != 0 {
                        self.x.flush();
                    }
                }
                Source::ChildStdin => self.write_child_stdin(),
                Source::ChildStdout => self.read_child_stdout(ctx),
                Source::ChildStderr => self.read_child_stderr(ctx),
                Source::ChildExit => self.reap(),
                Source::Trace => {
                    if let Some(s) = &mut self.x.slow {
                        s.on_readable();
                    }
                }
            }
        }
        sources.clear();
        self.sources = sources;
        if self.exit.is_none() && self.child.as_ref().is_some_and(|c| c.pidfd.is_none()) {
            self.reap();
        }
        self.x.flush();
        Ok(())
    }

    /// The descriptors worth waiting on now, each with what it is, and until when.
    fn fill_poll_set(&mut self) -> (Vec<(Source, usize)>, Option<Instant>) {
        let mut deadline = self.next_deadline();
        // The list is the pump's, lent out for one wait: one allocation per request, not
        // one per wait.
        let mut sources = std::mem::take(&mut self.sources);
        sources.clear();
        let set = &mut self.poll_set;
        set.clear();
        let mut conn_events = 0;
        if !self.x.conn.eof && self.stdin_buf.len() < STDIN_HIGH_WATER {
            conn_events |= poll::IN | poll::RDHUP;
        }
        let coalescing = self.x.coalesce_until.is_some();
        if self.x.conn.has_output() && !self.x.conn.output_held() && !coalescing {
            conn_events |= poll::OUT;
        }
        if conn_events != 0 {
            sources.push((Source::Conn, set.add(self.x.conn.fd(), conn_events)));
        }
        if let Some(child) = &self.child {
            if let Some(fd) = &child.stdin
                && !self.stdin_buf.is_empty()
            {
                sources.push((Source::ChildStdin, set.add(fd.as_fd(), poll::OUT)));
            }
            // Output waits while the web server has not taken the previous record; held
            // output spills to disk instead, up to cgi.held_output_limit: past it the
            // child blocks on its pipe until the body is complete.
            // Output waiting for more is smaller than a record: more may join it.
            let room = !self.x.conn.has_output()
                || (coalescing && self.x.conn.pending_output() < OUTPUT_CHUNK)
                || (self.x.conn.output_held() && !self.x.conn.held_output_full(self.x.held_limit));
            if let Some(fd) = &child.stdout
                && room
            {
                sources.push((Source::ChildStdout, set.add(fd.as_fd(), poll::IN)));
            }
            if let Some(fd) = &child.stderr
                && (room || self.x.stderr_mode == StderrMode::Log)
            {
                sources.push((Source::ChildStderr, set.add(fd.as_fd(), poll::IN)));
            }
            if self.exit.is_none() {
                match &child.pidfd {
                    Some(fd) => sources.push((Source::ChildExit, set.add(fd.as_fd(), poll::IN))),
                    None => {
                        let look = Instant::now() + EXIT_POLL;
                        deadline = Some(deadline.map_or(look, |d| d.min(look)));
                    }
                }
            }
        }
        if let Some(fd) = self.x.slow.as_ref().and_then(SlowRecord::fd) {
            sources.push((Source::Trace, set.add(fd, poll::IN)));
        }
        (sources, deadline)
    }

    fn read_conn(&mut self, ctx: &WorkerCtx<'_>) {
        match self.x.conn.fill() {
            Ok(Fill::Data) | Ok(Fill::Full) => {
                self.decode_buffered(ctx);
            }
            Ok(Fill::WouldBlock) => {}
            Ok(Fill::Eof) => {
                // nginx and other web servers close (never half-close) an upstream
                // connection when their client goes away.
                log::info!(
                    "{} the web server closed the connection during the request for '{}'; stopping the script",
                    ctx.log_prefix(),
                    self.x.script
                );
                self.x.broken = true;
            }
            Err(e) => {
                log::info!(
                    "{} reading from the web server failed ({e}) during the request for '{}'; stopping the script",
                    ctx.log_prefix(),
                    self.x.script
                );
                self.x.broken = true;
            }
        }
    }

    /// Decode records while there is room for body bytes. True if any record meant
    /// something (body, its end, an abort, an error).
    fn decode_buffered(&mut self, ctx: &WorkerCtx<'_>) -> bool {
        let mut progressed = false;
        // Nothing after an abort belongs to this request: what follows stays buffered for
        // the next request on a kept connection.
        while self.stdin_buf.len() < STDIN_HIGH_WATER && !self.x.broken && !self.x.aborted {
            let child_reads_stdin = self.child.as_ref().is_some_and(|c| c.stdin.is_some());
            let event = self.x.conn.next_event(self.x.session);
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
                    self.x.note_abort(ctx);
                    self.kill_child();
                }
                // Neither can happen while a request is active; the session answers
                // other BEGIN_REQUESTs itself.
                Ok(Some(Event::Request(_))) | Ok(Some(Event::Rejected { .. })) => {}
                Err(e) => {
                    log::warn!(
                        "{} protocol error from the web server during the request: {e}",
                        ctx.log_prefix()
                    );
                    self.x.broken = true;
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
        if self.stdin_buf.is_empty() && self.x.session.stdin_done() {
            // End of body: closing the pipe is the child's EOF.
            child.stdin = None;
        }
    }

    fn read_child_stdout(&mut self, ctx: &WorkerCtx<'_>) {
        let Some(child) = &mut self.child else {
            return;
        };
        let Some(fd) = &child.stdout else {
            return;
        };
        loop {
            let headers = &mut self.x.headers;
            let read =
                self.x
                    .conn
                    .queue_read_from(fd.as_fd(), RecordType::Stdout, self.x.id, |bytes| {
                        headers.observe(bytes)
                    });
            match read {
                Ok(0) => {
                    child.stdout = None;
                    break;
                }
                Ok(n) => {
                    self.x.stdout_bytes += n as u64;
                    if let Err(e) = self.x.conn.spill_output() {
                        log_spool_failure(ctx, &e);
                    }
                    if self.x.held_output_full(ctx) {
                        break;
                    }
                    if self.x.conn.pending_output() >= OUTPUT_CHUNK && !self.x.conn.output_held() {
                        break;
                    }
                }
                Err(Errno::EAGAIN) => break,
                Err(e) => {
                    log::warn!(
                        "{} reading the script's output failed: {e}",
                        ctx.log_prefix()
                    );
                    child.stdout = None;
                    break;
                }
            }
        }
    }

    fn read_child_stderr(&mut self, ctx: &WorkerCtx<'_>) {
        let Some(child) = &mut self.child else {
            return;
        };
        let Some(fd) = &child.stderr else {
            return;
        };
        let to_fastcgi = matches!(self.x.stderr_mode, StderrMode::Fastcgi | StderrMode::Both);
        let mut buf = [0u8; 16 * 1024];
        loop {
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) => {
                    child.stderr = None;
                    break;
                }
                Ok(n) => {
                    self.x.stderr(ctx, &buf[..n], true);
                    if to_fastcgi
                        && (self.x.held_output_full(ctx)
                            || (self.x.conn.pending_output() >= OUTPUT_CHUNK
                                && !self.x.conn.output_held()))
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
    }

    fn reap(&mut self) {
        let Some(child) = &mut self.child else {
            return;
        };
        if self.exit.is_some() {
            return;
        }
        match reap(child.pid, false) {
            Ok(None) => {}
            Ok(Some((status, usage))) => {
                self.exit = Some(status);
                self.usage = usage;
                child.pidfd = None;
            }
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
            let deadline = Instant::now() + crate::grace::CGI_CHILD;
            while self.exit.is_none() && Instant::now() < deadline {
                wait_for(child.pidfd.as_ref().map(|f| f.as_fd()), Some(deadline));
                if let Ok(Some((status, usage))) = reap(child.pid, false) {
                    self.exit = Some(status);
                    self.usage = usage;
                }
            }
            if self.exit.is_none() {
                child.signal_group(Signal::SIGKILL);
                if let Ok(Some((status, usage))) = reap(child.pid, true) {
                    self.exit = Some(status);
                    self.usage = usage;
                }
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
}

/// The exit status as END_REQUEST's appStatus: the code, or 128 + signal as shells do.
fn app_status(status: WaitStatus) -> u32 {
    match status {
        WaitStatus::Exited(_, code) => code as u32,
        WaitStatus::Signaled(_, sig, _) => 128 + sig as u32,
        _ => 0,
    }
}
