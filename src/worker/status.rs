//! The status and ping pages, answered by the worker itself from the scoreboard before
//! any script is looked for, as php-fpm does.

use super::WorkerCtx;
use super::conn::Conn;
use super::exchange::Outcome;
use super::poll::{self, PollSet};
use super::pump::Summary;
use super::refusal::{REFUSAL_FLUSH_TIMEOUT, flush_within};
use super::signals::Request as SignalRequest;
use crate::cgi::headers::ResponseHeaders;
use crate::cgi::response::error_response;
use crate::fastcgi::record::{ProtocolStatus, RecordType, write_end_request};
use crate::fastcgi::{Event, Request, Session};
use crate::listen_queue::{self, QueueFigures};
use crate::scoreboard::now_us;
use crate::status::{self, PmSettings, Query, Report};
use std::time::{Duration, Instant};

/// How long the web server may take to finish a status request's body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A request the worker answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Page {
    Status(Query),
    Ping,
    /// On a `pm.status_listen` socket, anything that is neither.
    NotFound,
}

/// The path php-fpm matches: SCRIPT_NAME (what its SAPI calls the request URI), else the
/// path of REQUEST_URI.
fn request_path(request: &Request) -> Option<&str> {
    match request.params.get_str("SCRIPT_NAME") {
        Some(name) if !name.is_empty() => Some(name),
        _ => request
            .params
            .get_str("REQUEST_URI")
            .and_then(|uri| uri.split('?').next()),
    }
}

/// Whether `request` is for the status or ping page, which this worker answers itself.
/// A status worker (`pm.status_listen`) answers status on any path but the ping path.
pub(super) fn page_for(request: &Request, ctx: &WorkerCtx<'_>) -> Option<Page> {
    let path = request_path(request);
    let pool = ctx.pool;
    let query = || Query::parse(request.params.get_str("QUERY_STRING").unwrap_or(""));
    if pool.ping_path.is_some() && path == pool.ping_path.as_deref() {
        return Some(Page::Ping);
    }
    if ctx.status_only {
        return Some(match pool.pm_status_path {
            Some(_) => Page::Status(query()),
            None => Page::NotFound,
        });
    }
    if pool.pm_status_path.is_some() && path == pool.pm_status_path.as_deref() {
        return Some(Page::Status(query()));
    }
    None
}

/// Answer a status, ping or not-found page.
pub(super) fn answer(
    conn: &mut Conn,
    session: &mut Session,
    request: &Request,
    page: Page,
    ctx: &mut WorkerCtx<'_>,
) -> Outcome {
    let started = std::time::SystemTime::now();
    ctx.slot()
        .set_state(crate::scoreboard::WorkerState::Running);
    let head_only = request.params.get_str("REQUEST_METHOD") == Some("HEAD");
    let response = match page {
        Page::Ping => status::ping_response(&ctx.pool.ping_response, head_only),
        Page::Status(query) => {
            let mut snapshot = ctx.status_source.scoreboard.snapshot();
            for board in ctx.status_source.previous {
                snapshot.previous.extend(board.finishing_workers());
            }
            let report = Report {
                pool: &ctx.pool.name,
                settings: PmSettings::from(ctx.pool),
                snapshot: &snapshot,
                queue: queue_figures(ctx),
                now_us: now_us(),
            };
            status::cgi_response(&status::render(&report, query), head_only)
        }
        Page::NotFound => error_response(404, "File not found."),
    };
    let outcome = respond(conn, session, request, &response, ctx);
    if !matches!(outcome, Outcome::Terminate) {
        let mut headers = ResponseHeaders::default();
        headers.observe(&response);
        let summary = Summary {
            status: headers.status(),
            headers: headers.headers().to_vec(),
            usage: Default::default(),
        };
        let script = request.params.get_str("SCRIPT_FILENAME").unwrap_or("-");
        super::request::write_access_log(ctx, request, script, started, &summary);
    }
    outcome
}

/// The accept queue of the pool reported on; its longest is remembered.
fn queue_figures(ctx: &WorkerCtx<'_>) -> QueueFigures {
    let source = ctx.status_source;
    let listener = source.listener;
    match listen_queue::figures(listener) {
        Ok(figures) => {
            source.scoreboard.note_listen_queue(figures.queued);
            figures
        }
        Err(e) => {
            log::debug!(
                "[pool {}] cannot read the listen queue figures: {e}",
                ctx.pool.name
            );
            QueueFigures::default()
        }
    }
}

/// Take the rest of the request (its body, if any, is not read by anyone: nginx stops
/// sending once it has a response), then send `response` and END_REQUEST.
fn respond(
    conn: &mut Conn,
    session: &mut Session,
    request: &Request,
    response: &[u8],
    ctx: &mut WorkerCtx<'_>,
) -> Outcome {
    let deadline = Instant::now() + BODY_TIMEOUT;
    while !session.stdin_done() {
        match conn.next_event(session) {
            Ok(Some(Event::Abort)) => {
                write_end_request(
                    conn.output_mut(),
                    request.id,
                    0,
                    ProtocolStatus::RequestComplete,
                );
                flush_within(conn, REFUSAL_FLUSH_TIMEOUT);
                return Outcome::Answered { keep_conn: false };
            }
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(_) => return Outcome::Close,
        }
        if conn.has_output() && conn.flush().is_err() {
            return Outcome::Close;
        }
        if Instant::now() >= deadline {
            return Outcome::Close;
        }
        let mut set = PollSet::default();
        let conn_index = set.add(conn.fd(), poll::IN);
        match ctx.wait(&mut set, Some(deadline)) {
            Ok(Some(SignalRequest::Terminate)) => return Outcome::Terminate,
            // A QUIT lets the answer go out: the worker leaves after it.
            Ok(_) => {}
            Err(_) => return Outcome::Close,
        }
        if set.revents(conn_index) & poll::READABLE != 0 {
            match conn.fill() {
                Ok(super::conn::Fill::Eof) | Err(_) => return Outcome::Close,
                Ok(_) => {}
            }
        }
    }
    conn.queue_stream(RecordType::Stdout, request.id, response);
    conn.queue_record(RecordType::Stdout, request.id, &[]);
    write_end_request(
        conn.output_mut(),
        request.id,
        0,
        ProtocolStatus::RequestComplete,
    );
    if !flush_within(conn, REFUSAL_FLUSH_TIMEOUT) {
        return Outcome::Close;
    }
    Outcome::Answered {
        keep_conn: request.keep_conn,
    }
}
