//! systemd's notify protocol (`Type=notify`): readiness, status, reload and stop, and the
//! watchdog. Every call is a no-op when systemd did not start us (no NOTIFY_SOCKET).

use sd_notify::NotifyState;
use std::time::Duration;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        log::debug!("sd_notify failed: {e}");
    }
}

pub fn ready(status: &str) {
    send(&[
        NotifyState::Ready,
        NotifyState::MainPid(std::process::id()),
        NotifyState::Status(status),
    ]);
}

pub fn reloading() {
    send(&[NotifyState::Reloading]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// The periodic status line, and a watchdog ping when systemd asked for one.
pub fn status(line: &str, watchdog: bool) {
    if watchdog {
        send(&[NotifyState::Status(line), NotifyState::Watchdog]);
    } else {
        send(&[NotifyState::Status(line)]);
    }
}

/// How often to report: `systemd_interval`, or half the watchdog period when systemd set
/// one (as php-fpm does), whichever is shorter. `None`: never.
pub fn report_interval(systemd_interval: Duration) -> Option<(Duration, bool)> {
    std::env::var_os("NOTIFY_SOCKET")?;
    match sd_notify::watchdog_enabled() {
        Some(watchdog) => Some(((watchdog / 2).max(Duration::from_millis(100)), true)),
        None if !systemd_interval.is_zero() => Some((systemd_interval, false)),
        None => None,
    }
}
