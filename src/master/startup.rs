//! Start-up: the pools' sockets, scoreboards and logs, what a reload handed over, and
//! the master's own descriptors, before the loop runs.

use super::capture::Capture;
use super::emergency::Emergency;
use super::listener::Listener;
use super::logs::PoolLogs;
use super::lot::{Channels, Lot};
use super::old_workers::OldWorkers;
use super::pm::PmState;
use super::{
    Master, Pool, PoolKind, RunOptions, State, TICK, endpoint, handed_over, inherit, listener, pm,
};
use crate::config::{Config, ProcessManager};
use crate::listen_queue::Prober;
use crate::scoreboard::{Scoreboard, now_us};
use mio::Poll;
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::time::Instant;

impl Master {
    /// Open everything the run needs. An error leaves nothing behind: what was opened is
    /// dropped, and a dropped `Listener` removes the socket file it made.
    pub(super) fn start(config: Config, options: RunOptions) -> Result<Master, String> {
        if options.privileges.len() != config.pools.len() {
            return Err("worker privileges were not prepared for every pool".to_string());
        }
        // A descriptor taken on a wrong word would be owned twice (and closed under
        // whatever really holds its number): only what checks out is used.
        let (handover, refused) = options
            .handover
            .unwrap_or_default()
            .vetted(handed_over::probe);
        refused.iter().for_each(|e| log::error!("{e}"));
        let mut inherited = inherit::Inherited::collect(handover.listeners);
        let mut pools = open_pools(&config, &mut inherited)?;
        let endpoint = open_endpoint(&config, &mut inherited)?;
        inherited.close_unused();
        let pid_file = options.pid_file.or_else(|| config.global.pid.clone());
        let poll = Poll::new().map_err(|e| format!("epoll_create failed: {e}"))?;
        let old_workers = OldWorkers::handed_over(&handover.old_workers);
        let emergency = Emergency::resume(
            config.global.emergency_restart_threshold,
            config.global.emergency_restart_interval,
            handover.emergency,
        );
        adopt_scoreboards(&mut pools, handover.scoreboards, &handover.old_workers);
        let handed_over = handed_over::take(handover.channels, handover.parked);
        let (channels, handed_over_parked) = parking(&pools, handed_over);
        let master = Master {
            // `main` took the handover out of the environment before anything else ran:
            // workers, and so CGI children, never see it.
            inherited_env: std::env::vars_os().collect(),
            lot: Lot::new(lot_capacity(&config)),
            queues: Default::default(),
            config,
            pools,
            children: HashMap::new(),
            state: State::Running,
            pid_file,
            next_tick: Some(Instant::now() + TICK),
            last_tick: Instant::now(),
            doorbell: make_doorbell(),
            force_stderr: options.force_stderr,
            poll,
            capture: Capture::default(),
            privileges: options.privileges,
            reexec: options.reexec,
            old_workers,
            emergency,
            reload_requested: false,
            process_max_reached: false,
            channels,
            handed_over_parked,
            prober: Prober::open(),
            endpoint,
            figures: handover
                .master
                .unwrap_or_else(|| crate::handover::MasterFigures {
                    started_at_us: now_us(),
                    ..Default::default()
                }),
        };
        if let Some(path) = &master.pid_file {
            std::fs::write(path, format!("{}\n", std::process::id()))
                .map_err(|e| format!("failed to write the pid file '{}': {e}", path.display()))?;
        }
        Ok(master)
    }
}

impl Pool {
    fn new(
        config_index: usize,
        name: String,
        kind: PoolKind,
        (listener, scoreboard): (Listener, Scoreboard),
        logs: PoolLogs,
        settings: pm::Settings,
    ) -> Pool {
        Pool {
            config_index,
            name,
            kind,
            listener,
            scoreboard,
            logs,
            settings,
            pm: PmState::default(),
            quick_failures: 0,
            spawn_shortage: Default::default(),
            respawn_at: None,
            workers_started: 0,
            workers_died: [0; 3],
            previous: Vec::new(),
        }
    }
}

/// Every pool's socket, scoreboard and logs, each followed by its status pool when it has
/// one, in the configuration's order.
fn open_pools(config: &Config, inherited: &mut inherit::Inherited) -> Result<Vec<Pool>, String> {
    let mut pools: Vec<Pool> = Vec::with_capacity(config.pools.len());
    for (config_index, pool) in config.pools.iter().enumerate() {
        let listener = listener::open(pool, inherited)?;
        let scoreboard = Scoreboard::new(pool.pm_max_children as usize)
            .map_err(|e| format!("[pool {}] cannot create the scoreboard: {e}", pool.name))?;
        let logs = PoolLogs::open(pool)?;
        let status = match &pool.pm_status_listen {
            None => None,
            Some(address) => Some(open_status_pool(pool, address, inherited)?),
        };
        log::debug!("[pool {}] listening on {}", pool.name, listener.address);
        let parent = pools.len();
        let settings = pm::Settings::from(pool);
        let name = pool.name.clone();
        let kind = PoolKind::Workers;
        pools.push(Pool::new(
            config_index,
            name,
            kind,
            (listener, scoreboard),
            logs,
            settings,
        ));
        if let Some(status) = status {
            log::debug!(
                "[pool {}] status listening on {}",
                pool.name,
                status.0.address
            );
            let settings = pm::Settings {
                pm: ProcessManager::Static,
                max_children: 1,
                ..pm::Settings::from(pool)
            };
            let name = format!("{}_status", pool.name);
            let kind = PoolKind::Status { parent };
            pools.push(Pool::new(
                config_index,
                name,
                kind,
                status,
                PoolLogs::default(),
                settings,
            ));
        }
    }
    Ok(pools)
}

/// The master's own endpoint (`metrics.listen`), when set.
fn open_endpoint(
    config: &Config,
    inherited: &mut inherit::Inherited,
) -> Result<Option<endpoint::Endpoint>, String> {
    let Some(address) = &config.global.metrics_listen else {
        return Ok(None);
    };
    let listener = endpoint::open(address, inherited)?;
    log::debug!("metrics listening on {}", listener.address);
    let allowed = config.global.metrics_allowed_clients.clone();
    Ok(Some(endpoint::Endpoint::new(listener, allowed)))
}

/// The eventfd workers ring; without one the master wakes every second instead.
fn make_doorbell() -> Option<EventFd> {
    EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map_err(|e| {
            log::warn!("cannot create an eventfd ({e}); the master will wake every second")
        })
        .ok()
}

/// Each pool's channels for idle kept connections, taken over from the previous image or
/// made now (none for status pools), and the connections parked with the previous image
/// for pools that are still here; the rest are closed, as the channels of pools that are
/// gone.
fn parking(
    pools: &[Pool],
    mut handed_over: handed_over::HandedOver,
) -> (Vec<Option<Channels>>, Vec<super::lot::HeldOver>) {
    let channels = pools
        .iter()
        .map(|p| match p.kind {
            PoolKind::Status { .. } => None,
            PoolKind::Workers => match handed_over.channels.iter().position(|(name, _)| *name == p.name) {
                Some(i) => Some(Channels::from_fds(handed_over.channels.swap_remove(i).1)),
                None => Channels::new()
                .map_err(|e| {
                    log::warn!(
                        "[pool {}] cannot make the channels for idle kept connections ({e}); they will hold workers",
                        p.name
                    )
                })
                .ok(),
            },
        })
        .collect();
    let parked = handed_over
        .parked
        .into_iter()
        .filter_map(|(name, fd, arrived)| {
            let index = pools
                .iter()
                .position(|p| p.kind == PoolKind::Workers && p.name == name)?;
            Some((index, fd, arrived))
        })
        .collect();
    (channels, parked)
}

/// Map the scoreboards a reload handed over into the pools of the same name, for their
/// status pages; only the slots of workers still finishing stay. Others are closed.
fn adopt_scoreboards(
    pools: &mut [Pool],
    handed: Vec<crate::handover::PoolScoreboard>,
    old_workers: &[i32],
) {
    for crate::handover::PoolScoreboard { pool, fd } in handed {
        if fd <= 2 || !is_regular_file(fd) {
            continue;
        }
        // SAFETY: the previous image left this descriptor open for us (checked to be a
        // regular file above; a memfd is one) and nothing here owns it yet.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        crate::handover::set_cloexec(fd.as_raw_fd(), true);
        let Some(target) = pools
            .iter_mut()
            .find(|p| p.kind == PoolKind::Workers && p.name == pool)
        else {
            continue;
        };
        match Scoreboard::adopt(fd) {
            Ok(board) => {
                board.keep_only(old_workers);
                if board.in_use() {
                    target.previous.push(board);
                }
            }
            Err(e) => log::debug!("[pool {pool}] previous scoreboard not shown: {e}"),
        }
    }
}

fn is_regular_file(fd: std::os::fd::RawFd) -> bool {
    // SAFETY: fstat only reads the descriptor's metadata; the borrow ends with the call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFREG)
}

/// The socket and one-slot scoreboard of a pool's status worker.
fn open_status_pool(
    pool: &crate::config::PoolConfig,
    address: &crate::config::ListenAddress,
    inherited: &mut inherit::Inherited,
) -> Result<(Listener, Scoreboard), String> {
    let listener = listener::open_at(pool, address, inherited)?;
    let scoreboard = Scoreboard::new(1).map_err(|e| {
        format!(
            "[pool {}] cannot create the status scoreboard: {e}",
            pool.name
        )
    })?;
    Ok((listener, scoreboard))
}

/// How many idle kept connections the master holds at most: each costs it a descriptor,
/// so they get what the pools leave of the limit (see `fdplan`).
fn lot_capacity(config: &Config) -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    crate::fdplan::held_capacity(&crate::fdplan::budget(config), soft)
}
