//! Refusing a peer: an error response to one that broke the protocol, delivered within
//! a time limit, and a close that does not lose it.

use super::WorkerCtx;
use super::conn::Conn;
use super::poll;
use crate::cgi::response::error_response;
use crate::fastcgi::ProtocolError;
use crate::fastcgi::Session;
use crate::fastcgi::record::{ProtocolStatus, RecordType, write_end_request};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// How long we try to deliver a refusal before giving up on a misbehaving peer.
pub(super) const REFUSAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A peer that broke the protocol gets one log line and, where a request is identifiable
/// and the web server can still show it, an error response; then the connection closes.
pub(super) fn refuse_malformed(
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
pub(super) fn flush_within(conn: &mut Conn, limit: Duration) -> bool {
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
