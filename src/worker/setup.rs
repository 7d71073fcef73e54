//! A worker's process set-up, right after fork and before it serves anything: its
//! signals, the descriptors it keeps, its stdio, its name, its identity, and its tie to
//! the master's life.

use super::signals::WorkerSignals;
use super::{LogPrefix, WorkerSpec, exit};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;

/// Turn the forked copy of the master into `spec`'s worker; exits when it cannot be one.
/// Called first thing in the child, with all signals blocked.
pub(super) fn set_up(spec: &mut WorkerSpec<'_>) -> WorkerSignals {
    // The master stores the pid too, once fork returns there; doing it here as well means
    // anyone who can see this process also finds it on the status page.
    if let Some(slot) = spec.scoreboard.slot(spec.slot_index) {
        slot.pid.store(std::process::id() as i32, Ordering::Release);
    }
    let signals = match WorkerSignals::install() {
        Ok(s) => s,
        Err(e) => {
            log::error!("[pool {}] worker signal set-up failed: {e}", spec.pool.name);
            exit(crate::exit_code::SOFTWARE);
        }
    };
    close_inherited_fds(&fds_to_keep(spec, &signals));
    set_up_stdio(spec.output_pipes.take());
    set_process_name(&spec.pool.name);
    crate::proctitle::set(&crate::proctitle::worker(
        spec.proctitle_prefix,
        &spec.pool.name,
        spec.status_only,
    ));
    if let Err(e) = spec.privileges.apply() {
        log::error!("{e}");
        exit(crate::exit_code::CONFIG);
    }
    tie_to_the_master(spec);
    signals
}

/// Every descriptor the worker uses; the rest of what the master had open goes.
fn fds_to_keep(spec: &WorkerSpec<'_>, signals: &WorkerSignals) -> Vec<RawFd> {
    let mut keep = vec![
        spec.listener.as_raw_fd(),
        spec.status_source.listener.as_raw_fd(),
        signals.fd().as_raw_fd(),
    ];
    keep.extend(spec.access_log_fd.map(|fd| fd.as_raw_fd()));
    keep.extend(spec.slowlog_fd.map(|fd| fd.as_raw_fd()));
    if let Some((out, err)) = &spec.output_pipes {
        keep.extend([out.as_raw_fd(), err.as_raw_fd()]);
    }
    if let Some(parking) = spec.parking {
        keep.extend([parking.park.as_raw_fd(), parking.handoff.as_raw_fd()]);
    }
    keep.extend(spec.doorbell.map(|fd| fd.as_raw_fd()));
    keep
}

/// A worker must not outlive its master: left alone it would keep accepting on the
/// pool's socket, and a new master could not start. Done after the identity switch,
/// which clears the death signal. The master's re-exec for a reload keeps its pid and
/// thread, so the signal does not fire then. The master may have died before this
/// line: getppid() tells.
fn tie_to_the_master(spec: &WorkerSpec<'_>) {
    let prefix = LogPrefix {
        pool: &spec.pool.name,
    };
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Some(nix::sys::signal::Signal::SIGQUIT)) {
        log::warn!("{prefix} cannot ask to be told of the master's death: {e}");
    }
    if nix::unistd::getppid().as_raw() != spec.master_pid {
        log::warn!(
            "{prefix} the master process {} died before this worker started; exiting",
            spec.master_pid
        );
        exit(0);
    }
}

/// Close every descriptor inherited from the master that the worker does not use: other
/// pools' sockets, the master's epoll and signal pipe, and the `-D` report pipe (while a
/// worker holds it, the command that started the daemon never sees it ready). They are
/// close-on-exec already, so for CGI children this is hygiene. close_range needs no
/// /proc, which may be missing or unreadable (a chroot, a restricted mount namespace);
/// the /proc scan is only the fallback for kernels before 5.9.
fn close_inherited_fds(keep: &[RawFd]) {
    let mut closed_all = true;
    for (first, last) in ranges_to_close(keep) {
        // SAFETY: nothing in this process will use these descriptors again: the master's
        // objects that own them are never touched after fork.
        let rc = unsafe { nix::libc::syscall(nix::libc::SYS_close_range, first, last, 0u32) };
        closed_all &= rc == 0;
    }
    if closed_all {
        return;
    }
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: as above.
            let _ = nix::unistd::close(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
}

/// The inclusive ranges of descriptors above 2 that are not in `keep`.
fn ranges_to_close(keep: &[RawFd]) -> Vec<(u32, u32)> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .filter(|&fd| fd > 2)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut ranges = Vec::new();
    let mut first = 3u32;
    for fd in keep {
        if fd > first {
            ranges.push((first, fd - 1));
        }
        first = fd + 1;
    }
    ranges.push((first, u32::MAX));
    ranges
}

/// The worker's own stdin reads nothing. Its stdout goes nowhere, and its stderr stays
/// the error log — unless `catch_workers_output` hands both to the master, which logs what
/// arrives there with the pool and pid; our own log lines then keep going straight to the
/// error log through a copy of the old stderr.
fn set_up_stdio(pipes: Option<(OwnedFd, OwnedFd)>) {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    let _ = nix::unistd::dup2_stdin(&null);
    match pipes {
        None => {
            let _ = nix::unistd::dup2_stdout(&null);
        }
        Some((out, err)) => {
            let stderr = std::io::stderr();
            let copy = nix::fcntl::fcntl(stderr.as_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3));
            if let Ok(copy) = copy {
                crate::logging::set_fd(copy);
            }
            // The originals close when they go out of scope: after dup2 they are not
            // needed.
            let _ = nix::unistd::dup2_stdout(&out);
            let _ = nix::unistd::dup2_stderr(&err);
        }
    }
}

fn set_process_name(pool: &str) {
    // The kernel keeps 15 bytes of a process name; `ps -o comm` and top show it.
    let mut name = format!("cgi-fpm: {pool}");
    name.truncate(15);
    if let Ok(c) = std::ffi::CString::new(name) {
        let _ = nix::sys::prctl::set_name(&c);
    }
}

#[cfg(test)]
mod tests {
    use super::ranges_to_close;

    #[test]
    fn everything_but_the_kept_descriptors_is_closed() {
        let max = u32::MAX;
        assert_eq!(ranges_to_close(&[]), vec![(3, max)]);
        assert_eq!(
            ranges_to_close(&[9, 3, 5, 6, 9, 1, -1]),
            vec![(4, 4), (7, 8), (10, max)]
        );
    }
}
