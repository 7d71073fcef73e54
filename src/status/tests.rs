use super::*;
use crate::scoreboard::{PoolSnapshot, SlotSnapshot, WorkerState};

const NOW: u64 = 1_800_000_100_000_000;

fn worker(pid: i32, state: WorkerState) -> SlotSnapshot {
    SlotSnapshot {
        pid,
        state,
        cgi_pid: 0,
        app_pid: 0,
        requests: 3,
        started_at_us: NOW - 50_000_000,
        request_started_at_us: NOW - 2_000_000,
        last_idle_at_us: NOW - 1_000_000,
        content_length: 5,
        last_duration_us: 400_000,
        last_cpu_us: 100_000,
        last_memory: 4096,
        method: b"GET".to_vec(),
        uri: b"/app.sh?a=<b>&c=\"d\"".to_vec(),
        script: b"/srv/app.sh".to_vec(),
        user: Vec::new(),
    }
}

fn snapshot() -> PoolSnapshot {
    PoolSnapshot {
        accepted_conn: 42,
        requests: 40,
        slow_requests: 1,
        max_children_reached: 2,
        max_active: 3,
        max_listen_queue: 4,
        start_time_us: NOW - 100_000_000,
        queue_refusals: 6,
        held_for_worker: 0,
        workers: vec![
            worker(101, WorkerState::Idle),
            worker(102, WorkerState::Running),
        ],
        previous: Vec::new(),
    }
}

fn settings() -> PmSettings {
    PmSettings {
        pm: ProcessManager::Dynamic,
        max_children: 5,
        start_servers: 2,
        min_spare_servers: 1,
        max_spare_servers: 3,
        max_spawn_rate: 32,
        process_idle_timeout_s: 10,
        max_requests: 500,
    }
}

fn report(snapshot: &PoolSnapshot) -> Report<'_> {
    Report {
        pool: "www",
        settings: settings(),
        snapshot,
        queue: QueueFigures {
            queued: 2,
            backlog: 511,
        },
        now_us: NOW,
    }
}

fn text_value<'a>(body: &'a str, name: &str) -> &'a str {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name} in {body}"))
}

#[test]
fn query_keys_choose_the_format_in_php_fpms_order() {
    let q = |s| Query::parse(s);
    assert_eq!(q("").format, Format::Text);
    assert_eq!(q("json").format, Format::Json);
    assert_eq!(q("json=1&full").format, Format::Json);
    assert!(q("json=1&full").full);
    assert!(q("full=yes").full);
    assert!(!q("fully").full);
    assert_eq!(q("xml").format, Format::Xml);
    assert_eq!(q("html").format, Format::Html);
    assert_eq!(q("openmetrics").format, Format::OpenMetrics);
    assert_eq!(q("json&html").format, Format::Html);
    assert_eq!(q("jsonp").format, Format::Text);
}

#[test]
fn text_has_php_fpms_fields_aligned_then_ours() {
    let snap = snapshot();
    let page = render(&report(&snap), Query::parse(""));
    assert_eq!(page.content_type, "text/plain");
    let body = &page.body;
    let names: Vec<&str> = body.lines().map(|l| l.split(':').next().unwrap()).collect();
    assert_eq!(
        names,
        [
            "pool",
            "process manager",
            "start time",
            "start since",
            "accepted conn",
            "listen queue",
            "max listen queue",
            "listen queue len",
            "idle processes",
            "active processes",
            "total processes",
            "max active processes",
            "max children reached",
            "slow requests",
            "queue refusals",
            "max children",
            "start servers",
            "min spare servers",
            "max spare servers",
            "max spawn rate",
            "process idle timeout",
            "max requests",
        ]
    );
    assert!(body.starts_with("pool:                 www\n"), "{body}");
    assert!(body.contains("\naccepted conn:        42\n"), "{body}");
    assert_eq!(text_value(body, "process manager"), "dynamic");
    assert_eq!(text_value(body, "start since"), "100");
    assert_eq!(text_value(body, "listen queue"), "2");
    assert_eq!(text_value(body, "max listen queue"), "4");
    assert_eq!(text_value(body, "listen queue len"), "511");
    assert_eq!(text_value(body, "idle processes"), "1");
    assert_eq!(text_value(body, "active processes"), "1");
    assert_eq!(text_value(body, "total processes"), "2");
    assert_eq!(text_value(body, "max children"), "5");
    // dd/Mon/yyyy:HH:MM:SS +zzzz
    let start = text_value(body, "start time");
    assert_eq!(start.len(), 26, "{start}");
    assert_eq!(&start[2..3], "/");
    assert!(!body.contains("pid:"));
}

#[test]
fn the_live_queue_raises_the_max_listen_queue() {
    let snap = snapshot();
    let mut r = report(&snap);
    r.queue.queued = 9;
    let body = render(&r, Query::parse("")).body;
    assert_eq!(text_value(&body, "max listen queue"), "9");
}

#[test]
fn connections_the_master_holds_for_a_worker_are_in_the_listen_queue() {
    let snap = PoolSnapshot {
        held_for_worker: 5,
        ..snapshot()
    };
    let body = render(&report(&snap), Query::parse("")).body;
    // 2 in the socket's queue, 5 taken from it by the master (request_queue_timeout).
    assert_eq!(text_value(&body, "listen queue"), "7");
    assert_eq!(text_value(&body, "max listen queue"), "7");
    assert_eq!(text_value(&body, "queue refusals"), "6");
    let metrics = render(&report(&snap), Query::parse("openmetrics")).body;
    assert!(
        metrics.contains("cgifpm_listen_queue{pool=\"www\"} 7\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE cgifpm_queue_refusals counter\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cgifpm_queue_refusals_total{pool=\"www\"} 6\n"),
        "{metrics}"
    );
}

#[test]
fn full_text_adds_a_block_per_process() {
    let snap = snapshot();
    let body = render(&report(&snap), Query::parse("full")).body;
    assert_eq!(body.matches("\n************************\n").count(), 2);
    let blocks: Vec<&str> = body.split("************************\n").skip(1).collect();
    let idle = blocks[0];
    assert_eq!(text_value(idle, "pid"), "101");
    assert_eq!(text_value(idle, "state"), "Idle");
    assert_eq!(text_value(idle, "request duration"), "400000");
    assert_eq!(text_value(idle, "last request cpu"), "25.00");
    assert_eq!(text_value(idle, "last request memory"), "4096");
    assert_eq!(text_value(idle, "request URI"), "/app.sh?a=<b>&c=\"d\"");
    assert_eq!(text_value(idle, "user"), "-");
    assert_eq!(text_value(idle, "start since"), "50");
    let busy = blocks[1];
    assert_eq!(text_value(busy, "state"), "Running");
    assert_eq!(text_value(busy, "request duration"), "2000000");
    assert_eq!(text_value(busy, "last request cpu"), "0.00");
    assert_eq!(text_value(busy, "last request memory"), "0");
}

#[test]
fn a_process_block_has_php_fpms_fields_in_order_then_the_app_pid() {
    let mut served_by_app = worker(104, WorkerState::Running);
    served_by_app.app_pid = 4321;
    let snap = PoolSnapshot {
        workers: vec![worker(101, WorkerState::Idle), served_by_app],
        ..snapshot()
    };
    let body = render(&report(&snap), Query::parse("full")).body;
    let blocks: Vec<&str> = body.split("************************\n").skip(1).collect();
    let names: Vec<&str> = blocks[0]
        .lines()
        .filter_map(|l| l.split(':').next())
        .filter(|n| !n.is_empty())
        .collect();
    assert_eq!(
        names,
        [
            "pid",
            "state",
            "start time",
            "start since",
            "requests",
            "request duration",
            "request method",
            "request URI",
            "content length",
            "user",
            "script",
            "last request cpu",
            "last request memory",
            "app pid",
        ]
    );
    assert_eq!(text_value(blocks[0], "app pid"), "0");
    assert_eq!(text_value(blocks[1], "app pid"), "4321");
    let json: serde_json::Value =
        serde_json::from_str(&render(&report(&snap), Query::parse("json&full")).body).unwrap();
    assert_eq!(json["processes"][1]["app pid"], 4321);
    let xml = render(&report(&snap), Query::parse("xml&full")).body;
    assert!(xml.contains("<app-pid>4321</app-pid></process>"), "{xml}");
}

#[test]
fn a_worker_read_without_its_request_shows_dashes_and_no_1970_times() {
    // What `Slot::snapshot` gives when the slot's writer stalls mid-write.
    let unsettled = SlotSnapshot::without_request(103, WorkerState::Running, 0);
    let snap = PoolSnapshot {
        workers: vec![unsettled],
        ..snapshot()
    };
    let body = render(&report(&snap), Query::parse("full")).body;
    let block = body.split("************************\n").nth(1).unwrap();
    assert_eq!(text_value(block, "pid"), "103");
    assert_eq!(text_value(block, "request duration"), "0");
    assert_eq!(text_value(block, "start since"), "0");
    assert_eq!(text_value(block, "request URI"), "-");
    assert_eq!(text_value(block, "script"), "-");
}

#[test]
fn json_parses_with_php_fpms_keys() {
    let snap = snapshot();
    let page = render(&report(&snap), Query::parse("json&full"));
    assert_eq!(page.content_type, "application/json");
    let v: serde_json::Value = serde_json::from_str(&page.body).expect(&page.body);
    assert_eq!(v["pool"], "www");
    assert_eq!(v["process manager"], "dynamic");
    assert_eq!(v["start time"], (NOW - 100_000_000) / 1_000_000);
    assert_eq!(v["accepted conn"], 42);
    assert_eq!(v["listen queue len"], 511);
    assert_eq!(v["max children"], 5);
    assert_eq!(v["max requests"], 500);
    let processes = v["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 2);
    assert_eq!(processes[0]["pid"], 101);
    assert_eq!(processes[0]["request uri"], "/app.sh?a=<b>&c=\"d\"");
    assert_eq!(processes[0]["last request cpu"], 25.0);
    assert_eq!(processes[1]["state"], "Running");
    let plain: serde_json::Value =
        serde_json::from_str(&render(&report(&snap), Query::parse("json")).body).unwrap();
    assert!(plain.get("processes").is_none());
}

#[test]
fn xml_uses_hyphenated_tags_and_escapes() {
    let snap = snapshot();
    let page = render(&report(&snap), Query::parse("xml&full"));
    assert_eq!(page.content_type, "text/xml");
    let body = page.body;
    assert!(body.starts_with("<?xml version=\"1.0\" ?>\n<status>\n<pool>www</pool>\n"));
    assert!(body.contains("<accepted-conn>42</accepted-conn>\n"));
    assert!(body.contains("<max-children>5</max-children>\n"));
    assert!(body.contains("<request-uri>/app.sh?a=&lt;b&gt;&amp;c=&quot;d&quot;</request-uri>"));
    assert_eq!(body.matches("<process>").count(), 2);
    assert!(body.ends_with("</processes>\n</status>"));
    let short = render(&report(&snap), Query::parse("xml")).body;
    assert!(short.ends_with("<max-requests>500</max-requests>\n</status>"));
}

#[test]
fn html_is_a_table_with_escaped_values() {
    let snap = snapshot();
    let page = render(&report(&snap), Query::parse("html&full"));
    assert_eq!(page.content_type, "text/html");
    let body = page.body;
    assert!(body.contains("<tr><th>accepted conn</th><td>42</td></tr>"));
    assert!(body.contains("<th>request uri</th>"));
    assert!(body.contains("<td>/app.sh?a=&lt;b&gt;&amp;c=&quot;d&quot;</td>"));
    assert!(body.ends_with("</table></body></html>"));
    // An ondemand pool at rest still gets the process table's headings.
    let empty = PoolSnapshot {
        workers: vec![],
        ..snapshot()
    };
    let body = render(&report(&empty), Query::parse("html&full")).body;
    assert!(body.contains("<th>pid</th>"));
}

#[test]
fn openmetrics_has_typed_families_and_ends_with_eof() {
    let snap = snapshot();
    let page = render(&report(&snap), Query::parse("openmetrics&full"));
    assert_eq!(
        page.content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let body = page.body;
    assert!(body.ends_with("\n# EOF\n"));
    assert!(body.contains("# TYPE cgifpm_accepted_connections counter\n"));
    assert!(body.contains("\ncgifpm_accepted_connections_total{pool=\"www\"} 42\n"));
    assert!(body.contains("\ncgifpm_total_processes{pool=\"www\"} 2\n"));
    assert!(body.contains("# UNIT cgifpm_start_since_seconds seconds\n"));
    assert!(body.contains("\ncgifpm_start_since_seconds{pool=\"www\"} 100\n"));
    assert!(
        body.contains("cgifpm_pool_info{pool=\"www\",process_manager=\"dynamic\"} 1\n"),
        "{body}"
    );
    assert!(!body.contains("pid"));
    // Every sample line carries the pool label and an integer.
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap();
        assert!(name.contains("pool=\"www\""), "{line}");
        value.parse::<u64>().unwrap();
    }
}

#[test]
fn label_values_are_escaped() {
    let snap = snapshot();
    let mut r = report(&snap);
    r.pool = "we\"ird\\pool";
    let body = render(&r, Query::parse("openmetrics")).body;
    assert!(body.contains("{pool=\"we\\\"ird\\\\pool\"}"), "{body}");
}

#[test]
fn responses_carry_no_cache_headers_and_head_has_no_body() {
    let snap = snapshot();
    let page = render(&report(&snap), Query::parse("json"));
    let get = String::from_utf8(cgi_response(&page, false)).unwrap();
    assert!(get.starts_with("Content-Type: application/json\r\n"));
    assert!(get.contains("\r\nExpires: Thu, 01 Jan 1970 00:00:00 GMT\r\n"));
    assert!(get.contains("\r\nCache-Control: no-cache, no-store, must-revalidate, max-age=0\r\n"));
    assert!(get.ends_with(&format!("\r\n\r\n{}", page.body)));
    let head = String::from_utf8(cgi_response(&page, true)).unwrap();
    assert!(head.ends_with("max-age=0\r\n\r\n"));
    let ping = String::from_utf8(ping_response("pong", false)).unwrap();
    assert!(ping.starts_with("Content-Type: text/plain\r\n"));
    assert!(ping.ends_with("\r\n\r\npong"));
    assert!(
        String::from_utf8(ping_response("pong", true))
            .unwrap()
            .ends_with("\r\n\r\n")
    );
}

#[test]
fn workers_of_the_previous_image_are_listed_as_finishing_and_counted_apart() {
    let snap = PoolSnapshot {
        previous: vec![worker(77, WorkerState::Finishing)],
        ..snapshot()
    };
    let json: serde_json::Value =
        serde_json::from_str(&render(&report(&snap), Query::parse("json&full")).body).unwrap();
    assert_eq!(json["total processes"], 2, "{json}");
    let old = &json["processes"][2];
    assert_eq!(old["pid"], 77, "{json}");
    assert_eq!(old["state"], "Finishing", "{json}");
    assert_eq!(old["request uri"], "/app.sh?a=<b>&c=\"d\"", "{json}");
    for format in ["full", "xml&full", "html&full"] {
        let body = render(&report(&snap), Query::parse(format)).body;
        assert!(body.contains("77"), "{format}: {body}");
    }
    let metrics = render(&report(&snap), Query::parse("openmetrics")).body;
    assert!(
        metrics.contains("cgifpm_finishing_after_reload_processes{pool=\"www\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cgifpm_total_processes{pool=\"www\"} 2"),
        "{metrics}"
    );
}
