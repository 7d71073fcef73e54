//! `?openmetrics`: the pool's figures as OpenMetrics 1.0 text.
//!
//! php-fpm's output (`phpfpm_*`) does not pass a strict parser: its counters lack the
//! `_total` suffix OpenMetrics requires. Ours keeps php-fpm's metric names under our own
//! prefix, `cgifpm_`, gives counters their `_total` samples, the seconds their unit, and
//! every sample a `pool` label so several pools can be scraped into one series set.
//! `full` adds nothing, as with php-fpm.

use super::Report;
use std::fmt::Write as _;

pub const PREFIX: &str = "cgifpm_";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }

    /// The sample's name: counters' samples end in `_total`.
    pub fn sample(self, family: &str) -> String {
        match self {
            Kind::Counter => format!("{family}_total"),
            Kind::Gauge => family.to_string(),
        }
    }
}

/// One of a pool's figures, named without the prefix.
#[derive(Debug, Clone)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<&'static str>,
    pub help: &'static str,
    pub value: u64,
}

fn metric(name: &'static str, kind: Kind, help: &'static str, value: u64) -> Metric {
    Metric {
        name,
        kind,
        unit: None,
        help,
        value,
    }
}

/// A label value with OpenMetrics escapes.
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The pool's figures, in the order the page shows them (the info metric apart).
pub fn pool_metrics(report: &Report<'_>) -> Vec<Metric> {
    use Kind::{Counter, Gauge};
    let s = report.snapshot;
    let settings = &report.settings;
    vec![
        metric("up", Gauge, "Whether the pool could be reached.", 1),
        Metric {
            unit: Some("seconds"),
            ..metric(
                "start_since_seconds",
                Gauge,
                "The number of seconds since the pool has started.",
                report.now_s().saturating_sub(report.start_s()),
            )
        },
        metric(
            "accepted_connections",
            Counter,
            "The number of requests accepted by the pool.",
            s.accepted_conn,
        ),
        metric(
            "listen_queue",
            Gauge,
            "The number of requests in the queue of pending connections.",
            report.listen_queue().into(),
        ),
        metric(
            "max_listen_queue",
            Gauge,
            "The maximum number of requests in the queue of pending connections since the pool has started.",
            report.max_listen_queue().into(),
        ),
        metric(
            "listen_queue_length",
            Gauge,
            "The size of the socket queue of pending connections.",
            report.queue.backlog.into(),
        ),
        metric(
            "idle_processes",
            Gauge,
            "The number of idle processes.",
            s.idle().into(),
        ),
        metric(
            "active_processes",
            Gauge,
            "The number of active processes.",
            s.active().into(),
        ),
        metric(
            "total_processes",
            Gauge,
            "The number of idle + active processes.",
            s.total().into(),
        ),
        metric(
            "finishing_after_reload_processes",
            Gauge,
            "The number of processes of the configuration before a reload still finishing their last request (not in total_processes).",
            s.previous.len() as u64,
        ),
        metric(
            "max_active_processes",
            Gauge,
            "The maximum number of active processes since the pool has started.",
            s.max_active.into(),
        ),
        metric(
            "max_children_reached",
            Counter,
            "The number of times the process limit has been reached when the process manager tried to start more children.",
            s.max_children_reached,
        ),
        metric(
            "slow_requests",
            Counter,
            "The number of requests that exceeded the request_slowlog_timeout value.",
            s.slow_requests,
        ),
        metric(
            "queue_refusals",
            Counter,
            "The number of requests answered 503 because no worker came free within request_queue_timeout.",
            s.queue_refusals,
        ),
        metric(
            "max_children",
            Gauge,
            "The pm.max_children setting.",
            settings.max_children.into(),
        ),
        metric(
            "start_servers",
            Gauge,
            "The pm.start_servers setting.",
            settings.start_servers.into(),
        ),
        metric(
            "min_spare_servers",
            Gauge,
            "The pm.min_spare_servers setting.",
            settings.min_spare_servers.into(),
        ),
        metric(
            "max_spare_servers",
            Gauge,
            "The pm.max_spare_servers setting.",
            settings.max_spare_servers.into(),
        ),
        metric(
            "max_spawn_rate",
            Gauge,
            "The pm.max_spawn_rate setting.",
            settings.max_spawn_rate.into(),
        ),
        Metric {
            unit: Some("seconds"),
            ..metric(
                "process_idle_timeout_seconds",
                Gauge,
                "The pm.process_idle_timeout setting.",
                settings.process_idle_timeout_s,
            )
        },
        metric(
            "max_requests",
            Gauge,
            "The pm.max_requests setting (0: no limit).",
            settings.max_requests,
        ),
    ]
}

pub(super) fn render(report: &Report<'_>) -> String {
    let metrics = pool_metrics(report);
    let settings = &report.settings;
    let pool = escape_label(report.pool);
    let mut out = String::new();
    // The process manager is a string: an info metric carries it as a label.
    let _ = write!(
        out,
        "# TYPE {PREFIX}pool info\n\
         # HELP {PREFIX}pool The pool and its process manager.\n\
         {PREFIX}pool_info{{pool=\"{pool}\",process_manager=\"{}\"}} 1\n",
        settings.pm.as_str()
    );
    for m in &metrics {
        let kind = m.kind.as_str();
        let sample = m.kind.sample(&format!("{PREFIX}{}", m.name));
        let _ = writeln!(out, "# TYPE {PREFIX}{} {kind}", m.name);
        if let Some(unit) = m.unit {
            let _ = writeln!(out, "# UNIT {PREFIX}{} {unit}", m.name);
        }
        let _ = writeln!(out, "# HELP {PREFIX}{} {}", m.name, m.help);
        let _ = writeln!(out, "{sample}{{pool=\"{pool}\"}} {}", m.value);
    }
    out.push_str("# EOF\n");
    out
}
