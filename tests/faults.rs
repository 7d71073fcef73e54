//! Fault injection: workers killed mid-request, CGI children that crash or misbehave, web
//! servers that trickle, vanish or send too much. After each fault the pool serves again,
//! and the master's (and surviving workers') open descriptors and memory are as before.

mod common;

use cgi_fpm::fastcgi::params::write_pair;
use cgi_fpm::fastcgi::record::{RecordType, Role, write_begin_request, write_record};
use common::{Client, Fpm, alive, children_of, examples_dir, open_fds, rss_kib, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::Path;
use std::time::{Duration, Instant};

/// The master may allocate a little while logging and forking; a leak per connection or
/// per request shows as much more than this over the hundreds each test makes.
const RSS_TOLERANCE_KIB: u64 = 256;

/// What a fault must not change: the master's descriptors (exactly) and resident memory
/// (within a tolerance), and every worker: still alive (a fault that kills a worker is
/// not harmless because the master replaced it), with the same descriptors.
struct Footprint {
    master_fds: usize,
    master_rss: u64,
    worker_fds: Vec<(i32, usize)>,
}

impl Footprint {
    /// The footprint once the pool is at rest: two readings alike, no CGI child running
    /// (a worker closes its connection and reaps a moment after the client has its
    /// answer). Callers warm the workers up first, so their buffers exist already.
    fn at_rest(fpm: &Fpm) -> Footprint {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut previous = Footprint::take(fpm);
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = Footprint::take(fpm);
            let busy = now
                .worker_fds
                .iter()
                .any(|(w, _)| !children_of(*w).is_empty());
            if !busy
                && now.master_fds == previous.master_fds
                && now.worker_fds == previous.worker_fds
            {
                return now;
            }
            assert!(Instant::now() < deadline, "the pool never came to rest");
            previous = now;
        }
    }

    fn take(fpm: &Fpm) -> Footprint {
        Footprint {
            master_fds: open_fds(fpm.pid()),
            master_rss: rss_kib(fpm.pid()).expect("master RSS"),
            worker_fds: fpm
                .worker_pids()
                .into_iter()
                .map(|w| (w, open_fds(w)))
                .collect(),
        }
    }

    /// Compare once the pool is idle again (workers close a connection, then reap and
    /// release, a moment after the client has its answer).
    fn assert_unchanged(&self, fpm: &Fpm, workers: usize) {
        self.assert_unchanged_but_for(fpm, workers, &[]);
    }

    /// [`Footprint::assert_unchanged`] for a test that killed the workers in `killed`
    /// itself: only those may be gone.
    fn assert_unchanged_but_for(&self, fpm: &Fpm, workers: usize, killed: &[i32]) {
        fpm.wait_workers(workers);
        for (pid, _) in &self.worker_fds {
            assert!(
                killed.contains(pid) || common::alive(*pid),
                "worker {pid} died during the fault (it was replaced, but a fault must not \
                 kill a worker); log:\n{}",
                fpm.log_text()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = Footprint::take(fpm);
            let fds_same = now.master_fds == self.master_fds
                && self
                    .worker_fds
                    .iter()
                    .filter(|(pid, _)| !killed.contains(pid))
                    .all(|(pid, fds)| open_fds(*pid) == *fds);
            let report = format!(
                "master fds {} -> {}, RSS {} -> {} KiB; worker fds {:?} -> {:?}",
                self.master_fds,
                now.master_fds,
                self.master_rss,
                now.master_rss,
                self.worker_fds,
                now.worker_fds
            );
            if fds_same && now.master_rss <= self.master_rss + RSS_TOLERANCE_KIB {
                println!("footprint: {report}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the footprint did not return to its level before the fault: {report}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn hello() -> std::path::PathBuf {
    examples_dir().join("hello.sh")
}

/// Serve `n` requests so that every worker has run at least once (its buffers exist).
fn warm_up(fpm: &Fpm, n: usize) {
    for _ in 0..n {
        assert_eq!(fpm.get(&hello(), &[]).status(), 200);
    }
}

fn params_for(script: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("REQUEST_METHOD", "GET".to_string()),
        ("SCRIPT_FILENAME", script.display().to_string()),
        ("REQUEST_URI", "/fault".to_string()),
    ]
}

fn as_refs<'a>(params: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    params.iter().map(|(n, v)| (*n, v.as_str())).collect()
}

/// The worker (of `workers`) running a CGI child whose command line mentions `needle`,
/// and that child's pid.
fn worker_running(workers: &[i32], needle: &str) -> Option<(i32, i32)> {
    workers.iter().find_map(|&w| {
        children_of(w).into_iter().find_map(|c| {
            let mut cmdline = std::fs::read(format!("/proc/{c}/cmdline")).unwrap_or_default();
            cmdline
                .iter_mut()
                .filter(|b| **b == 0)
                .for_each(|b| *b = b' ');
            String::from_utf8_lossy(&cmdline)
                .contains(needle)
                .then_some((w, c))
        })
    })
}

/// The server closed the connection: end of stream, or a reset when it left bytes unread.
fn closed(client: &mut Client) -> bool {
    match client.read_record() {
        Ok(None) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(Some(_)) => false,
    }
}

#[test]
fn a_worker_killed_mid_request_fails_only_that_request() {
    let fpm = Fpm::start(2, "");
    warm_up(&fpm, 4);
    let before = Footprint::at_rest(&fpm);
    let doomed = fpm.script(
        "doomed.sh",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\nstarted\\n'\nexec sleep 30\n",
    );
    let survivor = fpm.script(
        "survivor.sh",
        "#!/bin/sh\nsleep 0.5\nprintf 'Content-Type: text/plain\\r\\n\\r\\nsurvived\\n'\n",
    );
    let workers = fpm.worker_pids();

    let address = fpm.address.clone();
    let doomed_params = params_for(&doomed);
    let doomed_request = std::thread::spawn(move || {
        let mut client = Client::connect(&address, Duration::from_secs(20)).unwrap();
        client.request(&as_refs(&doomed_params), b"", false)
    });
    let mut found = None;
    wait_until("a worker runs doomed.sh", Duration::from_secs(5), || {
        found = worker_running(&workers, "doomed.sh").or(worker_running(&workers, "sleep 30"));
        found.is_some()
    });
    let (victim, cgi) = found.unwrap();

    // The other request is in flight on the other worker when the first one is killed.
    let address = fpm.address.clone();
    let survivor_params = params_for(&survivor);
    let survivor_request = std::thread::spawn(move || {
        let mut client = Client::connect(&address, Duration::from_secs(20)).unwrap();
        client.request(&as_refs(&survivor_params), b"", false)
    });
    wait_until(
        "the other worker runs survivor.sh",
        Duration::from_secs(5),
        || worker_running(&workers, "survivor.sh").is_some(),
    );

    let killed_at = Instant::now();
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    wait_until(
        "the pool is back to 2 workers, without the killed one",
        Duration::from_secs(1),
        || {
            let now = fpm.worker_pids();
            now.len() == 2 && !now.contains(&victim)
        },
    );
    println!("pool refilled {:?} after the kill", killed_at.elapsed());

    let doomed_result = doomed_request.join().unwrap();
    assert!(
        doomed_result.is_err(),
        "the killed worker's request cannot complete: {doomed_result:?}"
    );
    let survived = survivor_request.join().unwrap().expect("the other request");
    assert_eq!(survived.status(), 200);
    assert_eq!(survived.body(), b"survived\n");
    wait_until(
        "the killed worker's CGI child is gone too",
        Duration::from_secs(2),
        || !common::alive(cgi),
    );
    fpm.wait_for_log(
        &format!("killed CGI process group {cgi} left by child {victim}"),
        Duration::from_secs(2),
    );
    warm_up(&fpm, 4);
    before.assert_unchanged_but_for(&fpm, 2, &[victim]);
}

#[test]
fn a_script_that_segfaults_gets_a_502_or_keeps_what_it_wrote() {
    let fpm = Fpm::start(1, "");
    warm_up(&fpm, 1);
    let before = Footprint::at_rest(&fpm);
    let silent = fpm.script("crash.sh", "#!/bin/sh\nkill -SEGV $$\n");
    let r = fpm.get(&silent, &[]);
    assert_eq!(r.status(), 502);
    assert_eq!(r.app_status, 128 + 11, "END_REQUEST carries 128 + SIGSEGV");
    fpm.wait_for_log("was killed by signal 11 (SIGSEGV)", Duration::from_secs(5));

    let midway = fpm.script(
        "crash-late.sh",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\npartial\\n'\nkill -SEGV $$\n",
    );
    let r = fpm.get(&midway, &[]);
    assert_eq!(r.status(), 200, "the header went out before the crash");
    assert_eq!(r.body(), b"partial\n");
    assert_eq!(r.app_status, 128 + 11);

    for _ in 0..20 {
        assert_eq!(fpm.get(&silent, &[]).status(), 502);
    }
    warm_up(&fpm, 1);
    before.assert_unchanged(&fpm, 1);
}

#[test]
fn a_script_that_writes_no_header_is_passed_through_and_harms_nothing() {
    let fpm = Fpm::start(1, "");
    warm_up(&fpm, 1);
    let before = Footprint::at_rest(&fpm);
    // The web server judges the header (nginx answers 502 to this); cgi-fpm passes the
    // bytes on as they are and completes the request.
    let headless = fpm.script("headless.sh", "#!/bin/sh\necho 'no header here'\n");
    for _ in 0..20 {
        let r = fpm.get(&headless, &[]);
        assert_eq!(r.stdout, b"no header here\n");
        assert_eq!(r.app_status, 0);
    }
    // And one that says nothing at all gets cgi-fpm's own 502.
    let mute = fpm.script("mute.sh", "#!/bin/sh\nexit 0\n");
    for _ in 0..20 {
        assert_eq!(fpm.get(&mute, &[]).status(), 502);
    }
    warm_up(&fpm, 1);
    before.assert_unchanged(&fpm, 1);
}

#[test]
fn a_script_that_exits_before_reading_its_body_still_answers() {
    let fpm = Fpm::start(1, "");
    warm_up(&fpm, 1);
    let before = Footprint::at_rest(&fpm);
    let hasty = fpm.script(
        "hasty.sh",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\nnot reading\\n'\n",
    );
    let script = hasty.display().to_string();
    let body = vec![b'b'; 4 << 20];
    let length = body.len().to_string();
    let mut client = fpm.client();
    let started = Instant::now();
    for _ in 0..3 {
        // Kept connection: the body the script ignored is drained, and the next request
        // on the same connection is read cleanly.
        let r = client
            .request(
                &[
                    ("REQUEST_METHOD", "POST"),
                    ("SCRIPT_FILENAME", &script),
                    ("CONTENT_LENGTH", &length),
                ],
                &body,
                true,
            )
            .expect("a response");
        assert_eq!(r.status(), 200);
        assert_eq!(r.body(), b"not reading\n");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    drop(client);
    warm_up(&fpm, 1);
    before.assert_unchanged(&fpm, 1);
}

#[test]
fn a_script_that_floods_stderr_does_not_hold_up_or_bloat_the_worker() {
    for (mode, to_client) in [("fastcgi", true), ("log", false), ("discard", false)] {
        let fpm = Fpm::start(1, &format!("cgi.stderr = {mode}"));
        warm_up(&fpm, 1);
        let before = Footprint::at_rest(&fpm);
        let worker = fpm.worker_pids()[0];
        let worker_rss = rss_kib(worker).unwrap();
        // 8 MiB of stderr in 64-byte lines, then a normal response.
        let noisy = fpm.script(
            "noisy.sh",
            "#!/bin/sh\n\
             head -c 8388608 /dev/zero | tr '\\0' 'e' | fold -w 63 >&2\n\
             printf 'Content-Type: text/plain\\r\\n\\r\\nloud but fine\\n'\n",
        );
        let started = Instant::now();
        let r = fpm.get(&noisy, &[]);
        assert_eq!(r.status(), 200, "cgi.stderr = {mode}");
        assert_eq!(r.body(), b"loud but fine\n");
        if to_client {
            assert_eq!(
                r.stderr.len(),
                8388608 + 8388608 / 63,
                "all of it, newlines too"
            );
        } else {
            assert!(r.stderr.is_empty(), "cgi.stderr = {mode}");
        }
        println!("cgi.stderr = {mode}: {:?}", started.elapsed());
        let grown = rss_kib(worker).unwrap().saturating_sub(worker_rss);
        assert!(
            grown < 4096,
            "cgi.stderr = {mode}: the worker grew by {grown} KiB"
        );
        warm_up(&fpm, 1);
        before.assert_unchanged(&fpm, 1);
    }
}

#[test]
fn a_slowloris_client_is_cut_off_by_the_header_deadline() {
    let fpm = Fpm::start(1, "cgi.request_header_timeout = 1s");
    warm_up(&fpm, 1);
    let before = Footprint::at_rest(&fpm);

    // Half a request: BEGIN_REQUEST and part of a PARAMS record, then silence.
    let mut head = Vec::new();
    write_begin_request(&mut head, 1, Role::Responder, 0);
    let mut params = Vec::new();
    write_pair(
        &mut params,
        b"SCRIPT_FILENAME",
        hello().to_str().unwrap().as_bytes(),
    );
    let mut record = Vec::new();
    write_record(&mut record, RecordType::Params, 1, &params);
    head.extend_from_slice(&record[..record.len() / 2]);

    let mut slow = fpm.client();
    let started = Instant::now();
    for byte in &head[..8] {
        // Trickled, as a slowloris does.
        slow.send_raw(std::slice::from_ref(byte)).unwrap();
    }
    slow.send_raw(&head[8..]).unwrap();
    assert!(slow.is_closed(), "the connection is closed");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "cut off after {waited:?}"
    );
    fpm.wait_for_log(
        "did not send a complete request within 1s",
        Duration::from_secs(2),
    );

    // A client that connects and sends nothing at all is cut off the same way.
    let mut mute = fpm.client();
    let started = Instant::now();
    assert!(mute.is_closed());
    assert!(started.elapsed() >= Duration::from_millis(900));

    // With the only worker free again, requests are served; an idle kept connection is
    // the web server's to hold, past the deadline.
    let mut kept = fpm.client();
    let hello = hello().display().to_string();
    let params = [
        ("REQUEST_METHOD", "GET"),
        ("SCRIPT_FILENAME", hello.as_str()),
    ];
    assert_eq!(kept.request(&params, b"", true).unwrap().status(), 200);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(kept.request(&params, b"", false).unwrap().status(), 200);
    drop((slow, mute, kept));
    warm_up(&fpm, 1);
    before.assert_unchanged(&fpm, 1);
}

#[test]
fn a_thousand_connections_that_connect_and_close() {
    let fpm = Fpm::start(2, "");
    warm_up(&fpm, 4);
    let before = Footprint::at_rest(&fpm);
    let mut partial = Vec::new();
    write_begin_request(&mut partial, 1, Role::Responder, 0);
    for i in 0..1000 {
        let mut client = fpm.client();
        // Some send part of a request before vanishing.
        if i % 3 == 0 {
            client.send_raw(&partial[..i % partial.len()]).unwrap();
        }
        drop(client);
    }
    warm_up(&fpm, 4);
    before.assert_unchanged(&fpm, 2);
    assert!(
        fpm.log_text()
            .lines()
            .filter(|l| l.contains("WARNING"))
            .count()
            < 5,
        "vanishing clients are not worth a warning each:\n{}",
        fpm.log_text()
    );
}

#[test]
fn oversized_params_are_refused_at_bounded_cost() {
    let fpm = Fpm::start(1, "");
    warm_up(&fpm, 1);
    let before = Footprint::at_rest(&fpm);
    let worker = fpm.worker_pids()[0];
    let worker_rss = rss_kib(worker).unwrap();
    let hello = hello().display().to_string();

    // Too many pairs, each small.
    let many: Vec<(String, String)> = (0..5000)
        .map(|i| (format!("HTTP_X_{i}"), "v".to_string()))
        .collect();
    // One value far over the size limit, sent in full records.
    let huge = "h".repeat(8 << 20);
    for params in [many, vec![("HTTP_X_HUGE".to_string(), huge)]] {
        let mut refs: Vec<(&str, &str)> = params
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        refs.push(("SCRIPT_FILENAME", &hello));
        let mut client = fpm.client();
        // The worker stops reading once over the limit, so the send may fail midway;
        // its answer is there to read either way.
        let _ = client.send_request(1, &refs, b"", false);
        let r = client.read_response(1).expect("an answer");
        assert_eq!(r.status(), 431);
        assert!(closed(&mut client), "the connection is closed");
    }
    fpm.wait_for_log("more than 4096 FastCGI params", Duration::from_secs(5));
    fpm.wait_for_log("FastCGI params larger than", Duration::from_secs(5));
    let grown = rss_kib(worker).unwrap().saturating_sub(worker_rss);
    assert!(grown < 4096, "the worker grew by {grown} KiB");
    warm_up(&fpm, 1);
    before.assert_unchanged(&fpm, 1);
}

#[test]
fn the_master_is_untouched_by_a_run_of_faults() {
    // All of the above against one master, to catch what accumulates.
    let fpm = Fpm::start(2, "");
    warm_up(&fpm, 4);
    let before = Footprint::at_rest(&fpm);
    let crash = fpm.script("crash.sh", "#!/bin/sh\nkill -SEGV $$\n");
    for round in 0..3 {
        for _ in 0..10 {
            assert_eq!(fpm.get(&crash, &[]).status(), 502);
        }
        let victim = fpm.worker_pids()[round % 2];
        kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
        wait_until("the pool is refilled", Duration::from_secs(2), || {
            let now = fpm.worker_pids();
            now.len() == 2 && !now.contains(&victim)
        });
        for _ in 0..100 {
            drop(fpm.client());
        }
        warm_up(&fpm, 4);
    }
    Footprint::at_rest(&fpm);
    let after_fds = open_fds(fpm.pid());
    assert_eq!(after_fds, before.master_fds, "master descriptors");
    let rss = rss_kib(fpm.pid()).unwrap();
    assert!(
        rss <= before.master_rss + RSS_TOLERANCE_KIB,
        "master RSS {} -> {rss} KiB",
        before.master_rss
    );
}

/// The master's event loop failing (epoll_wait) ends the master, and its workers with
/// it: left running, nobody would reap, replace or stop them. The failure is made from
/// outside through gdb, by putting /dev/null (the master's stdin) in place of its epoll
/// descriptor: epoll_wait then fails with EINVAL. One worker is busy with a long script:
/// an orphaned worker would finish it for up to 10 s (ORPHAN_GRACE) on its own; the
/// master's TERM stops it at once.
#[test]
fn a_failing_event_loop_takes_the_workers_with_it() {
    let Some(gdb) = common::which("gdb") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "gdb is missing (scripts/install-test-deps.sh installs it)"
        );
        eprintln!("skipped: gdb is missing");
        return;
    };
    let mut fpm = Fpm::start(2, "");
    let master = fpm.pid();
    let workers = fpm.worker_pids();
    // Whatever happens, no worker of ours outlives the test.
    struct KillOnDrop(Vec<i32>);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            for &pid in &self.0 {
                // Only if the pid is still one of ours, not reused since.
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains("cgi-fpm") {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }
    let _orphans = KillOnDrop(workers.clone());
    let long = fpm.script("long.sh", "#!/bin/sh\nsleep 30\n");
    let address = fpm.address.clone();
    let _busy = std::thread::spawn(move || {
        let path = long.display().to_string();
        Client::connect(&address, Duration::from_secs(40))
            .and_then(|mut c| c.request(&[("SCRIPT_FILENAME", &path)], b"", false))
    });
    wait_until(
        "a worker runs the long script",
        Duration::from_secs(10),
        || workers.iter().any(|&w| !children_of(w).is_empty()),
    );
    let epoll_fd = std::fs::read_dir(format!("/proc/{master}/fd"))
        .expect("the master's descriptors")
        .filter_map(|e| e.ok())
        .find(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|target| target.to_string_lossy() == "anon_inode:[eventpoll]")
        })
        .and_then(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .expect("the master's epoll descriptor");
    // gdb's inferior call fails now and then on this kernel ("Couldn't write extended
    // state status"), leaving the process as it was: try again until the descriptor is
    // no longer the epoll instance.
    let replaced = || {
        std::fs::read_link(format!("/proc/{master}/fd/{epoll_fd}")).map_or(true, |target| {
            target.to_string_lossy() != "anon_inode:[eventpoll]"
        })
    };
    let mut gdb_errors = String::new();
    for _ in 0..10 {
        if replaced() {
            break;
        }
        let out = std::process::Command::new(&gdb)
            .args(["-nx", "-batch", "-p", &master.to_string(), "-ex"])
            .arg(format!("call (int) dup2(0, {epoll_fd})"))
            .output()
            .expect("run gdb");
        gdb_errors.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    assert!(
        replaced(),
        "gdb never replaced the descriptor: {gdb_errors}"
    );
    let code = fpm.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(71), "log:\n{}", fpm.log_text());
    wait_until("the workers are gone", Duration::from_secs(6), || {
        workers.iter().all(|&pid| !alive(pid))
    });
    assert!(
        fpm.log_text().contains("epoll_wait failed"),
        "{}",
        fpm.log_text()
    );
}

#[test]
fn output_held_for_an_incomplete_body_stops_at_its_limit() {
    let fpm = Fpm::start(1, "cgi.held_output_limit = 1M");
    let worker = fpm.worker_pids()[0];
    // Writes without end, never reading its input.
    let flood = fpm.script(
        "flood.sh",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\nexec yes\n",
    );
    let flood = flood.display().to_string();
    let mut client = fpm.client();
    client
        .send_head(
            1,
            &[("SCRIPT_FILENAME", &flood), ("CONTENT_LENGTH", "100")],
            false,
        )
        .expect("head");
    client.send_stdin(1, &[b'x'; 10]).expect("10 bytes of 100");
    fpm.wait_for_log("cgi.held_output_limit", Duration::from_secs(5));
    // Without the limit `yes` spools hundreds of MiB a second; with it the spool stays
    // at the limit (plus at most one read and the in-memory part) and the script waits.
    common::assert_held_output_capped_at_1_mib(&fpm, worker);
    // The body completes: everything held comes out in order, and the script goes on.
    client.send_stdin(1, &[b'x'; 90]).expect("the rest");
    client.send_stdin(1, b"").expect("end of body");
    let mut got = Vec::new();
    while got.len() < (2 << 20) {
        match client.read_record().expect("output") {
            Some((RecordType::Stdout, 1, content)) => got.extend_from_slice(&content),
            Some(_) => {}
            None => break,
        }
    }
    let (head, body) = got.split_at(got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4);
    assert_eq!(head, b"Content-Type: text/plain\r\n\r\n");
    assert!(
        body.chunks(2).all(|pair| pair == b"y\n" || pair == b"y"),
        "in order"
    );
}

/// Median and worst time of `n` requests for hello.sh, one after the other.
fn latencies(fpm: &Fpm, n: usize) -> (Duration, Duration) {
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let started = Instant::now();
            assert_eq!(fpm.get(&hello(), &[]).status(), 200);
            started.elapsed()
        })
        .collect();
    times.sort();
    (times[n / 2], times[n - 1])
}

#[test]
fn slow_clients_wait_for_their_head_in_the_master_not_in_a_worker() {
    let fpm = Fpm::start(3, "cgi.request_header_timeout = 20s");
    warm_up(&fpm, 3);
    let (base_median, base_worst) = latencies(&fpm, 10);
    let master_fds = open_fds(fpm.pid());

    // 60 connections that trickle a request head: BEGIN_REQUEST, then a PARAMS record a
    // byte at a time.
    let mut head = Vec::new();
    write_begin_request(&mut head, 1, Role::Responder, 0);
    let mut params = Vec::new();
    write_pair(&mut params, b"SCRIPT_FILENAME", b"/srv/never/arrives.sh");
    write_record(&mut head, RecordType::Params, 1, &params);
    let mut slow: Vec<Client> = (0..60).map(|_| fpm.client()).collect();
    for client in &mut slow {
        client.send_raw(&head[..10]).expect("start a head");
    }
    // 20 kept connections, parked with the master after one request, then 3 bytes of
    // their next request.
    let script = hello().display().to_string();
    let mut kept: Vec<Client> = (0..20)
        .map(|_| {
            let mut c = fpm.client();
            let r = c
                .request(&[("SCRIPT_FILENAME", &script)], b"", true)
                .expect("first request on a kept connection");
            assert_eq!(r.status(), 200);
            c
        })
        .collect();
    for client in &mut kept {
        client
            .send_raw(&head[..3])
            .expect("3 bytes of the next request");
    }
    wait_until(
        "the master holds the 80 slow connections",
        Duration::from_secs(10),
        || open_fds(fpm.pid()) >= master_fds + 80,
    );
    let trickle = {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let rest = head[10..].to_vec();
        let thread = std::thread::spawn(move || {
            let mut at = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) && at < rest.len() {
                for client in &mut slow {
                    let _ = client.send_raw(&rest[at..at + 1]);
                }
                at += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            slow
        });
        (stop, thread)
    };
    let (median, worst) = latencies(&fpm, 10);
    println!(
        "hello.sh with 3 workers: median {base_median:?}, worst {base_worst:?} alone; \
         median {median:?}, worst {worst:?} beside 60 trickling and 20 half-sent kept connections"
    );
    assert!(
        median < base_median + Duration::from_millis(100),
        "slow clients delayed requests: median {median:?} (alone {base_median:?})"
    );
    assert!(worst < Duration::from_secs(2), "worst {worst:?}");
    trickle.0.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(trickle.1.join());
    // The kept connections still carry their request once it is complete.
    let mut rest = Vec::new();
    write_record(&mut rest, RecordType::Params, 1, &{
        let mut p = Vec::new();
        write_pair(&mut p, b"SCRIPT_FILENAME", script.as_bytes());
        p
    });
    let mut full = Vec::new();
    write_begin_request(&mut full, 1, Role::Responder, 1);
    full.extend_from_slice(&rest);
    cgi_fpm::fastcgi::record::write_stream_end(&mut full, RecordType::Params, 1);
    cgi_fpm::fastcgi::record::write_stream_end(&mut full, RecordType::Stdin, 1);
    let client = &mut kept[0];
    client
        .send_raw(&full[3..])
        .expect("the rest of the request");
    let r = client.read_response(1).expect("answered once complete");
    assert_eq!(r.status(), 200);
}
