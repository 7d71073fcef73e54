//! Process control: graceful and fast stop, their escalation, and log reopening, as
//! php-fpm's fpm_process_ctl.c.

use super::logs::PoolLogs;
use super::{Master, PoolKind, State};
use crate::config::ProcessManager;
use mio::unix::SourceFd;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

impl Master {
    /// A pass of a stopping master: no kept connection stays parked here (workers that
    /// finish their last request may still park theirs); escalate when a grace passes.
    /// True once every worker is gone.
    pub(super) fn wind_down(&mut self) -> bool {
        self.lot.close_all(self.poll.registry());
        if self.children.is_empty() && self.old_workers.is_empty() {
            return true;
        }
        self.escalate_stop();
        false
    }

    /// Fast stop: workers kill their CGI children and exit; KILL after a grace period.
    pub(super) fn terminate(&mut self) {
        if matches!(self.state, State::Terminating { .. }) {
            return;
        }
        log::info!("Terminating ...");
        crate::systemd::stopping();
        let grace = self
            .config
            .global
            .process_control_timeout
            .max(crate::grace::WORKER);
        self.state = State::Terminating {
            kill_at: Instant::now() + grace,
            killed: false,
        };
        self.signal_children(Signal::SIGTERM);
    }

    /// Graceful stop: workers finish the request in hand, then exit.
    pub(super) fn finish(&mut self) {
        if self.state != State::Running {
            return;
        }
        log::info!("Finishing ...");
        crate::systemd::stopping();
        let timeout = self.config.global.process_control_timeout;
        self.state = State::Finishing {
            escalate_at: (!timeout.is_zero()).then(|| Instant::now() + timeout),
        };
        self.signal_children(Signal::SIGQUIT);
        self.stop_listening();
    }

    /// On a graceful stop, refuse new connections at once on the sockets this master
    /// made. A web server with another upstream then retries there straight away, a POST
    /// too (nothing was sent), instead of waiting in the listen queue until this master
    /// exits and being reset then. shutdown() reaches the socket the workers share as well.
    /// Sockets systemd holds stay open: they queue connections for the next start.
    pub(super) fn stop_listening(&mut self) {
        for pool in &self.pools {
            if pool.listener.held_by_systemd() {
                continue;
            }
            let fd = pool.listener.raw_fd();
            // An ondemand pool's socket must not wake the master for connections
            // nobody will take (deregistering one that was never watched is harmless).
            if pool.settings.pm == ProcessManager::Ondemand {
                let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
            }
            if let Err(e) = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Read) {
                log::warn!(
                    "[pool {}] cannot stop listening on {} (new connections wait until exit): {e}",
                    pool.name,
                    pool.listener.address
                );
            }
        }
    }

    pub(super) fn escalate_stop(&mut self) {
        let now = Instant::now();
        match self.state {
            State::Finishing {
                escalate_at: Some(at),
            } if now >= at => {
                log::warn!(
                    "process_control_timeout ({}s) passed with {} worker(s) still busy; terminating them",
                    self.config.global.process_control_timeout.as_secs(),
                    self.children.len()
                );
                self.state = State::Running;
                self.terminate();
            }
            State::Terminating {
                kill_at,
                killed: false,
            } if now >= kill_at => {
                log::warn!(
                    "{} worker(s) still running after SIGTERM; sending SIGKILL",
                    self.children.len()
                );
                self.signal_children(Signal::SIGKILL);
                self.state = State::Terminating {
                    kill_at,
                    killed: true,
                };
            }
            _ => {}
        }
    }

    /// SIGUSR1 (logrotate): reopen the error log and the pools' logs, then restart the
    /// workers gracefully so they pick up the new files, as php-fpm does; each finishes the
    /// request in hand first.
    pub(super) fn reopen_logs(&mut self) {
        log::info!("reopening log files");
        if !self.force_stderr {
            let g = &self.config.global;
            if let Err(e) =
                crate::logging::open_error_log(&g.error_log, &g.syslog_ident, &g.syslog_facility)
            {
                log::error!("{e}; still logging to the old error log");
            }
        }
        for pool in &mut self.pools {
            if pool.kind != PoolKind::Workers {
                continue;
            }
            match PoolLogs::open(&self.config.pools[pool.config_index]) {
                Ok(logs) => pool.logs = logs,
                Err(e) => log::error!("{e}; keeping the old file"),
            }
        }
        log::info!("log files reopened");
        if self.state == State::Running {
            self.signal_children(Signal::SIGQUIT);
        }
    }

    /// The loop failed (epoll_wait, or its set-up after a reload handed old workers
    /// over): stop every worker before exiting, rather than leave orphans that nobody
    /// reaps, replaces or stops. As a fast stop, without the loop: TERM, a short wait
    /// for them to go, then KILL.
    pub(super) fn stop_children_without_loop(&mut self) {
        if self.children.is_empty() && self.old_workers.is_empty() {
            return;
        }
        log::warn!(
            "stopping {} worker(s) before exiting",
            self.children.len() + self.old_workers.len()
        );
        self.terminate();
        let State::Terminating { kill_at, .. } = self.state else {
            return;
        };
        let all_gone = |master: &mut Master, until: Instant| loop {
            master.reap_children();
            if master.children.is_empty() && master.old_workers.is_empty() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            // No event loop to wake us on SIGCHLD any more; exiting, a short poll will do.
            std::thread::sleep(Duration::from_millis(10));
        };
        if !all_gone(self, kill_at) {
            self.signal_children(Signal::SIGKILL);
            all_gone(self, Instant::now() + Duration::from_secs(1));
        }
    }
}
