//! Reading a request head: the records up to the end of a request's params, within
//! `cgi.request_header_timeout`, answering management records and refusing what the
//! worker does not serve on the way.

use super::WorkerCtx;
use super::conn::{Conn, Fill};
use super::poll::{self, PollSet};
use super::refusal::{REFUSAL_FLUSH_TIMEOUT, flush_within, refuse_malformed};
use super::signals::Request as SignalRequest;
use crate::fastcgi::record::{ProtocolStatus, write_end_request};
use crate::fastcgi::{Event, Request, Session};
use std::time::{Duration, Instant};

pub(super) enum Head {
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
pub(super) fn read_request(
    conn: &mut Conn,
    session: &mut Session,
    ctx: &mut WorkerCtx<'_>,
    fresh: bool,
) -> Head {
    let limit = ctx.pool.cgi.request_header_timeout;
    let mut started = false;
    let mut deadline: Option<Instant> = None;
    // A fresh connection's head is usually there already (peeked at accept, or the
    // master handed the connection out once it was complete): read before polling, which
    // saves a poll per connection.
    let mut read_first = fresh;
    loop {
        if let Some(head) = decode(conn, session, ctx) {
            return head;
        }
        if std::mem::take(&mut read_first) && !conn.has_output() {
            match conn.fill() {
                Ok(Fill::Data | Fill::Full) => continue,
                Ok(Fill::WouldBlock) => {}
                Ok(Fill::Eof) | Err(_) => return Head::Closed,
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
        if out_of_time(ctx, deadline, limit) {
            return Head::Closed;
        }
        if let Some(head) = wait_for_more(conn, session, ctx, fresh, deadline) {
            return head;
        }
    }
}

/// Decode what is buffered: the request once its params are complete, or how the
/// connection ends; None when more input is needed.
fn decode(conn: &mut Conn, session: &mut Session, ctx: &WorkerCtx<'_>) -> Option<Head> {
    loop {
        match conn.next_event(session) {
            Ok(Some(Event::Request(request))) => return Some(Head::Request(request)),
            Ok(Some(Event::Rejected { keep_conn })) => {
                if !flush_within(conn, REFUSAL_FLUSH_TIMEOUT) || !keep_conn {
                    return Some(Head::Closed);
                }
            }
            Ok(Some(Event::Abort)) => {
                // Abandoned before it started: acknowledge, and be ready for the next.
                if let Some(id) = session.active_id() {
                    write_end_request(conn.output_mut(), id, 0, ProtocolStatus::RequestComplete);
                }
                session.finish();
            }
            // Body records cannot arrive before the params end (the session refuses them).
            Ok(Some(Event::Stdin(_) | Event::StdinEnd | Event::None)) => {}
            Ok(None) => return None,
            Err(e) => {
                refuse_malformed(conn, session, ctx, &e);
                return Some(Head::Closed);
            }
        }
    }
}

/// Whether the head is too late: past the orphan's grace, or past `deadline` (the
/// request_header_timeout `limit` from its start). Logged when it is.
fn out_of_time(ctx: &WorkerCtx<'_>, deadline: Option<Instant>, limit: Duration) -> bool {
    let now = Instant::now();
    if ctx.orphan_deadline.is_some_and(|at| now >= at) {
        log::warn!(
            "{} the master is gone and the request head did not arrive in time; closing the connection",
            ctx.log_prefix()
        );
        return true;
    }
    if deadline.is_some_and(|at| now >= at) {
        log::warn!(
            "{} the web server did not send a complete request within {}s (cgi.request_header_timeout); closing the connection",
            ctx.log_prefix(),
            limit.as_secs()
        );
        return true;
    }
    false
}

/// Wait for more of the head (or for room to send a management answer), until the
/// earlier of `deadline` and an orphan's grace, and take it in; Some when that ends the
/// connection or the worker.
fn wait_for_more(
    conn: &mut Conn,
    session: &Session,
    ctx: &mut WorkerCtx<'_>,
    fresh: bool,
    deadline: Option<Instant>,
) -> Option<Head> {
    let mut conn_events = poll::IN;
    if conn.has_output() {
        conn_events |= poll::OUT;
    }
    let mut set = PollSet::default();
    let conn_index = set.add(conn.fd(), conn_events);
    let wake_by = [deadline, ctx.orphan_deadline].into_iter().flatten().min();
    match ctx.wait(&mut set, wake_by) {
        Ok(Some(SignalRequest::Terminate)) => return Some(Head::Terminate),
        // Between requests on a kept connection nothing is lost by closing now: nginx
        // retries a request on another connection when a cached one turns out closed.
        Ok(Some(SignalRequest::Quit))
            if !fresh && session.is_idle() && conn.buffered_input() == 0 =>
        {
            return Some(Head::Closed);
        }
        Ok(_) => {}
        Err(e) => {
            log::error!("[pool {}] poll() failed: {e}", ctx.pool.name);
            return Some(Head::Closed);
        }
    }
    let conn_ready = set.revents(conn_index);
    if conn_ready & poll::OUT != 0 && conn.flush().is_err() {
        return Some(Head::Closed);
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
                return Some(Head::Closed);
            }
        }
    }
    None
}
