//! The pool managers' decisions, as pure functions of a pool's figures: how many workers
//! to start and which idle ones to stop. The master gathers the figures (its children,
//! the scoreboard, the listen queue), calls [`decide`] and carries the decision out.
//!
//! php-fpm's algorithms (`fpm_process_ctl.c`), better where php-fpm is known weak:
//! - ondemand starts enough workers for the connections actually waiting in the listen
//!   queue, not one per readiness event (php-src PR #1308);
//! - idle workers past their limit are all stopped on the same tick, not one per second
//!   (php-src#12798);
//! - dynamic also counts waiting connections as demand for spare workers;
//! - "reached pm.max_children" is reported once per episode, on every pool manager.

use crate::config::{PoolConfig, ProcessManager};
use std::time::Duration;

/// A dynamic pool stops an excess idle worker only once it has been idle this long, so a
/// worker that just finished a request in a busy moment is not stopped and re-forked.
pub(super) const MIN_IDLE_BEFORE_STOP: Duration = Duration::from_secs(1);
/// php-fpm logs "seems busy" once the spawn rate has doubled up to this.
const BUSY_SPAWN_RATE: u32 = 8;

/// The settings the decisions use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Settings {
    pub pm: ProcessManager,
    pub max_children: u32,
    pub start_servers: u32,
    pub min_spare_servers: u32,
    pub max_spare_servers: u32,
    pub max_spawn_rate: u32,
    pub process_idle_timeout: Duration,
}

impl From<&PoolConfig> for Settings {
    fn from(pool: &PoolConfig) -> Self {
        Settings {
            pm: pool.pm,
            max_children: pool.pm_max_children,
            start_servers: pool.pm_start_servers,
            min_spare_servers: pool.pm_min_spare_servers,
            max_spare_servers: pool.pm_max_spare_servers,
            max_spawn_rate: pool.pm_max_spawn_rate.max(1),
            process_idle_timeout: pool.pm_process_idle_timeout,
        }
    }
}

/// An idle worker the manager may stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct IdleWorker {
    /// Its scoreboard slot, which names it in a decision.
    pub slot: usize,
    /// How long it has been idle.
    pub idle_for: Duration,
}

/// A pool's figures at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Figures<'a> {
    /// Live workers, not counting those already told to stop.
    pub total: u32,
    /// Workers told to stop that have not exited yet (they still hold a slot).
    pub stopping: u32,
    /// The idle workers among `total`.
    pub idle: &'a [IdleWorker],
    /// Connections waiting in the listen queue, when known.
    pub queued: Option<u32>,
}

impl Figures<'_> {
    fn idle_count(&self) -> u32 {
        self.idle.len() as u32
    }

    /// Workers that may still be started.
    fn room(&self, settings: &Settings) -> u32 {
        settings
            .max_children
            .saturating_sub(self.total + self.stopping)
    }

    /// Waiting connections no idle worker is there for.
    fn unserved(&self) -> u32 {
        self.queued.unwrap_or(0).saturating_sub(self.idle_count())
    }
}

/// Why the manager is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Trigger {
    /// The master has just started.
    Start,
    /// The one-second maintenance tick.
    Tick,
    /// The pool's listening socket became readable (ondemand pools are watched).
    Readable,
    /// Anything else woke the master (a worker exited, a signal).
    Wakeup,
}

/// What a pool manager remembers between decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PmState {
    /// dynamic: workers started per tick while spares are short; doubles up to
    /// `pm.max_spawn_rate`.
    spawn_rate: u32,
    /// In an episode of wanting more workers than `pm.max_children` allows.
    at_limit: bool,
    /// Workers that exited without being asked to, not replaced yet.
    pub to_replace: u32,
}

impl Default for PmState {
    fn default() -> Self {
        PmState {
            spawn_rate: 1,
            at_limit: false,
            to_replace: 0,
        }
    }
}

/// What to do now.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Decision {
    /// Workers to start.
    pub spawn: u32,
    /// Idle workers to stop (gracefully), by slot.
    pub stop: Vec<usize>,
    /// A new episode of hitting `pm.max_children`: log it once and count it.
    pub limit_reached: bool,
    /// dynamic is starting workers at a high rate: worth a hint in the log.
    pub busy: bool,
}

/// Decide for one pool.
pub(super) fn decide(
    settings: &Settings,
    state: &mut PmState,
    figures: &Figures<'_>,
    trigger: Trigger,
) -> Decision {
    match settings.pm {
        ProcessManager::Static => decide_static(settings, state, figures),
        ProcessManager::Dynamic => decide_dynamic(settings, state, figures, trigger),
        ProcessManager::Ondemand => decide_ondemand(settings, state, figures, trigger),
    }
}

fn decide_static(settings: &Settings, state: &mut PmState, figures: &Figures<'_>) -> Decision {
    state.to_replace = 0;
    Decision {
        spawn: figures.room(settings),
        ..Decision::default()
    }
}

fn decide_dynamic(
    settings: &Settings,
    state: &mut PmState,
    figures: &Figures<'_>,
    trigger: Trigger,
) -> Decision {
    let mut decision = Decision::default();
    let room = figures.room(settings);
    match trigger {
        Trigger::Start => {
            decision.spawn = settings
                .start_servers
                .saturating_sub(figures.total)
                .min(room);
            state.to_replace = 0;
            return decision;
        }
        Trigger::Readable | Trigger::Wakeup => {
            // php-fpm replaces a worker that exited on its own at once (pm.max_requests,
            // a crash), without waiting for the tick.
            decision.spawn = state.to_replace.min(room);
            state.to_replace = 0;
            return decision;
        }
        Trigger::Tick => {}
    }
    let idle = figures.idle_count();
    if idle > settings.max_spare_servers {
        let mut candidates: Vec<&IdleWorker> = figures
            .idle
            .iter()
            .filter(|w| w.idle_for >= MIN_IDLE_BEFORE_STOP)
            .collect();
        candidates.sort_by_key(|w| std::cmp::Reverse(w.idle_for));
        let excess = (idle - settings.max_spare_servers) as usize;
        decision.stop = candidates.iter().take(excess).map(|w| w.slot).collect();
        state.to_replace = 0;
        state.spawn_rate = 1;
        state.at_limit = false;
        return decision;
    }
    // Replacements not made yet are spares about to be there (no more than are missing).
    let replacing = state
        .to_replace
        .min(room)
        .min(settings.max_spare_servers - idle);
    state.to_replace = 0;
    let idle = idle + replacing;
    let room = room - replacing;
    decision.spawn = replacing;

    let wanted = settings
        .min_spare_servers
        .saturating_sub(idle)
        .max(figures.unserved().saturating_sub(replacing));
    let starved = wanted > 0;
    let at_limit = starved && room == 0;
    decision.limit_reached = at_limit && !state.at_limit;
    state.at_limit = at_limit;
    if !starved || room == 0 {
        state.spawn_rate = 1;
        return decision;
    }
    let spawn = state.spawn_rate.min(wanted).min(room);
    decision.spawn += spawn;
    decision.busy = state.spawn_rate >= BUSY_SPAWN_RATE;
    state.spawn_rate = (state.spawn_rate * 2).min(settings.max_spawn_rate);
    decision
}

fn decide_ondemand(
    settings: &Settings,
    state: &mut PmState,
    figures: &Figures<'_>,
    trigger: Trigger,
) -> Decision {
    // A worker that exits is not replaced: the listen queue says when one is needed.
    state.to_replace = 0;
    let mut decision = Decision::default();
    if trigger == Trigger::Start {
        return decision;
    }
    let wanted = match figures.queued {
        Some(_) => figures.unserved(),
        // Without queue figures, do what php-fpm does: one worker per readiness event
        // when none is idle.
        None => u32::from(trigger == Trigger::Readable && figures.idle.is_empty()),
    };
    let room = figures.room(settings);
    decision.spawn = wanted.min(room);
    let at_limit = wanted > room;
    decision.limit_reached = at_limit && !state.at_limit;
    state.at_limit = at_limit;

    if trigger == Trigger::Tick {
        // Keep as many idle workers as there are connections waiting for them.
        let needed = figures.queued.unwrap_or(0) as usize;
        let mut expired: Vec<&IdleWorker> = figures
            .idle
            .iter()
            .filter(|w| w.idle_for > settings.process_idle_timeout)
            .collect();
        expired.sort_by_key(|w| std::cmp::Reverse(w.idle_for));
        let spare = figures.idle.len().saturating_sub(needed);
        decision.stop = expired.iter().take(spare).map(|w| w.slot).collect();
    }
    decision
}

/// How long until a maintenance round (`Trigger::Tick`) has something to do for this pool,
/// or `None` when it is at rest and only an event can change that. The master sleeps until
/// the nearest of these (and its other deadlines) instead of waking every second.
///
/// - A busy worker or a waiting connection: now (the master keeps its one-second round
///   then, for dynamic spares, the status high-water marks and overdue requests).
/// - dynamic: spares short while the pool may grow, now; more idle than
///   `pm.max_spare_servers`, when the longest idle one may be stopped.
/// - ondemand: when the first idle worker passes `pm.process_idle_timeout`.
/// - static, and any pool within its bounds with every worker idle: never.
pub(super) fn tick_due(settings: &Settings, figures: &Figures<'_>) -> Option<Duration> {
    let idle = figures.idle_count();
    if figures.total > idle || figures.queued.unwrap_or(0) > 0 {
        return Some(Duration::ZERO);
    }
    match settings.pm {
        ProcessManager::Static => None,
        ProcessManager::Dynamic => {
            if idle < settings.min_spare_servers && figures.room(settings) > 0 {
                Some(Duration::ZERO)
            } else if idle > settings.max_spare_servers {
                let longest = figures.idle.iter().map(|w| w.idle_for).max();
                Some(MIN_IDLE_BEFORE_STOP.saturating_sub(longest.unwrap_or_default()))
            } else {
                None
            }
        }
        // The stop rule is "idle for longer than the timeout": one millisecond past it.
        ProcessManager::Ondemand => figures
            .idle
            .iter()
            .map(|w| {
                (settings.process_idle_timeout + Duration::from_millis(1))
                    .saturating_sub(w.idle_for)
            })
            .min(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pm: ProcessManager) -> Settings {
        Settings {
            pm,
            max_children: 10,
            start_servers: 3,
            min_spare_servers: 2,
            max_spare_servers: 4,
            max_spawn_rate: 32,
            process_idle_timeout: Duration::from_secs(10),
        }
    }

    fn idle(slots: &[(usize, u64)]) -> Vec<IdleWorker> {
        slots
            .iter()
            .map(|&(slot, secs)| IdleWorker {
                slot,
                idle_for: Duration::from_secs(secs),
            })
            .collect()
    }

    fn figures(total: u32, idle: &[IdleWorker], queued: Option<u32>) -> Figures<'_> {
        Figures {
            total,
            stopping: 0,
            idle,
            queued,
        }
    }

    // static

    #[test]
    fn static_fills_to_max_children_on_every_trigger() {
        let s = settings(ProcessManager::Static);
        let mut state = PmState::default();
        for trigger in [
            Trigger::Start,
            Trigger::Tick,
            Trigger::Wakeup,
            Trigger::Readable,
        ] {
            let d = decide(&s, &mut state, &figures(7, &[], Some(0)), trigger);
            assert_eq!(d.spawn, 3, "{trigger:?}");
            assert!(d.stop.is_empty());
        }
        let d = decide(&s, &mut state, &figures(10, &[], Some(50)), Trigger::Tick);
        assert_eq!(d, Decision::default());
    }

    #[test]
    fn static_never_stops_idle_workers() {
        let s = settings(ProcessManager::Static);
        let workers = idle(&[(0, 1000), (1, 1000)]);
        let d = decide(
            &s,
            &mut PmState::default(),
            &figures(10, &workers, Some(0)),
            Trigger::Tick,
        );
        assert!(d.stop.is_empty());
    }

    #[test]
    fn static_leaves_room_for_workers_still_stopping() {
        let s = settings(ProcessManager::Static);
        let f = Figures {
            stopping: 2,
            ..figures(7, &[], None)
        };
        assert_eq!(
            decide(&s, &mut PmState::default(), &f, Trigger::Wakeup).spawn,
            1
        );
    }

    // dynamic

    #[test]
    fn dynamic_starts_start_servers() {
        let s = settings(ProcessManager::Dynamic);
        let d = decide(
            &s,
            &mut PmState::default(),
            &figures(0, &[], None),
            Trigger::Start,
        );
        assert_eq!(d.spawn, 3);
    }

    #[test]
    fn dynamic_spawn_rate_doubles_up_to_the_max_while_spares_are_short() {
        let s = Settings {
            min_spare_servers: 40,
            max_spare_servers: 50,
            max_children: 100,
            max_spawn_rate: 8,
            ..settings(ProcessManager::Dynamic)
        };
        let mut state = PmState::default();
        let mut spawned = vec![];
        let mut total = 0;
        for _ in 0..6 {
            let d = decide(&s, &mut state, &figures(total, &[], None), Trigger::Tick);
            spawned.push(d.spawn);
            total += d.spawn;
        }
        assert_eq!(spawned, [1, 2, 4, 8, 8, 8]);
    }

    #[test]
    fn dynamic_spawns_no_more_than_the_spares_missing() {
        let s = settings(ProcessManager::Dynamic);
        let mut state = PmState {
            spawn_rate: 32,
            ..PmState::default()
        };
        let workers = idle(&[(0, 0)]);
        let d = decide(
            &s,
            &mut state,
            &figures(5, &workers, Some(0)),
            Trigger::Tick,
        );
        assert_eq!(d.spawn, 1); // min_spare 2, one idle
    }

    #[test]
    fn dynamic_counts_waiting_connections_as_demand() {
        let s = settings(ProcessManager::Dynamic);
        let mut state = PmState {
            spawn_rate: 32,
            ..PmState::default()
        };
        let workers = idle(&[(0, 0), (1, 0)]);
        let d = decide(
            &s,
            &mut state,
            &figures(4, &workers, Some(7)),
            Trigger::Tick,
        );
        assert_eq!(d.spawn, 5);
    }

    #[test]
    fn dynamic_rate_resets_when_spares_suffice() {
        let s = settings(ProcessManager::Dynamic);
        let mut state = PmState::default();
        decide(&s, &mut state, &figures(1, &[], None), Trigger::Tick);
        decide(&s, &mut state, &figures(2, &[], None), Trigger::Tick);
        assert_eq!(state.spawn_rate, 4);
        let workers = idle(&[(0, 0), (1, 0), (2, 0)]);
        let d = decide(&s, &mut state, &figures(5, &workers, None), Trigger::Tick);
        assert_eq!(d, Decision::default());
        assert_eq!(state.spawn_rate, 1);
    }

    #[test]
    fn dynamic_stops_every_excess_idle_worker_at_once_longest_idle_first() {
        let s = settings(ProcessManager::Dynamic);
        let workers = idle(&[(0, 5), (1, 30), (2, 2), (3, 60), (4, 9), (5, 1), (6, 3)]);
        let d = decide(
            &s,
            &mut PmState::default(),
            &figures(7, &workers, Some(0)),
            Trigger::Tick,
        );
        assert_eq!(d.stop, vec![3, 1, 4]); // 7 idle, max_spare 4
        assert_eq!(d.spawn, 0);
    }

    #[test]
    fn dynamic_keeps_workers_that_just_went_idle() {
        let s = settings(ProcessManager::Dynamic);
        let workers = idle(&[(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (5, 5)]);
        let d = decide(
            &s,
            &mut PmState::default(),
            &figures(6, &workers, Some(0)),
            Trigger::Tick,
        );
        assert_eq!(d.stop, vec![5]);
    }

    #[test]
    fn dynamic_reports_max_children_once_per_episode() {
        let s = settings(ProcessManager::Dynamic);
        let mut state = PmState::default();
        let full = figures(10, &[], Some(3));
        let first = decide(&s, &mut state, &full, Trigger::Tick);
        assert!(first.limit_reached);
        assert_eq!(first.spawn, 0);
        for _ in 0..3 {
            assert!(!decide(&s, &mut state, &full, Trigger::Tick).limit_reached);
        }
        // Spares come back: the episode ends.
        let workers = idle(&[(0, 0), (1, 0)]);
        decide(
            &s,
            &mut state,
            &figures(10, &workers, Some(0)),
            Trigger::Tick,
        );
        assert!(decide(&s, &mut state, &full, Trigger::Tick).limit_reached);
    }

    #[test]
    fn dynamic_replaces_exited_workers_without_waiting_for_the_tick() {
        let s = settings(ProcessManager::Dynamic);
        let mut state = PmState {
            to_replace: 2,
            ..PmState::default()
        };
        let d = decide(&s, &mut state, &figures(3, &[], None), Trigger::Wakeup);
        assert_eq!(d.spawn, 2);
        assert_eq!(state.to_replace, 0);
        // Never past max_children.
        let mut state = PmState {
            to_replace: 5,
            ..PmState::default()
        };
        let d = decide(&s, &mut state, &figures(9, &[], None), Trigger::Wakeup);
        assert_eq!(d.spawn, 1);
    }

    #[test]
    fn dynamic_tick_counts_pending_replacements_as_spares() {
        let s = settings(ProcessManager::Dynamic);
        let mut state = PmState {
            to_replace: 2,
            ..PmState::default()
        };
        let d = decide(&s, &mut state, &figures(3, &[], None), Trigger::Tick);
        assert_eq!(d.spawn, 2); // the replacements make the two spares
        assert_eq!(state.spawn_rate, 1);
    }

    // ondemand

    #[test]
    fn ondemand_starts_nothing() {
        let s = settings(ProcessManager::Ondemand);
        let d = decide(
            &s,
            &mut PmState::default(),
            &figures(0, &[], Some(0)),
            Trigger::Start,
        );
        assert_eq!(d, Decision::default());
    }

    #[test]
    fn ondemand_spawns_for_every_waiting_connection() {
        let s = settings(ProcessManager::Ondemand);
        let d = decide(
            &s,
            &mut PmState::default(),
            &figures(0, &[], Some(4)),
            Trigger::Readable,
        );
        assert_eq!(d.spawn, 4);
        let workers = idle(&[(0, 0)]);
        let d = decide(
            &s,
            &mut PmState::default(),
            &figures(3, &workers, Some(4)),
            Trigger::Wakeup,
        );
        assert_eq!(d.spawn, 3);
        // Idle workers take what waits.
        let workers = idle(&[(0, 0), (1, 0)]);
        let d = decide(
            &s,
            &mut PmState::default(),
            &figures(2, &workers, Some(2)),
            Trigger::Readable,
        );
        assert_eq!(d.spawn, 0);
    }

    #[test]
    fn ondemand_without_queue_figures_spawns_one_per_readiness() {
        let s = settings(ProcessManager::Ondemand);
        let mut state = PmState::default();
        assert_eq!(
            decide(&s, &mut state, &figures(0, &[], None), Trigger::Readable).spawn,
            1
        );
        assert_eq!(
            decide(&s, &mut state, &figures(0, &[], None), Trigger::Tick).spawn,
            0
        );
        let workers = idle(&[(0, 0)]);
        assert_eq!(
            decide(
                &s,
                &mut state,
                &figures(1, &workers, None),
                Trigger::Readable
            )
            .spawn,
            0
        );
    }

    #[test]
    fn ondemand_caps_at_max_children_and_reports_the_episode_once() {
        let s = settings(ProcessManager::Ondemand);
        let mut state = PmState::default();
        let d = decide(&s, &mut state, &figures(8, &[], Some(5)), Trigger::Readable);
        assert_eq!(d.spawn, 2);
        assert!(d.limit_reached);
        let d = decide(
            &s,
            &mut state,
            &figures(10, &[], Some(3)),
            Trigger::Readable,
        );
        assert_eq!(d.spawn, 0);
        assert!(!d.limit_reached);
        // The queue drains: the episode ends, and the next one is reported.
        decide(&s, &mut state, &figures(10, &[], Some(0)), Trigger::Tick);
        assert!(
            decide(
                &s,
                &mut state,
                &figures(10, &[], Some(1)),
                Trigger::Readable
            )
            .limit_reached
        );
    }

    #[test]
    fn ondemand_stops_every_worker_idle_past_the_timeout_on_one_tick() {
        let s = settings(ProcessManager::Ondemand);
        let workers = idle(&[(0, 11), (1, 9), (2, 30), (3, 12)]);
        let d = decide(
            &s,
            &mut PmState::default(),
            &figures(4, &workers, Some(0)),
            Trigger::Tick,
        );
        assert_eq!(d.stop, vec![2, 3, 0]);
        // Only the tick stops workers.
        let d = decide(
            &s,
            &mut PmState::default(),
            &figures(4, &workers, Some(0)),
            Trigger::Wakeup,
        );
        assert!(d.stop.is_empty());
    }

    #[test]
    fn ondemand_keeps_idle_workers_that_waiting_connections_need() {
        let s = settings(ProcessManager::Ondemand);
        let workers = idle(&[(0, 11), (1, 20), (2, 30)]);
        let d = decide(
            &s,
            &mut PmState::default(),
            &figures(3, &workers, Some(2)),
            Trigger::Tick,
        );
        assert_eq!(d.stop, vec![2]);
    }

    #[test]
    fn ondemand_does_not_replace_exited_workers() {
        let s = settings(ProcessManager::Ondemand);
        let mut state = PmState {
            to_replace: 3,
            ..PmState::default()
        };
        let d = decide(&s, &mut state, &figures(0, &[], Some(0)), Trigger::Wakeup);
        assert_eq!(d.spawn, 0);
        assert_eq!(state.to_replace, 0);
    }

    #[test]
    fn settings_come_from_the_pool_config() {
        let mut pool = PoolConfig::new(
            "www",
            crate::config::ListenAddress::Unix("/tmp/x.sock".into()),
        );
        pool.pm = ProcessManager::Dynamic;
        pool.pm_max_children = 7;
        pool.pm_max_spawn_rate = 0;
        let s = Settings::from(&pool);
        assert_eq!(s.max_children, 7);
        assert_eq!(s.max_spawn_rate, 1);
    }

    // tick_due

    #[test]
    fn a_pool_at_rest_needs_no_round() {
        let workers = idle(&[(0, 100), (1, 100)]);
        let s = settings(ProcessManager::Static);
        assert_eq!(tick_due(&s, &figures(2, &workers, None)), None);
        assert_eq!(tick_due(&s, &figures(0, &[], None)), None);
        let d = settings(ProcessManager::Dynamic);
        let spares = idle(&[(0, 100), (1, 100), (2, 100)]);
        assert_eq!(tick_due(&d, &figures(3, &spares, Some(0))), None);
        let o = settings(ProcessManager::Ondemand);
        assert_eq!(tick_due(&o, &figures(0, &[], Some(0))), None);
    }

    #[test]
    fn a_busy_worker_or_a_waiting_connection_needs_a_round_now() {
        let workers = idle(&[(0, 100)]);
        for pm in [
            ProcessManager::Static,
            ProcessManager::Dynamic,
            ProcessManager::Ondemand,
        ] {
            let s = settings(pm);
            assert_eq!(
                tick_due(&s, &figures(2, &workers, Some(0))),
                Some(Duration::ZERO),
                "{pm:?} busy"
            );
            assert_eq!(
                tick_due(&s, &figures(0, &[], Some(1))),
                Some(Duration::ZERO),
                "{pm:?} queued"
            );
        }
    }

    #[test]
    fn dynamic_is_due_when_spares_are_short_or_too_many() {
        let d = settings(ProcessManager::Dynamic);
        let one = idle(&[(0, 100)]);
        assert_eq!(
            tick_due(&d, &figures(1, &one, Some(0))),
            Some(Duration::ZERO)
        );
        // Short of spares but at max_children: nothing a round could do.
        let full = Settings {
            max_children: 1,
            ..d
        };
        assert_eq!(tick_due(&full, &figures(1, &one, Some(0))), None);
        let many: Vec<IdleWorker> = (0..5)
            .map(|slot| IdleWorker {
                slot,
                idle_for: Duration::from_millis(300 + slot as u64 * 100),
            })
            .collect();
        assert_eq!(
            tick_due(&d, &figures(5, &many, Some(0))),
            Some(Duration::from_millis(300)),
            "the longest idle reaches MIN_IDLE_BEFORE_STOP first"
        );
    }

    #[test]
    fn ondemand_is_due_when_the_first_idle_worker_expires() {
        let o = settings(ProcessManager::Ondemand);
        let workers = idle(&[(0, 3), (1, 7)]);
        assert_eq!(
            tick_due(&o, &figures(2, &workers, Some(0))),
            Some(Duration::from_millis(3001))
        );
        let expired = idle(&[(0, 30)]);
        assert_eq!(
            tick_due(&o, &figures(1, &expired, Some(0))),
            Some(Duration::ZERO)
        );
    }
}
