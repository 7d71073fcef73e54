//! Resident FastCGI applications: php-cgi, a flup/WSGI app, a Perl FCGI.pm loop, any
//! program that accepts FastCGI connections on descriptor 0. A worker starts at most one
//! per command, on the first request that needs it, and relays each request over one
//! kept connection; the worker stays the unit of concurrency and of accounting, so the
//! status page, deadlines, the slowlog and the access log work as for CGI children.

mod app;
pub(super) mod records;
mod relay;
mod stderr;

use super::WorkerCtx;
use super::conn::Conn;
use super::exchange::Outcome;
use super::pump::Summary;
use crate::cgi::php;
use crate::config::Interpreter;
use crate::fastcgi::Session;
use app::{App, Launch};
use records::AppInput;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// The worker's apps, one per command.
#[derive(Default)]
pub(super) struct Residents {
    apps: Vec<Resident>,
}

impl Residents {
    /// Take the app for `command` out (made if new), to be put back with `restore`.
    fn take(&mut self, command: &Interpreter, ctx: &WorkerCtx<'_>) -> Resident {
        match self.apps.iter().position(|r| r.command == command.argv) {
            Some(index) => self.apps.swap_remove(index),
            None => Resident::new(command, ctx),
        }
    }

    fn restore(&mut self, resident: Resident) {
        self.apps.push(resident);
    }

    /// The worker is leaving: its apps go with it.
    pub(super) fn stop_all(&mut self, ctx: &WorkerCtx<'_>) {
        for mut resident in self.apps.drain(..) {
            resident.discard(ctx, true);
            if let Some(next) = resident.successor.take() {
                stop_and_log(ctx, next, true);
            }
            for gone in resident.departing.drain(..) {
                stop_and_log(ctx, gone, false);
            }
        }
    }
}

/// `cgi.fastcgi_app_start = worker_start`: start the pool's apps now, before the first
/// request, which then does not wait for them. An app that cannot start is logged here
/// and tried again (after its backoff) by the first request that needs it.
pub(super) fn start_at_worker_start(ctx: &mut WorkerCtx<'_>) {
    if ctx.status_only || ctx.pool.cgi.fastcgi_app_start != crate::config::AppStart::WorkerStart {
        return;
    }
    let mut residents = std::mem::take(&mut ctx.residents);
    for command in &ctx.pool.cgi.fastcgi_apps {
        let mut resident = residents.take(command, ctx);
        if let Err(reason) = resident.ready(ctx) {
            log::error!("{} {reason}", ctx.log_prefix());
        }
        residents.restore(resident);
    }
    ctx.residents = residents;
}

/// One command's app in this worker, and what its restarts have taught us.
pub(super) struct Resident {
    command: Vec<String>,
    launch: Launch,
    app: Option<App>,
    input: AppInput,
    /// Starts in a row whose app ended before it completed a request.
    failures: u32,
    not_before: Option<Instant>,
    last_failure: String,
    /// The next app, started before the one in hand ends (see `lifetime`).
    successor: Option<App>,
    /// How many requests an app of this command serves before it ends by itself
    /// (php-cgi's PHP_FCGI_MAX_REQUESTS, 500 unless set), learned from the last one that
    /// left between requests. Its successor is started a little before that, so that its
    /// start (tens of ms for php-cgi) costs no request a wait.
    lifetime: Option<u64>,
    /// Apps that ended by themselves, killed but not yet reaped: their exit (php-cgi's
    /// module shutdown, 15 ms and more on a busy machine) is not waited for in a
    /// request's path; they are reaped before later requests.
    departing: Vec<App>,
}

/// php-cgi ends itself after 500 requests unless PHP_FCGI_MAX_REQUESTS says otherwise; a
/// fresh one costs 12-14 ms of CPU, about the whole gap to spawn-fcgi's forked children.
/// Under a pool, restarts are the pool's business (`pm.max_requests`,
/// `cgi.fastcgi_app_max_requests`), as in php-fpm, whose `pm.max_requests` defaults to
/// never: so a resident php-cgi never leaves by itself unless the pool's environment asks.
fn never_leave_by_itself(env: &mut Vec<(OsString, OsString)>) {
    const LIMIT: &str = "PHP_FCGI_MAX_REQUESTS";
    if !env.iter().any(|(name, _)| name == LIMIT) {
        env.push((LIMIT.into(), "0".into()));
    }
}

impl Resident {
    fn new(command: &Interpreter, ctx: &WorkerCtx<'_>) -> Resident {
        let mut argv: Vec<OsString> = command.argv.iter().map(OsString::from).collect();
        if command.is_php_cgi() {
            argv.extend(php::ini_arguments(&ctx.pool.php_settings));
        }
        let dir = ctx.pool.chdir.clone().unwrap_or_else(|| PathBuf::from("/"));
        let mut env = Launch::environment(&ctx.env_policy);
        if command.is_php_cgi() {
            never_leave_by_itself(&mut env);
        }
        Resident {
            command: command.argv.clone(),
            launch: Launch { argv, env, dir },
            app: None,
            input: AppInput::default(),
            failures: 0,
            not_before: None,
            last_failure: String::new(),
            successor: None,
            lifetime: None,
            departing: Vec::new(),
        }
    }

    fn command_line(&self) -> String {
        self.command.join(" ")
    }

    /// Make sure a usable app is running: one that ended between requests (php-cgi after
    /// PHP_FCGI_MAX_REQUESTS, a crash, a kill) is replaced here, before the request is
    /// sent, so it costs no request. Err: why no app can serve (for a 502).
    fn ready(&mut self, ctx: &WorkerCtx<'_>) -> Result<(), String> {
        // Apps that ended by themselves are reaped once gone, with their last words.
        self.departing.retain_mut(|gone| {
            if gone.exit_status().is_none() {
                return true;
            }
            log_app_stderr(ctx, gone.pid.as_raw(), &mut gone.stderr);
            false
        });
        if let Some(app) = &mut self.app {
            if app.is_usable() {
                // Written since the last request: it belongs to none, in particular
                // not to the one about to be sent.
                if app.stderr_waiting {
                    self.log_stderr(ctx);
                }
                return Ok(());
            }
            let how = app
                .exit_status()
                .map(crate::wait_status::describe)
                .unwrap_or_else(|| "closed its connection".into());
            let pid = app.pid;
            let next = match &self.successor {
                Some(next) => format!("its successor {} takes over", next.pid),
                None => "starting a fresh one".into(),
            };
            log::info!(
                "{} FastCGI app {pid} ('{}') {how} between requests; {next}",
                ctx.log_prefix(),
                self.command_line()
            );
            self.ended_by_itself();
            self.let_go(ctx);
        }
        if let Some(mut next) = self.successor.take() {
            if next.is_usable() {
                self.app = Some(next);
                self.input.clear();
                // What it wrote while it waited (its start) belongs to no request.
                self.log_stderr(ctx);
                return Ok(());
            }
            // It died waiting (a broken app): start afresh below, with the back-off.
            stop_and_log(ctx, next, false);
        }
        if let Some(at) = self.not_before
            && Instant::now() < at
        {
            return Err(format!(
                "FastCGI app '{}' is not restarted for {} ms after {} failed starts ({})",
                self.command_line(),
                at.saturating_duration_since(Instant::now()).as_millis(),
                self.failures,
                self.last_failure
            ));
        }
        match App::start(&self.launch) {
            Ok(app) => {
                log::info!(
                    "{} FastCGI app {} started: '{}'",
                    ctx.log_prefix(),
                    app.pid,
                    self.command_line()
                );
                self.app = Some(app);
                self.input.clear();
                Ok(())
            }
            Err(e) => {
                let reason = format!("cannot start FastCGI app '{}': {e}", self.command_line());
                self.note_failure(reason.clone());
                Err(reason)
            }
        }
    }

    /// The app in hand left between requests after serving some: that is its lifetime.
    fn ended_by_itself(&mut self) {
        if let Some(app) = &self.app
            && app.served > 0
        {
            self.lifetime = Some(app.served);
        }
    }

    /// Start the app's successor if the app in hand is near the end of its lifetime
    /// (its own, or cgi.fastcgi_app_max_requests).
    fn prepare_successor(&mut self, ctx: &WorkerCtx<'_>) {
        let Some(app) = &self.app else {
            return;
        };
        let max = ctx.pool.cgi.fastcgi_app_max_requests;
        let lifetime = match (self.lifetime, max) {
            (Some(learned), 0) => learned,
            (Some(learned), max) => learned.min(max),
            (None, 0) => return,
            (None, max) => max,
        };
        if self.successor.is_some() || !records::start_successor(app.served, lifetime) {
            return;
        }
        match App::start(&self.launch) {
            Ok(next) => {
                log::info!(
                    "{} FastCGI app {} started ahead, to follow app {} after its {lifetime} requests: '{}'",
                    ctx.log_prefix(),
                    next.pid,
                    app.pid,
                    self.command_line()
                );
                self.successor = Some(next);
            }
            // The app in hand still serves; the successor is started when needed.
            Err(e) => log::debug!(
                "{} cannot start FastCGI app '{}' ahead: {e}",
                ctx.log_prefix(),
                self.command_line()
            ),
        }
    }

    fn note_failure(&mut self, reason: String) {
        self.failures = self.failures.saturating_add(1);
        let delay = records::restart_delay(self.failures);
        self.not_before = Some(Instant::now() + delay);
        self.last_failure = reason;
    }

    /// The app in hand, taken to be stopped or let go; one that ends before completing a
    /// request counts towards the start back-off.
    fn take_app(&mut self) -> Option<App> {
        let app = self.app.take()?;
        if records::failed_start(app.served, app.started.elapsed()) {
            self.note_failure(format!(
                "app {} ended right after its start, before completing a request",
                app.pid
            ));
        }
        Some(app)
    }

    /// Stop and forget the app (TERM first with `grace`).
    fn discard(&mut self, ctx: &WorkerCtx<'_>, grace: bool) {
        let Some(app) = self.take_app() else {
            return;
        };
        log::debug!("{} stopping FastCGI app {}", ctx.log_prefix(), app.pid);
        stop_and_log(ctx, app, grace);
        self.input.clear();
    }

    /// What the app wrote to its stderr outside a request, to the log.
    fn log_stderr(&mut self, ctx: &WorkerCtx<'_>) {
        if let Some(app) = &mut self.app {
            log_app_stderr(ctx, app.pid.as_raw(), &mut app.stderr);
        }
    }

    /// Forget an app that ended by itself (or closed its connection): it is killed, and
    /// reaped later instead of waited for now.
    fn let_go(&mut self, ctx: &WorkerCtx<'_>) {
        let Some(app) = self.take_app() else {
            return;
        };
        log::debug!("{} letting FastCGI app {} go", ctx.log_prefix(), app.pid);
        let mut app = app;
        log_app_stderr(ctx, app.pid.as_raw(), &mut app.stderr);
        app.kill();
        self.departing.push(app);
        self.input.clear();
    }

    /// The request is over: count it, and retire the app if it has served enough or the
    /// request left it in a state nobody knows.
    fn after_request(&mut self, ctx: &WorkerCtx<'_>, clean: bool) {
        let Some(app) = &mut self.app else {
            return;
        };
        if clean {
            app.served += 1;
            self.failures = 0;
            self.not_before = None;
        }
        let max = ctx.pool.cgi.fastcgi_app_max_requests;
        if records::retire_after(app.served, max, clean) {
            if clean {
                log::debug!(
                    "{} FastCGI app {} has served cgi.fastcgi_app_max_requests ({max}); restarting it",
                    ctx.log_prefix(),
                    app.pid
                );
            }
            self.discard(ctx, true);
            return;
        }
        if clean {
            self.prepare_successor(ctx);
        }
    }
}

/// Stop `app` (TERM first with `grace`) and log its last words (the reason it could not
/// start, say), read once every writer is gone.
fn stop_and_log(ctx: &WorkerCtx<'_>, mut app: App, grace: bool) {
    let pid = app.pid.as_raw();
    let mut pipe = app.stderr.take();
    app.stop(grace);
    log_app_stderr(ctx, pid, &mut pipe);
}

/// Drain an app's stderr pipe into the log, one entry per line, unless `cgi.stderr =
/// discard` (then it is read and dropped, so that the app never blocks on it).
fn log_app_stderr(ctx: &WorkerCtx<'_>, pid: i32, pipe: &mut Option<std::os::fd::OwnedFd>) {
    let keep = ctx.pool.cgi.stderr != crate::config::StderrMode::Discard;
    let subject = format!("FastCGI app {pid}");
    let mut lines = crate::logging::LineSplitter::default();
    let mut emit = |line: &[u8], hidden: usize| {
        if keep {
            super::request_log::log_said_into_stderr(ctx, &subject, line, hidden);
        }
    };
    stderr::drain(pipe, |bytes| lines.push(bytes, &mut emit));
    lines.finish(&mut emit);
}

/// The slot names the app that serves the request: as its CGI pid, which the master's
/// deadlines kill, and as the app pid the status page shows.
fn publish_app(ctx: &WorkerCtx<'_>, pid: i32) {
    let slot = ctx.slot();
    slot.cgi_pid.store(pid, Ordering::Relaxed);
    slot.set_app_pid(pid);
}

/// Relay `request` to the app for `command`. Err: no app could be started (the caller
/// answers 502 with the reason).
#[allow(clippy::too_many_arguments)]
pub(super) fn relay(
    conn: &mut Conn,
    session: &mut Session,
    request: &crate::fastcgi::Request,
    ctx: &mut WorkerCtx<'_>,
    command: &Interpreter,
    encoded_params: &[u8],
    started: Instant,
    script: String,
    request_line: String,
) -> Result<(Outcome, Summary), String> {
    let mut residents = std::mem::take(&mut ctx.residents);
    let mut resident = residents.take(command, ctx);
    ctx.residents = residents;
    if let Err(reason) = resident.ready(ctx) {
        ctx.residents.restore(resident);
        return Err(reason);
    }
    publish_app(ctx, resident.app.as_ref().map_or(0, |a| a.pid.as_raw()));
    let relay = relay::Relay::new(
        conn,
        session,
        request.id,
        &mut resident,
        ctx,
        started,
        script,
        request_line,
        encoded_params,
    );
    let result = relay.run(ctx, request.keep_conn);
    ctx.residents.restore(resident);
    Ok(result)
}
