//! Slow and stuck requests: request_terminate_timeout, processes left holding a script's
//! output, a web server that goes away, and the slowlog.

mod common;

use common::{Fpm, alive, wait_until};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A directory the scripts write their pids into (`$PIDDIR`), read back by the test.
struct PidDir(tempfile::TempDir);

impl PidDir {
    fn new() -> PidDir {
        PidDir(tempfile::tempdir().expect("tempdir"))
    }

    fn env_line(&self) -> String {
        format!("env[PIDDIR] = {}", self.0.path().display())
    }

    /// Wait for the script to record a pid under `name`.
    fn pid(&self, name: &str) -> i32 {
        let path = self.0.path().join(name);
        wait_until(
            &format!("the script wrote {name}"),
            Duration::from_secs(10),
            || {
                std::fs::read_to_string(&path)
                    .ok()
                    .is_some_and(|s| s.trim().parse::<i32>().is_ok())
            },
        );
        std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

fn assert_gone(pid: i32, what: &str) {
    wait_until(
        &format!("{what} (pid {pid}) is gone"),
        Duration::from_secs(5),
        || !alive(pid),
    );
}

/// Send request 1 for a script that records its pid and sleeps 300 s; returns the
/// connection (not waiting for an answer) and the script's pid once it runs.
fn start_long_script(fpm: &Fpm, pids: &PidDir, keep_conn: bool) -> (common::Client, i32) {
    let script = fpm.script(
        "long.sh",
        "#!/bin/sh\necho $$ > \"$PIDDIR/leader\"\nsleep 300\n",
    );
    let script = script.display().to_string();
    let mut client = fpm.client();
    client
        .send_request(1, &[("SCRIPT_FILENAME", &script)], b"", keep_conn)
        .expect("send");
    let leader = pids.pid("leader");
    (client, leader)
}

#[test]
fn a_script_past_the_terminate_timeout_gets_504_and_leaves_nothing() {
    let pids = PidDir::new();
    let fpm = Fpm::start(
        1,
        &format!("request_terminate_timeout = 1s\n{}", pids.env_line()),
    );
    // The script starts a child of its own, then both sleep far past the timeout.
    let script = fpm.script(
        "stuck.sh",
        "#!/bin/sh\nsleep 300 &\necho $! > \"$PIDDIR/child\"\necho $$ > \"$PIDDIR/leader\"\nsleep 300\n",
    );
    let started = Instant::now();
    let r = fpm.get(&script, &[("REQUEST_URI", "/stuck.sh?x=1")]);
    let took = started.elapsed();
    assert_eq!(r.status(), 504, "{}", String::from_utf8_lossy(&r.stdout));
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    assert_gone(pids.pid("leader"), "the script");
    assert_gone(pids.pid("child"), "the script's own child");
    fpm.wait_for_log("script '", Duration::from_secs(1));
    let log = fpm.log_text();
    assert!(
        log.contains("(request: \"GET /stuck.sh?x=1\") execution timed out (1.0"),
        "{log}"
    );
    // The worker is free again.
    let hello = common::examples_dir().join("hello.sh");
    assert_eq!(fpm.get(&hello, &[]).status(), 200);
}

/// The master's own check, for a worker that cannot enforce the timeout itself: it wakes
/// for the busy worker (the worker rings it; the master has no periodic tick at rest) and
/// kills it and its script once request_terminate_timeout and the worker's grace are past.
#[test]
fn a_stopped_worker_past_the_terminate_timeout_is_killed_by_the_master() {
    let pids = PidDir::new();
    let fpm = Fpm::start(
        1,
        &format!("request_terminate_timeout = 1s\n{}", pids.env_line()),
    );
    let worker = fpm.worker_pids()[0];
    let (_client, leader) = start_long_script(&fpm, &pids, false);
    // Stopped only once it sleeps in its pump, past publishing the script's pid: stopped
    // between the spawn and that store, nobody would know the script's group.
    wait_until(
        "the worker waits on its script",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(format!("/proc/{worker}/stat"))
                .ok()
                .and_then(|s| Some(s.rsplit_once(')')?.1.trim_start().starts_with('S')))
                .unwrap_or(false)
        },
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .expect("stop the worker");
    // 1 s timeout + the master's 5 s margin, then at most one round later.
    wait_until(
        "the master kills the stopped worker",
        Duration::from_secs(15),
        || !alive(worker),
    );
    assert_gone(leader, "the script");
    fpm.wait_for_log(
        "did not stop it; killing the worker",
        Duration::from_secs(5),
    );
}

#[test]
fn a_script_that_wrote_only_to_stderr_still_gets_504() {
    let fpm = Fpm::start(1, "request_terminate_timeout = 1s\ncgi.stderr = fastcgi");
    let script = fpm.script("warns.sh", "#!/bin/sh\necho x >&2\nsleep 30\n");
    let r = fpm.get(&script, &[]);
    assert_eq!(r.status(), 504, "{}", String::from_utf8_lossy(&r.stdout));
    assert_eq!(r.stderr, b"x\n", "the stderr already sent is kept");
    fpm.wait_for_log("execution timed out", Duration::from_secs(2));
    assert!(
        !fpm.log_text().contains("answered 502"),
        "{}",
        fpm.log_text()
    );
}

#[test]
fn a_timeout_after_output_went_out_ends_the_response() {
    let pids = PidDir::new();
    let fpm = Fpm::start(
        1,
        &format!("request_terminate_timeout = 1s\n{}", pids.env_line()),
    );
    let script = fpm.script(
        "partial.sh",
        "#!/bin/sh\necho $$ > \"$PIDDIR/leader\"\n\
         printf 'Content-Type: text/plain\\r\\n\\r\\nfirst part\\n'\nexec sleep 300\n",
    );
    let started = Instant::now();
    let r = fpm.get(&script, &[]);
    let took = started.elapsed();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.body(),
        b"first part\n",
        "what was sent stays, nothing else"
    );
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    // The script was stopped, not left running once the response ended.
    assert_gone(pids.pid("leader"), "the script");
    fpm.wait_for_log("execution timed out", Duration::from_secs(2));
}

#[test]
fn a_background_process_holding_stdout_does_not_hold_the_worker() {
    let pids = PidDir::new();
    let fpm = Fpm::start(
        1,
        &format!("request_terminate_timeout = 20s\n{}", pids.env_line()),
    );
    let script = fpm.script(
        "daemonizes.sh",
        "#!/bin/sh\nsleep 1000 &\necho $! > \"$PIDDIR/child\"\n\
         printf 'Content-Type: text/plain\\r\\n\\r\\ndone\\n'\nexit 0\n",
    );
    let started = Instant::now();
    let r = fpm.get(&script, &[]);
    let took = started.elapsed();
    assert_eq!(r.body(), b"done\n");
    assert!(
        took < Duration::from_secs(5),
        "the worker was held {took:?} by the background process"
    );
    assert_gone(pids.pid("child"), "the background sleep");
    fpm.wait_for_log("still hold its output", Duration::from_secs(2));
}

#[test]
fn a_web_server_that_disconnects_gets_its_script_killed() {
    let pids = PidDir::new();
    let fpm = Fpm::start(1, &pids.env_line());
    let (client, leader) = start_long_script(&fpm, &pids, false);
    assert!(alive(leader));
    drop(client);
    assert_gone(leader, "the script of the abandoned request");
    fpm.wait_for_log(
        "closed the connection during the request",
        Duration::from_secs(2),
    );
    let hello = common::examples_dir().join("hello.sh");
    assert_eq!(
        fpm.get(&hello, &[]).status(),
        200,
        "the worker serves again"
    );
}

#[test]
fn abort_request_stops_the_script_and_is_acknowledged() {
    use cgi_fpm::fastcgi::record::{RecordType, write_record};
    let pids = PidDir::new();
    let fpm = Fpm::start(1, &pids.env_line());
    let (mut client, leader) = start_long_script(&fpm, &pids, true);
    let mut abort = Vec::new();
    write_record(&mut abort, RecordType::AbortRequest, 1, &[]);
    client.send_raw(&abort).expect("abort");
    let r = client
        .read_response(1)
        .expect("END_REQUEST after the abort");
    assert_eq!(
        r.protocol_status,
        Some(cgi_fpm::fastcgi::ProtocolStatus::RequestComplete)
    );
    assert_gone(leader, "the aborted script");
    // The connection was kept (FCGI_KEEP_CONN): it carries the next request.
    let hello = common::examples_dir()
        .join("hello.sh")
        .display()
        .to_string();
    let r = client
        .request(&[("SCRIPT_FILENAME", &hello)], b"", true)
        .expect("the kept connection serves the next request after an abort");
    assert_eq!(r.status(), 200);
    // An abort while the body is still arriving keeps the connection too (nginx reuses
    // request id 1 on every request of a connection).
    client
        .send_head(
            1,
            &[("SCRIPT_FILENAME", &hello), ("CONTENT_LENGTH", "10")],
            true,
        )
        .expect("head");
    client.send_stdin(1, b"12345").expect("half the body");
    client
        .send_raw(&{
            let mut abort = Vec::new();
            write_record(&mut abort, RecordType::AbortRequest, 1, &[]);
            abort
        })
        .expect("abort");
    let r = client
        .read_response(1)
        .expect("END_REQUEST after the second abort");
    assert_eq!(
        r.protocol_status,
        Some(cgi_fpm::fastcgi::ProtocolStatus::RequestComplete)
    );
    let r = client
        .request(&[("SCRIPT_FILENAME", &hello)], b"", true)
        .expect("the kept connection serves a request after an abort mid-body");
    assert_eq!(r.status(), 200);
}

fn slow_pool(fpm_dir_hint: &Path, trace: &str) -> String {
    format!(
        // Quoted: unquoted, `;` would start an INI comment.
        "request_slowlog_timeout = 1s\nslowlog = {}\nrequest_slowlog_trace_command = \"{trace}\"\npm.status_path = /status",
        fpm_dir_hint.join("slow.log").display()
    )
}

#[test]
fn a_slow_python_script_gets_a_slowlog_record_with_the_trace() {
    let logs = tempfile::tempdir().expect("tempdir");
    let trace = "printf 'traced pid %p\\n'; tr '\\0' ' ' < /proc/%p/cmdline; echo";
    let fpm = Fpm::start(1, &slow_pool(logs.path(), trace));
    let script = fpm.script(
        "slow.py",
        "import time, sys\ntime.sleep(2.5)\nsys.stdout.write('Content-Type: text/plain\\r\\n\\r\\nslow but fine\\n')\n",
    );
    let r = fpm.get(
        &script,
        &[("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/slow.py?a=b")],
    );
    assert_eq!(
        r.body(),
        b"slow but fine\n",
        "a slow request still completes"
    );
    let slowlog: PathBuf = logs.path().join("slow.log");
    wait_until(
        "the slowlog record is written",
        Duration::from_secs(10),
        || std::fs::read_to_string(&slowlog).is_ok_and(|t| t.contains("trace (")),
    );
    let record = std::fs::read_to_string(&slowlog).expect("slowlog");
    let script_path = script.display().to_string();
    for expected in [
        "[pool www] pid ".to_string(),
        format!("script_filename = {script_path}"),
        "request = GET /slow.py?a=b".to_string(),
        "elapsed = 1.".to_string(),
        "cgi process ".to_string(),
        format!("python3 {script_path}"),
        "traced pid ".to_string(),
    ] {
        assert!(
            record.contains(&expected),
            "missing {expected:?} in:\n{record}"
        );
    }
    // The trace ran against the CGI process, whose pid the record names first.
    let cgi_pid = record
        .split("cgi process ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("cgi pid");
    assert!(
        record.contains(&format!("traced pid {cgi_pid}")),
        "{record}"
    );
    fpm.wait_for_log("executing too slow", Duration::from_secs(2));
    // And the status page counts it.
    let status = fpm
        .client()
        .request(
            &[
                ("SCRIPT_NAME", "/status"),
                ("SCRIPT_FILENAME", "/status"),
                ("REQUEST_METHOD", "GET"),
                ("QUERY_STRING", "json"),
            ],
            b"",
            false,
        )
        .expect("status");
    let body = String::from_utf8_lossy(status.body()).into_owned();
    assert!(body.contains("\"slow requests\":1"), "{body}");
}

#[test]
fn a_trace_command_that_hangs_is_cut_off() {
    let logs = tempfile::tempdir().expect("tempdir");
    let fpm = Fpm::start(1, &slow_pool(logs.path(), "echo started; exec sleep 300"));
    let script = fpm.script(
        "slow.sh",
        "#!/bin/sh\nsleep 2\nprintf 'Content-Type: text/plain\\r\\n\\r\\nok'\n",
    );
    let r = fpm.get(&script, &[]);
    assert_eq!(r.body(), b"ok");
    let slowlog = logs.path().join("slow.log");
    wait_until(
        "the slowlog record is written",
        Duration::from_secs(15),
        || std::fs::read_to_string(&slowlog).is_ok_and(|t| t.contains("killed after")),
    );
    let record = std::fs::read_to_string(&slowlog).expect("slowlog");
    assert!(record.contains("started"), "{record}");
}
