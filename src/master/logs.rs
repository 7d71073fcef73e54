//! A pool's access log and slowlog files. The master opens them (before dropping any
//! privileges, as php-fpm does) so workers inherit them, and reopens them on SIGUSR1.

use crate::config::PoolConfig;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

#[derive(Debug, Default)]
pub(super) struct PoolLogs {
    pub access: Option<File>,
    pub slow: Option<File>,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    // 0600 as php-fpm creates them: requests and traces are nobody else's business.
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl PoolLogs {
    pub(super) fn open(pool: &PoolConfig) -> Result<PoolLogs, String> {
        let access = match &pool.access_log {
            Some(path) => Some(open_append(path).map_err(|e| {
                format!(
                    "[pool {}] failed to open access log ({}): {e}",
                    pool.name,
                    path.display()
                )
            })?),
            None => None,
        };
        let slow = match (&pool.slowlog, pool.request_slowlog_timeout.is_zero()) {
            (Some(path), false) => Some(open_append(path).map_err(|e| {
                format!(
                    "[pool {}] failed to open slowlog ({}): {e}",
                    pool.name,
                    path.display()
                )
            })?),
            _ => None,
        };
        Ok(PoolLogs { access, slow })
    }

    pub(super) fn access_fd(&self) -> Option<BorrowedFd<'_>> {
        self.access.as_ref().map(AsFd::as_fd)
    }

    pub(super) fn slow_fd(&self) -> Option<BorrowedFd<'_>> {
        self.slow.as_ref().map(AsFd::as_fd)
    }
}
