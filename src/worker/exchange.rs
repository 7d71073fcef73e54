//! The web server's side of one request, the same whether a CGI child (`pump`) or a
//! resident app (`resident::relay`) makes the response: the response's state, its own
//! answers (a 502, a 504), the end of its streams and END_REQUEST, the output held until
//! the body is complete, the wait for a body that does not end, the request's deadlines
//! and its slowlog record.

use super::WorkerCtx;
use super::conn::{Conn, OUTPUT_CHUNK};
use super::slowlog::SlowRecord;
use crate::cgi::headers::ResponseHeaders;
use crate::cgi::response::error_response;
use crate::config::StderrMode;
use crate::fastcgi::Session;
use crate::fastcgi::record::{ProtocolStatus, RecordType, write_end_request};
use crate::logging::LineSplitter;
use std::time::{Duration, Instant};

/// How long output smaller than a record may wait for more before it is sent (when the
/// exchange coalesces), so that a small response goes out in one write with END_REQUEST:
/// the web server is then woken once per response, not once per piece the script wrote
/// (hello.sh writes three). Streamed output is late by at most this much.
pub(crate) const COALESCE: Duration = Duration::from_millis(1);
/// After the response is complete, how long the web server may take to finish sending a
/// body the child did not read before we give up on the connection.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How a request ended, for the connection loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answered; read the next request if `keep_conn`.
    Answered { keep_conn: bool },
    /// The connection is unusable (peer gone, protocol error, drain timeout).
    Close,
    /// The master told us to stop now.
    Terminate,
}

pub(crate) struct Exchange<'a> {
    pub conn: &'a mut Conn,
    pub session: &'a mut Session,
    pub id: u16,
    pub stderr_mode: StderrMode,
    /// SCRIPT_FILENAME, for log lines.
    pub script: String,
    /// `METHOD URI` as php-fpm's log lines show a request.
    pub request_line: String,
    pub headers: ResponseHeaders,
    pub stdout_bytes: u64,
    /// Some FCGI_STDERR went out: its stream is ended with the response.
    pub stderr_records: bool,
    pub stderr_lines: LineSplitter,
    /// A response cgi-fpm makes itself (refusal, timeout) instead of the script's.
    pub own_status: Option<u16>,
    /// The response is queued up to the end of its stdout stream.
    pub response_done: bool,
    /// END_REQUEST is queued.
    pub end_queued: bool,
    /// The web server is gone or broke the protocol: nothing more can be sent.
    pub broken: bool,
    pub aborted: bool,
    /// The master told us to stop now.
    pub terminate: bool,
    pub timed_out: bool,
    pub started: Instant,
    /// Bytes the connection had written before this request: none more means nothing of
    /// this response has gone out yet.
    written_before: u64,
    pub terminate_at: Option<Instant>,
    pub slow_at: Option<Instant>,
    pub slow: Option<SlowRecord>,
    /// The master died: the request in hand has until then.
    pub orphan_deadline: Option<Instant>,
    drain_deadline: Option<Instant>,
    /// `cgi.held_output_limit`, and whether reaching it was logged for this request.
    pub held_limit: u64,
    held_full_logged: bool,
    /// Small output waits for more (see `COALESCE`): the pump's choice.
    pub coalesce: bool,
    /// Output waits for more until then.
    pub coalesce_until: Option<Instant>,
    /// The last flush left output the web server did not take: the next one waits for
    /// the socket, not for more output.
    backlogged: bool,
}

/// Where a request stands before the next wait (see [`Exchange::settle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Keep waiting.
    Open,
    /// END_REQUEST is out.
    Answered,
    /// The web server did not finish its body in time after the response.
    GaveUp,
}

impl<'a> Exchange<'a> {
    pub(super) fn new(
        conn: &'a mut Conn,
        session: &'a mut Session,
        id: u16,
        ctx: &WorkerCtx<'_>,
        started: Instant,
        script: String,
        request_line: String,
    ) -> Exchange<'a> {
        if !session.stdin_done() {
            conn.hold_output();
        }
        let pool = ctx.pool;
        let after = |d: Duration| (!d.is_zero()).then(|| started + d);
        let written_before = conn.bytes_written();
        Exchange {
            conn,
            session,
            id,
            stderr_mode: pool.cgi.stderr,
            script,
            request_line,
            headers: ResponseHeaders::default(),
            stdout_bytes: 0,
            stderr_records: false,
            stderr_lines: LineSplitter::default(),
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
            slow_at: after(pool.request_slowlog_timeout).filter(|_| ctx.slowlog_fd.is_some()),
            slow: None,
            orphan_deadline: ctx.orphan_deadline,
            drain_deadline: None,
            held_limit: pool.cgi.held_output_limit,
            held_full_logged: false,
            coalesce: false,
            coalesce_until: None,
            backlogged: false,
        }
    }

    /// The web server sent FCGI_ABORT_REQUEST: nothing more is written to it.
    pub(super) fn note_abort(&mut self, ctx: &WorkerCtx<'_>) {
        log::info!(
            "{} the web server aborted the request for '{}'",
            ctx.log_prefix(),
            self.script
        );
        self.aborted = true;
        self.response_done = true;
    }

    /// The web server will send no more body for this request, or we no longer care.
    pub(super) fn stdin_settled(&self) -> bool {
        self.session.stdin_done() || self.aborted || self.timed_out
    }

    /// What every pass of a request's loop does before it waits: let held output go once
    /// the body is in, queue END_REQUEST (with `app_status`) once the response and the
    /// body are done, flush, and give up on a web server that does not finish its body
    /// within DRAIN_TIMEOUT of the response.
    pub(super) fn settle(&mut self, ctx: &WorkerCtx<'_>, app_status: u32) -> Settled {
        if self.conn.output_held() && self.stdin_settled() {
            self.conn.release_output();
        }
        if self.response_done && !self.end_queued && self.stdin_settled() && !self.broken {
            write_end_request(
                self.conn.output_mut(),
                self.id,
                app_status,
                ProtocolStatus::RequestComplete,
            );
            self.end_queued = true;
        }
        // The response's last bytes, its end and END_REQUEST go out in one write.
        self.flush();
        if self.end_queued && !self.conn.has_output() && !self.broken {
            return Settled::Answered;
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
                return Settled::GaveUp;
            }
        }
        Settled::Open
    }

    /// Write what the web server takes, unless it waits for more (see `coalescing`).
    /// True if the connection broke just now.
    pub(super) fn flush(&mut self) -> bool {
        if self.broken {
            self.conn.discard_output();
            return false;
        }
        if !self.conn.has_output() || self.coalescing() {
            return false;
        }
        match self.conn.flush() {
            Ok(all) => {
                self.backlogged = !all;
                false
            }
            Err(_) => {
                self.broken = true;
                self.conn.discard_output();
                true
            }
        }
    }

    /// Whether the output queued waits for more (see `COALESCE`): when the exchange
    /// coalesces, while the output is smaller than a record, no body is still to come
    /// (so END_REQUEST may follow soon), and the web server has taken everything before
    /// it; for at most `COALESCE` from its first byte.
    pub(super) fn coalescing(&mut self) -> bool {
        let small = self.conn.has_output()
            && !self.conn.output_held()
            && self.conn.pending_output() < OUTPUT_CHUNK;
        if !self.coalesce || !small || self.end_queued || self.backlogged || !self.stdin_settled() {
            self.coalesce_until = None;
            return false;
        }
        let now = Instant::now();
        let until = *self.coalesce_until.get_or_insert(now + COALESCE);
        if now >= until {
            self.coalesce_until = None;
            return false;
        }
        true
    }

    /// The request ran out of time: a clear 504 instead of a truncated page or a 502 when
    /// no response header has reached the web server yet. Stderr records may have gone
    /// out already; they carry no part of the response, so they do not count, and
    /// whatever of them is still queued stays, since a record cut in half would break
    /// the stream.
    pub(super) fn answer_timeout(&mut self) {
        if self.stdout_bytes == 0 {
            self.own_status = Some(504);
        } else if self.conn.bytes_written() == self.written_before {
            self.conn.discard_output();
            self.stderr_records = false;
            self.own_status = Some(504);
        }
    }

    /// Queue the end of the response: our own answer when there is one, the end of the
    /// stdout stream, and the end of the stderr stream when some went out.
    pub(super) fn end_response(&mut self) {
        if let Some(status) = self.own_status {
            let body = error_response(status, crate::cgi::response::public_message(status));
            self.conn.queue_stream(RecordType::Stdout, self.id, &body);
        }
        self.conn.queue_record(RecordType::Stdout, self.id, &[]);
        if self.stderr_records {
            self.conn.queue_record(RecordType::Stderr, self.id, &[]);
        }
    }

    /// Output is held for an incomplete body and has reached cgi.held_output_limit: take
    /// no more of it (logged once per request).
    pub(super) fn held_output_full(&mut self, ctx: &WorkerCtx<'_>) -> bool {
        if !self.conn.held_output_full(self.held_limit) {
            return false;
        }
        if !std::mem::replace(&mut self.held_full_logged, true) {
            log::warn!(
                "{} script '{}' wrote {} bytes while the request body was still arriving; its output is not read until the body is complete (cgi.held_output_limit)",
                ctx.log_prefix(),
                self.script,
                self.held_limit
            );
        }
        true
    }

    /// Queue response bytes the script or app wrote to stderr as FCGI_STDERR and/or log
    /// them, as cgi.stderr says.
    pub(super) fn stderr(&mut self, ctx: &WorkerCtx<'_>, data: &[u8], to_fastcgi: bool) {
        if to_fastcgi && matches!(self.stderr_mode, StderrMode::Fastcgi | StderrMode::Both) {
            self.conn.queue_stream(RecordType::Stderr, self.id, data);
            self.stderr_records = true;
            if let Err(e) = self.conn.spill_output() {
                super::request_log::log_spool_failure(ctx, &e);
            }
        }
        if matches!(self.stderr_mode, StderrMode::Log | StderrMode::Both) {
            let script = &self.script;
            self.stderr_lines.push(data, |line, hidden| {
                super::request_log::log_stderr(ctx, script, line, hidden)
            });
        }
    }

    /// Log the stderr line the script left unfinished.
    pub(super) fn flush_stderr_line(&mut self, ctx: &WorkerCtx<'_>) {
        let script = &self.script;
        self.stderr_lines
            .finish(|line, hidden| super::request_log::log_stderr(ctx, script, line, hidden));
    }

    /// The deadlines every request has: `running` says whether the script or app is
    /// still at work (request_terminate_timeout applies only then), `traceable` whether a
    /// slowlog record could be started for it (see `slow_time_is_up`).
    pub(super) fn deadlines(&self, running: bool, traceable: bool) -> [Option<Instant>; 6] {
        [
            self.drain_deadline,
            self.coalesce_until,
            self.terminate_at.filter(|_| !self.timed_out && running),
            self.slow_at.filter(|_| traceable),
            self.slow.as_ref().and_then(SlowRecord::deadline),
            self.orphan_deadline,
        ]
    }

    /// Past the orphan's grace (the master died): logged, the caller stops its script.
    pub(super) fn orphan_time_is_up(
        &self,
        ctx: &WorkerCtx<'_>,
        now: Instant,
        what: std::fmt::Arguments<'_>,
    ) -> bool {
        if self.orphan_deadline.is_none_or(|at| now < at) {
            return false;
        }
        log::warn!(
            "{} script '{}' (request: \"{}\") still running {}s after the master died; {what}",
            ctx.log_prefix(),
            self.script,
            self.request_line,
            ctx.orphan_grace.as_secs()
        );
        true
    }

    /// request_slowlog_timeout passed with `pid` at work: start its slowlog record.
    pub(super) fn slow_time_is_up(&mut self, ctx: &WorkerCtx<'_>, now: Instant, pid: Option<i32>) {
        if let (Some(at), Some(pid)) = (self.slow_at, pid)
            && now >= at
            && self.slow.is_none()
        {
            self.slow_at = None;
            self.slow = Some(super::request_log::start_slow_record(
                ctx,
                pid,
                &self.script,
                &self.request_line,
                self.started,
            ));
        }
        if self.slow.as_mut().is_some_and(SlowRecord::poll_done)
            && let Some(record) = self.slow.take()
        {
            super::request_log::write_slow_record(ctx, record);
        }
    }

    /// Write the slow record, if any. After an answered request (`wait`), one whose
    /// trace is still running completes first, within the trace's own time limit.
    pub(super) fn finish_slow_record(&mut self, ctx: &WorkerCtx<'_>, wait: bool) {
        while wait && self.slow.as_mut().is_some_and(|s| !s.poll_done()) {
            if let Some(s) = &mut self.slow {
                super::poll::wait_for(s.fd(), s.deadline());
                s.on_readable();
            }
        }
        if let Some(record) = self.slow.take() {
            super::request_log::write_slow_record(ctx, record);
        }
    }

    /// The request was answered: whether its connection can carry the next one. After
    /// an abort the web server sends nothing more for this request (it waits for
    /// END_REQUEST), so the connection is as good as after a complete body; after a
    /// timeout the rest of the body may still be on its way.
    pub(super) fn answered(&self, keep_conn: bool) -> Outcome {
        let reusable = (self.session.stdin_done() || self.aborted) && !self.timed_out;
        Outcome::Answered {
            keep_conn: keep_conn && reusable,
        }
    }
}
