//! Shared test support: run the real `cgi-fpm` binary on a temporary config, wait for
//! conditions with deadlines, and clean up by pid whatever happens.
#![allow(dead_code)]

pub mod apache;
pub mod http;
pub mod nginx;
pub mod openmetrics;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use cgi_fpm::client::{Client, Response};

pub const BIN: &str = env!("CARGO_BIN_EXE_cgi-fpm");

/// The repository's example scripts.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cgi-bin")
}

/// Poll `condition` until it holds or `timeout` passes; panic saying what never happened.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    assert!(
        condition(),
        "timed out after {timeout:?} waiting until {what}"
    );
}

/// Whether a peer program is installed; outside CI a missing one skips the test (with a
/// message), in CI it fails it.
pub fn require_tool(tool: &str) -> bool {
    let found = which(tool).is_some();
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("{tool} is not installed, and CI requires it (scripts/install-test-deps.sh)");
        }
        eprintln!("SKIPPED: {tool} is not installed (run scripts/install-test-deps.sh)");
    }
    found
}

pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// A running cgi-fpm with its own directory: config, sockets, scripts and log.
pub struct Fpm {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub config: PathBuf,
    /// The master's stderr (its error log).
    pub log: PathBuf,
    /// The first pool's address, as the client's `connect` takes it.
    pub address: String,
}

/// A pool section for tests: a unix socket in the test dir, `workers` static workers,
/// scripts allowed from the test dir's www/ and the repo's examples.
pub fn pool_section(name: &str, dir: &Path, workers: u32, extra: &str) -> String {
    format!(
        "[{name}]\n\
         listen = {sock}\n\
         pm = static\n\
         pm.max_children = {workers}\n\
         cgi.allowed_roots = {www} {examples}\n\
         cgi.interpreter[.py] = /usr/bin/env python3\n\
         cgi.interpreter[.pl] = /usr/bin/perl\n\
         env[PATH] = /usr/local/bin:/usr/bin:/bin\n\
         {extra}\n",
        sock = dir.join(format!("{name}.sock")).display(),
        www = dir.join("www").display(),
        examples = examples_dir().display(),
    )
}

impl Fpm {
    /// One static pool `www` with `workers` workers and extra pool lines.
    pub fn start(workers: u32, extra: &str) -> Fpm {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("www")).expect("mkdir www");
        let config = format!(
            "[global]\n\n{}",
            pool_section("www", dir.path(), workers, extra)
        );
        let address = dir.path().join("www.sock").display().to_string();
        let fpm = Fpm::start_with(dir, &config, &address);
        fpm.wait_workers(workers as usize);
        fpm
    }

    /// Wait until the master has exactly `n` live workers.
    pub fn wait_workers(&self, n: usize) {
        wait_until(
            &format!("the master has {n} workers"),
            Duration::from_secs(10),
            || self.worker_pids().len() == n,
        );
    }

    /// Start on a full config text in `dir`, waiting until `address` answers.
    pub fn start_with(dir: tempfile::TempDir, config_text: &str, address: &str) -> Fpm {
        let fpm = Fpm::spawn(dir, config_text, address, &[]);
        fpm.wait_ready();
        fpm
    }

    /// Start and wait for the master's "ready" line without connecting to any socket (a
    /// probe connection would make an ondemand pool start a worker).
    pub fn start_untouched(dir: tempfile::TempDir, config_text: &str, address: &str) -> Fpm {
        let fpm = Fpm::spawn(dir, config_text, address, &[]);
        fpm.wait_for_log("ready to handle connections", Duration::from_secs(10));
        fpm
    }

    /// Start without waiting (for tests of start-up failures).
    pub fn spawn(dir: tempfile::TempDir, config_text: &str, address: &str, args: &[&str]) -> Fpm {
        Fpm::spawn_with_env(dir, config_text, address, args, &[])
    }

    /// [`Fpm::start_with`], with extra variables in the master's environment.
    pub fn start_with_env(
        dir: tempfile::TempDir,
        config_text: &str,
        address: &str,
        env: &[(&str, &str)],
    ) -> Fpm {
        let fpm = Fpm::spawn_with_env(dir, config_text, address, &[], env);
        fpm.wait_ready();
        fpm
    }

    /// [`Fpm::spawn`] with extra environment. As root (CI), `-R` lets pools that name no
    /// user run as root, as they do for anyone else; tests of `user` set it themselves.
    pub fn spawn_with_env(
        dir: tempfile::TempDir,
        config_text: &str,
        address: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Fpm {
        Fpm::spawn_program(Path::new(BIN), dir, config_text, address, args, env)
    }

    /// [`Fpm::spawn_with_env`], running the program at `program` (a copy of the binary,
    /// for tests that must change it under the running master).
    pub fn spawn_program(
        program: &Path,
        dir: tempfile::TempDir,
        config_text: &str,
        address: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Fpm {
        Fpm::launch(program, dir, config_text, address, args, |command| {
            command.envs(env.iter().copied());
        })
    }

    /// [`Fpm::spawn`], with the command adjusted first (limits in a `pre_exec`, say):
    /// the test process itself stays as it was.
    pub fn spawn_with_command(
        dir: tempfile::TempDir,
        config_text: &str,
        address: &str,
        args: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Fpm {
        Fpm::launch(Path::new(BIN), dir, config_text, address, args, adjust)
    }

    fn launch(
        program: &Path,
        dir: tempfile::TempDir,
        config_text: &str,
        address: &str,
        args: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Fpm {
        let config = dir.path().join("cgi-fpm.conf");
        fs::write(&config, config_text).expect("write config");
        let log = dir.path().join("master.log");
        let log_file = fs::File::create(&log).expect("create log");
        let as_root: &[&str] = if nix::unistd::geteuid().is_root() {
            &["-R"]
        } else {
            &[]
        };
        let mut command = Command::new(program);
        command
            .arg("-F")
            .arg("-y")
            .arg(&config)
            .args(as_root)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file);
        adjust(&mut command);
        let child = spawn_retrying_text_busy(&mut command);
        Fpm {
            dir,
            child: Some(child),
            config,
            log,
            address: address.to_string(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Write an executable script under www/ and return its path.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.path("www").join(name);
        fs::write(&path, body).expect("write script");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait for the master's log to contain `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("log never showed {needle:?}; log:\n{}", self.log_text());
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.probe_answered() && !self.worker_pids().is_empty() {
                return;
            }
            if let Some(status) = self.exit_status_now() {
                panic!(
                    "cgi-fpm exited during start ({status}); log:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "cgi-fpm did not answer on {} within 10s; log:\n{}",
                self.address,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A worker took a probe connection off the listen queue: it answered GET_VALUES, or
    /// closed a connection it refuses. A probe that only connected would stay queued and
    /// show up in the test's own figures (listen queue, active workers).
    fn probe_answered(&self) -> bool {
        let Ok(mut client) = Client::connect(&self.address, Duration::from_secs(1)) else {
            return false;
        };
        match client.get_values(&["FCGI_MAX_CONNS"]) {
            Ok(_) => true,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }

    fn exit_status_now(&self) -> Option<String> {
        // try_wait needs &mut; peek through /proc instead so callers can hold &self.
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        let state = stat.rsplit(')').next()?.split_whitespace().next()?;
        (state == "Z").then(|| "exited".to_string())
    }

    /// Wait for the master to exit and return its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// Send SIGUSR2 and wait until the new image is ready.
    pub fn reload(&self) {
        let ready = || {
            self.log_text()
                .matches("ready to handle connections")
                .count()
        };
        let before = ready();
        self.signal(nix::sys::signal::Signal::SIGUSR2);
        wait_until(
            "the reloaded master is ready",
            Duration::from_secs(15),
            || ready() > before,
        );
    }

    /// The master's direct children (its workers).
    pub fn worker_pids(&self) -> Vec<i32> {
        children_of(self.pid())
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.address, Duration::from_secs(30)).expect("connect to cgi-fpm")
    }

    /// A GET for an absolute script path with optional extra params.
    pub fn get(&self, script: &Path, extra: &[(&str, &str)]) -> Response {
        let script = script.display().to_string();
        let mut params = vec![
            ("REQUEST_METHOD", "GET"),
            ("SCRIPT_FILENAME", script.as_str()),
            ("REQUEST_URI", "/test"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
        ];
        params.extend_from_slice(extra);
        self.client()
            .request(&params, b"", false)
            .expect("FastCGI request")
    }
}

/// Spawn `command`, again while its program is "text file busy". A test that writes a
/// program (a copy of the binary, say) closes it before running it, but while it was open
/// for writing another test's thread may have forked: that child holds a copy of the write
/// descriptor until it execs, and exec refuses a file open for writing (ETXTBSY). No
/// flag prevents the inheritance (O_CLOEXEC acts only at exec), so wait it out.
pub fn spawn_retrying_text_busy(command: &mut Command) -> std::process::Child {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match command.spawn() {
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            spawned => return spawned.expect("start cgi-fpm"),
        }
    }
}

impl Drop for Fpm {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Direct children of `pid`, from /proc.
pub fn children_of(pid: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| parent_of(*p) == Some(pid))
        .collect()
}

/// A process's parent pid and whether it is still alive (not a zombie).
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?;
    if state == "Z" {
        return None;
    }
    fields.next()?.parse().ok()
}

pub fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// Resident set size in KiB.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Wait until the master holds at least `at_least` more descriptors than `baseline`: idle
/// kept connections parked with it (a worker that kept them instead would leave the count
/// unchanged).
pub fn wait_for_parked(fpm: &Fpm, baseline: usize, at_least: usize) {
    wait_until(
        &format!("the master holds {at_least} parked connection(s) (beyond {baseline} fds)"),
        Duration::from_secs(5),
        || open_fds(fpm.pid()) >= baseline + at_least,
    );
}

/// How often `pid` gave up the CPU of its own accord: for the master, each sleep in
/// epoll_wait it woke from (preemption under load is not counted).
pub fn voluntary_context_switches(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no voluntary_ctxt_switches for {pid}"))
}

/// The lowest descriptor number free in `pid`: where its next open or accept lands.
pub fn first_free_fd(pid: i32) -> u64 {
    let open: std::collections::HashSet<u64> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("the descriptors of {pid}: {e}"))
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !open.contains(n)).expect("a free number")
}

/// CPU time `pid` has used, in clock ticks (user + system).
pub fn cpu_ticks(pid: i32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    stat.rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum()
}

pub fn open_fds(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Bytes of the unlinked temporary files (the held-output spool) `pid` has open.
pub fn spooled_bytes(pid: i32) -> u64 {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.filter_map(Result::ok)
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.to_string_lossy().ends_with(" (deleted)"))
        })
        .filter_map(|fd| std::fs::metadata(fd.path()).ok())
        .filter(|meta| meta.is_file())
        .map(|meta| meta.len())
        .sum()
}

/// With `cgi.held_output_limit = 1M` and a client that sends no more body: over 0.7 s the
/// worker's spool file stays at the limit (plus at most one read and the in-memory part),
/// and the limit is logged once.
pub fn assert_held_output_capped_at_1_mib(fpm: &Fpm, worker: i32) {
    let mut most = 0;
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_millis(700) {
        most = most.max(spooled_bytes(worker));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(most > 0, "the held output went to a spool file");
    assert!(
        most <= (1 << 20) + (512 << 10),
        "the spool grew to {most} bytes past a 1 MiB limit"
    );
    assert_eq!(
        fpm.log_text().matches("cgi.held_output_limit").count(),
        1,
        "one log line"
    );
}
