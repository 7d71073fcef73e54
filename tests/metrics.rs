//! `metrics.listen`: the master's own HTTP endpoint, answered in its loop from the
//! scoreboards, never by a worker — so it answers while every worker of every pool is
//! busy, while idle clients hold connections open, and across a reload.

mod common;

use common::apache::free_port;
use common::{Fpm, openmetrics, pool_section, wait_until};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Two pools of one worker each, and the endpoint on a loopback port.
fn two_pools(global_extra: &str) -> (Fpm, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("www")).expect("mkdir");
    let metrics = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "[global]\nmetrics.listen = {metrics}\n{global_extra}\n{}{}",
        pool_section("alpha", dir.path(), 1, ""),
        pool_section("beta", dir.path(), 1, ""),
    );
    let address = dir.path().join("alpha.sock").display().to_string();
    let fpm = Fpm::start_with(dir, &config, &address);
    fpm.wait_workers(2);
    (fpm, metrics)
}

/// One HTTP exchange, read to the end (the endpoint closes).
fn exchange(address: &str, request: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(request.as_bytes())?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn get(address: &str, target: &str) -> String {
    exchange(
        address,
        &format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .expect("GET")
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// A script that holds its worker until the gate file exists.
fn gated(fpm: &Fpm) -> (PathBuf, PathBuf) {
    let gate = fpm.path("gate");
    let script = fpm.script(
        "gated.sh",
        &format!(
            "#!/bin/sh\nwhile [ ! -e {} ]; do sleep 0.02; done\nprintf 'Content-Type: text/plain\\r\\n\\r\\nok'\n",
            gate.display()
        ),
    );
    (gate, script)
}

fn send_gated(socket: PathBuf, script: PathBuf) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut client =
            common::Client::connect(&socket.display().to_string(), Duration::from_secs(30))
                .expect("connect");
        let script = script.display().to_string();
        let params = [
            ("REQUEST_METHOD", "GET"),
            ("SCRIPT_FILENAME", script.as_str()),
            ("REQUEST_URI", "/gated"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
        ];
        let _ = client.request(&params, b"", false);
    })
}

#[test]
fn metrics_for_every_pool_pass_a_strict_parser_while_every_worker_is_busy() {
    let (fpm, metrics) = two_pools("");
    let (gate, script) = gated(&fpm);
    let requests: Vec<_> = ["alpha", "beta"]
        .iter()
        .map(|pool| send_gated(fpm.path(&format!("{pool}.sock")), script.clone()))
        .collect();
    let mut text = String::new();
    wait_until(
        "both pools' only workers are running",
        Duration::from_secs(10),
        || {
            text = body(&get(&metrics, "/metrics")).to_string();
            text.matches("cgifpm_worker_state=\"running\"} 1").count() == 2
        },
    );
    let response = get(&metrics, "/metrics");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response.contains(
            "\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"
        ),
        "{response}"
    );
    let text = body(&response);
    let samples = openmetrics::check(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    openmetrics::python_cross_check(text);
    let value = |name: &str, labels: &[(&str, &str)]| {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.contains(&((*k).into(), (*v).into())))
            })
            .unwrap_or_else(|| panic!("no {name} {labels:?} in {text}"))
            .value
    };
    for pool in ["alpha", "beta"] {
        assert_eq!(value("cgifpm_active_processes", &[("pool", pool)]), 1.0);
        assert_eq!(value("cgifpm_idle_processes", &[("pool", pool)]), 0.0);
        assert_eq!(
            value("cgifpm_workers_started_total", &[("pool", pool)]),
            1.0
        );
        assert!(value("cgifpm_worker_request_duration_seconds", &[("pool", pool)]) > 0.0);
        // The start-up probe may have counted one already.
        assert!(value("cgifpm_worker_requests_total", &[("pool", pool)]) <= 1.0);
        assert_eq!(
            value(
                "cgifpm_worker_state",
                &[("pool", pool), ("cgifpm_worker_state", "running")]
            ),
            1.0
        );
        assert_eq!(
            value(
                "cgifpm_workers_died_total",
                &[("pool", pool), ("cause", "signaled")]
            ),
            0.0
        );
    }
    assert!(value("cgifpm_master_uptime_seconds", &[]) > 0.0);
    assert_eq!(value("cgifpm_master_reloads_total", &[]), 0.0);
    assert_eq!(value("cgifpm_master_emergency_restarts_total", &[]), 0.0);
    assert!(
        samples
            .iter()
            .any(|s| s.name == "cgifpm_parked_connections")
    );
    std::fs::write(&gate, b"").expect("open the gate");
    for r in requests {
        r.join().expect("request thread");
    }
}

#[test]
fn idle_clients_do_not_keep_metrics_from_answering() {
    let (_fpm, metrics) = two_pools("");
    // 40 connected clients that send nothing, and one that sends half a head.
    let mut idle: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(&metrics).expect("connect"))
        .collect();
    let mut trickle = TcpStream::connect(&metrics).expect("connect");
    trickle
        .write_all(b"GET /metrics HTTP/1.1\r\nHo")
        .expect("write");
    idle.push(trickle);
    for _ in 0..3 {
        let started = Instant::now();
        let response = get(&metrics, "/metrics");
        let took = started.elapsed();
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(body(&response).ends_with("# EOF\n"));
        assert!(took < Duration::from_secs(1), "/metrics took {took:?}");
    }
    // They are held to a deadline: the master closes them, unanswered.
    let mut first = idle.remove(0);
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    assert_eq!(
        first.read(&mut buf).expect("read"),
        0,
        "closed by the master"
    );
}

#[test]
fn status_ping_head_404_405_and_a_reload_keep_their_answers() {
    let (fpm, metrics) = two_pools("");
    let status = get(&metrics, "/status");
    assert!(
        status.contains("\r\nContent-Type: application/json\r\n"),
        "{status}"
    );
    let value: serde_json::Value = serde_json::from_str(body(&status)).expect("JSON");
    let pools: Vec<&str> = value["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .map(|p| p["pool"].as_str().expect("name"))
        .collect();
    assert_eq!(pools, ["alpha", "beta"]);
    assert_eq!(value["pools"][0]["total processes"], 1);
    assert!(value["pools"][0].get("processes").is_none());
    let full: serde_json::Value =
        serde_json::from_str(body(&get(&metrics, "/status?full"))).expect("JSON");
    assert_eq!(full["pools"][1]["processes"][0]["state"], "Idle");

    let ping = get(&metrics, "/ping");
    assert!(
        ping.starts_with("HTTP/1.1 200 OK\r\n") && ping.ends_with("\r\n\r\npong\n"),
        "{ping}"
    );
    let head = exchange(&metrics, "HEAD /metrics HTTP/1.1\r\n\r\n").expect("HEAD");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
    let missing = get(&metrics, "/metrics/x");
    assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
    let post = exchange(
        &metrics,
        "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    )
    .expect("POST");
    assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    assert!(post.contains("\r\nAllow: GET, HEAD\r\n"), "{post}");
    assert!(post.contains("\r\nConnection: close\r\n"), "{post}");

    // A reload keeps the socket (the very same one: handed over, not bound again) and
    // counts itself.
    let port = metrics.rsplit(':').next().expect("port");
    let before = tcp_listen_inode(port).expect("the endpoint's socket inode");
    let workers = fpm.worker_pids();
    fpm.signal(nix::sys::signal::Signal::SIGUSR2);
    wait_until("the reload counted", Duration::from_secs(10), || {
        exchange(&metrics, "GET /metrics HTTP/1.1\r\n\r\n")
            .is_ok_and(|r| r.contains("\ncgifpm_master_reloads_total 1\n"))
    });
    wait_until("new workers", Duration::from_secs(10), || {
        let now = fpm.worker_pids();
        now.len() == 2 && now.iter().all(|p| !workers.contains(p))
    });
    assert_eq!(
        tcp_listen_inode(port).as_ref(),
        Some(&before),
        "the socket was replaced"
    );
    // Workers never hold the endpoint's socket. A worker is a fork of the master and
    // holds every descriptor of it until its set-up closes them, first thing; it names
    // itself ("cgi-fpm: pool") only after that, so its descriptors are looked at then.
    let listener_inode = socket_inodes(fpm.pid());
    for worker in fpm.worker_pids() {
        wait_until(
            &format!("worker {worker} finishes its set-up"),
            Duration::from_secs(10),
            || {
                std::fs::read_to_string(format!("/proc/{worker}/comm"))
                    .is_ok_and(|name| name.starts_with("cgi-fpm: "))
            },
        );
        let theirs = socket_inodes(worker);
        let metrics_inode = tcp_listen_inode(port).expect("the endpoint's socket inode");
        assert!(listener_inode.contains(&metrics_inode));
        assert!(
            !theirs.contains(&metrics_inode),
            "worker {worker} holds the endpoint's socket"
        );
    }
}

fn socket_inodes(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.display().to_string();
                    Some(
                        l.strip_prefix("socket:[")?
                            .trim_end_matches(']')
                            .to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The inode of the listening TCP socket on 127.0.0.1:`port`, from /proc/net/tcp.
fn tcp_listen_inode(port: &str) -> Option<String> {
    let port: u16 = port.parse().ok()?;
    let wanted = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .ok()?
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(1) == Some(&wanted.as_str()) && f.get(3) == Some(&"0A"))
        .and_then(|f| f.get(9).map(|s| s.to_string()))
}

#[test]
fn metrics_allowed_clients_refuses_other_addresses() {
    let (fpm, metrics) = two_pools("metrics.allowed_clients = 192.0.2.1");
    // Refused means closed unanswered: an empty read (EOF), or a reset when the close
    // found the request unread. A timeout (the master never answered nor closed) or a
    // refused connect (nothing listening) is not the refusal this is about.
    let answer = exchange(&metrics, "GET /metrics HTTP/1.1\r\n\r\n");
    let refused = match &answer {
        Ok(text) => text.is_empty(),
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
    };
    assert!(
        refused,
        "a client not on the list was not closed unanswered: {answer:?}"
    );
    fpm.wait_for_log(
        "metrics.listen: Connection disallowed: IP address '127.0.0.1' has been dropped.",
        Duration::from_secs(5),
    );
}

/// The master's scoreboards of `slots` slots, mapped from its memfds as a reload's new
/// image would map them.
fn master_scoreboards(fpm: &Fpm, slots: usize) -> Vec<cgi_fpm::scoreboard::Scoreboard> {
    let dir = format!("/proc/{}/fd", fpm.pid());
    std::fs::read_dir(&dir)
        .expect("the master's fds")
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|l| l.to_string_lossy().contains("cgi-fpm scoreboard"))
        })
        .filter_map(|e| {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(e.path())
                .ok()?;
            cgi_fpm::scoreboard::Scoreboard::adopt(file.into()).ok()
        })
        .filter(|board| board.slot_count() == slots)
        .collect()
}

/// A slot a worker stopped writing half way through (descheduled or stopped): its
/// sequence counter, the first word of the `repr(C)` slot, left odd.
fn stall(slot: &cgi_fpm::scoreboard::Slot) {
    let seq = std::ptr::from_ref(slot).cast::<std::sync::atomic::AtomicU32>();
    // SAFETY: `Slot` is `repr(C)` and starts with its `AtomicU32` sequence counter; the
    // reference is valid for as long as `slot` is.
    unsafe { &*seq }.fetch_or(1, std::sync::atomic::Ordering::Release);
}

/// A scrape reads every slot in the master's loop, and a slot whose writer stalls mid-
/// write is waited for a while. Forty stalled slots must not hold the master forty
/// times that long: the whole scrape has one deadline.
#[test]
fn a_scrape_waits_once_for_stalled_slots_not_once_per_slot() {
    const SLOTS: usize = 40;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("www")).expect("mkdir");
    let metrics = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "[global]\nmetrics.listen = {metrics}\n\n{}",
        pool_section("wide", dir.path(), SLOTS as u32, "pm = ondemand"),
    );
    let address = dir.path().join("wide.sock").display().to_string();
    let fpm = Fpm::start_with(dir, &config, &address);
    let boards = master_scoreboards(&fpm, SLOTS);
    assert_eq!(boards.len(), 1, "the pool's scoreboard in the master's fds");
    let took = |what: &str| {
        let started = Instant::now();
        let page = get(&metrics, "/metrics");
        assert!(page.starts_with("HTTP/1.1 200"), "{what}: {page}");
        started.elapsed()
    };
    let settled = took("settled slots");
    for slot in boards[0].slots() {
        stall(slot);
    }
    let stalled = took("stalled slots");
    // One patience per slot would be 40 x 20 ms = 800 ms.
    assert!(
        stalled < Duration::from_millis(400),
        "a scrape of {SLOTS} stalled slots took {stalled:?} (settled: {settled:?})"
    );
}

/// Set `pid`'s soft limit on open files; returns the limits it had.
fn set_soft_nofile(pid: i32, soft: u64) -> (u64, u64) {
    let mut old = nix::libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a plain system call on two valid rlimit structs (one read, one written).
    let rc = unsafe {
        let mut current = std::mem::zeroed::<nix::libc::rlimit>();
        if nix::libc::prlimit(
            pid,
            nix::libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut current,
        ) != 0
        {
            -1
        } else {
            old = current;
            let new = nix::libc::rlimit {
                rlim_cur: soft,
                rlim_max: current.rlim_max,
            };
            nix::libc::prlimit(pid, nix::libc::RLIMIT_NOFILE, &new, std::ptr::null_mut())
        }
    };
    assert_eq!(rc, 0, "prlimit {pid}: {}", std::io::Error::last_os_error());
    (old.rlim_cur, old.rlim_max)
}

/// Out of descriptors, the endpoint cannot accept: the master must not spin on the
/// still-readable listener (it retries with a growing pause, logging once), and once
/// descriptors are free again the waiting scraper is answered.
#[test]
fn out_of_descriptors_the_endpoint_backs_off_and_answers_once_they_free_up() {
    let (fpm, metrics) = two_pools("");
    // A scrape first, so that whatever the endpoint opens once is open already.
    assert!(get(&metrics, "/metrics").starts_with("HTTP/1.1 200"));
    let master = fpm.pid();
    let (soft, _) = set_soft_nofile(master, common::first_free_fd(master));
    // Sent into the backlog: the master sees the listener readable and cannot accept.
    let mut scraper = TcpStream::connect(&metrics).expect("connect");
    scraper
        .write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    fpm.wait_for_log("metrics.listen: accept failed", Duration::from_secs(5));
    // Several retries (10, 20, 40 ... ms apart): each one a sleep the master wakes from.
    // A master that spins sleeps no more, but burns CPU: stop waiting then as well.
    let cpu = common::cpu_ticks(master);
    let woken = common::voluntary_context_switches(master);
    wait_until(
        "the master retries six times, or spins",
        Duration::from_secs(10),
        || {
            common::voluntary_context_switches(master) >= woken + 6
                || common::cpu_ticks(master) >= cpu + 50
        },
    );
    let spent = common::cpu_ticks(master) - cpu;
    assert!(
        spent < 20,
        "the master spun: {spent} clock ticks of CPU while it could not accept"
    );
    let log = fpm.log_text();
    assert_eq!(
        log.matches("metrics.listen: accept failed").count(),
        1,
        "not logged once per episode:\n{log}"
    );
    set_soft_nofile(master, soft);
    scraper
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut answer = String::new();
    scraper
        .read_to_string(&mut answer)
        .expect("the waiting scraper is answered");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    fpm.wait_for_log(
        "metrics.listen: accepting again after",
        Duration::from_secs(5),
    );
}
