//! The endpoint's pages, rendered from figures the master gathered: OpenMetrics for every
//! pool, each worker and the master; JSON with php-fpm's keys per pool. Pure.
//!
//! OpenMetrics wants each family once, with all its samples together, so the per-pool
//! families of the status page (`status::openmetrics`) are regrouped here across pools.

use crate::scoreboard::WorkerState;
use crate::status::Report;
use crate::status::openmetrics::{Kind, PREFIX, escape_label, pool_metrics};
use std::fmt::Write as _;

/// Why workers ended, as the `cause` label says it.
pub const CAUSES: [&str; 3] = ["exited", "failed", "signaled"];

/// One pool's figures.
pub struct PoolView<'a> {
    pub report: Report<'a>,
    /// Idle kept connections the master holds for it.
    pub parked: u64,
    pub workers_started: u64,
    /// By cause, in the order of `CAUSES`.
    pub workers_died: [u64; 3],
}

/// The master's own figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MasterView {
    pub now_us: u64,
    /// When the first image started: a reload does not reset it.
    pub started_at_us: u64,
    pub reloads: u64,
    pub emergency_restarts: u64,
    /// The endpoint's own open connections.
    pub endpoint_connections: u64,
}

pub const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

struct Family {
    name: String,
    kind: &'static str,
    unit: Option<&'static str>,
    help: String,
    samples: Vec<String>,
}

impl Family {
    fn new(name: &str, kind: &'static str, unit: Option<&'static str>, help: &str) -> Family {
        Family {
            name: format!("{PREFIX}{name}"),
            kind,
            unit,
            help: help.to_string(),
            samples: Vec::new(),
        }
    }

    fn sample(&mut self, suffix: &str, labels: &str, value: impl std::fmt::Display) {
        let name = &self.name;
        self.samples.push(match labels {
            "" => format!("{name}{suffix} {value}"),
            _ => format!("{name}{suffix}{{{labels}}} {value}"),
        });
    }

    fn write(&self, out: &mut String) {
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        if let Some(unit) = self.unit {
            let _ = writeln!(out, "# UNIT {} {unit}", self.name);
        }
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        for s in &self.samples {
            out.push_str(s);
            out.push('\n');
        }
    }
}

fn seconds(us: u64) -> String {
    format!("{}.{:06}", us / 1_000_000, us % 1_000_000)
}

fn state_name(state: WorkerState) -> &'static str {
    match state {
        WorkerState::Idle => "idle",
        WorkerState::Reading => "reading",
        WorkerState::Running => "running",
        WorkerState::Finishing => "finishing",
    }
}

const STATES: [WorkerState; 4] = [
    WorkerState::Idle,
    WorkerState::Reading,
    WorkerState::Running,
    WorkerState::Finishing,
];

/// `/metrics`.
pub fn openmetrics(pools: &[PoolView<'_>], master: &MasterView) -> String {
    let mut families: Vec<Family> = Vec::new();
    let mut info = Family::new("pool", "info", None, "The pool and its process manager.");
    for pool in pools {
        let label = escape_label(pool.report.pool);
        info.sample(
            "_info",
            &format!(
                "pool=\"{label}\",process_manager=\"{}\"",
                pool.report.settings.pm.as_str()
            ),
            1,
        );
    }
    families.push(info);
    // The status page's families, each with one sample per pool.
    for (index, pool) in pools.iter().enumerate() {
        let label = format!("pool=\"{}\"", escape_label(pool.report.pool));
        for (position, m) in pool_metrics(&pool.report).into_iter().enumerate() {
            if index == 0 {
                families.push(Family::new(m.name, m.kind.as_str(), m.unit, m.help));
            }
            let family = &mut families[1 + position];
            let suffix = match m.kind {
                Kind::Counter => "_total",
                Kind::Gauge => "",
            };
            family.sample(suffix, &label, m.value);
        }
    }
    let mut parked = Family::new(
        "parked_connections",
        "gauge",
        None,
        "Idle kept connections the master holds for the pool until their next request.",
    );
    let mut started = Family::new(
        "workers_started",
        "counter",
        None,
        "Workers the master started for the pool.",
    );
    let mut died = Family::new(
        "workers_died",
        "counter",
        None,
        "Workers of the pool that ended, by cause: exited (status 0), failed (another status), signaled.",
    );
    let mut state = Family::new(
        "worker_state",
        "stateset",
        None,
        "What each worker is doing.",
    );
    let mut requests = Family::new(
        "worker_requests",
        "counter",
        None,
        "Requests each worker has served.",
    );
    let mut duration = Family::new(
        "worker_request_duration_seconds",
        "gauge",
        Some("seconds"),
        "How long each worker's current request has run; the last request's duration when idle.",
    );
    for pool in pools {
        let label = format!("pool=\"{}\"", escape_label(pool.report.pool));
        parked.sample("", &label, pool.parked);
        started.sample("_total", &label, pool.workers_started);
        for (cause, count) in CAUSES.iter().zip(pool.workers_died) {
            died.sample("_total", &format!("{label},cause=\"{cause}\""), count);
        }
        // The previous image's workers still finishing after a reload are listed too,
        // in state Finishing.
        let snapshot = pool.report.snapshot;
        for worker in snapshot.workers.iter().chain(&snapshot.previous) {
            let labels = format!("{label},pid=\"{}\"", worker.pid);
            for s in STATES {
                state.sample(
                    "",
                    &format!("{labels},{PREFIX}worker_state=\"{}\"", state_name(s)),
                    u8::from(worker.state == s),
                );
            }
            requests.sample("_total", &labels, worker.requests);
            let us = match worker.state {
                WorkerState::Idle => worker.last_duration_us,
                _ => pool
                    .report
                    .now_us
                    .saturating_sub(worker.request_started_at_us),
            };
            duration.sample("", &labels, seconds(us));
        }
    }
    families.extend([parked, started, died, state, requests, duration]);

    let mut uptime = Family::new(
        "master_uptime_seconds",
        "gauge",
        Some("seconds"),
        "Seconds since the master started (a reload does not reset it).",
    );
    uptime.sample(
        "",
        "",
        seconds(master.now_us.saturating_sub(master.started_at_us)),
    );
    let mut reloads = Family::new(
        "master_reloads",
        "counter",
        None,
        "Graceful reloads since the master started.",
    );
    reloads.sample("_total", "", master.reloads);
    let mut emergency = Family::new(
        "master_emergency_restarts",
        "counter",
        None,
        "Reloads started by emergency_restart_threshold.",
    );
    emergency.sample("_total", "", master.emergency_restarts);
    let mut connections = Family::new(
        "master_endpoint_connections",
        "gauge",
        None,
        "Connections open to this endpoint.",
    );
    connections.sample("", "", master.endpoint_connections);
    families.extend([uptime, reloads, emergency, connections]);

    let mut out = String::new();
    for family in &families {
        family.write(&mut out);
    }
    out.push_str("# EOF\n");
    out
}

/// `/status`: php-fpm's keys for each pool (and its workers with `full`), then the master.
pub fn status_json(pools: &[PoolView<'_>], master: &MasterView, full: bool) -> String {
    let mut out = String::from("{\"pools\":[");
    for (index, pool) in pools.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "{{{},\"parked connections\":{}",
            pool.report.json_members(),
            pool.parked
        );
        if full {
            let _ = write!(
                out,
                ",\"processes\":[{}]",
                pool.report.json_processes().join(",")
            );
        }
        out.push('}');
    }
    let _ = write!(
        out,
        "],\"master\":{{\"start time\":{},\"start since\":{},\"reloads\":{},\"emergency restarts\":{}}}}}",
        master.started_at_us / 1_000_000,
        master.now_us.saturating_sub(master.started_at_us) / 1_000_000,
        master.reloads,
        master.emergency_restarts
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProcessManager;
    use crate::listen_queue::QueueFigures;
    use crate::scoreboard::{PoolSnapshot, SlotSnapshot};
    use crate::status::PmSettings;

    fn worker(pid: i32, state: WorkerState) -> SlotSnapshot {
        SlotSnapshot {
            pid,
            state,
            cgi_pid: 0,
            app_pid: 0,
            requests: 7,
            started_at_us: 1_000_000,
            request_started_at_us: 9_500_000,
            last_idle_at_us: 0,
            content_length: 0,
            last_duration_us: 250_000,
            last_cpu_us: 0,
            last_memory: 0,
            method: b"GET".to_vec(),
            uri: b"/x".to_vec(),
            script: Vec::new(),
            user: Vec::new(),
        }
    }

    fn snapshot(workers: Vec<SlotSnapshot>) -> PoolSnapshot {
        PoolSnapshot {
            accepted_conn: 3,
            requests: 3,
            slow_requests: 0,
            max_children_reached: 1,
            max_active: 1,
            max_listen_queue: 0,
            start_time_us: 1_000_000,
            queue_refusals: 0,
            held_for_worker: 0,
            workers,
            previous: Vec::new(),
        }
    }

    fn settings() -> PmSettings {
        PmSettings {
            pm: ProcessManager::Static,
            max_children: 2,
            start_servers: 2,
            min_spare_servers: 1,
            max_spare_servers: 3,
            max_spawn_rate: 32,
            process_idle_timeout_s: 10,
            max_requests: 0,
        }
    }

    fn view<'a>(name: &'a str, snapshot: &'a PoolSnapshot) -> PoolView<'a> {
        PoolView {
            report: Report {
                pool: name,
                settings: settings(),
                snapshot,
                queue: QueueFigures {
                    queued: 2,
                    backlog: 511,
                },
                now_us: 10_000_000,
            },
            parked: 4,
            workers_started: 2,
            workers_died: [1, 0, 3],
        }
    }

    fn master() -> MasterView {
        MasterView {
            now_us: 10_000_000,
            started_at_us: 500_000,
            reloads: 2,
            emergency_restarts: 1,
            endpoint_connections: 1,
        }
    }

    #[test]
    fn each_family_appears_once_with_every_pool() {
        let a = snapshot(vec![
            worker(11, WorkerState::Running),
            worker(12, WorkerState::Idle),
        ]);
        let b = snapshot(vec![]);
        let text = openmetrics(&[view("a", &a), view("b \"q\"", &b)], &master());
        assert!(text.ends_with("# EOF\n"));
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut unique = types.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(types.len(), unique.len(), "{text}");
        // The families of one name are contiguous: no TYPE line between two of its samples.
        assert!(text.contains("cgifpm_accepted_connections_total{pool=\"a\"} 3\ncgifpm_accepted_connections_total{pool=\"b \\\"q\\\"\"} 3\n"));
        assert!(text.contains("cgifpm_pool_info{pool=\"a\",process_manager=\"static\"} 1\n"));
        assert!(text.contains("cgifpm_listen_queue{pool=\"a\"} 2\n"));
    }

    #[test]
    fn per_worker_and_master_figures() {
        let a = snapshot(vec![
            worker(11, WorkerState::Running),
            worker(12, WorkerState::Idle),
        ]);
        let text = openmetrics(&[view("a", &a)], &master());
        for line in [
            "cgifpm_worker_state{pool=\"a\",pid=\"11\",cgifpm_worker_state=\"running\"} 1",
            "cgifpm_worker_state{pool=\"a\",pid=\"11\",cgifpm_worker_state=\"idle\"} 0",
            "cgifpm_worker_state{pool=\"a\",pid=\"12\",cgifpm_worker_state=\"idle\"} 1",
            "cgifpm_worker_requests_total{pool=\"a\",pid=\"11\"} 7",
            "cgifpm_worker_request_duration_seconds{pool=\"a\",pid=\"11\"} 0.500000",
            "cgifpm_worker_request_duration_seconds{pool=\"a\",pid=\"12\"} 0.250000",
            "cgifpm_parked_connections{pool=\"a\"} 4",
            "cgifpm_workers_started_total{pool=\"a\"} 2",
            "cgifpm_workers_died_total{pool=\"a\",cause=\"signaled\"} 3",
            "cgifpm_master_uptime_seconds 9.500000",
            "cgifpm_master_reloads_total 2",
            "cgifpm_master_emergency_restarts_total 1",
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "{line} missing from\n{text}"
            );
        }
    }

    #[test]
    fn json_has_php_fpm_keys_per_pool() {
        let a = snapshot(vec![worker(11, WorkerState::Running)]);
        let b = snapshot(vec![]);
        let pools = [view("a", &a), view("b", &b)];
        let value: serde_json::Value =
            serde_json::from_str(&status_json(&pools, &master(), true)).unwrap();
        let list = value["pools"].as_array().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0]["pool"], "a");
        assert_eq!(list[0]["accepted conn"], 3);
        assert_eq!(list[0]["listen queue"], 2);
        assert_eq!(list[0]["processes"][0]["pid"], 11);
        assert_eq!(value["master"]["reloads"], 2);
        let brief: serde_json::Value =
            serde_json::from_str(&status_json(&pools, &master(), false)).unwrap();
        assert!(brief["pools"][0].get("processes").is_none());
    }
}
