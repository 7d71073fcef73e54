//! Workers of the previous image: the handed-over pids a new image retires after a
//! reload, with process_control_timeout's escalation (QUIT, then TERM, then KILL).

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Workers of the previous image, finishing their last request.
#[derive(Debug, Default)]
pub(super) struct OldWorkers {
    pids: HashSet<Pid>,
    /// The next escalation: TERM at the deadline, then KILL.
    escalate: Option<(Instant, Signal)>,
}

impl OldWorkers {
    /// The pids the previous image handed over.
    pub(super) fn handed_over(pids: &[i32]) -> OldWorkers {
        OldWorkers {
            pids: pids
                .iter()
                .filter(|&&p| p > 0)
                .map(|&p| Pid::from_raw(p))
                .collect(),
            escalate: None,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pids.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.pids.len()
    }

    /// The pids still running, for the next reload's handover.
    pub(super) fn pids(&self) -> impl Iterator<Item = Pid> + '_ {
        self.pids.iter().copied()
    }

    /// Forget a reaped worker; false if it was not an old one.
    pub(super) fn remove(&mut self, pid: Pid) -> bool {
        self.pids.remove(&pid)
    }

    pub(super) fn signal(&self, signal: Signal) {
        for pid in &self.pids {
            let _ = kill(*pid, signal);
        }
    }

    /// Ask every old worker to finish its request and exit; after `timeout` (when not 0)
    /// the stragglers get TERM, then KILL.
    pub(super) fn retire(&mut self, timeout: Duration) {
        self.signal(Signal::SIGQUIT);
        self.escalate = (!timeout.is_zero()).then(|| (Instant::now() + timeout, Signal::SIGTERM));
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        self.escalate
            .filter(|_| !self.pids.is_empty())
            .map(|(at, _)| at)
    }

    pub(super) fn escalate_if_due(&mut self) {
        let Some((at, signal)) = self.escalate else {
            return;
        };
        if self.pids.is_empty() || Instant::now() < at {
            return;
        }
        log::warn!(
            "{} worker(s) of the previous configuration still busy after process_control_timeout; sending {}",
            self.pids.len(),
            signal.as_str()
        );
        // A killed worker cannot stop its CGI child, and this image has no scoreboard
        // that names it (the old one did not cross the exec): find it through /proc first.
        let groups: Vec<Pid> = match signal {
            Signal::SIGKILL => self.pids.iter().flat_map(|&p| children_of(p)).collect(),
            _ => Vec::new(),
        };
        self.signal(signal);
        for group in groups {
            // Each CGI child leads its own process group, which holds what it started.
            let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
        }
        self.escalate = match signal {
            Signal::SIGTERM => Some((Instant::now() + crate::grace::WORKER, Signal::SIGKILL)),
            _ => None,
        };
    }
}

/// Direct children of `pid`, across its threads (empty if /proc cannot tell).
fn children_of(pid: Pid) -> Vec<Pid> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .map(Pid::from_raw)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_are_found_through_proc() {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let found = children_of(nix::unistd::getpid()).contains(&pid);
        let _ = child.kill();
        let _ = child.wait();
        assert!(found);
        assert!(children_of(Pid::from_raw(i32::MAX)).is_empty());
    }
}
