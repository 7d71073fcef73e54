//! Starting a CGI child: its own process group, pipes for stdin, stdout and stderr, and
//! nothing else of ours (every descriptor we hold is close-on-exec).
//!
//! The child is started as posix_spawn starts one, with clone(CLONE_VM | CLONE_VFORK):
//! no page tables are copied and the worker waits only until the child has called
//! execve. It does less than glibc's posix_spawn, which std's Command uses: glibc's child
//! makes two sigaction calls for each of the 64 signals (about 14 µs here, while the
//! worker waits), and std adds an environment map, per-string allocations and a dozen
//! system calls. This child resets only the signals the worker does not leave at their
//! default, and the pidfd comes with the clone itself (CLONE_PIDFD). BENCHMARKS.md has the
//! figures.

use super::env::EnvVar;
use super::resolve::Resolved;
use crate::config::StderrMode;
use nix::errno::Errno;
use nix::libc::{self, c_char, c_int, c_void};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::cell::RefCell;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::ptr::{self, NonNull};

/// A running CGI child and our ends of its pipes, all non-blocking.
#[derive(Debug)]
pub struct CgiChild {
    pub pid: Pid,
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// Readable once the child has exited (Linux 5.2+); without it the pump polls waitpid.
    pub pidfd: Option<OwnedFd>,
}

impl CgiChild {
    /// Signal the child's whole process group: it and anything it started.
    pub fn signal_group(&self, signal: Signal) {
        // ESRCH just means everyone in the group is gone already.
        let _ = killpg(self.pid, signal);
    }
}

/// Spawn the script with exactly `env` as its environment, in the script's directory.
pub fn spawn(script: &Resolved, env: &[EnvVar<'_>], stderr: StderrMode) -> io::Result<CgiChild> {
    let (child_stdin, stdin) = pipe()?;
    let (stdout, child_stdout) = pipe()?;
    let (stderr_ours, child_stderr) = if stderr == StderrMode::Discard {
        (None, dev_null()?)
    } else {
        let (ours, theirs) = pipe()?;
        (Some(ours), theirs)
    };
    for fd in [Some(&stdin), Some(&stdout), stderr_ours.as_ref()]
        .into_iter()
        .flatten()
    {
        set_nonblocking(fd)?;
    }
    let stdio = [
        child_stdin.as_raw_fd(),
        child_stdout.as_raw_fd(),
        child_stderr.as_raw_fd(),
    ];
    let (pid, pidfd) = spawn_program(&script.argv, script.directory(), env, stdio, None)?;
    // The child has its copies (or has failed); ours of its ends close here.
    drop((child_stdin, child_stdout, child_stderr));
    Ok(CgiChild {
        pid,
        stdin: Some(stdin),
        stdout: Some(stdout),
        stderr: stderr_ours,
        pidfd,
    })
}

/// Start `argv` in `dir` with exactly `env`, in a new process group, with `stdio` as its
/// descriptors 0, 1 and 2 (each above 2, see `above_stdio`) and nothing else of ours.
/// With `parent_death`, the kernel sends it that signal when the calling worker ends,
/// however it ends: for resident programs, which must not outlive their worker.
/// Returns the pid and, on Linux 5.2+, a pidfd.
pub fn spawn_program<N: AsRef<OsStr>, V: AsRef<OsStr>>(
    argv: &[OsString],
    dir: &std::path::Path,
    env: &[(N, V)],
    stdio: [RawFd; 3],
    parent_death: Option<Signal>,
) -> io::Result<(Pid, Option<OwnedFd>)> {
    let arg_bytes = argv.iter().map(|a| a.len() + 1).sum();
    let mut args = StringBlock::with_capacity(arg_bytes, argv.len());
    for arg in argv {
        if !args.push(&[arg.as_bytes()]) {
            return Err(nul_error());
        }
    }
    let mut directory = StringBlock::with_capacity(dir.as_os_str().len() + 1, 1);
    if !directory.push(&[dir.as_os_str().as_bytes()]) {
        return Err(nul_error());
    }
    let size = env
        .iter()
        .map(|(n, v)| n.as_ref().len() + v.as_ref().len() + 2)
        .sum();
    let mut envp = StringBlock::with_capacity(size, env.len());
    for (name, value) in env {
        let (name, value) = (name.as_ref().as_bytes(), value.as_ref());
        // What exec cannot carry is left out: an empty name, `=` in it, a NUL anywhere.
        if !name.is_empty() && !name.contains(&b'=') {
            envp.push(&[name, b"=", value.as_bytes()]);
        }
    }
    // The blocks outlive the child's use of these pointers: it has exec'd before this
    // function returns.
    let (argv_ptrs, dir_ptrs, envp_ptrs) = (args.pointers(), directory.pointers(), envp.pointers());
    let (Some(&program), Some(&dir)) = (argv_ptrs.first(), dir_ptrs.first()) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty argv"));
    };
    let plan = ChildPlan {
        program,
        argv: argv_ptrs.as_ptr(),
        envp: envp_ptrs.as_ptr(),
        dir,
        stdio,
        parent_death: parent_death.map_or(0, |s| s as c_int),
        reset: ptr::null(),
        reset_len: 0,
        internal: 0..0,
        error: 0,
    };
    SPAWNER.with(|cell| {
        let mut spawner = cell.borrow_mut();
        if spawner.is_none() {
            *spawner = Some(Spawner::new()?);
        }
        match spawner.as_mut() {
            Some(s) => s.start(plan),
            None => Err(io::Error::other("no spawner")),
        }
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

fn nul_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "a NUL byte in the program, an argument or the directory name",
    )
}

/// NUL-terminated strings in one buffer: a handful of allocations for exec's argv or
/// environment, however many strings.
#[derive(Default)]
struct StringBlock {
    bytes: Vec<u8>,
    starts: Vec<usize>,
}

impl StringBlock {
    /// Room for `count` strings of `bytes` in all, terminators included.
    fn with_capacity(bytes: usize, count: usize) -> StringBlock {
        StringBlock {
            bytes: Vec::with_capacity(bytes),
            starts: Vec::with_capacity(count),
        }
    }

    /// Append the concatenation of `parts` as one string; false, adding nothing, if a
    /// part holds a NUL.
    fn push(&mut self, parts: &[&[u8]]) -> bool {
        if parts.iter().any(|p| p.contains(&0)) {
            return false;
        }
        self.starts.push(self.bytes.len());
        for p in parts {
            self.bytes.extend_from_slice(p);
        }
        self.bytes.push(0);
        true
    }

    /// Pointers to the strings and a NULL, as exec takes them: valid while the block
    /// lives and is not pushed to.
    fn pointers(&self) -> Vec<*const c_char> {
        self.starts
            .iter()
            .map(|&start| self.bytes[start..].as_ptr().cast())
            .chain([ptr::null()])
            .collect()
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((above_stdio(read)?, above_stdio(write)?))
}

pub fn dev_null() -> io::Result<OwnedFd> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    above_stdio(OwnedFd::from(file))
}

/// The child moves its ends onto 0, 1 and 2 in that order; none of them may already be
/// one of those numbers (possible only if the worker's own stdio were closed).
pub fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    let moved = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // A pipe end has no status flags but its access mode, which F_SETFL leaves alone.
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    Ok(())
}

/// Everything the child needs, prepared by the worker: the child reads it (it shares the
/// worker's memory until execve) and writes `error` only.
struct ChildPlan {
    program: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    dir: *const c_char,
    stdio: [RawFd; 3],
    /// PR_SET_PDEATHSIG's signal, or 0 for none.
    parent_death: c_int,
    reset: *const c_int,
    reset_len: usize,
    /// glibc's own signals (32 and 33), which its sigaction refuses to touch.
    internal: std::ops::Range<c_int>,
    /// The errno of the step that failed, set by the child before it exits with 127.
    error: c_int,
}

/// The child's stack, and the signals to put back to their default in the child.
struct Spawner {
    stack: NonNull<c_void>,
    stack_len: usize,
    reset: Vec<c_int>,
}

thread_local! {
    /// One per worker, made at its first request and kept for its life.
    static SPAWNER: RefCell<Option<Spawner>> = const { RefCell::new(None) };
}

/// The child runs only the few libc calls of `child_main`; this leaves it ample room.
const STACK_LEN: usize = 64 * 1024;

impl Spawner {
    fn new() -> io::Result<Spawner> {
        let page = page_size();
        let stack_len = STACK_LEN + page;
        let stack = map_stack(stack_len, page)?;
        Ok(Spawner {
            stack,
            stack_len,
            reset: signals_to_reset(),
        })
    }

    /// Clone the child and wait until it has exec'd or failed. The pid and the pidfd.
    fn start(&mut self, mut plan: ChildPlan) -> io::Result<(Pid, Option<OwnedFd>)> {
        plan.reset = self.reset.as_ptr();
        plan.reset_len = self.reset.len();
        plan.internal = libc::SIGRTMIN().min(32)..libc::SIGRTMIN();
        // SAFETY: the stack mapping is `stack_len` bytes long; its end is the child's
        // initial stack pointer (stacks grow down), page-aligned as clone needs.
        let top = unsafe { self.stack.as_ptr().cast::<u8>().add(self.stack_len) };
        let (pid, pidfd) = clone_child(&mut plan, top.cast())?;
        // SAFETY: CLONE_VFORK: the child has exec'd or exited, so nothing writes `plan`
        // any more; a volatile read because the compiler did not see the child write it.
        let error = unsafe { ptr::read_volatile(&plan.error) };
        if error != 0 {
            // The child exited with 127 right after failing; reap it now.
            let _ = nix::sys::wait::waitpid(pid, None);
            return Err(io::Error::from_raw_os_error(error));
        }
        Ok((pid, pidfd))
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `map_stack` with this length and is no longer
        // used: no child is being started while the spawner is dropped.
        unsafe {
            libc::munmap(self.stack.as_ptr(), self.stack_len);
        }
    }
}

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| usize::try_from(p).ok())
        .unwrap_or(4096)
}

/// An anonymous stack mapping whose lowest page is a guard: an overflow faults instead of
/// writing over the worker's memory.
fn map_stack(len: usize, guard: usize) -> io::Result<NonNull<c_void>> {
    // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing touches no
    // existing memory.
    let stack = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the first `guard` bytes lie within the mapping just made.
    if unsafe { libc::mprotect(stack, guard, libc::PROT_NONE) } != 0 {
        let e = io::Error::last_os_error();
        // SAFETY: the mapping was just made with this length and is used by nothing.
        unsafe { libc::munmap(stack, len) };
        return Err(e);
    }
    NonNull::new(stack).ok_or_else(|| io::Error::other("mmap returned NULL"))
}

/// Every signal the worker does not leave at SIG_DFL: handlers (std's guard for SIGSEGV
/// and SIGBUS) must not run in a child that shares the worker's memory, and ignored
/// signals (std ignores SIGPIPE) must not stay ignored in the script. The worker routes
/// its own signals through a signalfd and installs no handler after its start, so this
/// list, read once, stays true.
fn signals_to_reset() -> Vec<c_int> {
    let realtime = libc::SIGRTMIN()..=libc::SIGRTMAX();
    (1..32)
        .chain(realtime)
        .filter(|&sig| sig != libc::SIGKILL && sig != libc::SIGSTOP)
        .filter(|&sig| {
            // SAFETY: a zeroed sigaction is a valid out-parameter; with a null new action
            // sigaction only reads the current disposition.
            let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
            let rc = unsafe { libc::sigaction(sig, ptr::null(), &mut current) };
            rc == 0 && current.sa_sigaction != libc::SIG_DFL
        })
        .collect()
}

/// clone(CLONE_VM | CLONE_VFORK) into `child_main`, with all signals blocked across it so
/// that no handler runs on the child's side before it has reset them.
fn clone_child(plan: &mut ChildPlan, stack_top: *mut c_void) -> io::Result<(Pid, Option<OwnedFd>)> {
    let mut pidfd: c_int = -1;
    let base = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
    let arg: *mut ChildPlan = plan;
    // SAFETY: sigset_t is plain data; sigfillset initialises it; sigprocmask only changes
    // this thread's mask, which is restored below.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut saved: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut saved);
    }
    let mut pid = -1;
    let mut error = 0;
    for flags in [base | libc::CLONE_PIDFD, base] {
        // SAFETY: `child_main` runs on `stack_top`'s mapping, which nothing else uses, and
        // reads only `plan` and the strings it points to, which outlive the call: with
        // CLONE_VFORK clone returns only once the child has exec'd or exited. The child
        // calls only async-signal-safe functions and never returns into Rust code of ours.
        pid = unsafe {
            libc::clone(
                child_main,
                stack_top,
                flags,
                arg.cast(),
                &mut pidfd as *mut c_int,
            )
        };
        error = Errno::last_raw();
        // CLONE_PIDFD is new in Linux 5.2; older kernels refuse the flag.
        if !(pid < 0 && error == libc::EINVAL && flags & libc::CLONE_PIDFD != 0) {
            break;
        }
        pidfd = -1;
    }
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &saved, ptr::null_mut()) };
    if pid < 0 {
        return Err(io::Error::from_raw_os_error(error));
    }
    // SAFETY: with CLONE_PIDFD the kernel stored a new descriptor (close-on-exec) that
    // nothing else owns; without it `pidfd` is still -1.
    let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });
    Ok((Pid::from_raw(pid), pidfd))
}

/// The child, between clone and execve. It shares the worker's memory, so it only calls
/// async-signal-safe functions on data prepared in advance, allocates nothing, and ends
/// in execve or _exit.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ChildPlan` the worker passed to clone and does not touch
    // until the child has exec'd or exited; its pointers are valid, NUL-terminated
    // strings and NULL-terminated arrays (see `spawn`), and `reset` has `reset_len` ints.
    unsafe {
        let plan = &mut *arg.cast::<ChildPlan>();
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for i in 0..plan.reset_len {
            libc::sigaction(*plan.reset.add(i), &default, ptr::null_mut());
        }
        // glibc's posix_spawn leaves these ignored in its children, and ignored signals
        // survive execve; the kernel's sigaction reads all zeros as SIG_DFL, no flags.
        let zeros = [0u64; 4];
        for sig in plan.internal.clone() {
            libc::syscall(libc::SYS_rt_sigaction, sig, zeros.as_ptr(), 0usize, 8usize);
        }
        if libc::setpgid(0, 0) != 0 {
            child_fail(plan);
        }
        if plan.parent_death != 0
            && libc::prctl(libc::PR_SET_PDEATHSIG, plan.parent_death as libc::c_ulong) != 0
        {
            child_fail(plan);
        }
        for (target, &fd) in plan.stdio.iter().enumerate() {
            // The sources are all above 2 (`above_stdio`), so no dup2 overwrites a
            // descriptor a later one still needs; dup2 clears close-on-exec on the copy.
            if libc::dup2(fd, target as c_int) < 0 {
                child_fail(plan);
            }
        }
        if libc::chdir(plan.dir) != 0 {
            child_fail(plan);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, ptr::null_mut());
        libc::execve(plan.program, plan.argv, plan.envp);
        child_fail(plan)
    }
}

/// Leave the reason for the worker and exit as a shell does when it cannot run a command.
///
/// # Safety
/// Only for the child in `child_main`.
unsafe fn child_fail(plan: &mut ChildPlan) -> ! {
    // SAFETY: `plan.error` is ours to write (the worker reads it after we are gone);
    // _exit ends the child without running anything of the worker's.
    unsafe {
        ptr::write_volatile(&mut plan.error, Errno::last_raw().max(1));
        libc::_exit(127)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{WaitStatus, waitpid};
    use std::io::Read;
    use std::path::PathBuf;

    fn script(argv: &[&str], dir: &str) -> Resolved {
        let canonical = PathBuf::from(dir).join("script");
        Resolved {
            script_filename: canonical.clone(),
            canonical,
            path_info: None,
            argv: argv.iter().map(OsString::from).collect(),
            working_directory: PathBuf::from(dir),
        }
    }

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<EnvVar<'a>> {
        pairs
            .iter()
            .map(|(n, v)| (OsStr::new(n).into(), OsStr::new(v).into()))
            .collect()
    }

    /// Run to completion with blocking reads; stdout and the exit status.
    fn run(child: CgiChild) -> (String, WaitStatus) {
        let mut out = String::new();
        drop(child.stdin);
        let stdout = child.stdout.expect("stdout");
        set_blocking(&stdout);
        std::fs::File::from(stdout)
            .read_to_string(&mut out)
            .unwrap();
        (out, waitpid(child.pid, None).unwrap())
    }

    fn set_blocking(fd: &OwnedFd) {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        )
        .unwrap();
    }

    #[test]
    fn the_child_gets_its_env_dir_group_and_stdio() {
        let s = script(
            &[
                "/bin/sh",
                "-c",
                "echo \"$A|$B|$(pwd)|$$|$(cut -d' ' -f5 /proc/$$/stat)\"; env | wc -l",
            ],
            "/tmp",
        );
        let child = spawn(
            &s,
            &env(&[("A", "one"), ("B", "two words"), ("PATH", "/usr/bin:/bin")]),
            StderrMode::Fastcgi,
        )
        .unwrap();
        let pid = child.pid.as_raw();
        assert!(child.pidfd.is_some(), "a pidfd comes with the clone");
        let (out, status) = run(child);
        let mut lines = out.lines();
        let first = lines.next().unwrap();
        assert_eq!(
            first,
            format!("one|two words|/tmp|{pid}|{pid}"),
            "variables, directory, and a process group of its own"
        );
        // sh adds PWD, SHLVL and _ of its own; nothing of ours beyond the three.
        let count: usize = lines.next().unwrap().trim().parse().unwrap();
        assert!(count <= 6, "{count} variables: {out}");
        assert_eq!(status, WaitStatus::Exited(child_pid(pid), 0));
    }

    fn child_pid(pid: i32) -> Pid {
        Pid::from_raw(pid)
    }

    #[test]
    fn the_child_starts_with_no_signal_blocked_ignored_or_caught() {
        let s = script(&["/bin/cat", "/proc/self/status"], "/");
        let (out, _) = run(spawn(&s, &[], StderrMode::Discard).unwrap());
        for field in ["SigBlk:", "SigIgn:", "SigCgt:"] {
            let line = out.lines().find(|l| l.starts_with(field)).unwrap();
            assert!(
                line.trim_end().ends_with("0000000000000000"),
                "{line} (the test process ignores SIGPIPE and catches SIGSEGV)"
            );
        }
    }

    #[test]
    fn exec_failures_are_reported_and_the_child_is_reaped() {
        let missing = script(&["/nonexistent/program"], "/tmp");
        let e = spawn(&missing, &[], StderrMode::Fastcgi).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::write(&data, "not a program\n").unwrap();
        let not_exec = script(&[data.to_str().unwrap()], "/tmp");
        let e = spawn(&not_exec, &[], StderrMode::Fastcgi).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
        let bad_dir = script(&["/bin/true"], "/nonexistent/dir");
        let e = spawn(&bad_dir, &[], StderrMode::Fastcgi).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
        let nul = script(&["/bin/true", "a\0b"], "/tmp");
        assert!(spawn(&nul, &[], StderrMode::Fastcgi).is_err());
    }

    #[test]
    fn unusable_env_entries_are_left_out() {
        let s = script(&["/usr/bin/env"], "/");
        let entries = env(&[("GOOD", "yes"), ("BAD=NAME", "x"), ("", "x")]);
        let (out, _) = run(spawn(&s, &entries, StderrMode::Discard).unwrap());
        assert_eq!(out, "GOOD=yes\n");
    }

    #[test]
    fn string_blocks_are_nul_terminated_with_a_null_pointer_last() {
        let mut block = StringBlock::default();
        assert!(block.push(&[b"a", b"b"]));
        assert!(!block.push(&[b"c\0d"]), "a NUL cannot be carried");
        assert!(block.push(&[b""]));
        assert_eq!(block.bytes, b"ab\0\0");
        let pointers = block.pointers();
        assert_eq!(pointers.len(), 3);
        assert!(pointers[2].is_null());
        // SAFETY: both pointers point into `block.bytes` at NUL-terminated strings.
        let strings: Vec<_> = pointers[..2]
            .iter()
            .map(|&p| unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes())
            .collect();
        assert_eq!(strings, vec![&b"ab"[..], b""]);
    }
}
