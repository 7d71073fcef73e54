//! Slowlog records. php-fpm's slowlog ptrace()s PHP's engine, so it works for PHP only and
//! fails without ptrace rights; ours describes the CGI child from /proc (command line,
//! state, wchan, and everything in its process group) and appends the output of an
//! optional `request_slowlog_trace_command` (`py-spy dump --pid %p`, `eu-stack -p %p`, …),
//! which works for any interpreter. The trace runs while the request goes on; its output is
//! collected through the worker's poll loop.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a trace command may run before it is killed.
pub(super) const TRACE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a trace whose output has ended is checked for its exit.
const EXIT_CHECK: Duration = Duration::from_millis(10);
/// Trace output kept in a record; the rest is cut with a note.
const TRACE_OUTPUT_MAX: usize = 256 * 1024;

fn read_proc(pid: i32, file: &str) -> Option<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/{file}")).ok()
}

/// `1234 (state S, wchan do_select): /usr/bin/python3 /srv/app.py`, or `None` once gone.
pub(super) fn describe_process(pid: i32) -> Option<String> {
    let stat = String::from_utf8(read_proc(pid, "stat")?).ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    let state = after_comm.split_whitespace().next().unwrap_or("?");
    let wchan = read_proc(pid, "wchan")
        .map(|w| String::from_utf8_lossy(&w).into_owned())
        .filter(|w| !w.is_empty() && w != "0")
        .unwrap_or_else(|| "-".into());
    let cmdline = read_proc(pid, "cmdline").unwrap_or_default();
    let cmdline: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Some(format!(
        "{pid} (state {state}, wchan {wchan}): {}",
        cmdline.join(" ")
    ))
}

/// Every process in a process group, the leader first.
pub(super) fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    let mut members: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            read_proc(pid, "stat").and_then(|s| {
                let s = String::from_utf8(s).ok()?;
                // Fields after the command: state, ppid, pgrp.
                s.rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .nth(2)?
                    .parse::<i32>()
                    .ok()
            }) == Some(pgid)
        })
        .collect();
    members.sort_unstable_by_key(|&p| (p != pgid, p));
    members
}

/// `%p` → the CGI child's pid, `%d` → request_slowlog_trace_depth, `%%` → `%`.
pub(super) fn expand_command(template: &str, pid: i32, depth: u32) -> String {
    let mut out = String::with_capacity(template.len() + 8);
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('p') => out.push_str(&pid.to_string()),
            Some('d') => out.push_str(&depth.to_string()),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

struct Trace {
    command: String,
    child: Child,
    stdout: Option<ChildStdout>,
    output: Vec<u8>,
    deadline: Instant,
    timed_out: bool,
}

/// One slow request's record, complete once its trace (if any) is.
pub(super) struct SlowRecord {
    text: String,
    trace: Option<Trace>,
}

impl SlowRecord {
    /// Describe the request and its CGI process group now, and start the trace command.
    pub(super) fn start(
        head: String,
        cgi_pid: i32,
        command: Option<&str>,
        depth: u32,
    ) -> SlowRecord {
        let mut text = head;
        let members = group_members(cgi_pid);
        for (i, pid) in members.iter().enumerate() {
            if let Some(line) = describe_process(*pid) {
                let label = if i == 0 { "cgi process " } else { "  " };
                text.push_str(label);
                text.push_str(&line);
                text.push('\n');
            }
        }
        if members.is_empty() {
            text.push_str(&format!("cgi process {cgi_pid}: already gone\n"));
        }
        let trace = command.map(|template| {
            let command = expand_command(template, cgi_pid, depth);
            start_trace(command)
        });
        let trace = match trace {
            Some(Ok(t)) => Some(t),
            Some(Err((command, e))) => {
                text.push_str(&format!("trace ({command}) could not be started: {e}\n"));
                None
            }
            None => None,
        };
        SlowRecord { text, trace }
    }

    /// The trace's output pipe, while it is open.
    pub(super) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.trace.as_ref()?.stdout.as_ref().map(|s| s.as_fd())
    }

    /// When the caller must look at the record again (`poll_done`) if nothing else wakes
    /// it: the trace's time limit, or soon once its output has ended, since the command
    /// usually exits just after closing it and no descriptor tells when it has.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.trace.as_ref().map(|t| match t.stdout {
            Some(_) => t.deadline,
            None => t.deadline.min(Instant::now() + EXIT_CHECK),
        })
    }

    /// Take what the trace has written so far.
    pub(super) fn on_readable(&mut self) {
        let Some(trace) = &mut self.trace else { return };
        let Some(stdout) = &mut trace.stdout else {
            return;
        };
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) => {
                    trace.stdout = None;
                    return;
                }
                Ok(n) => {
                    let room = TRACE_OUTPUT_MAX.saturating_sub(trace.output.len());
                    trace.output.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    /// Whether the record is complete; kills a trace that outlived its time limit.
    pub(super) fn poll_done(&mut self) -> bool {
        let Some(trace) = &mut self.trace else {
            return true;
        };
        if Instant::now() >= trace.deadline && !trace.timed_out {
            trace.timed_out = true;
            let _ = killpg(Pid::from_raw(trace.child.id() as i32), Signal::SIGKILL);
            trace.stdout = None;
        }
        if trace.stdout.is_some() {
            return false;
        }
        matches!(trace.child.try_wait(), Ok(Some(_)) | Err(_))
    }

    /// The finished record as one block of text.
    pub(super) fn finish(mut self) -> Vec<u8> {
        if let Some(mut trace) = self.trace.take() {
            // Whatever state it is in, it must not outlive the record.
            let _ = killpg(Pid::from_raw(trace.child.id() as i32), Signal::SIGKILL);
            let status = trace.child.wait().ok();
            self.text.push_str(&format!("trace ({}):\n", trace.command));
            self.text.push_str(&String::from_utf8_lossy(&trace.output));
            if !self.text.ends_with('\n') {
                self.text.push('\n');
            }
            if trace.output.len() >= TRACE_OUTPUT_MAX {
                self.text.push_str("(trace output cut)\n");
            }
            if trace.timed_out {
                self.text.push_str(&format!(
                    "(trace command killed after {} s)\n",
                    TRACE_TIMEOUT.as_secs()
                ));
            } else if let Some(status) = status.filter(|s| !s.success()) {
                self.text.push_str(&format!("(trace command {status})\n"));
            }
        }
        self.text.push('\n');
        self.text.into_bytes()
    }
}

fn start_trace(command: String) -> Result<Trace, (String, std::io::Error)> {
    // Through the shell, so a trace can be a pipeline; stderr joins stdout so failures
    // (a missing tool, no ptrace permission) land in the record where they are needed.
    let spawned = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("exec 2>&1; {command}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return Err((command, e)),
    };
    let stdout = child.stdout.take();
    if let Some(out) = &stdout {
        let fd = out.as_fd();
        if let Ok(flags) = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL) {
            let flags =
                nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
            let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags));
        }
    }
    Ok(Trace {
        command,
        child,
        stdout,
        output: Vec::new(),
        deadline: Instant::now() + TRACE_TIMEOUT,
        timed_out: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_templates() {
        assert_eq!(
            expand_command("py-spy dump --pid %p", 42, 20),
            "py-spy dump --pid 42"
        );
        assert_eq!(expand_command("x -n %d %% %q", 1, 7), "x -n 7 % %q");
        assert_eq!(expand_command("end%", 1, 1), "end%");
    }

    #[test]
    fn describes_a_live_process_and_its_group() {
        let me = std::process::id() as i32;
        let line = describe_process(me).expect("self");
        assert!(line.starts_with(&format!("{me} (state ")), "{line}");
        assert!(describe_process(i32::MAX).is_none());
    }

    #[test]
    fn a_trace_whose_output_ended_is_looked_at_again_soon() {
        // The command closes its output and goes on for a while: no descriptor will
        // say when it exits, so the deadline must.
        let mut r = SlowRecord::start("head\n".into(), 1, Some("exec >&-; sleep 0.3"), 20);
        assert!(r.deadline().expect("a trace") > Instant::now() + Duration::from_secs(5));
        let ended = Instant::now() + Duration::from_secs(5);
        while r.fd().is_some() {
            r.on_readable();
            assert!(Instant::now() < ended, "the output never ended");
            std::thread::sleep(Duration::from_millis(5));
        }
        let next = r.deadline().expect("a trace");
        assert!(next <= Instant::now() + EXIT_CHECK, "{next:?}");
        let done = Instant::now() + Duration::from_secs(5);
        while !r.poll_done() {
            assert!(Instant::now() < done, "the trace never exited");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_trace_is_collected_and_a_slow_one_is_cut() {
        let mut r = SlowRecord::start("head\n".into(), 1, Some("echo traced %p"), 20);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !r.poll_done() {
            r.on_readable();
            assert!(Instant::now() < deadline, "trace never finished");
            std::thread::sleep(Duration::from_millis(5));
        }
        let text = String::from_utf8(r.finish()).unwrap();
        assert!(
            text.contains("trace (echo traced 1):\ntraced 1\n"),
            "{text}"
        );
    }
}
