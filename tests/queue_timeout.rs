//! request_queue_timeout: a request that waits that long for a worker of a full pool is
//! answered 503 with Retry-After by the master (one log line, counted on the status page
//! and in /metrics); one whose worker frees up in time is served; below the limit nothing
//! changes. Over a unix socket and TCP, on a kept connection, across a reload, and behind
//! nginx.

mod common;

use common::apache::free_port;
use common::{Client, Fpm, pool_section, wait_until};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How late past its deadline a refusal may come on a loaded machine.
const SLACK: Duration = Duration::from_millis(500);

/// How the pool listens.
#[derive(Clone, Copy)]
enum Listen {
    Unix,
    Tcp,
}

/// One static pool `www` of one worker with `request_queue_timeout = {timeout}s`, and the
/// master's endpoint on a loopback port (it answers while the worker is busy).
struct Setup {
    fpm: Fpm,
    metrics: String,
    gate: PathBuf,
    gated: PathBuf,
}

impl Setup {
    fn start(listen: Listen, timeout_s: u32) -> Setup {
        Setup::start_with(listen, &format!("request_queue_timeout = {timeout_s}s\n"))
    }

    fn start_with(listen: Listen, extra: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("www")).expect("mkdir");
        let metrics = format!("127.0.0.1:{}", free_port());
        let mut pool = pool_section("www", dir.path(), 1, extra);
        let address = match listen {
            Listen::Unix => dir.path().join("www.sock").display().to_string(),
            Listen::Tcp => {
                let address = format!("127.0.0.1:{}", free_port());
                let unix = format!("listen = {}\n", dir.path().join("www.sock").display());
                pool = pool.replace(&unix, &format!("listen = {address}\n"));
                address
            }
        };
        let config = format!("[global]\nmetrics.listen = {metrics}\n\n{pool}");
        let fpm = Fpm::start_with(dir, &config, &address);
        fpm.wait_workers(1);
        let gate = fpm.path("gate");
        // Holds its worker until the gate file exists (at most 60 s).
        let gated = fpm.script(
            "gated.sh",
            &format!(
                "#!/bin/sh\necho $$ >> {}\ni=0\nwhile [ ! -e {} ] && [ $i -lt 3000 ]; do sleep 0.02; i=$((i+1)); done\nprintf 'Content-Type: text/plain\\r\\n\\r\\nreleased'\n",
                fpm.path("running").display(),
                gate.display()
            ),
        );
        Setup {
            fpm,
            metrics,
            gate,
            gated,
        }
    }

    /// The master's JSON status of pool www.
    fn status(&self) -> serde_json::Value {
        let response = http_get(&self.metrics, "/status");
        let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let all: serde_json::Value = serde_json::from_str(body).expect(body);
        all["pools"]
            .as_array()
            .and_then(|pools| pools.iter().find(|p| p["pool"] == "www"))
            .cloned()
            .unwrap_or_else(|| panic!("no pool www in {body}"))
    }

    /// Occupy the pool's only worker with the gated script, on a thread; returns once the
    /// worker runs it. Told by the script, not by the master: asking the master would
    /// wake it, and it must learn that the pool is full from the worker alone.
    fn occupy(&self) -> std::thread::JoinHandle<u16> {
        let handle = send(&self.fpm.address, &self.gated, false);
        let running = self.fpm.path("running");
        wait_until(
            "the worker runs the gated script",
            Duration::from_secs(10),
            || running.exists(),
        );
        handle
    }

    fn release(&self) {
        std::fs::write(&self.gate, b"").expect("open the gate");
    }

    fn refusals(&self) -> u64 {
        self.status()["queue refusals"]
            .as_u64()
            .expect("queue refusals")
    }
}

/// One HTTP exchange with the master's endpoint, read to the end.
fn http_get(address: &str, target: &str) -> String {
    let mut stream = TcpStream::connect(address).expect("connect to the endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .expect("write");
    let mut out = Vec::new();
    stream.read_to_end(&mut out).expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

fn params(script: &str) -> [(&str, &str); 4] {
    [
        ("REQUEST_METHOD", "GET"),
        ("SCRIPT_FILENAME", script),
        ("REQUEST_URI", "/queued"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
    ]
}

/// A GET for `script` on a new connection, on a thread; yields the status.
fn send(address: &str, script: &Path, keep_conn: bool) -> std::thread::JoinHandle<u16> {
    let address = address.to_string();
    let script = script.display().to_string();
    std::thread::spawn(move || {
        let mut client = Client::connect(&address, Duration::from_secs(30)).expect("connect");
        client
            .request(&params(&script), b"", keep_conn)
            .expect("response")
            .status()
    })
}

/// A GET for `script` on a new connection, timed from before the connect; on a thread.
fn timed(address: &str, script: &Path) -> std::thread::JoinHandle<(common::Response, Duration)> {
    let address = address.to_string();
    let script = script.display().to_string();
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut client = Client::connect(&address, Duration::from_secs(30)).expect("connect");
        let response = client
            .request(&params(&script), b"", false)
            .expect("response");
        (response, started.elapsed())
    })
}

fn hello() -> PathBuf {
    common::examples_dir().join("hello.sh")
}

/// The refusal the master writes: 503, Retry-After, a body, after the wait and not
/// before, and within the slack.
fn assert_refused(response: &common::Response, waited: Duration, timeout: Duration) {
    let text = String::from_utf8_lossy(&response.stdout);
    assert_eq!(response.status(), 503, "{text}");
    assert_eq!(
        response.header("Retry-After").as_deref(),
        Some(timeout.as_secs().to_string().as_str()),
        "{text}"
    );
    assert!(text.contains("The server is busy"), "{text}");
    assert!(
        waited >= timeout,
        "refused after {waited:?}, before {timeout:?}"
    );
    assert!(
        waited < timeout + SLACK,
        "refused after {waited:?}, more than {SLACK:?} past {timeout:?}"
    );
}

fn full_pool_refuses_after_the_wait_then_serves(listen: Listen) {
    let timeout = Duration::from_secs(2);
    let setup = Setup::start(listen, 2);
    // Two requests just before: the second finds the master awake with a round due
    // within the second, so only the last idle worker's ring can tell it that the pool
    // is full before the waiting request's arrival is stamped (a second late otherwise).
    for _ in 0..2 {
        assert_eq!(setup.fpm.get(&hello(), &[]).status(), 200);
    }
    let occupied = setup.occupy();
    // Nothing asks the master anything until the answer: see `occupy`.
    let waiting = timed(&setup.fpm.address, &hello());
    let (response, waited) = waiting.join().expect("waiting request");
    assert_refused(&response, waited, timeout);
    assert_eq!(setup.refusals(), 1);
    let metrics = http_get(&setup.metrics, "/metrics");
    assert!(
        metrics.contains("cgifpm_queue_refusals_total{pool=\"www\"} 1\n"),
        "{metrics}"
    );
    let log = setup.fpm.log_text();
    assert_eq!(log.matches("answered 503").count(), 1, "{log}");
    assert!(
        log.contains("WARNING: [pool www] GET /queued waited 2.") && log.contains("(2s)"),
        "{log}"
    );
    // The pool goes on as before.
    setup.release();
    assert_eq!(occupied.join().expect("gated request"), 200);
    let started = Instant::now();
    assert_eq!(setup.fpm.get(&hello(), &[]).status(), 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(setup.status()["listen queue"], 0);
    assert_eq!(setup.refusals(), 1);
}

#[test]
fn a_full_pool_on_a_unix_socket_answers_503_after_the_wait_then_serves() {
    full_pool_refuses_after_the_wait_then_serves(Listen::Unix);
}

#[test]
fn a_full_pool_on_tcp_answers_503_after_the_wait_then_serves() {
    full_pool_refuses_after_the_wait_then_serves(Listen::Tcp);
}

#[test]
fn a_request_whose_worker_frees_up_in_time_is_served() {
    let setup = Setup::start(Listen::Unix, 3);
    let occupied = setup.occupy();
    let waiting = timed(&setup.fpm.address, &hello());
    // While it waits, the master holds it and shows it in the listen queue.
    wait_until(
        "the listen queue shows the waiting request",
        Duration::from_secs(2),
        || setup.status()["listen queue"] == 1,
    );
    setup.release();
    let (response, waited) = waiting.join().expect("waiting request");
    assert_eq!(
        response.status(),
        200,
        "{}",
        String::from_utf8_lossy(&response.stdout)
    );
    assert!(waited < Duration::from_secs(3), "served after {waited:?}");
    assert_eq!(occupied.join().expect("gated request"), 200);
    assert_eq!(setup.refusals(), 0);
    assert!(!setup.fpm.log_text().contains("answered 503"));
}

/// Several waiting at once go to the worker oldest first as it frees up, each within its
/// own deadline: the first is served, those behind it that would wait too long are not.
#[test]
fn waiting_requests_are_served_oldest_first() {
    let setup = Setup::start(Listen::Unix, 5);
    let order = setup.fpm.path("order");
    let names = ["one", "two", "three"];
    let scripts: Vec<PathBuf> = names
        .iter()
        .map(|name| {
            setup.fpm.script(
                &format!("{name}.sh"),
                &format!(
                    "#!/bin/sh\necho {name} >> {}\nprintf 'Content-Type: text/plain\\r\\n\\r\\n{name}'\n",
                    order.display()
                ),
            )
        })
        .collect();
    let occupied = setup.occupy();
    let waiting: Vec<_> = scripts
        .iter()
        .enumerate()
        .map(|(n, script)| {
            let handle = timed(&setup.fpm.address, script);
            wait_until("the request waits", Duration::from_secs(2), || {
                setup.status()["listen queue"] == n + 1
            });
            handle
        })
        .collect();
    // The worker frees up and takes them one by one, in the order they came.
    setup.release();
    for handle in waiting {
        assert_eq!(handle.join().expect("waiting request").0.status(), 200);
    }
    assert_eq!(occupied.join().expect("gated request"), 200);
    let served = std::fs::read_to_string(&order).expect("order");
    assert_eq!(served, "one\ntwo\nthree\n");
    assert_eq!(setup.refusals(), 0);
}

/// An ondemand pool at pm.max_children is full the same way: the master, which watches
/// its socket anyway, takes and times what arrives.
#[test]
fn an_ondemand_pool_at_its_limit_answers_503_too() {
    let timeout = Duration::from_secs(1);
    let setup = Setup::start_with(
        Listen::Unix,
        "pm = ondemand\npm.process_idle_timeout = 60s\nrequest_queue_timeout = 1s\n",
    );
    assert_eq!(setup.status()["process manager"], "ondemand");
    let occupied = setup.occupy();
    let (response, waited) = timed(&setup.fpm.address, &hello()).join().expect("waiting");
    assert_refused(&response, waited, timeout);
    setup.release();
    assert_eq!(occupied.join().expect("gated request"), 200);
    assert_eq!(setup.fpm.get(&hello(), &[]).status(), 200);
    assert_eq!(setup.refusals(), 1);
}

/// A worker that frees up calls for the next waiting request at once: three quick ones
/// behind a slow one are all served well within a second of it (the master's round, once
/// a second, would take one a second).
#[test]
fn a_freed_worker_takes_the_waiting_requests_at_once() {
    let setup = Setup::start(Listen::Unix, 10);
    let occupied = setup.occupy();
    let waiting: Vec<_> = (0..3)
        .map(|n| {
            let handle = timed(&setup.fpm.address, &hello());
            wait_until("the request waits", Duration::from_secs(2), || {
                setup.status()["listen queue"] == n + 1
            });
            handle
        })
        .collect();
    let released = Instant::now();
    setup.release();
    assert_eq!(occupied.join().expect("gated request"), 200);
    for handle in waiting {
        let (response, _) = handle.join().expect("waiting request");
        assert_eq!(response.status(), 200);
    }
    let took = released.elapsed();
    assert!(
        took < Duration::from_millis(800),
        "served {took:?} after the release"
    );
}

/// The next request on a kept connection the master parked waits like a new connection's,
/// and, answered 503 whole, the connection serves the request after.
#[test]
fn a_kept_connections_next_request_is_timed_too() {
    let timeout = Duration::from_secs(1);
    let setup = Setup::start(Listen::Unix, 1);
    let mut kept = Client::connect(&setup.fpm.address, Duration::from_secs(30)).expect("connect");
    let hello = hello().display().to_string();
    let first = kept.request(&params(&hello), b"", true).expect("first");
    assert_eq!(first.status(), 200);
    let occupied = setup.occupy();
    let started = Instant::now();
    let refused = kept.request(&params(&hello), b"", true).expect("second");
    assert_refused(&refused, started.elapsed(), timeout);
    setup.release();
    assert_eq!(occupied.join().expect("gated request"), 200);
    let third = kept.request(&params(&hello), b"", true).expect("third");
    assert_eq!(third.status(), 200, "the kept connection goes on");
    assert_eq!(setup.refusals(), 1);
}

/// A reload hands the waiting connections to the new image with their arrival: the wait
/// goes on, it does not start again.
#[test]
fn a_reload_does_not_reset_a_wait() {
    let timeout = Duration::from_secs(2);
    let setup = Setup::start(Listen::Unix, 2);
    let occupied = setup.occupy();
    // Two wait: after the reload the new image's worker takes the older (the gated
    // script, so it stays busy), and the other waits on.
    let older = timed(&setup.fpm.address, &setup.gated);
    wait_until("one waits", timeout, || setup.status()["listen queue"] == 1);
    let sent = Instant::now();
    let younger = timed(&setup.fpm.address, &hello());
    wait_until("two wait", timeout, || setup.status()["listen queue"] == 2);
    // Halfway: a wait that started again at the reload would end a second too late.
    let halfway = sent + timeout / 2;
    wait_until("half the wait passes", timeout, || {
        Instant::now() >= halfway
    });
    setup.fpm.signal(nix::sys::signal::Signal::SIGUSR2);
    setup
        .fpm
        .wait_for_log("re-executing", Duration::from_secs(5));
    let (response, waited) = younger.join().expect("younger");
    assert_refused(&response, waited, timeout);
    setup.release();
    let (older, _) = older.join().expect("older");
    assert_eq!(older.status(), 200);
    assert_eq!(occupied.join().expect("gated request"), 200);
}

/// Off (the default), a request waits as long as it takes.
#[test]
fn without_the_setting_a_request_waits_for_its_worker() {
    let setup = Setup::start_with(Listen::Unix, "");
    let occupied = setup.occupy();
    let waiting = timed(&setup.fpm.address, &hello());
    wait_until("the request waits", Duration::from_secs(2), || {
        setup.status()["listen queue"] == 1
    });
    // Longer than any refusal in these tests would take.
    let until = Instant::now() + Duration::from_millis(2500);
    wait_until("time passes", Duration::from_secs(3), || {
        Instant::now() >= until
    });
    assert!(!waiting.is_finished(), "answered without a worker");
    setup.release();
    let (response, _) = waiting.join().expect("waiting request");
    assert_eq!(response.status(), 200);
    assert_eq!(occupied.join().expect("gated request"), 200);
    assert_eq!(setup.refusals(), 0);
}

/// nginx passes the 503 and its Retry-After on to its client.
#[test]
fn nginx_passes_the_503_on() {
    let setup = Setup::start(Listen::Unix, 1);
    let upstream = common::nginx::Upstream {
        server: format!("unix:{}", setup.fpm.address),
        keepalive: None,
    };
    let Some(nginx) = common::nginx::Nginx::start(&upstream, &setup.fpm.path("www")) else {
        eprintln!("skipping: nginx is not installed");
        return;
    };
    let socket = nginx.socket.clone();
    let occupied =
        std::thread::spawn(move || common::http::get(&socket, "/gated.sh").map(|r| r.status));
    wait_until(
        "the worker runs the gated script",
        Duration::from_secs(10),
        || setup.status()["active processes"] == 1,
    );
    std::fs::copy(hello(), setup.fpm.path("www/hello.sh")).expect("copy hello.sh");
    let started = Instant::now();
    let refused = common::http::get(&nginx.socket, "/hello.sh").expect("GET through nginx");
    let waited = started.elapsed();
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("Retry-After"), Some("1"));
    assert!(
        refused.text().contains("The server is busy"),
        "{}",
        refused.text()
    );
    assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(1) + SLACK);
    setup.release();
    assert_eq!(occupied.join().expect("gated").expect("gated GET"), 200);
    let served = common::http::get(&nginx.socket, "/hello.sh").expect("GET through nginx");
    assert_eq!(served.status, 200);
}
