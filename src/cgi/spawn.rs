//! Starting a CGI child: its own process group, pipes for stdin, stdout and stderr, and
//! nothing else of ours (every descriptor we hold is close-on-exec).

use super::resolve::Resolved;
use crate::config::StderrMode;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// A running CGI child and our ends of its pipes, all non-blocking.
#[derive(Debug)]
pub struct CgiChild {
    pub pid: Pid,
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// Readable once the child has exited (Linux 5.3+); without it the pump polls waitpid.
    pub pidfd: Option<OwnedFd>,
}

impl CgiChild {
    /// Signal the child's whole process group: it and anything it started.
    pub fn signal_group(&self, signal: Signal) {
        // ESRCH just means everyone in the group is gone already.
        let _ = killpg(self.pid, signal);
    }
}

fn set_nonblocking(fd: &impl AsFd) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; it
    // touches no memory of ours. The pid is our unreaped child, so it cannot be reused.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Spawn the script. std's Command uses posix_spawn (vfork-speed) for this shape of
/// command, resets the signal mask and SIGPIPE in the child, and reports exec failures.
pub fn spawn(
    script: &Resolved,
    env: &[(OsString, OsString)],
    stderr: StderrMode,
) -> io::Result<CgiChild> {
    let (program, args) = script
        .argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty argv"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().map(|(n, v)| (n, v)))
        .current_dir(script.directory())
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(if stderr == StderrMode::Discard {
            Stdio::null()
        } else {
            Stdio::piped()
        });
    let mut child = cmd.spawn()?;
    let pid = Pid::from_raw(child.id() as i32);
    let stdin: Option<OwnedFd> = child.stdin.take().map(OwnedFd::from);
    let stdout: Option<OwnedFd> = child.stdout.take().map(OwnedFd::from);
    let stderr: Option<OwnedFd> = child.stderr.take().map(OwnedFd::from);
    // From here on we reap the child ourselves with waitpid; std's handle must not.
    drop(child);
    for fd in [&stdin, &stdout, &stderr].into_iter().flatten() {
        set_nonblocking(fd)?;
    }
    let pidfd = pidfd_open(pid);
    if let Some(fd) = &pidfd {
        debug_assert!(fd.as_raw_fd() > 2);
    }
    Ok(CgiChild {
        pid,
        stdin,
        stdout,
        stderr,
        pidfd,
    })
}

/// What a finished child used, from wait4(2): its own and its reaped descendants' CPU
/// time, and its peak resident memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub user: std::time::Duration,
    pub system: std::time::Duration,
    pub max_rss_bytes: u64,
}

fn timeval(tv: nix::libc::timeval) -> std::time::Duration {
    std::time::Duration::from_secs(tv.tv_sec.max(0) as u64)
        + std::time::Duration::from_micros(tv.tv_usec.max(0) as u64)
}

/// Reap `pid` if it has exited (or wait for it, with `block`), with its resource usage.
/// `Ok(None)`: still running.
pub fn reap(
    pid: Pid,
    block: bool,
) -> Result<Option<(nix::sys::wait::WaitStatus, Usage)>, nix::errno::Errno> {
    let flags = if block { 0 } else { nix::libc::WNOHANG };
    loop {
        let mut status: nix::libc::c_int = 0;
        let mut usage = std::mem::MaybeUninit::<nix::libc::rusage>::zeroed();
        // SAFETY: wait4 writes only into `status` and `usage`, both ours and large enough.
        let rc = unsafe { nix::libc::wait4(pid.as_raw(), &mut status, flags, usage.as_mut_ptr()) };
        match nix::errno::Errno::result(rc) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e),
            Ok(0) => return Ok(None),
            Ok(_) => {
                // SAFETY: wait4 succeeded, so it filled the zero-initialised rusage.
                let usage = unsafe { usage.assume_init() };
                let status = nix::sys::wait::WaitStatus::from_raw(pid, status)?;
                return Ok(Some((
                    status,
                    Usage {
                        user: timeval(usage.ru_utime),
                        system: timeval(usage.ru_stime),
                        // Linux reports ru_maxrss in KiB.
                        max_rss_bytes: usage.ru_maxrss.max(0) as u64 * 1024,
                    },
                )));
            }
        }
    }
}
