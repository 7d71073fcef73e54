//! Hundreds of pools under one master and the descriptor limit: under a soft limit of
//! 1,024 with a higher hard limit every pool answers; with the hard limit at 1,024 too the
//! master refuses to start, `-t` refuses the configuration, and a reload to it is refused
//! while the old configuration keeps serving.

mod common;

use common::{BIN, Client, Fpm, wait_until};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const POOLS: usize = 300;
/// More than a hard limit of 1,024 allows (3 descriptors per pool, see `fdplan`).
const TOO_MANY: usize = 400;

/// `count` ondemand pools `p1`..`pN`, each on its own unix socket in `dir`.
fn many_pools(dir: &Path, count: usize) -> String {
    let mut text = String::from("[global]\n");
    for i in 1..=count {
        text.push_str(&format!(
            "[p{i}]\nlisten = {sock}\npm = ondemand\npm.max_children = 1\n\
             pm.process_idle_timeout = 2s\ncgi.allowed_roots = {www}\n",
            sock = dir.join(format!("p{i}.sock")).display(),
            www = dir.join("www").display(),
        ));
    }
    text
}

/// Run the spawned binary with these open-file limits; the test process keeps its own.
fn limit_files(command: &mut Command, soft: u64, hard: u64) {
    // SAFETY: setrlimit is a plain system call, safe between fork and exec.
    unsafe {
        command.pre_exec(move || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard)
                .map_err(std::io::Error::from)
        });
    }
}

fn setup(count: usize) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("www")).expect("mkdir www");
    let config = many_pools(dir.path(), count);
    (dir, config)
}

fn hello(fpm: &Fpm) -> std::path::PathBuf {
    fpm.script(
        "hello.sh",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\npool %s\\n' \"$POOL\"\n",
    )
}

fn ask(fpm: &Fpm, pool: usize, script: &Path) -> Result<String, String> {
    let address = fpm.path(&format!("p{pool}.sock")).display().to_string();
    let script = script.display().to_string();
    let mut client =
        Client::connect(&address, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
    let pool_name = format!("p{pool}");
    let response = client
        .request(
            &[
                ("REQUEST_METHOD", "GET"),
                ("SCRIPT_FILENAME", script.as_str()),
                ("REQUEST_URI", "/hello"),
                ("POOL", pool_name.as_str()),
            ],
            b"",
            false,
        )
        .map_err(|e| format!("request: {e}"))?;
    Ok(String::from_utf8_lossy(response.body()).into_owned())
}

#[test]
fn three_hundred_ondemand_pools_answer_under_a_soft_limit_of_1024() {
    let (dir, config) = setup(POOLS);
    let address = dir.path().join("p1.sock").display().to_string();
    let fpm = Fpm::spawn_with_command(dir, &config, &address, &[], |c| limit_files(c, 1024, 8192));
    fpm.wait_for_log("ready to handle connections", Duration::from_secs(20));
    let script = hello(&fpm);
    // Every pool, from a few threads: one cold start per pool.
    let fpm = &fpm;
    let script = &script;
    let failures: Vec<String> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                scope.spawn(move || {
                    (1..=POOLS)
                        .filter(|p| p % 4 == t)
                        .filter_map(|p| match ask(fpm, p, script) {
                            Ok(body) if body == format!("pool p{p}\n") => None,
                            Ok(body) => Some(format!("p{p} answered {body:?}")),
                            Err(e) => Some(format!("p{p}: {e}")),
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("thread"))
            .collect()
    });
    let log = fpm.log_text();
    assert!(
        failures.is_empty(),
        "{} of {POOLS} pools did not answer: {:?}; log tail:\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    assert!(
        log.contains("raised the soft limit of open files (RLIMIT_NOFILE) from 1024"),
        "the raise was not logged:\n{}",
        log.lines().take(5).collect::<Vec<_>>().join("\n")
    );
    assert!(!log.contains("EMFILE"), "descriptors ran out:\n{log}");
}

#[test]
fn too_many_pools_for_a_hard_limit_of_1024_are_refused_at_start_and_by_the_test() {
    let (dir, config) = setup(TOO_MANY);
    let address = dir.path().join("p1.sock").display().to_string();
    let mut fpm =
        Fpm::spawn_with_command(dir, &config, &address, &[], |c| limit_files(c, 1024, 1024));
    let code = fpm.wait_exit(Duration::from_secs(20));
    let log = fpm.log_text();
    assert_eq!(code, Some(78), "the master did not refuse to start:\n{log}");
    let expected = "not enough open files for 400 pool(s): the master needs at least";
    assert!(log.contains(expected), "no clear refusal:\n{log}");
    assert!(
        log.contains("but the hard limit of open files (RLIMIT_NOFILE) is 1024"),
        "{log}"
    );
    assert!(
        !log.contains("ready to handle connections"),
        "it said ready:\n{log}"
    );
    assert!(
        !fpm.path("p1.sock").exists(),
        "a socket was left behind after the refusal"
    );

    let mut test = Command::new(BIN);
    test.arg("-t").arg("-y").arg(&fpm.config);
    if nix::unistd::geteuid().is_root() {
        test.arg("-R");
    }
    limit_files(&mut test, 1024, 1024);
    let output = test.output().expect("run cgi-fpm -t");
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "-t passed:\n{text}");
    assert!(text.contains(expected), "-t gave no clear refusal:\n{text}");
    assert!(!text.contains("test is successful"), "{text}");

    // With the limit set in the configuration instead, the same figures are checked.
    let with_rlimit = std::fs::read_to_string(&fpm.config)
        .expect("read config")
        .replacen("[global]\n", "[global]\nrlimit_files = 1000\n", 1);
    std::fs::write(&fpm.config, with_rlimit).unwrap();
    let output = test.output().expect("run cgi-fpm -t");
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "-t passed:\n{text}");
    assert!(text.contains("but rlimit_files is 1000"), "{text}");
}

#[test]
fn a_reload_to_too_many_pools_is_refused_and_the_old_pools_keep_serving() {
    let (dir, config) = setup(3);
    let address = dir.path().join("p1.sock").display().to_string();
    let fpm = Fpm::spawn_with_command(dir, &config, &address, &[], |c| limit_files(c, 1024, 1024));
    fpm.wait_for_log("ready to handle connections", Duration::from_secs(10));
    let script = hello(&fpm);
    assert_eq!(ask(&fpm, 3, &script).as_deref(), Ok("pool p3\n"));
    let pid = fpm.pid();
    std::fs::write(&fpm.config, many_pools(fpm.dir.path(), TOO_MANY)).unwrap();
    fpm.signal(nix::sys::signal::Signal::SIGUSR2);
    fpm.wait_for_log(
        "reload aborted; the running configuration stays in effect",
        Duration::from_secs(10),
    );
    let log = fpm.log_text();
    assert!(
        log.contains("not enough open files for 400 pool(s)"),
        "the reason was not logged:\n{log}"
    );
    assert_eq!(fpm.pid(), pid);
    wait_until(
        "the old pools answer after the refused reload",
        Duration::from_secs(5),
        || ask(&fpm, 2, &script).as_deref() == Ok("pool p2\n"),
    );
    assert!(
        !fpm.path("p4.sock").exists(),
        "a pool of the refused config was opened"
    );
}

/// A static one-worker pool, `extra` added; returns the master and its one worker's pid.
fn one_worker(extra: &str) -> (Fpm, i32) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("www")).expect("mkdir www");
    let config = format!(
        "[global]\n{}",
        common::pool_section("www", dir.path(), 1, extra)
    );
    let address = dir.path().join("www.sock").display().to_string();
    let fpm = Fpm::start_untouched(dir, &config, &address);
    fpm.wait_workers(1);
    let worker = fpm.worker_pids()[0];
    (fpm, worker)
}

/// Whether a worker has finished setting up and waits for connections. The kernel tells
/// by the wait channel, or else by the system call it sits in; where it hides both, the
/// worker counts as settled once its descriptors stayed the same over several polls
/// while it slept.
#[derive(Default)]
struct Settled {
    last_fds: Option<Vec<String>>,
    unchanged: u32,
}

impl Settled {
    fn waits_for_connections(&mut self, pid: i32) -> bool {
        if let Ok(wchan) = std::fs::read_to_string(format!("/proc/{pid}/wchan"))
            && !wchan.is_empty()
            && wchan != "0"
        {
            return wchan.contains("epoll_wait");
        }
        if !EPOLL_WAITS.is_empty()
            && let Ok(syscall) = std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        {
            // "running" while it runs; else the number first.
            let number = syscall
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<i64>().ok());
            return number.is_some_and(|n| EPOLL_WAITS.contains(&n));
        }
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let sleeping = state
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('S'));
        let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
            .collect();
        fds.sort();
        if sleeping && self.last_fds.as_ref() == Some(&fds) {
            self.unchanged += 1;
        } else {
            self.unchanged = 0;
        }
        self.last_fds = Some(fds);
        self.unchanged >= 10
    }
}

/// epoll_wait, epoll_pwait and epoll_pwait2 in /proc/PID/syscall.
#[cfg(target_arch = "x86_64")]
const EPOLL_WAITS: &[i64] = &[232, 281, 441];
#[cfg(target_arch = "aarch64")]
const EPOLL_WAITS: &[i64] = &[22, 441];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const EPOLL_WAITS: &[i64] = &[];

/// Where the worker's descriptors end, measured on a worker without a limit of its own
/// once it waits for connections: the same configuration
/// lays them out the same way.
fn worker_first_free_fd() -> u64 {
    let (_fpm, worker) = one_worker("");
    // Blocked in epoll_wait: set up, and past closing what it inherited (among which
    // the master's own epoll).
    let mut settled = Settled::default();
    wait_until(
        "the worker waits for connections",
        Duration::from_secs(5),
        || settled.waits_for_connections(worker),
    );
    common::first_free_fd(worker)
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[test]
fn a_worker_out_of_descriptors_for_scripts_answers_503_at_once_and_logs_once() {
    // Room for the accepted connection, none for the script's pipes.
    let limit = worker_first_free_fd() + 1;
    let (fpm, _) = one_worker(&format!("rlimit_files = {limit}"));
    let script = hello(&fpm);
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let r = fpm.get(&script, &[]);
        assert_eq!(r.status(), 503, "{}", String::from_utf8_lossy(r.body()));
        assert!(started.elapsed() < Duration::from_secs(2), "slow 503");
    }
    let log = fpm.log_text();
    assert_eq!(
        count(&log, "out of descriptors, answering 503"),
        1,
        "not logged once per episode:\n{log}"
    );
}

#[test]
fn a_worker_out_of_descriptors_at_accept_backs_off_and_logs_once() {
    // No room even for the connection.
    let limit = worker_first_free_fd();
    let (fpm, worker) = one_worker(&format!("rlimit_files = {limit}"));
    let _waiting = Client::connect(&fpm.address, Duration::from_secs(5)).expect("connect");
    let fds = || {
        let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{worker}/fd"))
            .into_iter()
            .flatten()
            .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
            .collect();
        fds.sort();
        fds
    };
    wait_until(
        &format!("accept failed with limit {limit} (worker fds {:?})", fds()),
        Duration::from_secs(5),
        || fpm.log_text().contains("accept() failed"),
    );
    let cpu = || common::cpu_ticks(worker);
    let before = cpu();
    // Long enough for several retries at the growing backoff (10, 20, 40 ... ms).
    std::thread::sleep(Duration::from_millis(1500));
    let ticks = cpu() - before;
    assert!(ticks < 20, "the worker spun: {ticks} clock ticks in 1.5 s");
    let log = fpm.log_text();
    assert_eq!(
        count(&log, "accept() failed"),
        1,
        "not logged once per episode:\n{log}"
    );
}

#[test]
fn a_reload_to_1100_pools_raises_the_limit_before_opening_their_sockets() {
    const MANY: usize = 1100;
    let (dir, config) = setup(3);
    let address = dir.path().join("p1.sock").display().to_string();
    let fpm = Fpm::spawn_with_command(dir, &config, &address, &[], |c| limit_files(c, 1024, 8192));
    fpm.wait_for_log("ready to handle connections", Duration::from_secs(10));
    let script = hello(&fpm);
    std::fs::write(&fpm.config, many_pools(fpm.dir.path(), MANY)).unwrap();
    fpm.signal(nix::sys::signal::Signal::SIGUSR2);
    // The old image opens the new pools' sockets itself: under the old soft limit of
    // 1024 it ran out of descriptors part of the way and the reload was aborted.
    wait_until(
        "the last of 1100 pools answers after the reload",
        Duration::from_secs(30),
        || ask(&fpm, MANY, &script).as_deref() == Ok("pool p1100\n"),
    );
    let log = fpm.log_text();
    assert!(!log.contains("reload aborted"), "{log}");
    assert!(
        log.contains("raised the soft limit of open files (RLIMIT_NOFILE) from 1024"),
        "{log}"
    );
}
