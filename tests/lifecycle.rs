//! The daemon's life cycle: -D with its readiness promise, systemd's notify protocol and
//! socket activation.

mod common;

use common::{BIN, alive};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn pool(dir: &Path, extra: &str) -> String {
    common::pool_section("www", dir, 2, extra)
}

/// Stop a daemonized master we started, by the pid it wrote.
struct PidFileGuard(std::path::PathBuf);

impl Drop for PidFileGuard {
    fn drop(&mut self) {
        let Some(pid) = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        for _ in 0..500 {
            if !alive(pid) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[test]
fn dash_d_returns_only_once_the_socket_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("www")).expect("mkdir");
    let pid_file = dir.path().join("cgi-fpm.pid");
    let config = dir.path().join("cgi-fpm.conf");
    std::fs::write(
        &config,
        format!(
            "[global]\npid = {}\nerror_log = {}\n\n{}",
            pid_file.display(),
            dir.path().join("error.log").display(),
            pool(dir.path(), "")
        ),
    )
    .expect("write config");
    let _guard = PidFileGuard(pid_file.clone());
    let status = Command::new(BIN)
        .args(["-R", "-D", "-y"])
        .arg(&config)
        .stdin(Stdio::null())
        .status()
        .expect("run cgi-fpm -D");
    assert!(status.success(), "{status}");
    // The very moment the command returns, the pool answers.
    let socket = dir.path().join("www.sock");
    let mut client =
        common::Client::connect(socket.to_str().expect("path"), Duration::from_secs(10))
            .expect("the socket answers as soon as -D returns");
    let hello = common::examples_dir()
        .join("hello.sh")
        .display()
        .to_string();
    let r = client
        .request(&[("SCRIPT_FILENAME", &hello)], b"", false)
        .expect("request");
    assert_eq!(r.status(), 200);
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert!(alive(pid), "the daemon runs on");
    // It left the launching session.
    let sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid))).expect("getsid");
    assert_eq!(sid.as_raw(), pid, "the master leads its own session");
}

/// Workers close the report pipe of `-D` without reading /proc (close_range): with /proc
/// hidden, a worker forked before "ready" kept it open and the command never returned.
#[test]
fn dash_d_returns_without_proc() {
    if !nix::unistd::geteuid().is_root() || common::which("unshare").is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root with unshare (util-linux)"
        );
        eprintln!("skipped: hiding /proc needs root and unshare");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("www")).expect("mkdir");
    let pid_file = dir.path().join("cgi-fpm.pid");
    let config = dir.path().join("cgi-fpm.conf");
    std::fs::write(
        &config,
        format!(
            "[global]\npid = {}\nerror_log = {}\n\n{}",
            pid_file.display(),
            dir.path().join("error.log").display(),
            pool(dir.path(), "")
        ),
    )
    .expect("write config");
    let _guard = PidFileGuard(pid_file.clone());
    // An empty tmpfs over /proc, in a mount namespace of its own.
    let mut command = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs none /proc && exec \"$0\" \"$@\"")
        .arg(BIN)
        .args(["-R", "-D", "-y"])
        .arg(&config)
        .stdin(Stdio::null())
        .spawn()
        .expect("run cgi-fpm -D under unshare");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = command.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = command.kill();
            let _ = command.wait();
            panic!("cgi-fpm -D did not return within 10 s with /proc hidden");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status}");
    let socket = dir.path().join("www.sock");
    let hello = common::examples_dir()
        .join("hello.sh")
        .display()
        .to_string();
    let r = common::Client::connect(socket.to_str().expect("path"), Duration::from_secs(10))
        .expect("the socket answers")
        .request(&[("SCRIPT_FILENAME", &hello)], b"", false)
        .expect("request");
    assert_eq!(r.status(), 200);
}

#[test]
fn dash_d_with_a_start_failure_exits_non_zero_with_the_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A port another socket holds (which -t cannot know): the error comes from the
    // master, after the fork, and must still reach whoever ran the command.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let config = dir.path().join("cgi-fpm.conf");
    std::fs::write(
        &config,
        format!("[www]\nlisten = {address}\npm = static\npm.max_children = 1\n"),
    )
    .expect("write config");
    let out = Command::new(BIN)
        .args(["-R", "-D", "-y"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .expect("run cgi-fpm -D");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("start-up failed") && stderr.contains(&address),
        "{stderr}"
    );
}

#[test]
fn dash_d_with_a_bad_config_exits_non_zero_before_forking() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("cgi-fpm.conf");
    std::fs::write(&config, "[www]\nlisten = 9000\npm = sometimes\n").expect("write");
    let out = Command::new(BIN)
        .args(["-R", "-D", "-y"])
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'pm'"));
}

#[test]
fn systemd_notify_ready_status_and_watchdog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let notify = dir.path().join("notify.sock");
    let receiver = UnixDatagram::bind(&notify).expect("bind notify socket");
    receiver
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    std::fs::create_dir(dir.path().join("www")).expect("mkdir");
    let config = format!(
        "[global]\nsystemd_interval = 1s\n\n{}",
        pool(dir.path(), "")
    );
    let config_path = dir.path().join("cgi-fpm.conf");
    std::fs::write(&config_path, config).expect("write");
    let mut child = Command::new(BIN)
        .args(["-R", "-F", "-y"])
        .arg(&config_path)
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "400000")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start");
    let pid = child.id();
    let mut messages = Vec::new();
    let mut buf = [0u8; 4096];
    while messages
        .iter()
        .filter(|m: &&String| m.contains("WATCHDOG=1"))
        .count()
        < 2
    {
        match receiver.recv(&mut buf) {
            Ok(n) => messages.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) => {
                let _ = child.kill();
                panic!("notify messages stopped ({e}); got {messages:?}");
            }
        }
    }
    let ready = messages
        .iter()
        .find(|m| m.contains("READY=1"))
        .expect("READY=1");
    assert!(ready.contains(&format!("MAINPID={pid}")), "{ready}");
    let status = messages
        .iter()
        .find(|m| m.contains("Processes active:"))
        .expect("status line");
    assert!(status.contains("idle: 2"), "{status}");
    assert!(
        status.contains("Requests: 0, slow: 0, Traffic: "),
        "{status}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
    let mut stopping = false;
    while let Ok(n) = receiver.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 on SIGTERM");
    let _ = child.wait();
}

#[test]
fn socket_activation_uses_the_socket_systemd_passes() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("www")).expect("mkdir");
    let socket = dir.path().join("www.sock");
    // We create and own the socket, as systemd would.
    let listener = UnixListener::bind(&socket).expect("bind");
    let config_path = dir.path().join("cgi-fpm.conf");
    std::fs::write(&config_path, pool(dir.path(), "")).expect("write");
    let raw = listener.as_raw_fd();
    let log = std::fs::File::create(dir.path().join("log")).expect("log");
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" -R -F -y \"$1\"")
        .arg(BIN)
        .arg(&config_path)
        .stdin(Stdio::null())
        .stderr(log);
    // SAFETY: dup2 and fcntl are async-signal-safe. They put the socket at fd 3 without
    // close-on-exec, as sd_listen_fds expects; when it is fd 3 already, dup2 would be a
    // no-op that leaves close-on-exec set, so the flag is cleared directly.
    unsafe {
        cmd.pre_exec(move || {
            let rc = if raw == 3 {
                nix::libc::fcntl(3, nix::libc::F_SETFD, 0)
            } else {
                nix::libc::dup2(raw, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("start");
    let log_path = dir.path().join("log");
    let started = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !started().contains("ready to handle connections") {
        if std::time::Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
            let _ = child.kill();
            panic!(
                "cgi-fpm never became ready on the inherited socket; log:\n{}",
                started()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let log_text = std::fs::read_to_string(&log_path).expect("log");
    assert!(
        log_text.contains("using inherited socket fd=3"),
        "{log_text}"
    );
    let hello = common::examples_dir()
        .join("hello.sh")
        .display()
        .to_string();
    let mut client =
        common::Client::connect(socket.to_str().expect("path"), Duration::from_secs(10))
            .expect("connect");
    let r = client
        .request(&[("SCRIPT_FILENAME", &hello)], b"", false)
        .expect("request");
    assert_eq!(r.status(), 200);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
    let _ = child.wait();
    assert!(
        socket.exists(),
        "systemd's socket file is systemd's to remove"
    );
    drop(listener);
}

/// A master with two workers and `global` lines, on a unix socket in its own dir.
fn start_two_workers(global: &str) -> common::Fpm {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("www")).expect("mkdir www");
    let config = format!("[global]\n{global}\n{}", pool(dir.path(), ""));
    let address = dir.path().join("www.sock").display().to_string();
    let fpm = common::Fpm::start_with(dir, &config, &address);
    fpm.wait_workers(2);
    fpm
}

fn wait_gone(pids: &[i32], within: Duration, what: &str) {
    common::wait_until(what, within, || pids.iter().all(|&pid| !alive(pid)));
}

#[test]
fn workers_finish_their_request_and_exit_when_the_master_is_killed() {
    let mut fpm = start_two_workers("");
    let workers = fpm.worker_pids();
    let started = fpm.path("started");
    let script = fpm.script(
        "slow.sh",
        &format!(
            "#!/bin/sh\ntouch {}\nsleep 4\nprintf 'Content-Type: text/plain\\r\\n\\r\\nfinished\\n'\n",
            started.display()
        ),
    );
    let script = script.display().to_string();
    let mut client = fpm.client();
    client
        .send_request(1, &[("SCRIPT_FILENAME", &script)], b"", false)
        .expect("send");
    common::wait_until("the script runs", Duration::from_secs(5), || {
        started.exists()
    });
    fpm.signal(nix::sys::signal::Signal::SIGKILL);
    // Reaped here, so its pid is not taken for a worker's parent any more.
    let _ = fpm.wait_exit(Duration::from_secs(5));

    // Orphans close their listening sockets as soon as the kernel tells them, so a new
    // master can take over the socket while the request in hand is still running.
    common::wait_until(
        "nobody listens on the socket any more",
        Duration::from_millis(1500),
        || UnixStream::connect(&fpm.address).is_err(),
    );
    let config = std::fs::read_to_string(&fpm.config).expect("config");
    let again = tempfile::tempdir().expect("tempdir");
    let next = common::Fpm::start_with(again, &config, &fpm.address);
    let hello = common::examples_dir().join("hello.sh");
    assert_eq!(next.get(&hello, &[]).status(), 200);
    assert!(
        workers.iter().any(|&pid| alive(pid)),
        "the new master started while the request was still in hand"
    );

    let response = client
        .read_response(1)
        .expect("the request in hand completes");
    assert_eq!(response.body(), b"finished\n");
    wait_gone(
        &workers,
        Duration::from_secs(2),
        "every worker has exited after its master's death",
    );
    let log = fpm.log_text();
    assert!(
        log.contains("is gone; no longer accepting connections"),
        "{log}"
    );
}

#[test]
fn an_orphaned_worker_stops_a_stuck_script_after_process_control_timeout() {
    let mut fpm = start_two_workers("process_control_timeout = 1s");
    let workers = fpm.worker_pids();
    let pid_file = fpm.path("script.pid");
    let script = fpm.script(
        "stuck.sh",
        &format!(
            "#!/bin/sh\necho $$ > {}\nexec sleep 300\n",
            pid_file.display()
        ),
    );
    let script = script.display().to_string();
    let mut client = fpm.client();
    client
        .send_request(1, &[("SCRIPT_FILENAME", &script)], b"", false)
        .expect("send");
    let mut script_pid = 0;
    common::wait_until("the script runs", Duration::from_secs(5), || {
        script_pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        script_pid > 0
    });
    fpm.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = fpm.wait_exit(Duration::from_secs(5));
    // 1 s of grace, then TERM to the script (which sleep obeys at once).
    wait_gone(
        &[workers.as_slice(), &[script_pid]].concat(),
        Duration::from_secs(4),
        "the workers and the stuck script are gone",
    );
    assert!(
        client.read_response(1).is_err(),
        "no answer: the script was stopped"
    );
}

/// A start that fails at any step leaves none of the socket files it made: not the first
/// pool's, not its status pool's, whichever later step failed.
#[test]
fn a_failed_start_removes_every_socket_file_it_made() {
    // A port someone else listens on: the configuration cannot tell, the bind fails.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = busy.local_addr().expect("address");
    // Each case breaks one later step: (what, [global] lines, another pool, the error).
    let cases = [
        (
            "a later pool's socket",
            "",
            Some(busy.to_string()),
            "[pool b] listen 127.0.0.1",
        ),
        (
            "metrics.listen",
            "metrics.listen = DIR/taken\n",
            None,
            "ERROR: metrics.listen",
        ),
        (
            "the pid file",
            "pid = DIR/missing/fpm.pid\n",
            None,
            "failed to write the pid file",
        ),
    ];
    for (step, global, other, error) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("www")).expect("mkdir www");
        std::fs::write(dir.path().join("taken"), "not a socket").expect("write");
        let status = dir.path().join("a-status.sock");
        let status = format!("pm.status_listen = {}\n", status.display());
        let mut config = format!("[global]\n{global}");
        config.push_str(&common::pool_section("a", dir.path(), 1, &status));
        if let Some(address) = other {
            let b = common::pool_section("b", dir.path(), 1, "");
            let b_sock = dir.path().join("b.sock").display().to_string();
            config.push_str(&b.replacen(&b_sock, &address, 1));
        }
        let config = config.replace("DIR", &dir.path().display().to_string());
        let address = dir.path().join("a.sock").display().to_string();
        let mut fpm = common::Fpm::spawn(dir, &config, &address, &[]);
        let code = fpm.wait_exit(Duration::from_secs(20));
        let log = fpm.log_text();
        assert_eq!(code, Some(78), "{step}: the start did not fail:\n{log}");
        assert!(log.contains(error), "{step}: not the failure meant:\n{log}");
        for file in ["a.sock", "a-status.sock"] {
            assert!(
                !fpm.path(file).exists(),
                "{step}: {file} was left behind:\n{log}"
            );
        }
    }
}
