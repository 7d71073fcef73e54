//! The workers: spawn, reap, signal, and stop the stuck ones, as php-fpm's
//! fpm_children.c.

use super::emergency::Verdict;
use super::lot::Channels;
use super::{Child, MAX_RESPAWN_DELAY, Master, Pool, PoolKind, QUICK_EXIT, State, capture};
use crate::scoreboard::{WorkerState, now_us};
use crate::worker;
use crate::worker::{StatusSource, WorkerSpec};
use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, killpg, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl Master {
    pub(super) fn signal_children(&self, signal: Signal) {
        for pid in self.children.keys() {
            let _ = kill(*pid, signal);
        }
        self.old_workers.signal(signal);
        if signal == Signal::SIGKILL {
            // A worker killed outright cannot stop its CGI child; do it for it.
            for pool in &self.pools {
                for slot in pool.scoreboard.slots() {
                    let cgi = slot.cgi_pid.load(Ordering::Relaxed);
                    if cgi > 0 {
                        let _ = killpg(Pid::from_raw(cgi), Signal::SIGKILL);
                    }
                }
            }
        }
    }

    pub(super) fn reap_children(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                    self.on_child_exit(status)
                }
                Ok(_) => {}
                Err(Errno::EINTR) => {}
                Err(e) => {
                    log::error!("waitpid() failed: {e}");
                    return;
                }
            }
        }
    }

    /// A reaped child: one of this image's workers (its pool learns why and when it went,
    /// and whether to replace it) or one of a previous image's.
    pub(super) fn on_child_exit(&mut self, status: WaitStatus) {
        let Some(pid) = status.pid() else { return };
        let Some(child) = self.children.remove(&pid) else {
            return self.on_old_worker_exit(pid, status);
        };
        if let WaitStatus::Signaled(_, Signal::SIGSEGV | Signal::SIGBUS, _) = status
            && self.state == State::Running
        {
            self.note_crash();
        }
        let stopping = self.state != State::Running;
        let Some(pool) = self.pools.get_mut(child.pool) else {
            return;
        };
        let lived = child.started.elapsed();
        let Some(clean) = ended_cleanly(status, stopping) else {
            return;
        };
        let line = format!(
            "[pool {}] child {pid} {} after {}.{:06} seconds from start",
            pool.name,
            crate::wait_status::describe(status),
            lived.as_secs(),
            lived.subsec_micros()
        );
        if clean {
            log::info!("{line}");
        } else {
            log::warn!("{line}");
        }
        if !child.stopping && !stopping {
            pool.pm.to_replace += 1;
        }
        pool.workers_died[death_cause(status)] += 1;
        pool.release_slot(child.slot, pid, status);
        if !stopping {
            pool.note_lifetime(lived, clean);
        }
    }

    fn on_old_worker_exit(&mut self, pid: Pid, status: WaitStatus) {
        if !self.old_workers.remove(pid) {
            return;
        }
        for pool in &mut self.pools {
            // Its row leaves the status page; a scoreboard nobody writes any more is let go.
            pool.previous
                .retain(|board| board.release_pid(pid.as_raw()));
        }
        log::info!(
            "child {pid} of the previous configuration {}; {} left",
            crate::wait_status::describe(status),
            self.old_workers.len()
        );
    }

    /// A worker crashed (SIGSEGV, SIGBUS): emergency_restart_threshold may call for a
    /// reload.
    fn note_crash(&mut self) {
        let global = &self.config.global;
        match self.emergency.record_crash(std::time::SystemTime::now()) {
            Verdict::Nothing => {}
            Verdict::Reload { crashes } => {
                self.figures.emergency_restarts += 1;
                log::error!(
                    target: crate::logging::ALERT,
                    "failed processes threshold ({crashes} in {} sec) is reached, initiating reload",
                    global.emergency_restart_interval.as_secs()
                );
                self.reload_requested = true;
            }
            Verdict::HeldBack { for_secs } => log::error!(
                target: crate::logging::ALERT,
                "failed processes threshold is reached again soon after an emergency reload; holding the next one back for {for_secs} sec"
            ),
        }
    }

    /// Fork a worker for the pool, unless process.max is in the way.
    pub(super) fn spawn_worker(&mut self, index: usize) -> Result<(), SpawnFailure> {
        if !self.below_process_max(index) {
            return Ok(());
        }
        let pool = &self.pools[index];
        let no_slot = || format!("[pool {}] no free scoreboard slot", pool.name);
        let slot_index = pool.scoreboard.free_slot().ok_or_else(no_slot)?;
        let slot = pool.scoreboard.slot(slot_index).ok_or_else(no_slot)?;
        // Reserve before forking so the worker never races our bookkeeping.
        slot.claim(-1);
        let pipes = match self.output_pipes(index) {
            Ok(pipes) => pipes,
            Err(failure) => {
                slot.release();
                return Err(failure);
            }
        };
        // Signals stay blocked across fork: the worker must not run the master's handlers
        // before it has replaced them.
        let mut saved = SigSet::empty();
        let _ = sigprocmask(
            SigmaskHow::SIG_SETMASK,
            Some(&SigSet::all()),
            Some(&mut saved),
        );
        // Taken before the fork: the worker compares it with getppid() to know whether
        // its master is still there.
        let master_pid = std::process::id() as i32;
        // SAFETY: the master is single-threaded, so the child inherits no lock held by
        // another thread. The child never returns into the master's code: worker::run
        // ends with _exit.
        let forked = unsafe { fork() };
        match forked {
            Ok(ForkResult::Child) => {
                // The worker owns its ends; the master's ends are closed here at once.
                let output = pipes.map(|(_, worker)| (worker.stdout, worker.stderr));
                worker::run(self.worker_spec(index, slot_index, output, master_pid))
            }
            Ok(ForkResult::Parent { child }) => {
                let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&saved), None);
                slot.pid.store(child.as_raw(), Ordering::Release);
                self.on_spawned(index, slot_index, child, pipes);
                Ok(())
            }
            Err(e) => {
                let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&saved), None);
                slot.release();
                Err(SpawnFailure {
                    message: format!("[pool {}] fork() failed: {e}", pool.name),
                    shortage: crate::shortage::is_shortage(e) || e == Errno::EAGAIN,
                })
            }
        }
    }

    /// Whether process.max leaves room for another worker; logged once when it does not,
    /// until it does again.
    fn below_process_max(&mut self, index: usize) -> bool {
        let max = self.config.global.process_max as usize;
        let running = self.children.len() + self.old_workers.len();
        if max > 0 && running >= max {
            if !self.process_max_reached {
                self.process_max_reached = true;
                log::warn!(
                    "the maximum number of processes has been reached (process.max = {max}); [pool {}] cannot start another worker",
                    self.pools[index].name
                );
            }
            return false;
        }
        self.process_max_reached = false;
        true
    }

    /// The pipes for a worker's output, when the pool catches it (catch_workers_output).
    fn output_pipes(
        &self,
        index: usize,
    ) -> Result<Option<(capture::MasterEnds, capture::WorkerEnds)>, SpawnFailure> {
        let pool = &self.pools[index];
        if !self.config.pools[pool.config_index].catch_workers_output {
            return Ok(None);
        }
        capture::pipes().map(Some).map_err(|e| SpawnFailure {
            message: format!(
                "[pool {}] cannot create pipes for catch_workers_output: {e}",
                pool.name
            ),
            shortage: crate::shortage::is_shortage(e),
        })
    }

    /// Everything a new worker of the pool needs, borrowed from the master it was forked
    /// from.
    fn worker_spec(
        &self,
        index: usize,
        slot_index: usize,
        output: Option<(OwnedFd, OwnedFd)>,
        master_pid: i32,
    ) -> WorkerSpec<'_> {
        let pool = &self.pools[index];
        // A status pool's worker reports on the pool it belongs to.
        let reported = match pool.kind {
            PoolKind::Workers => pool,
            PoolKind::Status { parent } => &self.pools[parent],
        };
        WorkerSpec {
            pool: &self.config.pools[pool.config_index],
            scoreboard: &pool.scoreboard,
            slot_index,
            listener: pool.listener.as_fd(),
            inherited_env: self.inherited_env.clone(),
            access_log_fd: pool.logs.access_fd(),
            slowlog_fd: pool.logs.slow_fd(),
            output_pipes: output,
            privileges: &self.privileges[pool.config_index],
            status_source: StatusSource {
                scoreboard: &reported.scoreboard,
                listener: reported.listener.as_fd(),
                previous: &reported.previous,
            },
            status_only: matches!(pool.kind, PoolKind::Status { .. }),
            parking: self.channels[index].as_ref().map(Channels::for_worker),
            doorbell: self.doorbell.as_ref().map(AsFd::as_fd),
            master_pid,
            orphan_grace: match self.config.global.process_control_timeout {
                t if t.is_zero() => worker::ORPHAN_GRACE,
                t => t,
            },
            proctitle_prefix: self.config.global.proctitle_prefix.as_deref(),
        }
    }

    /// The master's side of a fork that worked: the worker's output watched, the worker
    /// known.
    fn on_spawned(
        &mut self,
        index: usize,
        slot: usize,
        child: Pid,
        pipes: Option<(capture::MasterEnds, capture::WorkerEnds)>,
    ) {
        let pool = &mut self.pools[index];
        log::info!("[pool {}] child {} started", pool.name, child);
        if let Some((ours, theirs)) = pipes {
            drop(theirs);
            let decorate = self.config.pools[pool.config_index].decorate_workers_output;
            let registry = self.poll.registry();
            self.capture
                .add(registry, ours, &pool.name, child.as_raw(), decorate);
        }
        let started = Instant::now();
        self.children.insert(
            child,
            Child {
                pool: index,
                slot,
                started,
                stopping: false,
                killed_as_stuck: false,
            },
        );
        pool.workers_started += 1;
    }

    /// The worker enforces request_terminate_timeout itself; a worker that failed to (it
    /// is stuck, or stopped) is killed here, with its CGI process group, once the timeout
    /// and the worker's own grace period have both passed.
    pub(super) fn stop_stuck_workers(&mut self) {
        let now = now_us();
        for (pid, child) in &mut self.children {
            let pool = &self.pools[child.pool];
            let limit = self.config.pools[pool.config_index].request_terminate_timeout;
            let Some(slot) = pool.scoreboard.slot(child.slot) else {
                continue;
            };
            if slot.state() != WorkerState::Running {
                continue;
            }
            let started = slot.request_started_at_us.load(Ordering::Relaxed);
            let running = Duration::from_micros(now.saturating_sub(started));
            if !is_stuck(limit, running, child.killed_as_stuck) {
                continue;
            }
            log::warn!(
                "[pool {}] child {pid}, request running for {}.{:06} sec, past request_terminate_timeout, and the worker did not stop it; killing the worker",
                pool.name,
                running.as_secs(),
                running.subsec_micros()
            );
            let cgi = slot.cgi_pid.load(Ordering::Relaxed);
            if cgi > 0 {
                let _ = killpg(Pid::from_raw(cgi), Signal::SIGKILL);
            }
            let _ = kill(*pid, Signal::SIGKILL);
            child.killed_as_stuck = true;
        }
    }
}

impl Pool {
    /// Free the scoreboard slot of a worker that exited. A worker that died abruptly
    /// leaves its CGI child behind; nobody else will ever read its output or stop it.
    fn release_slot(&self, slot: usize, pid: Pid, status: WaitStatus) {
        let Some(slot) = self.scoreboard.slot(slot) else {
            return;
        };
        let cgi = slot.cgi_pid.load(Ordering::Relaxed);
        if cgi > 0 && matches!(status, WaitStatus::Signaled(..)) {
            let _ = killpg(Pid::from_raw(cgi), Signal::SIGKILL);
            log::warn!(
                "[pool {}] killed CGI process group {cgi} left by child {pid}",
                self.name
            );
        }
        slot.release();
    }

    /// Workers that keep exiting right after they start are started again later and
    /// later (up to MAX_RESPAWN_DELAY), not at every wake-up.
    fn note_lifetime(&mut self, lived: Duration, clean: bool) {
        if lived >= QUICK_EXIT || clean {
            self.quick_failures = 0;
            return;
        }
        self.quick_failures += 1;
        if self.quick_failures >= 2 {
            let delay = Duration::from_millis(100 << (self.quick_failures - 2).min(7))
                .min(MAX_RESPAWN_DELAY);
            self.respawn_at = Some(Instant::now() + delay);
            log::warn!(
                "[pool {}] workers keep exiting right after they start; next start in {}.{:03}s",
                self.name,
                delay.as_secs(),
                delay.subsec_millis()
            );
        }
    }
}

/// Whether a worker's end is an ordinary one: exit code 0, or the stop signal while the
/// master stops. None for a status that is not an end.
fn ended_cleanly(status: WaitStatus, stopping: bool) -> Option<bool> {
    match status {
        WaitStatus::Exited(_, code) => Some(code == 0),
        WaitStatus::Signaled(_, sig, _) => {
            Some(stopping && matches!(sig, Signal::SIGTERM | Signal::SIGQUIT | Signal::SIGKILL))
        }
        _ => None,
    }
}

/// The index into `Pool::workers_died` (`exposition::CAUSES`): exited 0, exited with a
/// code, killed by a signal.
fn death_cause(status: WaitStatus) -> usize {
    match status {
        WaitStatus::Exited(_, 0) => 0,
        WaitStatus::Exited(..) => 1,
        _ => 2,
    }
}

/// Why a worker was not started.
pub(super) struct SpawnFailure {
    pub(super) message: String,
    /// For want of descriptors or processes: it passes, so retry with backoff.
    pub(super) shortage: bool,
}

impl From<String> for SpawnFailure {
    fn from(message: String) -> SpawnFailure {
        SpawnFailure {
            message,
            shortage: false,
        }
    }
}

/// Whether the master steps in for a worker whose request has run `running` under
/// request_terminate_timeout `limit`: once past the worker's own grace, and once only. A
/// worker in uninterruptible sleep is not reaped at once, and killing it (and saying so)
/// on every wake-up until it is flooded the log.
fn is_stuck(limit: Duration, running: Duration, killed_already: bool) -> bool {
    !killed_already && !limit.is_zero() && running > limit + crate::grace::STUCK_WORKER
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stuck_worker_is_killed_once_past_its_grace() {
        let limit = Duration::from_secs(10);
        let past = limit + crate::grace::STUCK_WORKER + Duration::from_millis(1);
        assert!(
            !is_stuck(limit, limit, false),
            "the worker's own grace first"
        );
        assert!(!is_stuck(limit, limit + crate::grace::STUCK_WORKER, false));
        assert!(is_stuck(limit, past, false));
        assert!(
            !is_stuck(limit, past, true),
            "killed once, not on every wake-up"
        );
        assert!(
            !is_stuck(Duration::ZERO, past * 100, false),
            "no limit, no kill"
        );
    }
}
