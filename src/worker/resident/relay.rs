//! Relaying one request between the web server's connection and a resident app's kept
//! connection, with the same guarantees as the CGI pump: bounded buffers both ways (the
//! web server's body is read only while the app takes it; the app is read only while the
//! web server takes the response, or while it is held and spilled), the request's
//! deadlines, the slowlog against the app's pid, and cgi.stderr for its FCGI_STDERR.

use super::Resident;
use super::records::{self, AppEvent, Replay};
use crate::config::StderrMode;
use crate::fastcgi::record::{ProtocolStatus, RecordType};
use crate::fastcgi::{Event, Session};
use crate::scoreboard::WorkerState;
use crate::worker::WorkerCtx;
use crate::worker::conn::{Conn, Fill};
use crate::worker::exchange::Outcome;
use crate::worker::exchange::{Exchange, Settled};
use crate::worker::poll::{self, PollSet};
use crate::worker::pump::Summary;
use crate::worker::request_log;
use crate::worker::signals::Request as SignalRequest;
use crate::worker::slowlog::SlowRecord;
use nix::errno::Errno;
use nix::sys::wait::WaitStatus;
use std::time::{Duration, Instant};

/// Request bytes waiting for the app before we stop reading the web server.
const APP_OUT_HIGH_WATER: usize = 64 * 1024;
/// After an abort or a disconnect, how long the app gets to end the request before it is
/// stopped (an app that cannot be told to stop must not hold the next request).
const ABORT_GRACE: Duration = Duration::from_secs(1);
/// After an app closed its connection, how long we wait to learn how it exited.
const EXIT_WAIT: Duration = Duration::from_millis(200);

/// Records for the app not yet written, and a copy of all of them for a replay.
#[derive(Default)]
struct ToApp {
    out: Vec<u8>,
    /// Bytes of `out` written.
    pos: usize,
    replay: Replay,
}

impl ToApp {
    fn pending(&self) -> usize {
        self.out.len() - self.pos
    }

    fn unwritten(&self) -> &[u8] {
        &self.out[self.pos..]
    }

    /// Append records (and keep them for a replay).
    fn queue(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        if self.pos == self.out.len() {
            self.out.clear();
            self.pos = 0;
        }
        let before = self.out.len();
        write(&mut self.out);
        self.replay.record(&self.out[before..]);
    }

    /// Everything sent so far is to be sent again, to a fresh app.
    fn rewind(&mut self) {
        self.out.clear();
        self.out
            .extend_from_slice(self.replay.bytes().unwrap_or_default());
        self.pos = 0;
    }
}

pub(super) struct Relay<'a> {
    x: Exchange<'a>,
    resident: &'a mut Resident,
    to_app: ToApp,
    retried: bool,
    /// The app sent some record for the request: a replay could duplicate its effects.
    app_said: bool,
    /// The app is done with the request, cleanly (END_REQUEST) or not.
    app_done: bool,
    app_clean: bool,
    app_status: u32,
    /// Body records still go to the app (not after it answered).
    forwarding: bool,
    stdin_end_sent: bool,
    abort_deadline: Option<Instant>,
    poll_set: PollSet,
}

impl<'a> Relay<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        conn: &'a mut Conn,
        session: &'a mut Session,
        id: u16,
        resident: &'a mut Resident,
        ctx: &WorkerCtx<'_>,
        started: Instant,
        script: String,
        request_line: String,
        encoded_params: &[u8],
    ) -> Relay<'a> {
        let mut to_app = ToApp::default();
        to_app.queue(|out| records::request_head(out, encoded_params));
        Relay {
            x: Exchange::new(conn, session, id, ctx, started, script, request_line),
            resident,
            to_app,
            retried: false,
            app_said: false,
            app_done: false,
            app_clean: false,
            app_status: 0,
            forwarding: true,
            stdin_end_sent: false,
            abort_deadline: None,
            poll_set: PollSet::default(),
        }
    }

    pub(super) fn run(mut self, ctx: &mut WorkerCtx<'_>, keep_conn: bool) -> (Outcome, Summary) {
        let outcome = self.run_loop(ctx, keep_conn);
        let answered = matches!(outcome, Outcome::Answered { .. });
        self.x.finish_slow_record(ctx, answered);
        self.x.flush_stderr_line(ctx);
        self.resident.after_request(ctx, self.app_clean);
        let summary = Summary {
            status: self.x.own_status.unwrap_or_else(|| self.x.headers.status()),
            headers: self.x.headers.headers().to_vec(),
            usage: Default::default(),
        };
        (outcome, summary)
    }

    fn app_pid(&self) -> i32 {
        self.resident.app.as_ref().map_or(0, |a| a.pid.as_raw())
    }

    fn run_loop(&mut self, ctx: &mut WorkerCtx<'_>, keep_conn: bool) -> Outcome {
        loop {
            if self.x.terminate {
                self.stop_app(ctx, false);
                return Outcome::Terminate;
            }
            self.check_deadlines(ctx);
            // The web server is gone, and the app is done (or a deadline just stopped
            // it): nothing is left to wait for.
            if self.x.broken && self.app_done {
                return Outcome::Close;
            }
            if !self.x.response_done && self.app_done {
                // Whatever it wrote to fd 2 before it ended the request is in the pipe.
                self.drain_app_stderr(ctx);
                self.finish_response(ctx);
            }
            let settled = self.x.settle(ctx, self.app_status);
            if self.x.broken {
                // The web server went away while writing to it: the app gives up too.
                self.abort_app();
            }
            match settled {
                // After an abort the app may still be ending the request.
                Settled::Answered if self.app_done => return self.x.answered(keep_conn),
                Settled::GaveUp => return Outcome::Close,
                Settled::Answered | Settled::Open => {}
            }
            if let Err(e) = self.wait_and_handle(ctx) {
                log::error!(
                    "{} waiting for the request's descriptors failed: {e}",
                    ctx.log_prefix(),
                );
                self.x.broken = true;
                self.stop_app(ctx, false);
            }
        }
    }

    fn check_deadlines(&mut self, ctx: &mut WorkerCtx<'_>) {
        let now = Instant::now();
        let pid = self.app_pid();
        if self
            .x
            .orphan_time_is_up(ctx, now, format_args!("stopping FastCGI app {pid}"))
        {
            self.x.terminate = true;
            return;
        }
        if let Some(at) = self.x.terminate_at
            && now >= at
            && !self.x.timed_out
            && !self.app_done
        {
            self.on_terminate_timeout(ctx);
        }
        if let Some(at) = self.abort_deadline
            && now >= at
            && !self.app_done
        {
            log::warn!(
                "{} FastCGI app {pid} did not end the aborted request for '{}' within {} s; stopping it",
                ctx.log_prefix(),
                self.x.script,
                ABORT_GRACE.as_secs()
            );
            self.stop_app(ctx, false);
        }
        self.x
            .slow_time_is_up(ctx, now, (!self.app_done).then_some(pid));
    }

    fn on_terminate_timeout(&mut self, ctx: &mut WorkerCtx<'_>) {
        self.x.timed_out = true;
        let elapsed = self.x.started.elapsed();
        log::warn!(
            "{} script '{}' (request: \"{}\") execution timed out ({}.{:06} sec), terminating FastCGI app {}",
            ctx.log_prefix(),
            self.x.script,
            self.x.request_line,
            elapsed.as_secs(),
            elapsed.subsec_micros(),
            self.app_pid()
        );
        self.stop_app(ctx, true);
        self.x.answer_timeout();
    }

    /// Stop the app in hand (the request can no longer be trusted to it).
    fn stop_app(&mut self, ctx: &WorkerCtx<'_>, grace: bool) {
        self.drain_app_stderr(ctx);
        self.resident.discard(ctx, grace);
        self.app_done = true;
        self.app_clean = false;
    }

    fn finish_response(&mut self, ctx: &WorkerCtx<'_>) {
        ctx.slot().set_state(WorkerState::Finishing);
        self.x.response_done = true;
        if self.x.aborted || self.x.broken {
            return;
        }
        if self.x.own_status.is_none() && self.x.stdout_bytes == 0 {
            self.x.own_status = Some(502);
        }
        self.x.end_response();
    }

    fn next_deadline(&self) -> Option<Instant> {
        let running = !self.app_done;
        self.x
            .deadlines(running, running)
            .into_iter()
            .chain([self.abort_deadline.filter(|_| running)])
            .flatten()
            .min()
    }

    /// Whether the app's output may be taken now: the web server has taken what came
    /// before, or it is held (spilled to disk) below cgi.held_output_limit, or nobody
    /// wants it any more. Otherwise the app is not read, and blocks once its socket is
    /// full: backpressure, as for a CGI child's pipe.
    fn room_for_app_output(&self) -> bool {
        self.x.broken
            || self.x.aborted
            || !self.x.conn.has_output()
            || (self.x.conn.output_held() && !self.x.conn.held_output_full(self.x.held_limit))
    }

    fn wait_and_handle(&mut self, ctx: &mut WorkerCtx<'_>) -> Result<(), Errno> {
        if self.decode_web(ctx) {
            return Ok(());
        }
        // Records read before the output filled up are taken as soon as there is room.
        if !self.app_done && self.room_for_app_output() && self.decode_app(ctx) {
            if !self.app_done {
                self.flush();
            }
            return Ok(());
        }
        let deadline = self.next_deadline();
        let (conn_index, app_index, stderr_index, trace) = self.fill_poll_set();
        match ctx.wait(&mut self.poll_set, deadline)? {
            Some(SignalRequest::Terminate) => self.x.terminate = true,
            // As for CGI children: an orphaned worker stops accepting at once and gives
            // the request in hand its grace.
            Some(SignalRequest::Quit) => self.x.orphan_deadline = ctx.orphan_deadline,
            None => {}
        }
        if let Some(index) = conn_index {
            let events = self.poll_set.revents(index);
            if events & poll::READABLE != 0 {
                self.read_web(ctx);
            }
            if events & (poll::OUT | poll::ERR) != 0 {
                self.flush();
            }
        }
        if let Some(index) = app_index {
            let events = self.poll_set.revents(index);
            if events & poll::OUT != 0 {
                self.write_app(ctx);
            }
            if events & poll::READABLE != 0 {
                self.read_app(ctx);
            }
        }
        if let Some(index) = stderr_index
            && self.poll_set.revents(index) != 0
        {
            self.read_app_stderr(ctx);
        }
        if let Some(index) = trace
            && self.poll_set.revents(index) != 0
            && let Some(s) = &mut self.x.slow
        {
            s.on_readable();
        }
        // Once the app is done, the caller queues the end of the response and flushes
        // everything at once: one write to the web server per response, not two.
        if !self.app_done {
            self.flush();
        }
        Ok(())
    }

    /// The descriptors worth waiting on now: the web server's connection, the app's, its
    /// stderr pipe, the slowlog trace; the index of each in the poll set, if it is there.
    fn fill_poll_set(&mut self) -> (Option<usize>, Option<usize>, Option<usize>, Option<usize>) {
        let app_out_pending = self.to_app.pending();
        let room = self.room_for_app_output();
        let set = &mut self.poll_set;
        set.clear();
        let mut conn_events = 0;
        if !self.x.broken {
            if !self.x.conn.eof && app_out_pending < APP_OUT_HIGH_WATER {
                conn_events |= poll::IN | poll::RDHUP;
            }
            if self.x.conn.has_output() && !self.x.conn.output_held() {
                conn_events |= poll::OUT;
            }
        }
        let conn_index = (conn_events != 0).then(|| set.add(self.x.conn.fd(), conn_events));
        let mut app_index = None;
        if let Some(app) = &self.resident.app
            && !self.app_done
        {
            let mut events = 0;
            if room {
                events |= poll::IN;
            }
            if app_out_pending > 0 {
                events |= poll::OUT;
            }
            if events != 0 {
                app_index = Some(set.add(app.conn(), events));
            }
        }
        // Its stderr with the same backpressure as its records, unless none of it goes
        // to the web server.
        let to_fastcgi = matches!(self.x.stderr_mode, StderrMode::Fastcgi | StderrMode::Both);
        let stderr_index = match &self.resident.app {
            Some(app) if !self.app_done && (room || !to_fastcgi) => app
                .stderr
                .as_ref()
                .map(|fd| set.add(std::os::fd::AsFd::as_fd(fd), poll::IN)),
            _ => None,
        };
        let trace = self
            .x
            .slow
            .as_ref()
            .and_then(SlowRecord::fd)
            .map(|fd| set.add(fd, poll::IN));
        (conn_index, app_index, stderr_index, trace)
    }

    /// Bytes the app wrote to its fd 2 during the request: as its FCGI_STDERR records go.
    fn app_stderr(&mut self, ctx: &WorkerCtx<'_>, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let discarding = self.x.broken || self.x.aborted || self.x.timed_out;
        self.x.stderr(ctx, data, !discarding);
    }

    /// One read of the app's fd 2 while it works on the request.
    fn read_app_stderr(&mut self, ctx: &WorkerCtx<'_>) {
        let Some(app) = &mut self.resident.app else {
            return;
        };
        let mut buf = [0u8; super::stderr::CHUNK];
        if let super::stderr::Read::Data(n) = super::stderr::read(&mut app.stderr, &mut buf) {
            self.app_stderr(ctx, &buf[..n]);
        }
    }

    /// What the app's fd 2 holds now, for the request.
    fn drain_app_stderr(&mut self, ctx: &WorkerCtx<'_>) {
        let Some(app) = &mut self.resident.app else {
            return;
        };
        let mut held = Vec::new();
        super::stderr::drain(&mut app.stderr, |bytes| held.extend_from_slice(bytes));
        self.app_stderr(ctx, &held);
    }

    fn read_web(&mut self, ctx: &mut WorkerCtx<'_>) {
        match self.x.conn.fill() {
            Ok(Fill::Data | Fill::Full) => {
                self.decode_web(ctx);
            }
            Ok(Fill::WouldBlock) => {}
            Ok(Fill::Eof) | Err(_) => {
                log::info!(
                    "{} the web server closed the connection during the request for '{}'; aborting it in FastCGI app {}",
                    ctx.log_prefix(),
                    self.x.script,
                    self.app_pid()
                );
                self.x.broken = true;
                self.x.conn.discard_output();
                self.abort_app();
            }
        }
    }

    /// Ask the app to abandon the request; it gets a short grace to say it has.
    fn abort_app(&mut self) {
        if self.app_done || self.abort_deadline.is_some() {
            return;
        }
        self.forwarding = false;
        self.to_app.queue(records::abort);
        self.abort_deadline = Some(Instant::now() + ABORT_GRACE);
    }

    /// Decode the web server's records while the app has room for body bytes. True if
    /// any record meant something.
    fn decode_web(&mut self, ctx: &mut WorkerCtx<'_>) -> bool {
        let mut progressed = false;
        while self.to_app.pending() < APP_OUT_HIGH_WATER && !self.x.broken && !self.x.aborted {
            let event = self.x.conn.next_event(self.x.session);
            progressed |= !matches!(event, Ok(None));
            match event {
                Ok(None) => break,
                Ok(Some(Event::Stdin(data))) => {
                    if self.forwarding && !data.is_empty() {
                        self.to_app.queue(|out| records::stdin(out, data));
                    }
                }
                Ok(Some(Event::StdinEnd)) => {
                    if self.forwarding && !self.stdin_end_sent {
                        self.stdin_end_sent = true;
                        self.to_app.queue(records::stdin_end);
                    }
                }
                Ok(Some(Event::None)) => {}
                Ok(Some(Event::Abort)) => {
                    self.x.note_abort(ctx);
                    self.abort_app();
                }
                Ok(Some(Event::Request(_) | Event::Rejected { .. })) => {}
                Err(e) => {
                    log::warn!(
                        "{} protocol error from the web server during the request: {e}",
                        ctx.log_prefix(),
                    );
                    self.x.broken = true;
                    self.abort_app();
                }
            }
        }
        if self.to_app.pending() > 0 {
            self.write_app(ctx);
        }
        progressed
    }

    fn write_app(&mut self, ctx: &mut WorkerCtx<'_>) {
        let Some(app) = &self.resident.app else {
            return;
        };
        while self.to_app.pending() > 0 {
            match nix::unistd::write(app.conn(), self.to_app.unwritten()) {
                Ok(n) => self.to_app.pos += n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return,
                Err(e) => {
                    self.app_gone(ctx, &format!("writing to it failed ({e})"));
                    return;
                }
            }
        }
    }

    fn read_app(&mut self, ctx: &mut WorkerCtx<'_>) {
        let Some(app) = &mut self.resident.app else {
            return;
        };
        let fd = app.conn();
        let space = self.resident.input.space();
        // Whole records wait to be decoded (the held output is at its limit): a read of
        // nothing would look like the app's end.
        if space.is_empty() {
            return;
        }
        let read = match nix::unistd::read(fd, space) {
            Ok(0) => {
                self.app_gone(ctx, "it closed the connection");
                return;
            }
            Ok(n) => n,
            Err(Errno::EINTR | Errno::EAGAIN) => return,
            Err(e) => {
                self.app_gone(ctx, &format!("reading from it failed ({e})"));
                return;
            }
        };
        self.resident.input.commit(read);
        self.decode_app(ctx);
    }

    /// Decode the app's buffered records while there is room for them; true if any was.
    fn decode_app(&mut self, ctx: &mut WorkerCtx<'_>) -> bool {
        let discarding = self.x.broken || self.x.aborted || self.x.timed_out;
        let mut progressed = false;
        loop {
            // Held output at its limit: the rest waits in the app's buffer and socket.
            if !discarding && self.x.held_output_full(ctx) {
                return progressed;
            }
            let event = match self.resident.input.next_event() {
                Ok(Some(event)) => event,
                Ok(None) => return progressed,
                Err(e) => {
                    log::warn!(
                        "{} FastCGI app {} broke the protocol ({e}) during the request for '{}'; stopping it",
                        ctx.log_prefix(),
                        self.resident.app.as_ref().map_or(0, |a| a.pid.as_raw()),
                        self.x.script
                    );
                    self.stop_app(ctx, false);
                    return true;
                }
            };
            progressed = true;
            match event {
                AppEvent::Stdout(data) => {
                    self.app_said = true;
                    if data.is_empty() || discarding {
                        continue;
                    }
                    self.x.headers.observe(data);
                    self.x.stdout_bytes += data.len() as u64;
                    self.x
                        .conn
                        .queue_stream(RecordType::Stdout, self.x.id, data);
                    if let Err(e) = self.x.conn.spill_output() {
                        request_log::log_spool_failure(ctx, &e);
                    }
                }
                AppEvent::Stderr(data) => {
                    self.app_said = true;
                    if data.is_empty() {
                        continue;
                    }
                    self.x.stderr(ctx, data, !discarding);
                }
                AppEvent::End {
                    app_status,
                    protocol_status,
                } => {
                    self.app_said = true;
                    self.app_done = true;
                    self.app_clean = protocol_status == ProtocolStatus::RequestComplete;
                    self.app_status = app_status;
                    self.forwarding = false;
                    if !self.app_clean {
                        log::warn!(
                            "{} FastCGI app {} refused the request for '{}' ({protocol_status:?})",
                            ctx.log_prefix(),
                            self.app_pid(),
                            self.x.script
                        );
                    }
                    return true;
                }
                AppEvent::Ignored => {}
            }
        }
    }

    /// The app's connection ended before the request did: replay the request on a fresh
    /// app if nothing of it can have had an effect, else fail it.
    fn app_gone(&mut self, ctx: &mut WorkerCtx<'_>, how: &str) {
        let pid = self.app_pid();
        let (exit, served_before) = match self.resident.app.as_mut() {
            Some(app) => (app.exit_status_within(EXIT_WAIT), app.served),
            None => (None, 0),
        };
        let status = exit
            .map(crate::wait_status::describe)
            .unwrap_or_else(|| "is still running".into());
        let gone = records::Gone {
            said_anything: self.app_said,
            replay_complete: self.to_app.replay.bytes().is_some(),
            retried: self.retried,
            served_before,
            exited_cleanly: matches!(exit, Some(WaitStatus::Exited(_, 0))),
        };
        if records::may_retry(gone) && !self.x.aborted && !self.x.broken {
            log::info!(
                "{} FastCGI app {pid} was gone before it answered the request for '{}' ({how}, and it {status}); sending the request to a fresh one",
                ctx.log_prefix(),
                self.x.script
            );
            self.retried = true;
            self.resident.ended_by_itself();
            self.resident.let_go(ctx);
            match self.resident.ready(ctx) {
                Ok(()) => {
                    self.to_app.rewind();
                    self.resident.input.clear();
                    super::publish_app(ctx, self.app_pid());
                    return;
                }
                Err(reason) => {
                    log::error!(
                        "{} request \"{}\": {reason}; answered 502",
                        ctx.log_prefix(),
                        self.x.request_line
                    );
                    self.app_done = true;
                    self.app_clean = false;
                    return;
                }
            }
        }
        log::warn!(
            "{} FastCGI app {pid} ended in the middle of the request for '{}': {how}, and it {status}{}",
            ctx.log_prefix(),
            self.x.script,
            if self.x.stdout_bytes == 0 && !self.x.aborted && !self.x.broken {
                "; answered 502"
            } else {
                ""
            }
        );
        self.stop_app(ctx, false);
    }

    /// Write what the web server takes; if it is gone, the app is told to give up.
    fn flush(&mut self) {
        if self.x.flush() {
            self.abort_app();
        }
    }
}
