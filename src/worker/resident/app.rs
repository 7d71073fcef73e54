//! One resident FastCGI application process and the worker's kept connection to it.
//!
//! The app gets a listening unix socket as descriptor 0 (FCGI_LISTENSOCK_FILENO), which is
//! how php-cgi, libfcgi, FCGI.pm and flup know they run under a process manager. The
//! socket is private: it is bound in a fresh 0700 directory, the worker connects, and the
//! path is removed before the app starts, so no other process can ever connect to it.

use crate::cgi::spawn::{above_stdio, dev_null, reap, spawn_program};
use crate::cgi::{EnvPolicy, Usage};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag};
use nix::sys::signal::{Signal, killpg};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, connect, listen, socket,
};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long an app gets between TERM and KILL when the worker stops it. It holds no
/// request then (or one that is being given up), and every worker exit and restart waits
/// for it, so this is short.
const STOP_GRACE: Duration = Duration::from_millis(500);

/// What starting an app takes: all decided by the pool, the same for every start.
#[derive(Debug, Clone)]
pub(super) struct Launch {
    pub argv: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub dir: PathBuf,
}

impl Launch {
    /// The app's environment: what a CGI child gets besides the request's params (the
    /// master's environment only with `clear_env = no`, then the pool's `env[]`).
    pub(super) fn environment(policy: &EnvPolicy) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = Vec::new();
        let pool = policy
            .pool_env
            .iter()
            .map(|(n, v)| (OsString::from(n), OsString::from(v)));
        for (name, value) in policy.inherited.iter().cloned().chain(pool) {
            env.retain(|(existing, _)| *existing != name);
            env.push((name, value));
        }
        env
    }
}

/// A running app and the worker's connection to it (non-blocking).
#[derive(Debug)]
pub(super) struct App {
    pub pid: Pid,
    pub conn: OwnedFd,
    /// The read end of its descriptor 2 (non-blocking), until every writer closed it.
    pub stderr: Option<OwnedFd>,
    /// `is_usable` found its stderr readable.
    pub stderr_waiting: bool,
    pidfd: Option<OwnedFd>,
    /// Requests it has answered completely.
    pub served: u64,
    pub started: Instant,
    exited: Option<WaitStatus>,
}

impl App {
    pub(super) fn start(launch: &Launch) -> io::Result<App> {
        let (listener, conn) = private_socket_pair()?;
        let null = dev_null()?;
        // Its stderr is a pipe the worker reads, as a CGI child's is (see stderr.rs).
        let (stderr, stderr_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        nix::fcntl::fcntl(&stderr, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        let stderr_write = above_stdio(stderr_write)?;
        let stdio = [
            listener.as_raw_fd(),
            null.as_raw_fd(),
            stderr_write.as_raw_fd(),
        ];
        let (pid, pidfd) = spawn_program(
            &launch.argv,
            &launch.dir,
            &launch.env,
            stdio,
            Some(Signal::SIGKILL),
        )?;
        nix::fcntl::fcntl(&conn, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        Ok(App {
            pid,
            conn,
            stderr: Some(stderr),
            stderr_waiting: false,
            pidfd,
            served: 0,
            started: Instant::now(),
            exited: None,
        })
    }

    pub(super) fn conn(&self) -> BorrowedFd<'_> {
        self.conn.as_fd()
    }

    /// Readable once the app has exited.
    pub(super) fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(AsFd::as_fd)
    }

    /// How it ended, once it has (reaped here).
    pub(super) fn exit_status(&mut self) -> Option<WaitStatus> {
        if self.exited.is_none()
            && let Ok(Some((status, _))) = reap(self.pid, false)
        {
            self.exited = Some(status);
        }
        self.exited
    }

    /// How it ended, waiting up to `limit` for it to end: an app that closed its
    /// connection is usually on its way out.
    pub(super) fn exit_status_within(&mut self, limit: Duration) -> Option<WaitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            wait_readable(self.pidfd(), left.min(Duration::from_millis(20)));
        }
    }

    /// Whether the app can take a request now: it has not exited and its connection has
    /// neither been closed nor carries anything unasked for. Checked before every request,
    /// so that an app that ended between requests costs none: one poll over the
    /// connection and the pidfd (waitpid only without a pidfd, or once it has exited).
    /// The same poll tells whether it wrote to its stderr since (`stderr_waiting`).
    pub(super) fn is_usable(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        use crate::worker::poll::{IN, PollSet, READABLE};
        let mut set = PollSet::default();
        // Nothing is asked of the app between requests, so anything readable (a close,
        // a reset, stray bytes) means the connection is not fit for the next one.
        let conn = set.add(self.conn.as_fd(), READABLE);
        let exit = self.pidfd.as_ref().map(|fd| set.add(fd.as_fd(), IN));
        let stderr = self.stderr.as_ref().map(|fd| set.add(fd.as_fd(), IN));
        if set.wait(Some(Duration::ZERO)).is_err() || set.revents(conn) != 0 {
            return false;
        }
        self.stderr_waiting = stderr.is_some_and(|index| set.revents(index) != 0);
        match exit {
            Some(index) => set.revents(index) == 0,
            None => self.exit_status().is_none(),
        }
    }

    /// Kill the app and everything it started without waiting for it: for an app that
    /// is on its way out already. `exit_status` reaps it later.
    pub(super) fn kill(&self) {
        let _ = nix::sys::socket::shutdown(self.conn.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        if self.exited.is_none() {
            let _ = killpg(self.pid, Signal::SIGKILL);
        }
    }

    /// Stop the app and everything it started, and reap it: TERM to its group, KILL
    /// after a grace, then KILL for stragglers. What it used, when it was reaped here.
    pub(super) fn stop(mut self, grace: bool) -> Option<Usage> {
        let mut usage = None;
        // The end of its connection is what many apps wait for; php-cgi goes back to
        // accept() and notices the TERM there.
        let _ = nix::sys::socket::shutdown(self.conn.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        if self.exited.is_none() {
            let _ = killpg(
                self.pid,
                if grace {
                    Signal::SIGTERM
                } else {
                    Signal::SIGKILL
                },
            );
            let deadline = Instant::now() + if grace { STOP_GRACE } else { Duration::ZERO };
            loop {
                if let Ok(Some((status, used))) = reap(self.pid, false) {
                    self.exited = Some(status);
                    usage = Some(used);
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = killpg(self.pid, Signal::SIGKILL);
                    if let Ok(Some((status, used))) = reap(self.pid, true) {
                        self.exited = Some(status);
                        usage = Some(used);
                    }
                    break;
                }
                wait_readable(self.pidfd(), Duration::from_millis(20));
            }
        }
        // Whatever the app left running in its group goes with it.
        let _ = killpg(self.pid, Signal::SIGKILL);
        usage
    }
}

fn wait_readable(fd: Option<BorrowedFd<'_>>, limit: Duration) {
    match fd {
        Some(fd) => {
            let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
            let ms = u16::try_from(limit.as_millis()).unwrap_or(u16::MAX);
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
        }
        None => std::thread::sleep(limit),
    }
}

/// A listening unix socket nobody else can reach, and the worker's connection to it.
fn private_socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let dir = private_dir()?;
    let path = dir.join("s");
    let result = (|| {
        let listener = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let address = UnixAddr::new(&path)?;
        bind(listener.as_raw_fd(), &address)?;
        listen(&listener, Backlog::new(1).map_err(io::Error::from)?)?;
        let conn = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        // A unix connect completes at once against a listening socket with room in its
        // backlog; the app accepts it when it starts.
        connect(conn.as_raw_fd(), &address)?;
        Ok::<_, io::Error>((above_stdio(listener)?, conn))
    })();
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
    result
}

/// A fresh directory only this process's user can enter (mkdtemp makes it 0700), in the
/// first of TMPDIR, /tmp and /dev/shm that works (a chroot may lack some).
fn private_dir() -> io::Result<PathBuf> {
    let mut last = io::Error::other("no temporary directory");
    let tmpdir = std::env::var_os("TMPDIR").map(PathBuf::from);
    for base in tmpdir
        .iter()
        .map(PathBuf::as_path)
        .chain([Path::new("/tmp"), Path::new("/dev/shm")])
    {
        match nix::unistd::mkdtemp(&base.join("cgi-fpm-app.XXXXXX")) {
            Ok(dir) => return Ok(dir),
            Err(e) => {
                last = io::Error::other(format!(
                    "cannot make a private directory in {}: {}",
                    base.display(),
                    Errno::desc(e)
                ))
            }
        }
    }
    Err(last)
}
