//! Pools and the status page: the real binary's pool managers under real (bounded,
//! unix-socket or loopback) load, watched through the status page they serve.

mod common;

use common::{Client, Fpm, Response, openmetrics, wait_until};
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(15);

/// A pool section listening on `<dir>/<name>.sock` (or `listen`), scripts from www/.
fn pool(name: &str, dir: &Path, listen: Option<&str>, lines: &str) -> String {
    let sock = dir.join(format!("{name}.sock")).display().to_string();
    format!(
        "[{name}]\nlisten = {}\ncgi.allowed_roots = {}\nenv[PATH] = /usr/local/bin:/usr/bin:/bin\n{lines}\n",
        listen.unwrap_or(&sock),
        dir.join("www").display()
    )
}

fn new_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("www")).expect("mkdir www");
    dir
}

fn sock(dir: &Path, name: &str) -> String {
    dir.join(format!("{name}.sock")).display().to_string()
}

/// How a test waits for its server to start.
#[derive(Clone, Copy)]
enum Wait {
    /// Until a worker answers.
    Answering,
    /// Only for the master's "ready" line: a probe would make an ondemand pool fork.
    Untouched,
}

/// A started pool `name` (on `tcp`, else on `<dir>/<name>.sock`) whose status worker also
/// listens on `<dir>/<name>-status.sock`, so the page answers while every worker is busy.
/// Returns the server, the pool's address and the status address.
fn start_with_status_listener(
    name: &str,
    tcp: Option<String>,
    lines: &str,
    wait: Wait,
) -> (Fpm, String, String) {
    let dir = new_dir();
    let status_address = sock(dir.path(), &format!("{name}-status"));
    let address = tcp.clone().unwrap_or_else(|| sock(dir.path(), name));
    let config = pool(
        name,
        dir.path(),
        tcp.as_deref(),
        &format!("{lines}\npm.status_listen = {status_address}"),
    );
    let fpm = match wait {
        Wait::Answering => Fpm::start_with(dir, &config, &address),
        Wait::Untouched => Fpm::start_untouched(dir, &config, &address),
    };
    (fpm, address, status_address)
}

fn request(address: &str, params: &[(&str, &str)]) -> std::io::Result<Response> {
    Client::connect(address, Duration::from_secs(30))?.request(params, b"", false)
}

/// A GET for the page at `path` with `query`.
fn page(address: &str, path: &str, query: &str) -> Response {
    page_with_method(address, path, query, "GET")
}

fn page_with_method(address: &str, path: &str, query: &str, method: &str) -> Response {
    request(
        address,
        &[
            ("REQUEST_METHOD", method),
            ("SCRIPT_NAME", path),
            ("SCRIPT_FILENAME", &format!("/nonexistent{path}")),
            ("QUERY_STRING", query),
            ("REQUEST_URI", &format!("{path}?{query}")),
        ],
    )
    .expect("status request")
}

fn status_json(address: &str) -> Value {
    let r = page(address, "/status", "json");
    assert_eq!(r.status(), 200, "{r:?}");
    serde_json::from_slice(r.body()).unwrap_or_else(|e| {
        panic!(
            "status?json does not parse ({e}): {}",
            String::from_utf8_lossy(r.body())
        )
    })
}

fn figure(status: &Value, key: &str) -> u64 {
    status[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number '{key}' in {status}"))
}

/// Poll the status page until `condition` holds; fail naming what never happened.
fn wait_for_status(address: &str, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let deadline = std::time::Instant::now() + PATIENCE;
    while std::time::Instant::now() < deadline {
        last = status_json(address);
        if condition(&last) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {PATIENCE:?} waiting until {what}; last status: {last}");
}

/// A script that holds its worker until the gate file exists, then prints its parent's
/// pid (the worker's).
struct Gate {
    file: PathBuf,
    script: PathBuf,
}

impl Gate {
    fn new(fpm: &Fpm) -> Gate {
        let file = fpm.path("gate");
        let script = fpm.script(
            "gated.sh",
            &format!(
                "#!/bin/sh\nwhile [ ! -e {} ]; do sleep 0.02; done\nprintf 'Content-Type: text/plain\\r\\n\\r\\n%s' \"$PPID\"\n",
                file.display()
            ),
        );
        Gate { file, script }
    }

    fn open(&self) {
        std::fs::write(&self.file, b"").expect("open the gate");
    }

    /// Send `n` gated requests, each on its own connection and thread.
    fn send(&self, address: &str, n: usize) -> Vec<JoinHandle<Response>> {
        (0..n)
            .map(|_| {
                let address = address.to_string();
                let script = self.script.display().to_string();
                std::thread::spawn(move || {
                    request(
                        &address,
                        &[("REQUEST_METHOD", "GET"), ("SCRIPT_FILENAME", &script)],
                    )
                    .expect("gated request")
                })
            })
            .collect()
    }
}

fn join_all_ok(handles: Vec<JoinHandle<Response>>) {
    for h in handles {
        let r = h.join().expect("request thread");
        assert_eq!(r.status(), 200, "{r:?}");
    }
}

fn hello(fpm: &Fpm) -> PathBuf {
    fpm.script(
        "hello.sh",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\nhello %s' \"$PPID\"\n",
    )
}

#[test]
fn static_holds_max_children() {
    let dir = new_dir();
    let config = pool(
        "www",
        dir.path(),
        None,
        "pm = static\npm.max_children = 3\npm.status_path = /status",
    );
    let address = sock(dir.path(), "www");
    let fpm = Fpm::start_with(dir, &config, &address);
    fpm.wait_workers(3);
    // A worker is a child before its slot names it (the master or the worker writes the
    // pid a moment after the fork): wait for the page to count the three. The start's
    // probe, or the previous poll, may still hold a worker for a moment (it reads until
    // the client's EOF): wait until only the page's own worker is active too.
    let status = wait_for_status(
        &address,
        "the page counts 3 processes, 1 of them active",
        |s| s["total processes"] == 3 && s["active processes"] == 1,
    );
    assert_eq!(status["process manager"], "static");
    assert_eq!(figure(&status, "total processes"), 3);
    assert_eq!(figure(&status, "max children"), 3);
    // This request's own worker is the active one.
    assert_eq!(figure(&status, "active processes"), 1);
    assert_eq!(figure(&status, "idle processes"), 2);

    let before: HashSet<i32> = fpm.worker_pids().into_iter().collect();
    let victim = *before.iter().next().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("the killed worker is replaced", PATIENCE, || {
        let now: HashSet<i32> = fpm.worker_pids().into_iter().collect();
        now.len() == 3 && !now.contains(&victim)
    });
    for _ in 0..3 {
        assert_eq!(figure(&status_json(&address), "total processes"), 3);
    }
}

#[test]
fn dynamic_grows_under_load_and_shrinks_back_to_max_spare_servers() {
    let (fpm, address, status_address) = start_with_status_listener(
        "www",
        None,
        "pm = dynamic\npm.max_children = 5\npm.start_servers = 1\npm.min_spare_servers = 1\npm.max_spare_servers = 2\npm.status_path = /status",
        Wait::Answering,
    );
    let gate = Gate::new(&fpm);
    let status = wait_for_status(&status_address, "the pool has its start server", |s| {
        figure(s, "total processes") == 1
    });
    assert_eq!(status["process manager"], "dynamic");
    assert_eq!(figure(&status, "start servers"), 1);
    assert_eq!(figure(&status, "max spare servers"), 2);

    let load = gate.send(&address, 5);
    let grown = wait_for_status(&status_address, "the pool grows to 5 busy workers", |s| {
        figure(s, "total processes") == 5 && figure(s, "active processes") == 5
    });
    assert_eq!(figure(&grown, "max active processes"), 5);
    gate.open();
    join_all_ok(load);
    wait_for_status(
        &status_address,
        "the pool shrinks back to pm.max_spare_servers",
        |s| figure(s, "total processes") == 2 && figure(s, "idle processes") == 2,
    );
    assert!(
        fpm.log_text().contains("[pool www] child"),
        "{}",
        fpm.log_text()
    );
}

#[test]
fn ondemand_starts_with_none_serves_and_returns_to_none() {
    let (fpm, address, status_address) = start_with_status_listener(
        "od",
        None,
        "pm = ondemand\npm.max_children = 3\npm.process_idle_timeout = 1s\npm.status_path = /status",
        Wait::Untouched,
    );
    let script = hello(&fpm);
    let status = status_json(&status_address);
    assert_eq!(status["process manager"], "ondemand");
    assert_eq!(figure(&status, "total processes"), 0);
    // Only the status worker runs.
    assert_eq!(fpm.worker_pids().len(), 1);

    let r = fpm.get(&script, &[]);
    assert_eq!(r.status(), 200, "{r:?}");
    wait_for_status(
        &status_address,
        "the worker stops after pm.process_idle_timeout",
        |s| figure(s, "total processes") == 0,
    );

    // Connections that arrive together get a worker each, at once.
    let gate = Gate::new(&fpm);
    let load = gate.send(&address, 3);
    wait_for_status(&status_address, "three busy workers", |s| {
        figure(s, "total processes") == 3 && figure(s, "active processes") == 3
    });
    gate.open();
    join_all_ok(load);
    wait_for_status(&status_address, "back to no worker", |s| {
        figure(s, "total processes") == 0
    });
    assert!(
        !fpm.log_text().contains("reached pm.max_children"),
        "{}",
        fpm.log_text()
    );
    assert_eq!(fpm.worker_pids().len(), 1);
}

#[test]
fn ondemand_reports_reaching_max_children_once_per_episode() {
    let (fpm, address, status_address) = start_with_status_listener(
        "od",
        None,
        "pm = ondemand\npm.max_children = 1\npm.process_idle_timeout = 10s\npm.status_path = /status",
        Wait::Untouched,
    );
    let gate = Gate::new(&fpm);
    let load = gate.send(&address, 3);
    let line = "WARNING: [pool od] server reached pm.max_children setting (1), consider raising it";
    fpm.wait_for_log(line, PATIENCE);
    let status = wait_for_status(&status_address, "two connections wait", |s| {
        figure(s, "listen queue") == 2
    });
    assert_eq!(figure(&status, "max children reached"), 1);
    gate.open();
    join_all_ok(load);
    assert_eq!(
        fpm.log_text().matches(line).count(),
        1,
        "{}",
        fpm.log_text()
    );
}

#[test]
fn json_accepted_conn_counts_the_requests_sent() {
    let (fpm, address, status_address) = start_with_status_listener(
        "www",
        None,
        "pm = static\npm.max_children = 2\npm.status_path = /status",
        Wait::Answering,
    );
    let script = hello(&fpm);
    const SENT: u64 = 7;
    for _ in 0..SENT {
        assert_eq!(fpm.get(&script, &[]).status(), 200);
    }
    // The status worker's own requests are not the pool's. (A worker goes idle just
    // after its client has the response: wait for that.)
    let status = wait_for_status(&status_address, "every worker is idle", |s| {
        figure(s, "active processes") == 0
    });
    assert_eq!(figure(&status, "accepted conn"), SENT, "{status}");
    // Asked on the pool's socket, the status request counts too.
    let r = page(&address, "/status", "json&full");
    let status: Value = serde_json::from_slice(r.body()).expect("json");
    assert_eq!(figure(&status, "accepted conn"), SENT + 1, "{status}");
    for key in [
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
        "max children",
        "start servers",
        "min spare servers",
        "max spare servers",
        "max spawn rate",
        "process idle timeout",
        "max requests",
        "processes",
    ] {
        assert!(status.get(key).is_some(), "no '{key}' in {status}");
    }
    assert_eq!(status["pool"], "www");
    let processes = status["processes"].as_array().expect("processes");
    assert_eq!(processes.len() as u64, figure(&status, "total processes"));
    let workers: HashSet<u64> = fpm.worker_pids().iter().map(|&p| p as u64).collect();
    let served: u64 = processes.iter().map(|p| figure(p, "requests")).sum();
    assert_eq!(served, SENT + 1);
    for p in processes {
        assert!(workers.contains(&figure(p, "pid")), "{p}");
        for key in [
            "state",
            "start time",
            "start since",
            "request duration",
            "request method",
            "request uri",
            "content length",
            "user",
            "script",
            "last request cpu",
            "last request memory",
        ] {
            assert!(p.get(key).is_some(), "no '{key}' in {p}");
        }
    }
    let busy: Vec<&Value> = processes.iter().filter(|p| p["state"] != "Idle").collect();
    assert_eq!(busy.len(), 1, "only this request's worker is busy");
    assert_eq!(busy[0]["request uri"], "/status?json&full");
    assert_eq!(busy[0]["request method"], "GET");
}

#[test]
fn every_format_with_php_fpms_names_and_no_cache_headers() {
    let dir = new_dir();
    let config = pool(
        "www",
        dir.path(),
        None,
        "pm = static\npm.max_children = 2\npm.status_path = /fpm-status\nping.path = /ping\nping.response = alive",
    );
    let address = sock(dir.path(), "www");
    let fpm = Fpm::start_with(dir, &config, &address);
    fpm.wait_workers(2);

    let text = page(&address, "/fpm-status", "");
    assert_eq!(text.header("Content-Type").as_deref(), Some("text/plain"));
    assert_eq!(
        text.header("Expires").as_deref(),
        Some("Thu, 01 Jan 1970 00:00:00 GMT")
    );
    assert_eq!(
        text.header("Cache-Control").as_deref(),
        Some("no-cache, no-store, must-revalidate, max-age=0")
    );
    let body = String::from_utf8_lossy(text.body()).into_owned();
    assert!(
        body.starts_with("pool:                 www\nprocess manager:      static\n"),
        "{body}"
    );
    assert!(body.contains("\ntotal processes:      2\n"), "{body}");
    assert!(body.contains("\nmax children:         2\n"), "{body}");

    let full = String::from_utf8_lossy(page(&address, "/fpm-status", "full").body()).into_owned();
    assert_eq!(
        full.matches("************************\n").count(),
        2,
        "{full}"
    );
    assert!(
        full.contains("\nrequest URI:          /fpm-status?full\n"),
        "{full}"
    );

    let xml = page(&address, "/fpm-status", "xml");
    assert_eq!(xml.header("Content-Type").as_deref(), Some("text/xml"));
    let body = String::from_utf8_lossy(xml.body()).into_owned();
    assert!(
        body.starts_with("<?xml version=\"1.0\" ?>\n<status>\n<pool>www</pool>\n"),
        "{body}"
    );
    assert!(
        body.contains("<total-processes>2</total-processes>"),
        "{body}"
    );
    assert!(body.ends_with("</status>"), "{body}");

    let html = page(&address, "/fpm-status", "html&full");
    assert_eq!(html.header("Content-Type").as_deref(), Some("text/html"));
    let body = String::from_utf8_lossy(html.body()).into_owned();
    assert!(
        body.contains("<tr><th>total processes</th><td>2</td></tr>"),
        "{body}"
    );
    assert_eq!(body.matches("<tr><td>").count(), 2, "{body}");

    let head = page_with_method(&address, "/fpm-status", "json", "HEAD");
    assert_eq!(head.status(), 200);
    assert!(head.body().is_empty(), "{head:?}");
    assert!(head.header("Cache-Control").is_some());

    let ping = page(&address, "/ping", "");
    assert_eq!(ping.header("Content-Type").as_deref(), Some("text/plain"));
    assert!(ping.header("Expires").is_some());
    assert_eq!(ping.body(), b"alive");
    assert!(
        page_with_method(&address, "/ping", "", "HEAD")
            .body()
            .is_empty()
    );

    // Another path is a script like any other (here: one that does not exist).
    assert_eq!(page(&address, "/status", "").status(), 404);
}

#[test]
fn openmetrics_passes_a_strict_parser_and_ends_with_eof() {
    assert!(
        openmetrics::refuses_bad_input(),
        "the checker accepts what it must refuse"
    );
    let dir = new_dir();
    let config = pool(
        "www",
        dir.path(),
        None,
        "pm = dynamic\npm.max_children = 4\npm.min_spare_servers = 1\npm.max_spare_servers = 3\npm.status_path = /status",
    );
    let address = sock(dir.path(), "www");
    let fpm = Fpm::start_with(dir, &config, &address);
    fpm.wait_workers(2); // pm.start_servers
    wait_for_status(&address, "the page counts 2 processes", |s| {
        s["total processes"].as_u64() >= Some(2)
    });
    for query in ["openmetrics", "openmetrics&full"] {
        let r = page(&address, "/status", query);
        assert_eq!(
            r.header("Content-Type").as_deref(),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
        );
        let text = String::from_utf8(r.body().to_vec()).expect("UTF-8");
        assert!(text.ends_with("\n# EOF\n"), "{text}");
        let samples = openmetrics::check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let value = |name: &str| {
            samples
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("no {name} in {text}"))
                .value
        };
        assert_eq!(value("cgifpm_up"), 1.0);
        assert_eq!(value("cgifpm_max_children"), 4.0);
        assert!(value("cgifpm_accepted_connections_total") >= 1.0);
        assert!(value("cgifpm_total_processes") >= 2.0);
        assert!(
            samples
                .iter()
                .all(|s| s.labels.contains(&("pool".into(), "www".into())))
        );
        openmetrics::python_cross_check(&text);
    }
}

/// One busy worker, three connections waiting behind it: the status page (served by the
/// status worker) shows them. `tcp` is a loopback address, else the pool uses a unix socket.
fn listen_queue_under_load(tcp: Option<String>) {
    let (fpm, address, status_address) = start_with_status_listener(
        "q",
        tcp,
        "pm = static\npm.max_children = 1\nlisten.backlog = 50\npm.status_path = /status",
        Wait::Answering,
    );
    let gate = Gate::new(&fpm);
    let mut load = gate.send(&address, 1);
    // The gated request holds the only worker, and nothing else waits.
    wait_for_status(&status_address, "the only worker busy, none waiting", |s| {
        figure(s, "active processes") == 1 && figure(s, "listen queue") == 0
    });
    load.extend(gate.send(&address, 3));
    let status = wait_for_status(&status_address, "three connections wait", |s| {
        figure(s, "listen queue") == 3
    });
    assert_eq!(figure(&status, "listen queue len"), 50);
    assert!(figure(&status, "max listen queue") >= 3);
    gate.open();
    join_all_ok(load);
    let status = status_json(&status_address);
    assert_eq!(figure(&status, "listen queue"), 0);
    assert!(figure(&status, "max listen queue") >= 3, "{status}");
}

#[test]
fn a_unix_socket_pool_reports_its_listen_queue() {
    listen_queue_under_load(None);
}

#[test]
fn a_tcp_pool_reports_its_listen_queue() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    listen_queue_under_load(Some(format!("127.0.0.1:{port}")));
}

#[test]
fn max_requests_recycles_workers_under_load_without_failures() {
    let dir = new_dir();
    let config = pool(
        "www",
        dir.path(),
        None,
        "pm = static\npm.max_children = 2\npm.max_requests = 3",
    );
    let address = sock(dir.path(), "www");
    let fpm = Fpm::start_with(dir, &config, &address);
    let script = hello(&fpm).display().to_string();
    const THREADS: usize = 4;
    const EACH: usize = 10;
    // Per thread: failures, and the worker (its pid, which the script prints) of each answer.
    let results: Vec<(usize, Vec<i32>)> = (0..THREADS)
        .map(|_| {
            let address = address.clone();
            let script = script.clone();
            std::thread::spawn(move || {
                let mut failures = 0;
                let mut workers = Vec::new();
                for _ in 0..EACH {
                    match request(
                        &address,
                        &[("REQUEST_METHOD", "GET"), ("SCRIPT_FILENAME", &script)],
                    ) {
                        Ok(r) if r.status() == 200 => {
                            let body = String::from_utf8_lossy(r.body()).into_owned();
                            let pid = body.trim_start_matches("hello ").parse().expect("pid");
                            workers.push(pid);
                        }
                        _ => failures += 1,
                    }
                }
                (failures, workers)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().expect("load thread"))
        .collect();
    let failures: usize = results.iter().map(|(f, _)| f).sum();
    assert_eq!(failures, 0, "failed requests");
    let mut served: std::collections::BTreeMap<i32, usize> = Default::default();
    for pid in results.iter().flat_map(|(_, w)| w) {
        *served.entry(*pid).or_default() += 1;
    }
    // Each worker serves exactly three requests and exits; the two still running may
    // have served fewer.
    let alive = fpm.worker_pids();
    for (pid, count) in &served {
        if alive.contains(pid) {
            assert!(*count <= 3, "live worker {pid} served {count}: {served:?}");
        } else {
            assert_eq!(*count, 3, "worker {pid} exited after {count}: {served:?}");
        }
    }
    let log = fpm.log_text();
    assert!(!log.contains("WARNING"), "{log}");
    fpm.wait_workers(2);
}

#[test]
fn the_status_listener_answers_while_every_worker_is_busy() {
    let (fpm, address, status_address) = start_with_status_listener(
        "www",
        None,
        "pm = static\npm.max_children = 2\nping.path = /ping",
        Wait::Answering,
    );
    let gate = Gate::new(&fpm);
    let load = gate.send(&address, 2);
    // Without pm.status_path the status listener answers status on its own paths.
    let status = wait_for_status(&status_address, "both workers are busy", |s| {
        figure(s, "active processes") == 2
    });
    assert_eq!(figure(&status, "idle processes"), 0);
    assert_eq!(status["pool"], "www");
    let r = page(&status_address, "/", "");
    assert_eq!(r.status(), 200);
    assert!(String::from_utf8_lossy(r.body()).contains("active processes:     2\n"));
    assert_eq!(page(&status_address, "/ping", "").body(), b"pong");
    gate.open();
    join_all_ok(load);
}

#[test]
fn several_pools_each_with_its_own_socket_manager_and_scoreboard() {
    let dir = new_dir();
    let config = [
        pool(
            "alpha",
            dir.path(),
            None,
            "pm = static\npm.max_children = 2\npm.status_path = /status",
        ),
        pool(
            "beta",
            dir.path(),
            None,
            "pm = dynamic\npm.max_children = 4\npm.min_spare_servers = 1\npm.max_spare_servers = 3\npm.start_servers = 3\npm.status_path = /status",
        ),
        pool(
            "gamma",
            dir.path(),
            None,
            "pm = ondemand\npm.max_children = 2\npm.status_path = /status",
        ),
    ]
    .concat();
    let (alpha, beta, gamma) = (
        sock(dir.path(), "alpha"),
        sock(dir.path(), "beta"),
        sock(dir.path(), "gamma"),
    );
    let fpm = Fpm::start_with(dir, &format!("[global]\n{config}"), &alpha);
    fpm.wait_workers(5);
    let script = hello(&fpm).display().to_string();
    for _ in 0..4 {
        let r = request(
            &alpha,
            &[("REQUEST_METHOD", "GET"), ("SCRIPT_FILENAME", &script)],
        )
        .unwrap();
        assert_eq!(r.status(), 200);
    }
    let a = status_json(&alpha);
    let b = status_json(&beta);
    let g = status_json(&gamma);
    assert_eq!(
        (&a["pool"], &b["pool"], &g["pool"]),
        (
            &Value::from("alpha"),
            &Value::from("beta"),
            &Value::from("gamma")
        )
    );
    assert_eq!(a["process manager"], "static");
    assert_eq!(b["process manager"], "dynamic");
    assert_eq!(g["process manager"], "ondemand");
    assert_eq!(figure(&a, "accepted conn"), 5);
    assert_eq!(figure(&b, "accepted conn"), 1);
    assert_eq!(figure(&g, "accepted conn"), 1);
    assert_eq!(figure(&a, "total processes"), 2);
    assert_eq!(figure(&b, "total processes"), 3);
    // The status request itself made gamma start its first worker.
    assert_eq!(figure(&g, "total processes"), 1);
    assert_eq!(
        (
            figure(&a, "max children"),
            figure(&b, "max children"),
            figure(&g, "max children")
        ),
        (2, 4, 2)
    );
    wait_until("the master runs 6 workers", PATIENCE, || {
        fpm.worker_pids().len() == 6
    });
}

#[test]
fn status_and_ping_through_nginx_with_kept_connections() {
    use common::http;
    use common::nginx::{Nginx, Upstream};
    let dir = new_dir();
    let config = pool(
        "www",
        dir.path(),
        None,
        "pm = static\npm.max_children = 2\npm.status_path = /status\nping.path = /ping",
    );
    let address = sock(dir.path(), "www");
    let fpm = Fpm::start_with(dir, &config, &address);
    let baseline = common::open_fds(fpm.pid());
    let upstream = Upstream {
        server: format!("unix:{address}"),
        keepalive: Some(2),
    };
    let Some(nginx) = Nginx::start(&upstream, &fpm.path("www")) else {
        return;
    };
    for round in 1..=3u64 {
        let r = http::get(&nginx.socket, "/status?json").expect("status through nginx");
        assert_eq!(r.status, 200, "{}", nginx.error_log());
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert_eq!(
            r.header("Cache-Control"),
            Some("no-cache, no-store, must-revalidate, max-age=0")
        );
        let status: Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(figure(&status, "accepted conn"), 2 * round - 1);
        let ping = http::get(&nginx.socket, "/ping").expect("ping through nginx");
        assert_eq!((ping.status, ping.text().as_str()), (200, "pong"));
    }
    let head = http::request(&nginx.socket, "HEAD", "/status", &[], b"").expect("HEAD");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    let openmetrics = http::get(&nginx.socket, "/status?openmetrics").expect("openmetrics");
    openmetrics::check(&openmetrics.text()).unwrap_or_else(|e| panic!("{e}"));
    // The kept connections that carried these pages are parked with the master.
    common::wait_for_parked(&fpm, baseline, 1);
}

/// Context switches of `pid` so far (each wake-up of a sleeping process is one).
fn context_switches(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .filter(|l| {
            l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary_ctxt_switches")
        })
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// Wait until the master spends a whole `window` without waking once. The old
/// one-second tick woke it in every window.
fn wait_for_rest(fpm: &Fpm, window: Duration, what: &str) {
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut last = 0;
    while std::time::Instant::now() < deadline {
        let before = context_switches(fpm.pid());
        // A measuring window, not synchronisation: nothing is waited for here.
        std::thread::sleep(window);
        last = context_switches(fpm.pid()) - before;
        if last == 0 {
            return;
        }
    }
    panic!(
        "the master never slept through {window:?} {what}; last window: {last} wake-ups; log:\n{}",
        fpm.log_text()
    );
}

#[test]
fn the_master_sleeps_at_rest_and_wakes_when_workers_get_busy() {
    let dir = new_dir();
    let config = [
        pool("st", dir.path(), None, "pm = static\npm.max_children = 2"),
        pool(
            "dy",
            dir.path(),
            None,
            "pm = dynamic\npm.max_children = 5\npm.start_servers = 2\npm.min_spare_servers = 2\npm.max_spare_servers = 3",
        ),
        pool(
            "od",
            dir.path(),
            None,
            "pm = ondemand\npm.max_children = 2\npm.process_idle_timeout = 1s",
        ),
    ]
    .concat();
    let (st, dy, od) = (
        sock(dir.path(), "st"),
        sock(dir.path(), "dy"),
        sock(dir.path(), "od"),
    );
    let fpm = Fpm::start_with(dir, &format!("[global]\n{config}"), &st);
    fpm.wait_workers(4);
    let script = hello(&fpm).display().to_string();
    let params = [
        ("REQUEST_METHOD", "GET"),
        ("SCRIPT_FILENAME", script.as_str()),
    ];
    for address in [&st, &dy, &od] {
        assert_eq!(request(address, &params).unwrap().status(), 200);
    }
    // The ondemand worker is stopped after its idle timeout, then nothing is due.
    wait_until("the ondemand worker is stopped", PATIENCE, || {
        fpm.worker_pids().len() == 4
    });
    wait_for_rest(
        &fpm,
        Duration::from_millis(1500),
        "after a request to each pool",
    );

    // At rest, a dynamic pool whose worker gets busy is short of spares: the busy worker
    // must wake the master, which starts one.
    let gate = Gate::new(&fpm);
    let held = gate.send(&dy, 1);
    wait_until("the dynamic pool starts a spare", PATIENCE, || {
        fpm.worker_pids().len() == 5
    });
    gate.open();
    join_all_ok(held);
    // Three idle spares are within pm.max_spare_servers: at rest again.
    wait_for_rest(
        &fpm,
        Duration::from_millis(1500),
        "after the dynamic pool grew",
    );
    assert_eq!(fpm.worker_pids().len(), 5);
}
