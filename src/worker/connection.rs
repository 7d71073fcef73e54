//! One connection's life in a worker: its requests one after another, each read (see
//! `request_head`), answered by a status page or a script, and published in the
//! scoreboard; between requests an idle kept connection is parked with the master.

use super::account;
use super::conn::Conn;
use super::exchange::Outcome;
use super::park::park;
use super::request_head::{Head, read_request};
use super::{WorkerCtx, request, status};
use crate::fastcgi::{Limits, Session};
use std::os::fd::OwnedFd;

#[derive(Debug, PartialEq, Eq)]
pub(super) enum ConnEnd {
    Continue,
    Exit,
}

/// Serve requests on one connection until it closes or is not kept.
pub(super) fn serve_connection(fd: OwnedFd, ctx: &mut WorkerCtx<'_>) -> ConnEnd {
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
