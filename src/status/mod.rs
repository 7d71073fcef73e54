//! The status and ping pages, rendered from a scoreboard snapshot: php-fpm's fields, names
//! and formats (`fpm_status.c`), so its exporters and dashboards read ours. Pure: the
//! worker gathers the figures, this turns them into a CGI response.
//!
//! After php-fpm's pool fields come ours: `max children` and the pool manager's settings,
//! which php-fpm's page leaves out (php-src#16221).

pub mod openmetrics;

use crate::config::{PoolConfig, ProcessManager};
use crate::listen_queue::QueueFigures;
use crate::scoreboard::{PoolSnapshot, SlotSnapshot, WorkerState};
use std::fmt::Write as _;

/// The prefix of our OpenMetrics metric names.
pub use openmetrics::PREFIX as OPENMETRICS_PREFIX;

/// php-fpm's headers that keep proxies and browsers from caching either page.
const NO_CACHE: &str = "Expires: Thu, 01 Jan 1970 00:00:00 GMT\r\nCache-Control: no-cache, no-store, must-revalidate, max-age=0\r\n";

/// How a status page is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Html,
    Xml,
    Json,
    OpenMetrics,
}

/// What the query string asks for: php-fpm looks for keys (`?json`, `?json=1`,
/// `?full&xml`), with html, xml, json and openmetrics tried in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    pub format: Format,
    pub full: bool,
}

impl Query {
    pub fn parse(query_string: &str) -> Query {
        let has = |key: &str| {
            query_string
                .split('&')
                .any(|pair| pair.split('=').next() == Some(key))
        };
        let format = if has("html") {
            Format::Html
        } else if has("xml") {
            Format::Xml
        } else if has("json") {
            Format::Json
        } else if has("openmetrics") {
            Format::OpenMetrics
        } else {
            Format::Text
        };
        Query {
            format,
            full: has("full"),
        }
    }
}

/// The pool manager's settings, as the page shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmSettings {
    pub pm: ProcessManager,
    pub max_children: u32,
    pub start_servers: u32,
    pub min_spare_servers: u32,
    pub max_spare_servers: u32,
    pub max_spawn_rate: u32,
    pub process_idle_timeout_s: u64,
    pub max_requests: u64,
}

impl From<&PoolConfig> for PmSettings {
    fn from(pool: &PoolConfig) -> Self {
        PmSettings {
            pm: pool.pm,
            max_children: pool.pm_max_children,
            start_servers: pool.pm_start_servers,
            min_spare_servers: pool.pm_min_spare_servers,
            max_spare_servers: pool.pm_max_spare_servers,
            max_spawn_rate: pool.pm_max_spawn_rate,
            process_idle_timeout_s: pool.pm_process_idle_timeout.as_secs(),
            max_requests: pool.pm_max_requests,
        }
    }
}

/// Everything a status page shows.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    pub pool: &'a str,
    pub settings: PmSettings,
    pub snapshot: &'a PoolSnapshot,
    /// The pool's accept queue now (zeros if it could not be read).
    pub queue: QueueFigures,
    pub now_us: u64,
}

/// A rendered page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub content_type: &'static str,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Text(String),
    /// Seconds since the epoch: a date in text and html, a number in json and xml.
    Time(u64),
    Int(u64),
    /// Two decimals, as php-fpm prints `%.2f`.
    Fraction(f64),
}

struct Field {
    /// The text format's label; json uses it lowercased, xml hyphenated.
    name: &'static str,
    value: Value,
}

fn field(name: &'static str, value: Value) -> Field {
    Field { name, value }
}

impl Report<'_> {
    /// The per-process rows: this image's workers, then those of the image before a
    /// reload that are still finishing their last request.
    fn processes(&self) -> impl Iterator<Item = &SlotSnapshot> {
        self.snapshot
            .workers
            .iter()
            .chain(self.snapshot.previous.iter())
    }

    fn now_s(&self) -> u64 {
        self.now_us / 1_000_000
    }

    fn start_s(&self) -> u64 {
        self.snapshot.start_time_us / 1_000_000
    }

    /// Connections waiting for a worker: in the socket's accept queue, and those the
    /// master holds for the pool under request_queue_timeout (taken from that queue).
    fn listen_queue(&self) -> u32 {
        self.queue
            .queued
            .saturating_add(self.snapshot.held_for_worker)
    }

    fn max_listen_queue(&self) -> u32 {
        self.snapshot.max_listen_queue.max(self.listen_queue())
    }

    /// The pool's figures as `"key":value` members, php-fpm's json keys.
    pub fn json_members(&self) -> String {
        json_object(&self.pool_fields())
    }

    /// One `{...}` per worker, php-fpm's json keys.
    pub fn json_processes(&self) -> Vec<String> {
        self.snapshot
            .workers
            .iter()
            .map(|w| format!("{{{}}}", json_object(&self.process_fields(w))))
            .collect()
    }

    fn pool_fields(&self) -> Vec<Field> {
        let s = self.snapshot;
        let settings = &self.settings;
        vec![
            field("pool", Value::Text(self.pool.to_string())),
            field("process manager", Value::Text(settings.pm.as_str().into())),
            field("start time", Value::Time(self.start_s())),
            field(
                "start since",
                Value::Int(self.now_s().saturating_sub(self.start_s())),
            ),
            field("accepted conn", Value::Int(s.accepted_conn)),
            field("listen queue", Value::Int(self.listen_queue().into())),
            field(
                "max listen queue",
                Value::Int(self.max_listen_queue().into()),
            ),
            field("listen queue len", Value::Int(self.queue.backlog.into())),
            field("idle processes", Value::Int(s.idle().into())),
            field("active processes", Value::Int(s.active().into())),
            field("total processes", Value::Int(s.total().into())),
            field("max active processes", Value::Int(s.max_active.into())),
            field("max children reached", Value::Int(s.max_children_reached)),
            field("slow requests", Value::Int(s.slow_requests)),
            // Ours, after php-fpm's.
            field("queue refusals", Value::Int(s.queue_refusals)),
            field("max children", Value::Int(settings.max_children.into())),
            field("start servers", Value::Int(settings.start_servers.into())),
            field(
                "min spare servers",
                Value::Int(settings.min_spare_servers.into()),
            ),
            field(
                "max spare servers",
                Value::Int(settings.max_spare_servers.into()),
            ),
            field("max spawn rate", Value::Int(settings.max_spawn_rate.into())),
            field(
                "process idle timeout",
                Value::Int(settings.process_idle_timeout_s),
            ),
            field("max requests", Value::Int(settings.max_requests)),
        ]
    }

    fn process_fields(&self, worker: &SlotSnapshot) -> Vec<Field> {
        let idle = worker.state == WorkerState::Idle;
        // A zero timestamp is unknown (a slot the reader could not read whole, see
        // `Slot::snapshot`): show 0, not the time since 1970.
        let since = |then: u64, now: u64| {
            if then == 0 {
                0
            } else {
                now.saturating_sub(then)
            }
        };
        let duration_us = if idle {
            worker.last_duration_us
        } else {
            since(worker.request_started_at_us, self.now_us)
        };
        let cpu = if idle && worker.last_duration_us > 0 {
            worker.last_cpu_us as f64 / worker.last_duration_us as f64 * 100.0
        } else {
            0.0
        };
        let started_s = worker.started_at_us / 1_000_000;
        let text_or_dash = |bytes: &[u8]| match bytes.is_empty() {
            true => "-".to_string(),
            false => String::from_utf8_lossy(bytes).into_owned(),
        };
        vec![
            field("pid", Value::Int(worker.pid.max(0) as u64)),
            field("state", Value::Text(worker.state.as_str().into())),
            field("start time", Value::Time(started_s)),
            field("start since", Value::Int(since(started_s, self.now_s()))),
            field("requests", Value::Int(worker.requests)),
            field("request duration", Value::Int(duration_us)),
            field("request method", Value::Text(text_or_dash(&worker.method))),
            field("request URI", Value::Text(text_or_dash(&worker.uri))),
            field("content length", Value::Int(worker.content_length)),
            field("user", Value::Text(text_or_dash(&worker.user))),
            field("script", Value::Text(text_or_dash(&worker.script))),
            field("last request cpu", Value::Fraction(cpu)),
            field(
                "last request memory",
                Value::Int(if idle { worker.last_memory } else { 0 }),
            ),
            // Ours, after php-fpm's (whose parsers take the keys they know): the resident
            // FastCGI app that serves the request, 0 for a CGI child.
            field("app pid", Value::Int(worker.app_pid.max(0) as u64)),
        ]
    }
}

/// php-fpm's date format for text and html.
fn format_time(epoch_s: u64) -> String {
    crate::clock::strftime_at(epoch_s as nix::libc::time_t, c"%d/%b/%Y:%H:%M:%S %z")
}

fn plain(value: &Value) -> String {
    match value {
        Value::Text(s) => s.clone(),
        Value::Time(t) => format_time(*t),
        Value::Int(n) => n.to_string(),
        Value::Fraction(f) => format!("{f:.2}"),
    }
}

fn markup_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#039;"),
            c => out.push(c),
        }
    }
    out
}

fn json_value(value: &Value) -> String {
    match value {
        Value::Text(s) => serde_json::Value::from(s.as_str()).to_string(),
        Value::Time(t) | Value::Int(t) => t.to_string(),
        Value::Fraction(f) => format!("{f:.2}"),
    }
}

fn machine_value(value: &Value) -> String {
    match value {
        Value::Text(s) => markup_escape(s),
        Value::Time(t) | Value::Int(t) => t.to_string(),
        Value::Fraction(f) => format!("{f:.2}"),
    }
}

/// Render the status page.
pub fn render(report: &Report<'_>, query: Query) -> Page {
    match query.format {
        Format::Text => Page {
            content_type: "text/plain",
            body: render_text(report, query.full),
        },
        Format::Json => Page {
            content_type: "application/json",
            body: render_json(report, query.full),
        },
        Format::Xml => Page {
            content_type: "text/xml",
            body: render_xml(report, query.full),
        },
        Format::Html => Page {
            content_type: "text/html",
            body: render_html(report, query.full),
        },
        Format::OpenMetrics => Page {
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body: openmetrics::render(report),
        },
    }
}

fn text_lines(out: &mut String, fields: &[Field]) {
    for f in fields {
        let _ = writeln!(out, "{:<22}{}", format!("{}:", f.name), plain(&f.value));
    }
}

fn render_text(report: &Report<'_>, full: bool) -> String {
    let mut out = String::new();
    text_lines(&mut out, &report.pool_fields());
    if full {
        for worker in report.processes() {
            out.push_str("\n************************\n");
            text_lines(&mut out, &report.process_fields(worker));
        }
    }
    out
}

fn json_object(fields: &[Field]) -> String {
    let members: Vec<String> = fields
        .iter()
        .map(|f| {
            let key = f.name.to_lowercase();
            format!(
                "{}:{}",
                serde_json::Value::from(key.as_str()),
                json_value(&f.value)
            )
        })
        .collect();
    members.join(",")
}

fn render_json(report: &Report<'_>, full: bool) -> String {
    let mut out = format!("{{{}", json_object(&report.pool_fields()));
    if full {
        let processes: Vec<String> = report
            .processes()
            .map(|w| format!("{{{}}}", json_object(&report.process_fields(w))))
            .collect();
        let _ = write!(out, ", \"processes\":[{}]", processes.join(","));
    }
    out.push('}');
    out
}

fn xml_elements(out: &mut String, fields: &[Field], separator: &str) {
    for f in fields {
        let tag = f.name.to_lowercase().replace(' ', "-");
        let _ = write!(out, "<{tag}>{}</{tag}>{separator}", machine_value(&f.value));
    }
}

fn render_xml(report: &Report<'_>, full: bool) -> String {
    let mut out = String::from("<?xml version=\"1.0\" ?>\n<status>\n");
    xml_elements(&mut out, &report.pool_fields(), "\n");
    if full {
        out.push_str("<processes>\n");
        for worker in report.processes() {
            out.push_str("<process>");
            xml_elements(&mut out, &report.process_fields(worker), "");
            out.push_str("</process>\n");
        }
        out.push_str("</processes>\n");
    }
    out.push_str("</status>");
    out
}

fn html_value(value: &Value) -> String {
    markup_escape(&plain(value))
}

fn render_html(report: &Report<'_>, full: bool) -> String {
    let mut out = String::from(
        "<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Strict//EN\" \"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd\">\n\
         <html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n\
         <head><title>cgi-fpm Status Page</title></head>\n<body>\n<table>\n",
    );
    for f in report.pool_fields() {
        let _ = writeln!(
            out,
            "<tr><th>{}</th><td>{}</td></tr>",
            f.name,
            html_value(&f.value)
        );
    }
    out.push_str("</table>\n");
    if full {
        out.push_str("<table border=\"1\">\n<tr>");
        let headings = report
            .processes()
            .next()
            .map(|w| report.process_fields(w))
            .unwrap_or_else(|| report.process_fields(&placeholder_worker()));
        for f in &headings {
            let _ = write!(out, "<th>{}</th>", f.name.to_lowercase());
        }
        out.push_str("</tr>\n");
        for worker in report.processes() {
            out.push_str("<tr>");
            for f in report.process_fields(worker) {
                let _ = write!(out, "<td>{}</td>", html_value(&f.value));
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</table>");
    }
    out.push_str("</body></html>");
    out
}

/// Only for the html table's headings when no worker is running (ondemand at rest).
fn placeholder_worker() -> SlotSnapshot {
    SlotSnapshot::without_request(0, WorkerState::Idle, 0)
}

/// The CGI response for a page: php-fpm's no-cache headers, and no body for HEAD.
pub fn cgi_response(page: &Page, head_only: bool) -> Vec<u8> {
    let mut out = format!("Content-Type: {}\r\n{NO_CACHE}\r\n", page.content_type).into_bytes();
    if !head_only {
        out.extend_from_slice(page.body.as_bytes());
    }
    out
}

/// The ping page: `ping.response` as text/plain.
pub fn ping_response(response: &str, head_only: bool) -> Vec<u8> {
    cgi_response(
        &Page {
            content_type: "text/plain",
            body: response.to_string(),
        },
        head_only,
    )
}

#[cfg(test)]
mod tests;
