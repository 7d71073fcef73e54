//! The signals the master acts on. The master hooks them; a worker resets them first
//! thing after fork (it must not run the master's handlers); a reload blocks them across
//! its exec. A leaf of its own, so that the worker need not import the master.

use nix::sys::signal::{SigSet, Signal};

pub const MASTER_SIGNALS: [Signal; 7] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGHUP,
];

/// The same, as a set for sigprocmask.
pub fn master_signal_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in MASTER_SIGNALS {
        set.add(s);
    }
    set
}
