//! Serving one FastCGI request: resolve and start the script, run the pump, and write the
//! access-log line.

use super::WorkerCtx;
use super::conn::Conn;
use super::exchange::Outcome;
use super::pump::{Pump, Summary};
use crate::accesslog::Entry;
use crate::cgi::env::encode_app_params;
use crate::cgi::proxy_path::script_path;
use crate::cgi::{CgiChild, ScriptRequest, build_env, resolve, spawn};
use crate::config::Interpreter;
use crate::fastcgi::{Request, Session};
use crate::scoreboard::{WorkerState, now_us};
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

/// Serve `request`, whose params are complete, on `conn`.
pub(super) fn serve(
    conn: &mut Conn,
    session: &mut Session,
    request: Request,
    ctx: &mut WorkerCtx<'_>,
) -> Outcome {
    let started = Instant::now();
    let started_wall = SystemTime::now();
    let slot = ctx.slot();
    slot.request_started_at_us
        .store(now_us(), Ordering::Relaxed);
    slot.set_state(WorkerState::Running);
    ctx.scoreboard
        .counters()
        .requests
        .fetch_add(1, Ordering::Relaxed);
    let (script, request_line) = describe(&request);
    let (outcome, summary) = match prepare(&request, ctx) {
        Ok(Prepared::Resident { command, params }) => {
            let relayed = super::resident::relay(
                conn,
                session,
                &request,
                ctx,
                &command,
                &params,
                started,
                script.clone(),
                request_line.clone(),
            );
            match relayed {
                Ok(done) => done,
                Err(reason) => {
                    log_refusal(ctx, &request_line, 502, &reason);
                    let id = request.id;
                    let mut pump = Pump::new(
                        conn,
                        session,
                        id,
                        ctx,
                        started,
                        script.clone(),
                        request_line,
                    );
                    pump.answer_without_child(502);
                    pump.run(ctx, request.keep_conn)
                }
            }
        }
        prepared => {
            let line = request_line.clone();
            let mut pump = Pump::new(
                conn,
                session,
                request.id,
                ctx,
                started,
                script.clone(),
                line,
            );
            start(&mut pump, prepared, ctx, &request_line);
            pump.run(ctx, request.keep_conn)
        }
    };
    ctx.slot().cgi_pid.store(0, Ordering::Relaxed);
    ctx.last_usage = Some(summary.usage);
    write_access_log(ctx, &request, &script, started_wall, &summary);
    outcome
}

/// The script (SCRIPT_FILENAME) and the `METHOD URI` line that log lines name a request
/// by. Logs and the slowlog name the file, not Apache's `proxy:fcgi://host` form of it.
fn describe(request: &Request) -> (String, String) {
    let params = &request.params;
    let script = params
        .get("SCRIPT_FILENAME")
        .map(|raw| String::from_utf8_lossy(&script_path(raw).path).into_owned())
        .unwrap_or_else(|| "-".to_string());
    let request_line = format!(
        "{} {}",
        params.get_str("REQUEST_METHOD").unwrap_or("-"),
        params
            .get_str("REQUEST_URI")
            .or_else(|| params.get_str("SCRIPT_NAME"))
            .unwrap_or("-")
    );
    (script, request_line)
}

/// Give `pump` the child `prepared` started, or the refusal it stands for.
fn start(
    pump: &mut Pump<'_>,
    prepared: Result<Prepared, (u16, String)>,
    ctx: &mut WorkerCtx<'_>,
    request_line: &str,
) {
    match prepared {
        Ok(Prepared::Child(child)) => {
            ctx.slot()
                .cgi_pid
                .store(child.pid.as_raw(), Ordering::Relaxed);
            pump.attach(child);
            if let Some(failures) = ctx.spawn_shortage.succeeded() {
                log::info!(
                    "{} scripts start again after {failures} request(s) answered 503 for want of descriptors",
                    ctx.log_prefix()
                );
            }
        }
        Err((SHORTAGE, reason)) => {
            // Out of descriptors: answered at once, logged once per episode.
            if ctx.spawn_shortage.failed().first {
                log_refusal(
                    ctx,
                    request_line,
                    SHORTAGE,
                    &format!(
                        "{reason}; out of descriptors, answering 503 until scripts start again"
                    ),
                );
            }
            pump.answer_without_child(SHORTAGE);
        }
        // The caller relays these instead.
        Ok(Prepared::Resident { .. }) => {}
        Err((status, reason)) => {
            log_refusal(ctx, request_line, status, &reason);
            pump.answer_without_child(status);
        }
    }
}

fn log_refusal(ctx: &WorkerCtx<'_>, request_line: &str, status: u16, reason: &str) {
    let message = format!(
        "{} request \"{request_line}\": {reason}; answered {status}",
        ctx.log_prefix(),
    );
    if status >= 500 {
        log::error!("{message}");
    } else {
        log::warn!("{message}");
    }
}

/// The answer when a script cannot be started for want of descriptors (or memory): the
/// server is short for a while, the request itself is fine.
const SHORTAGE: u16 = 503;

/// Where a request goes.
enum Prepared {
    Child(CgiChild),
    /// A resident FastCGI app, with the params it is to get.
    Resident {
        command: Interpreter,
        params: Vec<u8>,
    },
}

/// Resolve the script and spawn it (or pick its resident app), or say which status to
/// answer with and why.
fn prepare(request: &Request, ctx: &WorkerCtx<'_>) -> Result<Prepared, (u16, String)> {
    let params = &request.params;
    // A pool-wide app is the handler: requests go to it as they came.
    if let Some(app) = ctx.pool.whole_pool_app() {
        return Ok(Prepared::Resident {
            command: app.clone(),
            params: params.encoded().to_vec(),
        });
    }
    let script_request = ScriptRequest {
        script_filename: params.get("SCRIPT_FILENAME"),
        document_root: params.get("DOCUMENT_ROOT"),
        script_name: params.get("SCRIPT_NAME"),
        query_string: params.get("QUERY_STRING"),
    };
    let script = resolve(&script_request, ctx.pool).map_err(|r| (r.status, r.reason))?;
    if let Some(app) = ctx.pool.fastcgi_app_for(&script.script_filename) {
        // What cgi-fpm decided about the script (SCRIPT_FILENAME, PATH_INFO) with the
        // request's params; the pool's env[] is the app's environment instead.
        let mut encoded = Vec::with_capacity(params.encoded().len() + 128);
        encode_app_params(params, &script, &mut encoded);
        return Ok(Prepared::Resident {
            command: app.clone(),
            params: encoded,
        });
    }
    let env = build_env(params, &ctx.env_policy, &script);
    spawn(&script, &env, ctx.pool.cgi.stderr)
        .map(Prepared::Child)
        .map_err(|e| {
            let program = script
                .argv
                .first()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let status = if crate::shortage::is_io_shortage(&e) {
                SHORTAGE
            } else {
                502
            };
            (status, format!("cannot execute '{program}': {e}"))
        })
}

/// One access-log line for a request: scripts, refusals, and the status and ping pages
/// (php-fpm logs those too).
pub(super) fn write_access_log(
    ctx: &WorkerCtx<'_>,
    request: &Request,
    script: &str,
    started: SystemTime,
    summary: &Summary,
) {
    let Some(access) = &ctx.access_log else {
        return;
    };
    let successful = (200..300).contains(&summary.status);
    if successful && !access.suppress.is_empty() {
        let uri = request.params.get_str("REQUEST_URI").unwrap_or("");
        let path = uri.split('?').next().unwrap_or(uri);
        if access.suppress.iter().any(|p| p == path) {
            return;
        }
    }
    let line = access.format.render(&Entry {
        pool: &ctx.pool.name,
        params: &request.params,
        script,
        status: summary.status,
        response_headers: &summary.headers,
        started,
        ended: SystemTime::now(),
        cpu_user: summary.usage.user,
        cpu_system: summary.usage.system,
        max_rss_bytes: summary.usage.max_rss_bytes,
        worker_pid: std::process::id(),
        master_pid: nix::unistd::getppid().as_raw() as u32,
    });
    crate::logging::write_all_fd(access.fd, &line);
}
