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
use super::reexec::{Reexec, exec};
use super::{Master, PoolKind, State, listener};
use crate::config::{Config, ListenAddress};
use crate::handover::{self, Handover, set_cloexec};
use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
use std::collections::HashMap;
use std::os::fd::RawFd;

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
        let Some(config) = vet(&reexec) else {
            return;
        };
        let Some(NewSockets {
            mut listeners,
            opened,
            ..
        }) = self.sockets_for(&config)
        else {
            return;
        };
        self.hand_over_dropped_files(&mut listeners);
        crate::systemd::reloading();
        let handover = self.handover(listeners);
        let error = exec_with(&reexec, &handover);

        // Still here: the exec failed. Undo, and keep serving as before.
        log::error!(
            "reload failed: cannot execute {}: {error}; the running configuration stays in effect",
            reexec.exe.display()
        );
        Handover::remove_from_environment();
        opened.into_iter().for_each(listener::Listener::close);
        crate::systemd::ready("Ready to handle connections");
    }

    /// Every socket the new configuration listens on (the pools', then the master's
    /// endpoint): kept, or opened now so that an address that cannot be bound aborts the
    /// reload here. None if it aborted (the reason is logged).
    fn sockets_for(&self, config: &Config) -> Option<NewSockets> {
        let mut sockets = NewSockets::ours(self);
        let mut none_inherited = Inherited::default();
        for pool in &config.pools {
            let addresses = std::iter::once(&pool.listen).chain(pool.pm_status_listen.as_ref());
            for address in addresses {
                if let Err(e) = sockets.keep_or_open(address, || {
                    listener::open_at(pool, address, &mut none_inherited)
                }) {
                    sockets.abort(&e);
                    return None;
                }
            }
        }
        if let Some(address) = &config.global.metrics_listen
            && let Err(e) = sockets.keep_or_open(address, || {
                super::endpoint::open(address, &mut none_inherited)
            })
        {
            sockets.abort(&e);
            return None;
        }
        Some(sockets)
    }

    /// The socket files of addresses the new configuration drops are handed over too,
    /// and the new image closes them and removes the files. Removing them here, before
    /// the exec, left pools that nobody could reach when the exec failed. (Sockets
    /// without a file of ours, systemd's or TCP, just close at the exec.)
    fn hand_over_dropped_files(&self, listeners: &mut Vec<handover::Listener>) {
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
    }

    /// Everything the new image takes over: `listeners`, every worker still running
    /// (this image's and earlier ones'), the parked connections and their channels, the
    /// emergency-restart state, the figures and the scoreboards.
    fn handover(&mut self, listeners: Vec<handover::Listener>) -> Handover {
        self.lot.receive_all(self.poll.registry(), &self.channels);
        let mut old_workers: Vec<i32> = self.children.keys().map(|p| p.as_raw()).collect();
        old_workers.extend(self.old_workers.pids().map(|p| p.as_raw()));
        Handover {
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
        }
    }
}

/// Check the new configuration as the new image would at start; None (the reasons
/// logged) if it would refuse it, so that the running configuration stays in effect.
fn vet(reexec: &Reexec) -> Option<Config> {
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
            return None;
        }
    };
    if let Err(errors) = would_start(&config, reexec) {
        errors.iter().for_each(|e| log::error!("{e}"));
        log::error!("reload aborted; the running configuration stays in effect");
        return None;
    }
    Some(config)
}

/// What the new image would refuse at start beyond the file itself (its users, error
/// log, pid file, limits): refused there, the master would exit and take every pool
/// with it.
fn would_start(config: &Config, reexec: &Reexec) -> Result<(), Vec<String>> {
    crate::isolation::prepare(config, reexec.allow_root)?;
    let refusals =
        crate::preflight::check(config, reexec.pid_override.as_deref(), reexec.force_stderr);
    if !refusals.is_empty() {
        return Err(refusals);
    }
    // Too few descriptors: refused here, while the old configuration can still keep
    // serving. When the soft limit must grow, it grows now: this image opens the new
    // pools' sockets before the exec.
    let notice = crate::fdplan::apply(config).map_err(|e| vec![e])?;
    notice.iter().for_each(|n| log::info!("{n}"));
    Ok(())
}

/// Put `handover` where the new image finds it and re-execute; returns only if the exec
/// failed, with the handover's descriptors and the signal mask as they were before.
fn exec_with(reexec: &Reexec, handover: &Handover) -> nix::Error {
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
    let error = exec(reexec);
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&saved), None);
    for fd in handover.fds() {
        set_cloexec(fd, true);
    }
    error
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
