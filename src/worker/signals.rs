//! Signals in a worker arrive through a signalfd that every wait includes, so a TERM or
//! QUIT is noticed wherever the worker is waiting, with no handler and no race.

use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::io;

/// What the master asked of this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    /// TERM or INT: stop now, killing the CGI child.
    Terminate,
    /// QUIT: finish the request in hand, then exit.
    Quit,
}

pub(super) struct WorkerSignals {
    fd: SignalFd,
}

impl WorkerSignals {
    /// Undo the master's signal set-up and route the worker's signals to a signalfd.
    /// Called first thing after fork, while every signal is still blocked.
    pub(super) fn install() -> io::Result<WorkerSignals> {
        for sig in crate::master_signals::MASTER_SIGNALS {
            // SAFETY: SIG_DFL installs no Rust code as a handler. signal-hook's handlers
            // would otherwise write into the master's self-pipe from this process.
            unsafe { signal(sig, SigHandler::SigDfl) }?;
        }
        // Rust's runtime catches SIGSEGV and SIGBUS to report stack overflows, and lets
        // the first one sent by kill() pass. A worker hit by either must die of it, so
        // that the master sees the crash (emergency_restart_threshold counts them).
        for sig in [Signal::SIGSEGV, Signal::SIGBUS] {
            // SAFETY: as above, SIG_DFL runs no code of ours.
            unsafe { signal(sig, SigHandler::SigDfl) }?;
        }
        let mut handled = SigSet::empty();
        for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT] {
            handled.add(sig);
        }
        // USR1/USR2/HUP stay blocked: they are meant for the master, and blocking (unlike
        // ignoring) does not survive exec into CGI children.
        let mut blocked = handled;
        for sig in [Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGHUP] {
            blocked.add(sig);
        }
        sigprocmask(SigmaskHow::SIG_SETMASK, Some(&blocked), None)?;
        let fd = SignalFd::with_flags(&handled, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
        Ok(WorkerSignals { fd })
    }

    pub(super) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// Drain pending signals; the strongest request wins.
    pub(super) fn take(&self) -> Option<Request> {
        let mut result = None;
        while let Ok(Some(info)) = self.fd.read_signal() {
            let request = match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGQUIT) => Request::Quit,
                Ok(_) => Request::Terminate,
                Err(_) => continue,
            };
            if result != Some(Request::Terminate) {
                result = Some(request);
            }
        }
        result
    }
}
