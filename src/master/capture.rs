//! `catch_workers_output`: the master reads what workers write to their stdout and stderr
//! and logs it line by line, with the pool and pid, as php-fpm does:
//! `WARNING: [pool www] child 1234 said into stderr: "…"`.

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::errno::Errno;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};

use super::tokens::CAPTURE_TOKENS;

struct Pipe {
    fd: OwnedFd,
    pool: String,
    pid: i32,
    stream: &'static str,
    decorate: bool,
    lines: crate::logging::LineSplitter,
}

#[derive(Default)]
pub(super) struct Capture {
    pipes: HashMap<Token, Pipe>,
    next: usize,
}

/// The worker's ends of its two pipes, to hand over at fork.
pub(super) struct WorkerEnds {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Our ends, to register once the worker's pid is known.
pub(super) struct MasterEnds {
    stdout: OwnedFd,
    stderr: OwnedFd,
}

pub(super) fn pipes() -> Result<(MasterEnds, WorkerEnds), Errno> {
    let flags = nix::fcntl::OFlag::O_CLOEXEC;
    let (out_r, out_w) = nix::unistd::pipe2(flags | nix::fcntl::OFlag::O_NONBLOCK)?;
    let (err_r, err_w) = nix::unistd::pipe2(flags | nix::fcntl::OFlag::O_NONBLOCK)?;
    // The worker's ends must block: a worker that writes faster than we read waits
    // rather than losing its output.
    for fd in [&out_w, &err_w] {
        let current = nix::fcntl::OFlag::from_bits_truncate(nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_GETFL,
        )?);
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFL(current & !nix::fcntl::OFlag::O_NONBLOCK),
        )?;
    }
    Ok((
        MasterEnds {
            stdout: out_r,
            stderr: err_r,
        },
        WorkerEnds {
            stdout: out_w,
            stderr: err_w,
        },
    ))
}

impl Capture {
    pub(super) fn is_capture(token: Token) -> bool {
        CAPTURE_TOKENS.contains(&token.0)
    }

    pub(super) fn add(
        &mut self,
        registry: &Registry,
        ends: MasterEnds,
        pool: &str,
        pid: i32,
        decorate: bool,
    ) {
        for (fd, stream) in [(ends.stdout, "stdout"), (ends.stderr, "stderr")] {
            let token = Token(CAPTURE_TOKENS.start + self.next);
            self.next = (self.next + 1) % CAPTURE_TOKENS.len();
            if let Err(e) =
                registry.register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)
            {
                log::error!("[pool {pool}] cannot watch child {pid}'s {stream}: {e}");
                continue;
            }
            self.pipes.insert(
                token,
                Pipe {
                    fd,
                    pool: pool.to_string(),
                    pid,
                    stream,
                    decorate,
                    lines: crate::logging::LineSplitter::default(),
                },
            );
        }
    }

    /// Read what a pipe holds and log its complete lines; at end of stream, log the rest
    /// and forget the pipe.
    pub(super) fn on_readable(&mut self, registry: &Registry, token: Token) {
        let Some(pipe) = self.pipes.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; 8192];
        let closed = loop {
            match nix::unistd::read(&pipe.fd, &mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    let (lines, meta) = pipe.split();
                    lines.push(&buf[..n], |line, hidden| meta.log(line, hidden, false));
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => break false,
                Err(_) => break true,
            }
        };
        if closed {
            let (lines, meta) = pipe.split();
            lines.finish(|line, hidden| meta.log(line, hidden, true));
            let _ = registry.deregister(&mut SourceFd(&pipe.fd.as_raw_fd()));
            self.pipes.remove(&token);
        }
    }
}

/// Who a pipe belongs to, for its log lines.
struct PipeMeta<'a> {
    pool: &'a str,
    pid: i32,
    stream: &'static str,
    decorate: bool,
}

impl Pipe {
    fn split(&mut self) -> (&mut crate::logging::LineSplitter, PipeMeta<'_>) {
        (
            &mut self.lines,
            PipeMeta {
                pool: &self.pool,
                pid: self.pid,
                stream: self.stream,
                decorate: self.decorate,
            },
        )
    }
}

impl PipeMeta<'_> {
    fn log(&self, line: &[u8], hidden: usize, closing: bool) {
        // A cut line's \r (if any) went with the cut.
        let line = if hidden == 0 {
            line.strip_suffix(b"\r").unwrap_or(line)
        } else {
            line
        };
        let text = String::from_utf8_lossy(line);
        if self.decorate {
            crate::logging::warn_cut(
                format!(
                    "[pool {}] child {} said into {}: \"{}\"{}",
                    self.pool,
                    self.pid,
                    self.stream,
                    text,
                    if closing { ", pipe is closed" } else { "" }
                ),
                hidden,
            );
        } else {
            // Undecorated, as php-fpm's decorate_workers_output = no: the line as written.
            crate::logging::write_raw(&text, hidden);
        }
    }
}
