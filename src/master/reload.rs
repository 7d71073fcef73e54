//! Graceful reload (SIGUSR2) of the configuration and the binary, with no pause in service.
//!
//! php-fpm stops serving until every old worker has exited, then re-executes itself: long
//! requests block new ones, and with process_control_timeout = 0 requests in flight fail
//! ("502 during reload"). Here the old image checks the new configuration and opens any new
//! socket first (a bad one aborts the reload and changes nothing), then re-executes itself
//! at once, with one handover value (`crate::handover`): its listening sockets, its
//! workers' pids, its parked kept connections and channels, and the emergency-restart
//! state. Old workers keep serving meanwhile; the new image starts its own workers, then
//! tells the old ones to finish the request in hand and exit.

use super::inherit::{self, Inherited};
use super::{Master, PoolKind, State, listener};
use crate::config::ListenAddress;
use crate::handover::{self, Handover, set_cloexec};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::unistd::Pid;
use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsString};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How to start this program again, taken when it started.
#[derive(Debug, Clone)]
pub struct Reexec {
    /// Its path, so that a binary replaced on disk since is the one that runs.
    pub exe: PathBuf,
    pub args: Vec<OsString>,
    pub config_path: PathBuf,
    pub prefix: Option<PathBuf>,
    pub allow_root: bool,
    /// `-g`, which wins over the configuration's `pid`.
    pub pid_override: Option<PathBuf>,
    /// `-O`: the error log stays on stderr.
    pub force_stderr: bool,
}

/// Workers of the previous image, finishing their last request.
#[derive(Debug, Default)]
pub struct OldWorkers {
    pids: HashSet<Pid>,
    /// The next escalation: TERM at the deadline, then KILL.
    escalate: Option<(Instant, Signal)>,
}

impl OldWorkers {
    /// The pids the previous image handed over.
    pub fn handed_over(pids: &[i32]) -> OldWorkers {
        OldWorkers {
            pids: pids
                .iter()
                .filter(|&&p| p > 0)
                .map(|&p| Pid::from_raw(p))
                .collect(),
            escalate: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
    }

    pub fn len(&self) -> usize {
        self.pids.len()
    }

    /// Forget a reaped worker; false if it was not an old one.
    pub fn remove(&mut self, pid: Pid) -> bool {
        self.pids.remove(&pid)
    }

    pub fn signal(&self, signal: Signal) {
        for pid in &self.pids {
            let _ = kill(*pid, signal);
        }
    }

    /// Ask every old worker to finish its request and exit; after `timeout` (when not 0)
    /// the stragglers get TERM, then KILL.
    pub fn retire(&mut self, timeout: Duration) {
        self.signal(Signal::SIGQUIT);
        self.escalate = (!timeout.is_zero()).then(|| (Instant::now() + timeout, Signal::SIGTERM));
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.escalate
            .filter(|_| !self.pids.is_empty())
            .map(|(at, _)| at)
    }

    pub fn escalate_if_due(&mut self) {
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

impl Master {
    /// SIGUSR2. Returns only if the reload did not happen (the reason is logged); on
    /// success the process is replaced by its new image.
    pub(super) fn reload(&mut self) {
        if self.state != State::Running {
            return;
        }
        let Some(reexec) = self.reexec.clone() else {
            log::warn!("reload is not possible: the command line was not recorded");
            return;
        };
        log::info!("Reloading in progress ...");
        let (loaded, warnings) =
            crate::config::load_reporting(&reexec.config_path, reexec.prefix.as_deref());
        let config = match loaded {
            Ok(c) => c,
            Err(errors) => {
                // The new image would print the warnings of a good file; a bad one's may
                // explain its errors.
                warnings.iter().for_each(|w| log::warn!("{w}"));
                errors.iter().for_each(|e| log::error!("{e}"));
                log::error!(
                    "reload aborted: '{}' has errors; the running configuration stays in effect",
                    reexec.config_path.display()
                );
                return;
            }
        };
        if let Err(errors) = crate::isolation::prepare(&config, reexec.allow_root) {
            errors.iter().for_each(|e| log::error!("{e}"));
            log::error!("reload aborted; the running configuration stays in effect");
            return;
        }
        // What the new image would refuse at start (its error log, pid file, limits):
        // refused there, the master would exit and take every pool with it.
        let refusals =
            crate::preflight::check(&config, reexec.pid_override.as_deref(), reexec.force_stderr);
        if !refusals.is_empty() {
            refusals.iter().for_each(|e| log::error!("{e}"));
            log::error!("reload aborted; the running configuration stays in effect");
            return;
        }
        // The new image would refuse to start with too few descriptors: refuse here,
        // while the old configuration can still keep serving. When the soft limit must
        // grow, it grows now: this image opens the new pools' sockets before the exec.
        match crate::fdplan::apply(&config) {
            Ok(notice) => notice.iter().for_each(|n| log::info!("{n}")),
            Err(e) => {
                log::error!("{e}");
                log::error!("reload aborted; the running configuration stays in effect");
                return;
            }
        }

        // Every socket the new configuration listens on (the pools', then the master's
        // endpoint): kept, or opened now so that an address that cannot be bound aborts
        // the reload here.
        let mut sockets = NewSockets::ours(self);
        let mut none_inherited = Inherited::default();
        for pool in &config.pools {
            let addresses = std::iter::once(&pool.listen).chain(pool.pm_status_listen.as_ref());
            for address in addresses {
                if let Err(e) = sockets.keep_or_open(address, || {
                    listener::open_at(pool, address, &mut none_inherited)
                }) {
                    return sockets.abort(&e);
                }
            }
        }
        if let Some(address) = &config.global.metrics_listen
            && let Err(e) = sockets.keep_or_open(address, || {
                super::endpoint::open(address, &mut none_inherited)
            })
        {
            return sockets.abort(&e);
        }
        let NewSockets {
            mut listeners,
            opened,
            ..
        } = sockets;

        // The socket files of addresses the new configuration drops are handed over too,
        // and the new image closes them and removes the files. Removing them here, before
        // the exec, left pools that nobody could reach when the exec failed. (Sockets
        // without a file of ours, systemd's or TCP, just close at the exec.)
        let endpoint = self.endpoint.as_ref().map(|e| e.listener());
        for listener in self.pools.iter().map(|p| &p.listener).chain(endpoint) {
            let fd = listener.raw_fd();
            if !listeners.iter().any(|l| l.fd == fd)
                && listener.owned_path().is_some()
                && let Some(key) = inherit::socket_key(fd)
            {
                listeners.push(handover::Listener { key, fd });
            }
        }
        crate::systemd::reloading();
        self.lot.receive_all(self.poll.registry(), &self.channels);
        let mut old_workers: Vec<i32> = self.children.keys().map(|p| p.as_raw()).collect();
        old_workers.extend(self.old_workers.pids.iter().map(|p| p.as_raw()));
        let handover = Handover {
            listeners,
            old_workers,
            emergency: self.emergency.handover(),
            channels: self.channels_to_hand_over(),
            parked: self.parked_to_hand_over(),
            master: Some(crate::handover::MasterFigures {
                reloads: self.figures.reloads + 1,
                ..self.figures
            }),
            scoreboards: self.scoreboards_to_hand_over(),
        };
        handover.put_in_environment();
        for fd in handover.fds() {
            set_cloexec(fd, false);
        }
        let mut saved = SigSet::empty();
        let _ = sigprocmask(
            SigmaskHow::SIG_BLOCK,
            // Blocked across the exec: one arriving before the new image has its
            // handlers stays pending instead of killing it (SIGUSR2's default).
            Some(&crate::master_signals::master_signal_set()),
            Some(&mut saved),
        );
        log::info!(
            "re-executing {} with {} socket(s), {} worker(s) and {} idle kept connection(s) handed over",
            reexec.exe.display(),
            handover.listeners.len(),
            handover.old_workers.len(),
            handover.parked.len()
        );
        let error = exec(&reexec);

        // Still here: the exec failed. Undo, and keep serving as before.
        log::error!(
            "reload failed: cannot execute {}: {error}; the running configuration stays in effect",
            reexec.exe.display()
        );
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&saved), None);
        for fd in handover.fds() {
            set_cloexec(fd, true);
        }
        Handover::remove_from_environment();
        opened.into_iter().for_each(listener::Listener::close);
        crate::systemd::ready("Ready to handle connections");
    }
}

/// The listening sockets a reload hands over, gathered address by address.
struct NewSockets {
    /// Our sockets by key, asked of the kernel once: looked up per address of the new
    /// configuration, they cost a getsockname per pool per pool, 125,000 calls and most
    /// of a reload's time with 500 pools.
    ours: HashMap<String, RawFd>,
    listeners: Vec<handover::Listener>,
    /// Opened for this reload: closed again if it does not happen.
    opened: Vec<listener::Listener>,
}

impl NewSockets {
    fn ours(master: &Master) -> NewSockets {
        let ours = master
            .pools
            .iter()
            .map(|p| p.listener.raw_fd())
            .chain(master.endpoint.as_ref().map(|e| e.raw_fd()))
            .filter_map(|fd| Some((inherit::socket_key(fd)?, fd)))
            .collect();
        NewSockets {
            ours,
            listeners: Vec::new(),
            opened: Vec::new(),
        }
    }

    /// Keep our socket on `address`, or `open` one.
    fn keep_or_open(
        &mut self,
        address: &ListenAddress,
        open: impl FnOnce() -> Result<listener::Listener, String>,
    ) -> Result<(), String> {
        let keys = inherit::address_keys(address);
        if let Some((key, &fd)) = keys.iter().find_map(|k| Some((k, self.ours.get(k)?))) {
            self.listeners.push(handover::Listener {
                key: key.clone(),
                fd,
            });
            return Ok(());
        }
        let opened = open()?;
        if let Some(key) = inherit::socket_key(opened.raw_fd()) {
            self.listeners.push(handover::Listener {
                key,
                fd: opened.raw_fd(),
            });
        }
        self.opened.push(opened);
        Ok(())
    }

    /// The reload cannot happen: say why, and close what it opened.
    fn abort(self, error: &str) {
        log::error!("{error}");
        log::error!("reload aborted; the running configuration stays in effect");
        self.opened.into_iter().for_each(listener::Listener::close);
    }
}

impl Master {
    /// Each pool's scoreboards, by pool name: its own and those of earlier images whose
    /// workers are still finishing.
    fn scoreboards_to_hand_over(&self) -> Vec<handover::PoolScoreboard> {
        self.pools
            .iter()
            .filter(|p| p.kind == PoolKind::Workers)
            .flat_map(|p| {
                std::iter::once(&p.scoreboard)
                    .chain(&p.previous)
                    .filter_map(|board| {
                        Some(handover::PoolScoreboard {
                            pool: p.name.clone(),
                            fd: board.fd()?,
                        })
                    })
            })
            .collect()
    }

    /// Each pool's parking channels, by pool name.
    fn channels_to_hand_over(&self) -> Vec<handover::PoolChannels> {
        let name = |index: usize| self.pools[index].name.clone();
        self.channels
            .iter()
            .enumerate()
            .filter_map(|(index, ch)| {
                Some(handover::PoolChannels {
                    pool: name(index),
                    fds: ch.as_ref()?.raw_fds().to_vec(),
                })
            })
            .collect()
    }

    /// Every parked connection, by pool name.
    fn parked_to_hand_over(&self) -> Vec<handover::Parked> {
        self.lot
            .parked_fds()
            .map(|(index, fd, arrived)| handover::Parked {
                pool: self.pools[index].name.clone(),
                fd,
                arrived_monotonic_us: arrived.map(handover::instant_to_monotonic_us),
            })
            .collect()
    }
}

/// Replace this process with `reexec`; returns only on failure.
fn exec(reexec: &Reexec) -> nix::Error {
    let to_c = |s: &std::ffi::OsStr| CString::new(s.as_bytes());
    let Ok(path) = to_c(reexec.exe.as_os_str()) else {
        return nix::Error::EINVAL;
    };
    let mut argv = vec![path.clone()];
    for a in &reexec.args {
        match to_c(a) {
            Ok(c) => argv.push(c),
            Err(_) => return nix::Error::EINVAL,
        }
    }
    match nix::unistd::execv(&path, &argv) {
        Err(e) => e,
        Ok(never) => match never {},
    }
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
