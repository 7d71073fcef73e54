//! The log lines a request writes wherever it runs (a CGI child's pump or a resident
//! app's relay): its script's stderr, its slowlog record, a response it could not spool.

use super::WorkerCtx;
use super::slowlog::SlowRecord;
use std::sync::atomic::Ordering;
use std::time::Instant;

pub(super) fn start_slow_record(
    ctx: &WorkerCtx<'_>,
    cgi_pid: i32,
    script: &str,
    request_line: &str,
    started: Instant,
) -> SlowRecord {
    let elapsed = started.elapsed();
    let worker = std::process::id();
    log::warn!(
        "{} script '{script}' (request: \"{request_line}\") executing too slow ({}.{:06} sec), logging",
        ctx.log_prefix(),
        elapsed.as_secs(),
        elapsed.subsec_micros()
    );
    ctx.scoreboard
        .counters()
        .slow_requests
        .fetch_add(1, Ordering::Relaxed);
    // The record spans lines, so its values must not: a newline in one would forge a field.
    let head = format!(
        "[{}]  [pool {}] pid {worker}\nscript_filename = {}\nrequest = {}\nelapsed = {}.{:06} s\n",
        crate::clock::timestamp(),
        ctx.pool.name,
        crate::logging::escape_control(script, crate::logging::Keep::Nothing),
        crate::logging::escape_control(request_line, crate::logging::Keep::Nothing),
        elapsed.as_secs(),
        elapsed.subsec_micros()
    );
    SlowRecord::start(
        head,
        cgi_pid,
        ctx.pool.request_slowlog_trace_command.as_deref(),
        ctx.pool.request_slowlog_trace_depth,
    )
}

pub(super) fn write_slow_record(ctx: &WorkerCtx<'_>, record: SlowRecord) {
    if let Some(fd) = ctx.slowlog_fd {
        crate::logging::write_all_fd(fd, &record.finish());
    }
}

pub(super) fn log_spool_failure(ctx: &WorkerCtx<'_>, error: &std::io::Error) {
    log::warn!(
        "{} cannot spool a response held until the request body is complete ({error}); sending it now, which nginx may not wait for",
        ctx.log_prefix()
    );
}

/// One entry per line of the child's stderr, however long (php-fpm wraps at log_limit;
/// we cut, noting how many bytes of the line were left out).
pub(super) fn log_stderr(ctx: &WorkerCtx<'_>, script: &str, line: &[u8], hidden: usize) {
    log_said_into_stderr(ctx, &format!("script '{script}'"), line, hidden);
}

/// A line of stderr from `subject` (`script '/srv/x.sh'`, `FastCGI app 1234`), as
/// [`log_stderr`] logs it.
pub(super) fn log_said_into_stderr(ctx: &WorkerCtx<'_>, subject: &str, line: &[u8], hidden: usize) {
    let line = if hidden == 0 {
        line.strip_suffix(b"\r").unwrap_or(line)
    } else {
        line
    };
    if ctx.pool.catch_workers_output && !ctx.pool.decorate_workers_output {
        // php-fpm's decorate_workers_output = no: the line exactly as the script wrote it,
        // within log_limit like every entry.
        crate::logging::write_raw(&String::from_utf8_lossy(line), hidden);
        return;
    }
    crate::logging::warn_cut(
        format!(
            "{} {subject} said into stderr: \"{}\"",
            ctx.log_prefix(),
            String::from_utf8_lossy(line)
        ),
        hidden,
    );
}
