//! The master's descriptor budget: how many open files a configuration needs, and what to
//! do about `RLIMIT_NOFILE` before the first pool is opened.
//!
//! Shared hosting runs hundreds of pools under one master, and each pool costs the master
//! a few descriptors for as long as it runs. Under the common soft limit of 1,024 a few
//! hundred pools used to run the master out of descriptors half-way through its start:
//! some pools got no channels, the queue probe could not open its netlink socket, and
//! nothing answered. So the need is counted first; the soft limit is raised toward the
//! hard one when it is short (php-fpm's `rlimit_files` sets it outright), and when even
//! the hard limit is short the master refuses to start — or to reload — with one line
//! that names the shortfall. `-t` says the same.

use crate::config::{Config, ErrorLog, PoolConfig};
use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors the master holds whatever the pools: stdio (3), the error log or syslog
/// socket (1), epoll (1), the signal pipe (2), the listen-queue netlink socket (1), the
/// eventfd busy workers wake it with (1).
const MASTER_FIXED: u64 = 9;
/// Room for descriptors held for a moment: the pid file, a reload's config files and
/// new sockets, a worker's output pipe while it is forked, /proc reads.
const TRANSIENT: u64 = 32;
/// Idle kept connections the master must be able to hold at least (each costs one).
pub const MIN_HELD: u64 = 64;
/// Held connections planned for when the soft limit is raised anyway.
const WANT_HELD: u64 = 1024;
/// Below this room for held connections the soft limit is raised, if the hard one allows.
const RAISE_BELOW_HELD: u64 = 256;
/// The master endpoint's open connections at most (`metrics.listen`).
pub const METRICS_CONNECTIONS: u64 = 64;
/// A pool's channel for idle kept connections: one socket pair (`lot::Channels`).
pub const CHANNEL_FDS: u64 = 2;
/// With `catch_workers_output`, what each worker's output costs: the read ends of its
/// stdout and stderr pipes (`capture::pipes`).
const OUTPUT_PIPE_FDS: u64 = 2;
/// A scoreboard's memfd, kept to hand it over across a reload (`Scoreboard::adopt`).
/// The previous image's, held while its workers finish, fit in `TRANSIENT`.
pub const SCOREBOARD_FDS: u64 = 1;

/// What a configuration costs in descriptors, apart from held connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// The master's own, and room for transient ones.
    pub fixed: u64,
    /// What all pools cost together.
    pub pools: u64,
    pub pool_count: usize,
}

impl Budget {
    /// Everything but held connections.
    pub fn base(&self) -> u64 {
        self.fixed + self.pools
    }

    /// The least the limit may be.
    pub fn minimum(&self) -> u64 {
        self.base() + MIN_HELD
    }
}

/// The descriptors one pool costs the master while it runs: its listening socket, its
/// channel, its log files, its status socket, and with `catch_workers_output` the read
/// ends of each worker's stdout and stderr pipes.
pub fn pool_cost(pool: &PoolConfig) -> u64 {
    let mut cost = 1 + CHANNEL_FDS + SCOREBOARD_FDS;
    cost += u64::from(pool.access_log.is_some());
    cost += u64::from(pool.slowlog.is_some() && !pool.request_slowlog_timeout.is_zero());
    let pipes = if pool.catch_workers_output {
        OUTPUT_PIPE_FDS
    } else {
        0
    };
    if pool.pm_status_listen.is_some() {
        // Its socket, its scoreboard, and its one worker's output pipes.
        cost += 1 + SCOREBOARD_FDS + pipes;
    }
    cost += u64::from(pool.pm_max_children) * pipes;
    cost
}

pub fn budget(config: &Config) -> Budget {
    let syslog = matches!(config.global.error_log, ErrorLog::Syslog);
    Budget {
        fixed: MASTER_FIXED
            + TRANSIENT
            + u64::from(syslog)
            + match config.global.metrics_listen {
                // Its socket and its connections (`master::endpoint::MAX_CONNECTIONS`).
                Some(_) => 1 + METRICS_CONNECTIONS,
                None => 0,
            },
        pools: config.pools.iter().map(pool_cost).sum(),
        pool_count: config.pools.len(),
    }
}

/// What to do about the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The limit is enough as it is.
    Enough,
    /// Raise the soft limit to this.
    Raise { from: u64, to: u64 },
}

/// Decide on the limit for `budget`, given the current soft and hard limits, or
/// `rlimit_files` when the configuration sets it (then soft and hard are both that).
/// An error is the one line to log.
pub fn decide(
    budget: &Budget,
    soft: u64,
    hard: u64,
    rlimit_files: Option<u64>,
) -> Result<Verdict, String> {
    let minimum = budget.minimum();
    let shortfall = |what: String, limit: u64| {
        format!(
            "not enough open files for {} pool(s): the master needs at least {minimum} descriptors \
             ({} for the pools, {} of its own, {MIN_HELD} for idle kept connections) but {what} is {limit}; \
             {}",
            budget.pool_count,
            budget.pools,
            budget.fixed,
            match rlimit_files {
                Some(_) => "raise rlimit_files in [global]",
                None =>
                    "raise the hard limit (ulimit -Hn, LimitNOFILE= in a systemd unit) or set rlimit_files in [global] (as root)",
            }
        )
    };
    if let Some(files) = rlimit_files {
        if files < minimum {
            return Err(shortfall("rlimit_files".to_string(), files));
        }
        return Ok(Verdict::Enough);
    }
    if soft >= budget.base() + RAISE_BELOW_HELD {
        return Ok(Verdict::Enough);
    }
    if hard < minimum {
        return Err(shortfall(
            "the hard limit of open files (RLIMIT_NOFILE)".to_string(),
            hard,
        ));
    }
    let to = hard.min(budget.base() + WANT_HELD).max(soft);
    if to == soft {
        return Ok(Verdict::Enough);
    }
    Ok(Verdict::Raise { from: soft, to })
}

/// How many idle kept connections the master may hold with `soft` as its limit.
pub fn held_capacity(budget: &Budget, soft: u64) -> usize {
    soft.saturating_sub(budget.base()).clamp(16, 8192) as usize
}

fn current_limits() -> Result<(u64, u64), String> {
    getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| format!("getrlimit(RLIMIT_NOFILE) failed: {e}"))
}

/// `-t` and a reload's check: would this configuration start under the current limits?
/// Returns the notice a start would log, if any.
pub fn check(config: &Config) -> Result<Option<String>, String> {
    let (soft, hard) = current_limits()?;
    let budget = budget(config);
    Ok(
        match decide(&budget, soft, hard, config.global.rlimit_files)? {
            Verdict::Enough => None,
            Verdict::Raise { from, to } => Some(raise_notice(&budget, from, to, "will raise")),
        },
    )
}

/// At start, after `rlimit_files` was applied: raise the soft limit if that is needed, or
/// say why the master cannot start. Returns the notice to log, if any.
pub fn apply(config: &Config) -> Result<Option<String>, String> {
    let (soft, hard) = current_limits()?;
    let budget = budget(config);
    match decide(&budget, soft, hard, config.global.rlimit_files)? {
        Verdict::Enough => Ok(None),
        Verdict::Raise { from, to } => {
            setrlimit(Resource::RLIMIT_NOFILE, to, hard).map_err(|e| {
                format!("cannot raise the soft limit of open files from {from} to {to}: {e}")
            })?;
            Ok(Some(raise_notice(&budget, from, to, "raised")))
        }
    }
}

fn raise_notice(budget: &Budget, from: u64, to: u64, verb: &str) -> String {
    format!(
        "{verb} the soft limit of open files (RLIMIT_NOFILE) from {from} to {to}: {} pool(s) need {} descriptors in the master",
        budget.pool_count,
        budget.base()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools(n: usize) -> Budget {
        Budget {
            fixed: 40,
            pools: 5 * n as u64,
            pool_count: n,
        }
    }

    #[test]
    fn a_few_pools_leave_the_limit_alone() {
        assert_eq!(decide(&pools(10), 1024, 4096, None), Ok(Verdict::Enough));
    }

    #[test]
    fn many_pools_raise_the_soft_limit_toward_the_hard_one() {
        let b = pools(300);
        assert_eq!(
            decide(&b, 1024, 524288, None),
            Ok(Verdict::Raise {
                from: 1024,
                to: b.base() + WANT_HELD
            })
        );
        assert_eq!(
            decide(&b, 1024, 2000, None),
            Ok(Verdict::Raise {
                from: 1024,
                to: 2000
            })
        );
    }

    #[test]
    fn a_short_hard_limit_is_refused_naming_the_figures() {
        let e = decide(&pools(300), 1024, 1024, None).unwrap_err();
        assert!(e.contains("300 pool(s)"), "{e}");
        assert!(
            e.contains(&format!("at least {}", 40 + 1500 + MIN_HELD)),
            "{e}"
        );
        assert!(e.contains("hard limit"), "{e}");
        assert!(e.contains("is 1024"), "{e}");
    }

    #[test]
    fn rlimit_files_is_the_limit_when_set() {
        let b = pools(300);
        assert_eq!(decide(&b, 1024, 1024, Some(4096)), Ok(Verdict::Enough));
        let e = decide(&b, 65536, 65536, Some(1000)).unwrap_err();
        assert!(e.contains("rlimit_files is 1000"), "{e}");
    }

    #[test]
    fn a_soft_limit_never_goes_down() {
        // Enough room already, but less than the raise target: keep it.
        let b = pools(100);
        let soft = b.base() + RAISE_BELOW_HELD;
        assert_eq!(decide(&b, soft, 1 << 20, None), Ok(Verdict::Enough));
    }

    #[test]
    fn a_pool_costs_its_socket_channel_scoreboards_logs_status_socket_and_output_pipes() {
        use crate::config::ListenAddress;
        let listen = |p: &str| ListenAddress::Unix(p.into());
        let mut pool = PoolConfig::new("www", listen("/run/www.sock"));
        assert_eq!(pool_cost(&pool), 1 + CHANNEL_FDS + SCOREBOARD_FDS);
        pool.access_log = Some("/var/log/www.access".into());
        // A slowlog without a timeout is never opened.
        pool.slowlog = Some("/var/log/www.slow".into());
        assert_eq!(pool_cost(&pool), 2 + CHANNEL_FDS + SCOREBOARD_FDS);
        pool.request_slowlog_timeout = std::time::Duration::from_secs(5);
        assert_eq!(pool_cost(&pool), 3 + CHANNEL_FDS + SCOREBOARD_FDS);
        pool.pm_status_listen = Some(listen("/run/www-status.sock"));
        // The status worker has a scoreboard of its own.
        assert_eq!(pool_cost(&pool), 4 + CHANNEL_FDS + 2 * SCOREBOARD_FDS);
        pool.catch_workers_output = true;
        pool.pm_max_children = 10;
        // Two pipe ends per worker, the status worker's included.
        assert_eq!(
            pool_cost(&pool),
            4 + CHANNEL_FDS + 2 * SCOREBOARD_FDS + 2 * (10 + 1)
        );
    }

    #[test]
    fn held_capacity_is_what_the_pools_leave() {
        assert_eq!(held_capacity(&pools(10), 1024), 1024 - 90);
        assert_eq!(held_capacity(&pools(300), 1024), 16);
        assert_eq!(held_capacity(&pools(1), 1 << 20), 8192);
    }
}
