//! Relaying one request between the web server's connection and a resident app's kept
//! connection, with the same guarantees as the CGI pump: bounded buffers both ways (the
//! web server's body is read only while the app takes it; the app is read only while the
//! web server takes the response, or while it is held and spilled), the request's
//! deadlines, the slowlog against the app's pid, and cgi.stderr for its FCGI_STDERR.

use super::Resident;
use super::records::{self, AppEvent, Replay};
use crate::cgi::headers::ResponseHeaders;
use crate::cgi::response::error_response;
use crate::config::StderrMode;
use crate::fastcgi::record::{ProtocolStatus, RecordType, write_end_request};
use crate::fastcgi::{Event, Session};
use crate::scoreboard::WorkerState;
use crate::worker::WorkerCtx;
use crate::worker::conn::{Conn, Fill};
use crate::worker::poll::{self, PollSet};
use crate::worker::pump::{self, Outcome, Summary};
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
/// After the response, how long the web server may take to finish a body the app did not
/// read.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
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

pub struct Relay<'a> {
    conn: &'a mut Conn,
    session: &'a mut Session,
    id: u16,
    resident: &'a mut Resident,
    stderr_mode: StderrMode,
    script: String,
    request_line: String,
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
    headers: ResponseHeaders,
    stdout_bytes: u64,
    stderr_records: bool,
    stderr_lines: crate::logging::LineSplitter,
    own_status: Option<u16>,
    response_done: bool,
    end_queued: bool,
    broken: bool,
    aborted: bool,
    terminate: bool,
    timed_out: bool,
    started: Instant,
    written_before: u64,
    terminate_at: Option<Instant>,
    /// Set once the master is gone: the request in hand has this long, then the app stops.
    orphan_deadline: Option<Instant>,
    slow_at: Option<Instant>,
    slow: Option<SlowRecord>,
    abort_deadline: Option<Instant>,
    drain_deadline: Option<Instant>,
    /// `cgi.held_output_limit`, and whether reaching it was logged for this request.
    held_limit: u64,
    held_full_logged: bool,
    poll_set: PollSet,
}

impl<'a> Relay<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
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
        if !session.stdin_done() {
            conn.hold_output();
        }
        let pool = ctx.pool;
        let after = |d: Duration| (!d.is_zero()).then(|| started + d);
        let written_before = conn.bytes_written();
        let mut to_app = ToApp::default();
        to_app.queue(|out| records::request_head(out, encoded_params));
        Relay {
            conn,
            session,
            id,
            resident,
            stderr_mode: pool.cgi.stderr,
            script,
            request_line,
            to_app,
            retried: false,
            app_said: false,
            app_done: false,
            app_clean: false,
            app_status: 0,
            forwarding: true,
            stdin_end_sent: false,
            headers: ResponseHeaders::default(),
            stdout_bytes: 0,
            stderr_records: false,
            stderr_lines: crate::logging::LineSplitter::default(),
            own_status: None,
            response_done: false,
            end_queued: false,
            broken: false,
            aborted: false,
            terminate: false,
            timed_out: false,
            started,
            written_before,
            terminate_at: after(pool.request_terminate_timeout),
            orphan_deadline: ctx.orphan_deadline,
            slow_at: after(pool.request_slowlog_timeout).filter(|_| ctx.slowlog_fd.is_some()),
            slow: None,
            abort_deadline: None,
            drain_deadline: None,
            held_limit: pool.cgi.held_output_limit,
            held_full_logged: false,
            poll_set: PollSet::default(),
        }
    }

    pub fn run(mut self, ctx: &mut WorkerCtx<'_>, keep_conn: bool) -> (Outcome, Summary) {
        let outcome = self.run_loop(ctx, keep_conn);
        if let Some(record) = self.slow.take() {
            pump::write_slow_record(ctx, record);
        }
        self.flush_stderr_line(ctx);
        self.resident.after_request(ctx, self.app_clean);
        let status = self.own_status.unwrap_or_else(|| self.headers.status());
        let summary = Summary {
            status,
            headers: self.headers.headers().to_vec(),
            usage: Default::default(),
        };
        (outcome, summary)
    }

    fn stdin_settled(&self) -> bool {
        self.session.stdin_done() || self.aborted || self.timed_out
    }

    fn app_pid(&self) -> i32 {
        self.resident.app.as_ref().map_or(0, |a| a.pid.as_raw())
    }

    fn run_loop(&mut self, ctx: &mut WorkerCtx<'_>, keep_conn: bool) -> Outcome {
        loop {
            if self.terminate {
                self.stop_app(ctx, false);
                return Outcome::Terminate;
            }
            if self.broken && self.app_done {
                return Outcome::Close;
            }
            self.check_deadlines(ctx);
            // A deadline may have just stopped the app: with the web server gone too,
            // nothing is left to wait for.
            if self.broken && self.app_done {
                return Outcome::Close;
            }
            if self.conn.output_held() && self.stdin_settled() {
                self.conn.release_output();
            }
            if !self.response_done && self.app_done {
                self.finish_response(ctx);
            }
            if self.response_done && !self.end_queued && self.stdin_settled() && !self.broken {
                write_end_request(
                    self.conn.output_mut(),
                    self.id,
                    self.app_status,
                    ProtocolStatus::RequestComplete,
                );
                self.end_queued = true;
            }
            // The response's last bytes, its end and END_REQUEST go out in one write.
            self.flush();
            if self.end_queued && !self.conn.has_output() && !self.broken && self.app_done {
                break;
            }
            if self.response_done && !self.stdin_settled() {
                let deadline = *self
                    .drain_deadline
                    .get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
                if Instant::now() >= deadline {
                    log::warn!(
                        "{} the web server did not finish sending the request body within {}s after the response; closing the connection",
                        ctx.log_prefix(),
                        DRAIN_TIMEOUT.as_secs()
                    );
                    self.broken = true;
                    continue;
                }
            }
            if let Err(e) = self.wait_and_handle(ctx) {
                log::error!(
                    "{} waiting for the request's descriptors failed: {e}",
                    ctx.log_prefix(),
                );
                self.broken = true;
                self.stop_app(ctx, false);
            }
        }
        while self.slow.as_mut().is_some_and(|s| !s.poll_done()) {
            if let Some(s) = &mut self.slow {
                let mut set = PollSet::default();
                if let Some(fd) = s.fd() {
                    set.add(fd, poll::IN);
                }
                let left = s
                    .deadline()
                    .map(|d| d.saturating_duration_since(Instant::now()));
                let _ = set.wait(Some(
                    left.unwrap_or(Duration::from_millis(50))
                        .min(Duration::from_millis(100)),
                ));
                s.on_readable();
            }
        }
        let reusable = (self.session.stdin_done() || self.aborted) && !self.timed_out;
        Outcome::Answered {
            keep_conn: keep_conn && reusable,
        }
    }

    fn check_deadlines(&mut self, ctx: &mut WorkerCtx<'_>) {
        let now = Instant::now();
        if let Some(at) = self.orphan_deadline
            && now >= at
        {
            log::warn!(
                "{} script '{}' (request: \"{}\") still running {}s after the master died; stopping FastCGI app {}",
                ctx.log_prefix(),
                self.script,
                self.request_line,
                ctx.orphan_grace.as_secs(),
                self.app_pid()
            );
            self.terminate = true;
            return;
        }
        if let Some(at) = self.terminate_at
            && now >= at
            && !self.timed_out
            && !self.app_done
        {
            self.on_terminate_timeout(ctx);
        }
        if let Some(at) = self.abort_deadline
            && now >= at
            && !self.app_done
        {
            log::warn!(
                "{} FastCGI app {} did not end the aborted request for '{}' within {} s; stopping it",
                ctx.log_prefix(),
                self.app_pid(),
                self.script,
                ABORT_GRACE.as_secs()
            );
            self.stop_app(ctx, false);
        }
        if let Some(at) = self.slow_at
            && now >= at
            && !self.app_done
            && self.slow.is_none()
        {
            self.slow_at = None;
            self.slow = Some(pump::start_slow_record(
                ctx,
                self.app_pid(),
                &self.script,
                &self.request_line,
                self.started,
            ));
        }
        if self.slow.as_mut().is_some_and(SlowRecord::poll_done)
            && let Some(record) = self.slow.take()
        {
            pump::write_slow_record(ctx, record);
        }
    }

    fn on_terminate_timeout(&mut self, ctx: &mut WorkerCtx<'_>) {
        self.timed_out = true;
        let elapsed = self.started.elapsed();
        log::warn!(
            "{} script '{}' (request: \"{}\") execution timed out ({}.{:06} sec), terminating FastCGI app {}",
            ctx.log_prefix(),
            self.script,
            self.request_line,
            elapsed.as_secs(),
            elapsed.subsec_micros(),
            self.app_pid()
        );
        self.stop_app(ctx, true);
        if self.stdout_bytes == 0 {
            self.own_status = Some(504);
        } else if self.conn.bytes_written() == self.written_before {
            self.conn.discard_output();
            self.stderr_records = false;
            self.own_status = Some(504);
        }
    }

    /// Stop the app in hand (the request can no longer be trusted to it).
    fn stop_app(&mut self, ctx: &WorkerCtx<'_>, grace: bool) {
        self.resident.discard(ctx, grace);
        self.app_done = true;
        self.app_clean = false;
    }

    fn finish_response(&mut self, ctx: &WorkerCtx<'_>) {
        ctx.slot().set_state(WorkerState::Finishing);
        self.response_done = true;
        if self.aborted || self.broken {
            return;
        }
        if self.own_status.is_none() && self.stdout_bytes == 0 {
            self.own_status = Some(502);
        }
        if let Some(status) = self.own_status {
            let body = error_response(status, crate::cgi::response::public_message(status));
            self.conn.queue_stream(RecordType::Stdout, self.id, &body);
        }
        self.conn.queue_record(RecordType::Stdout, self.id, &[]);
        if self.stderr_records {
            self.conn.queue_record(RecordType::Stderr, self.id, &[]);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        [
            self.drain_deadline,
            self.terminate_at
                .filter(|_| !self.timed_out && !self.app_done),
            self.slow_at.filter(|_| !self.app_done),
            self.abort_deadline.filter(|_| !self.app_done),
            self.slow.as_ref().and_then(SlowRecord::deadline),
            self.orphan_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Whether the app's output may be taken now: the web server has taken what came
    /// before, or it is held (spilled to disk) below cgi.held_output_limit, or nobody
    /// wants it any more. Otherwise the app is not read, and blocks once its socket is
    /// full: backpressure, as for a CGI child's pipe.
    fn room_for_app_output(&self) -> bool {
        self.broken
            || self.aborted
            || !self.conn.has_output()
            || (self.conn.output_held() && !self.conn.held_output_full(self.held_limit))
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
        let app_out_pending = self.to_app.pending();
        let room = self.room_for_app_output();
        let set = &mut self.poll_set;
        set.clear();
        let mut conn_events = 0;
        if !self.broken {
            if !self.conn.eof && app_out_pending < APP_OUT_HIGH_WATER {
                conn_events |= poll::IN | poll::RDHUP;
            }
            if self.conn.has_output() && !self.conn.output_held() {
                conn_events |= poll::OUT;
            }
        }
        let conn_index = (conn_events != 0).then(|| set.add(self.conn.fd(), conn_events));
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
        let trace = self
            .slow
            .as_ref()
            .and_then(SlowRecord::fd)
            .map(|fd| set.add(fd, poll::IN));
        match ctx.wait(&mut self.poll_set, deadline)? {
            Some(SignalRequest::Terminate) => self.terminate = true,
            // As for CGI children: an orphaned worker stops accepting at once and gives
            // the request in hand its grace.
            Some(SignalRequest::Quit) => self.orphan_deadline = ctx.orphan_deadline,
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
        if let Some(index) = trace
            && self.poll_set.revents(index) != 0
            && let Some(s) = &mut self.slow
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

    fn read_web(&mut self, ctx: &mut WorkerCtx<'_>) {
        match self.conn.fill() {
            Ok(Fill::Data | Fill::Full) => {
                self.decode_web(ctx);
            }
            Ok(Fill::WouldBlock) => {}
            Ok(Fill::Eof) | Err(_) => {
                log::info!(
                    "{} the web server closed the connection during the request for '{}'; aborting it in FastCGI app {}",
                    ctx.log_prefix(),
                    self.script,
                    self.app_pid()
                );
                self.broken = true;
                self.conn.discard_output();
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
        while self.to_app.pending() < APP_OUT_HIGH_WATER && !self.broken && !self.aborted {
            let event = self.conn.next_event(self.session);
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
                    log::info!(
                        "{} the web server aborted the request for '{}'",
                        ctx.log_prefix(),
                        self.script
                    );
                    self.aborted = true;
                    self.response_done = true;
                    self.abort_app();
                }
                Ok(Some(Event::Request(_) | Event::Rejected { .. })) => {}
                Err(e) => {
                    log::warn!(
                        "{} protocol error from the web server during the request: {e}",
                        ctx.log_prefix(),
                    );
                    self.broken = true;
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
        let discarding = self.broken || self.aborted || self.timed_out;
        let to_fastcgi = matches!(self.stderr_mode, StderrMode::Fastcgi | StderrMode::Both);
        let to_log = matches!(self.stderr_mode, StderrMode::Log | StderrMode::Both);
        let mut progressed = false;
        loop {
            // Held output at its limit: the rest waits in the app's buffer and socket.
            if !discarding && self.conn.held_output_full(self.held_limit) {
                pump::log_held_output_full(
                    ctx,
                    &self.script,
                    self.held_limit,
                    &mut self.held_full_logged,
                );
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
                        self.script
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
                    self.headers.observe(data);
                    self.stdout_bytes += data.len() as u64;
                    self.conn.queue_stream(RecordType::Stdout, self.id, data);
                    if let Err(e) = self.conn.spill_output() {
                        pump::log_spool_failure(ctx, &e);
                    }
                }
                AppEvent::Stderr(data) => {
                    self.app_said = true;
                    if data.is_empty() {
                        continue;
                    }
                    if to_fastcgi && !discarding {
                        self.conn.queue_stream(RecordType::Stderr, self.id, data);
                        self.stderr_records = true;
                    }
                    if to_log {
                        let script = &self.script;
                        self.stderr_lines.push(data, |line, hidden| {
                            pump::log_stderr(ctx, script, line, hidden)
                        });
                    }
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
                            self.script
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
        if records::may_retry(gone) && !self.aborted && !self.broken {
            log::info!(
                "{} FastCGI app {pid} was gone before it answered the request for '{}' ({how}, and it {status}); sending the request to a fresh one",
                ctx.log_prefix(),
                self.script
            );
            self.retried = true;
            self.resident.ended_by_itself();
            self.resident.discard(ctx, false);
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
                        self.request_line
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
            self.script,
            if self.stdout_bytes == 0 && !self.aborted && !self.broken {
                "; answered 502"
            } else {
                ""
            }
        );
        self.stop_app(ctx, false);
    }

    fn flush_stderr_line(&mut self, ctx: &WorkerCtx<'_>) {
        let script = &self.script;
        self.stderr_lines
            .finish(|line, hidden| pump::log_stderr(ctx, script, line, hidden));
    }

    fn flush(&mut self) {
        if self.broken {
            self.conn.discard_output();
            return;
        }
        if self.conn.has_output() && self.conn.flush().is_err() {
            self.broken = true;
            self.conn.discard_output();
            self.abort_app();
        }
    }
}
