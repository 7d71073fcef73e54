//! emergency_restart_threshold / emergency_restart_interval: when that many workers die of
//! SIGSEGV or SIGBUS within the interval, php-fpm reloads. A fault that survives a reload
//! would reload again and again; here each emergency reload opens a cool-down, doubling
//! up to ten minutes, during which further ones are held back and logged. The state
//! crosses the reload's exec in the handover (`crate::handover`).

use crate::handover::EmergencyState;
use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MAX_COOLDOWN: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Emergency {
    threshold: u32,
    interval: Duration,
    crashes: VecDeque<SystemTime>,
    /// The current cool-down length; zero when no emergency reload happened lately.
    cooldown: Duration,
    /// No emergency reload before this.
    held_until: Option<SystemTime>,
}

/// What a crash means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Below the threshold (or the feature is off).
    Nothing,
    /// Reload now.
    Reload { crashes: usize },
    /// The threshold is reached, but a recent emergency reload did not help: wait.
    HeldBack { for_secs: u64 },
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Emergency {
    pub(super) fn new(threshold: u32, interval: Duration) -> Emergency {
        Emergency {
            threshold,
            interval,
            crashes: VecDeque::new(),
            cooldown: Duration::ZERO,
            held_until: None,
        }
    }

    /// Continue from the state the previous image handed over.
    pub(super) fn resume(threshold: u32, interval: Duration, state: EmergencyState) -> Emergency {
        let mut e = Emergency::new(threshold, interval);
        e.held_until =
            (state.held_until > 0).then(|| UNIX_EPOCH + Duration::from_secs(state.held_until));
        e.cooldown = Duration::from_secs(state.cooldown_secs);
        e
    }

    /// The state to hand over to the next image.
    pub(super) fn handover(&self) -> EmergencyState {
        EmergencyState {
            held_until: self.held_until.map(secs).unwrap_or(0),
            cooldown_secs: self.cooldown.as_secs(),
        }
    }

    /// A worker died of SIGSEGV or SIGBUS at `now`.
    pub(super) fn record_crash(&mut self, now: SystemTime) -> Verdict {
        if self.threshold == 0 || self.interval.is_zero() {
            return Verdict::Nothing;
        }
        self.crashes.push_back(now);
        while self
            .crashes
            .front()
            .is_some_and(|&t| now.duration_since(t).unwrap_or_default() > self.interval)
        {
            self.crashes.pop_front();
        }
        if (self.crashes.len() as u32) < self.threshold {
            return Verdict::Nothing;
        }
        let crashes = self.crashes.len();
        self.crashes.clear();
        if let Some(until) = self.held_until {
            if now < until {
                let left = until.duration_since(now).unwrap_or_default();
                return Verdict::HeldBack {
                    for_secs: left.as_secs().max(1),
                };
            }
            // Quiet for long after the last one: start again from the shortest wait.
            if now.duration_since(until).unwrap_or_default() > self.cooldown * 4 {
                self.cooldown = Duration::ZERO;
            }
        }
        self.cooldown = if self.cooldown.is_zero() {
            self.interval
        } else {
            (self.cooldown * 2).min(MAX_COOLDOWN)
        };
        self.held_until = Some(now + self.cooldown);
        Verdict::Reload { crashes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
    }

    #[test]
    fn off_by_default() {
        let mut e = Emergency::new(0, Duration::ZERO);
        for i in 0..100 {
            assert_eq!(e.record_crash(at(i)), Verdict::Nothing);
        }
    }

    #[test]
    fn threshold_within_the_interval_reloads() {
        let mut e = Emergency::new(3, Duration::from_secs(10));
        assert_eq!(e.record_crash(at(0)), Verdict::Nothing);
        assert_eq!(
            e.record_crash(at(20)),
            Verdict::Nothing,
            "the first is too old"
        );
        assert_eq!(e.record_crash(at(21)), Verdict::Nothing);
        assert_eq!(e.record_crash(at(22)), Verdict::Reload { crashes: 3 });
    }

    #[test]
    fn a_crash_loop_backs_off_doubling() {
        let mut e = Emergency::new(2, Duration::from_secs(10));
        let mut reloads = Vec::new();
        // Two crashes a second for an hour.
        for t in 0..3600 {
            for _ in 0..2 {
                if let Verdict::Reload { .. } = e.record_crash(at(t)) {
                    reloads.push(t);
                }
            }
        }
        let gaps: Vec<u64> = reloads.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|&g| g >= 10), "{gaps:?}");
        assert!(
            gaps.windows(2).all(|w| w[1] >= w[0]),
            "gaps never shrink: {gaps:?}"
        );
        assert!(
            gaps.last().is_some_and(|&g| g >= 600 - 2),
            "reaches the 10 min cap: {gaps:?}"
        );
        assert!(reloads.len() < 20, "{} reloads in an hour", reloads.len());
    }

    #[test]
    fn held_back_while_cooling_down_and_the_state_survives_exec() {
        let mut e = Emergency::new(1, Duration::from_secs(30));
        assert_eq!(e.record_crash(at(0)), Verdict::Reload { crashes: 1 });
        let mut next = Emergency::resume(1, Duration::from_secs(30), e.handover());
        assert_eq!(next.record_crash(at(5)), Verdict::HeldBack { for_secs: 25 });
        assert!(matches!(next.record_crash(at(31)), Verdict::Reload { .. }));
    }
}
