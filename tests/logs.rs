//! Logs: the access log with every specifier, script stderr in the error log, log
//! rotation with SIGUSR1, and syslog.

mod common;

use common::{Fpm, wait_until};
use nix::sys::signal::Signal;
use std::path::Path;
use std::time::Duration;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn wait_for_file_text(path: &Path, needle: &str) -> String {
    wait_until(
        &format!("{} contains {needle:?}", path.display()),
        Duration::from_secs(10),
        || read(path).contains(needle),
    );
    read(path)
}

#[test]
fn an_access_format_using_every_specifier() {
    let logs = tempfile::tempdir().expect("tempdir");
    let access = logs.path().join("access.log");
    // Fields separated by '|' so each can be checked on its own.
    let format = "%%|%C|%{user}C|%{system}C|%d|%{mili}d|%{micro}d|%{HTTP_X_TRACE}e|%{NOPE}e|\
                  %f|%l|%m|%M|%{kilo}M|%{mega}M|%n|%{Content-Type}o|%{X-Missing}o|%p|%P|\
                  %q|%Q|%r|%R|%s|%{%Y}t|%t|%T|%u";
    let fpm = Fpm::start(
        1,
        &format!(
            "access.log = {}\naccess.format = \"{format}\"",
            access.display()
        ),
    );
    let script = fpm.script(
        "created.sh",
        "#!/bin/sh\ncat > /dev/null\nprintf 'Status: 201 Created\\r\\nContent-Type: text/x-test\\r\\n\\r\\nmade'\n",
    );
    let script_path = script.display().to_string();
    let r = fpm
        .client()
        .request(
            &[
                ("SCRIPT_FILENAME", &script_path),
                ("REQUEST_METHOD", "PUT"),
                ("REQUEST_URI", "/things/created.sh?k=v"),
                ("QUERY_STRING", "k=v"),
                ("CONTENT_LENGTH", "5"),
                ("REMOTE_ADDR", "198.51.100.9"),
                ("REMOTE_USER", "carol"),
                ("HTTP_X_TRACE", "abc-123"),
            ],
            b"hello",
            false,
        )
        .expect("request");
    assert_eq!(r.status(), 201);
    let text = wait_for_file_text(&access, "|carol\n");
    let line = text.lines().next().expect("one line");
    let f: Vec<&str> = line.split('|').collect();
    assert_eq!(f.len(), 29, "{line}");
    let number = |s: &str| s.parse::<f64>().is_ok();
    assert_eq!(f[0], "%");
    assert!(
        f[1..4].iter().all(|v| number(v) && v.contains('.')),
        "CPU %: {line}"
    );
    assert!(
        number(f[4]) && f[4].split('.').nth(1).map(str::len) == Some(3),
        "%d: {line}"
    );
    assert!(
        number(f[5]) && number(f[6]) && !f[6].contains('.'),
        "{line}"
    );
    assert_eq!(f[7], "abc-123");
    assert_eq!(f[8], "-");
    assert_eq!(f[9], script_path);
    assert_eq!(f[10], "5");
    assert_eq!(f[11], "PUT");
    let bytes: u64 = f[12].parse().expect("%M bytes");
    assert!(
        bytes > 100_000,
        "peak RSS of a shell is more than 100 kB: {line}"
    );
    assert_eq!(f[13].parse::<u64>().ok(), Some(bytes / 1024));
    assert_eq!(f[14].parse::<u64>().ok(), Some(bytes / 1024 / 1024));
    assert_eq!(f[15], "www");
    assert_eq!(f[16], "text/x-test");
    assert_eq!(f[17], "-");
    let workers = fpm.worker_pids();
    assert!(workers.contains(&f[18].parse().expect("%p")), "{line}");
    assert_eq!(f[19], fpm.pid().to_string());
    assert_eq!(f[20], "k=v");
    assert_eq!(f[21], "?");
    assert_eq!(f[22], "/things/created.sh");
    assert_eq!(f[23], "198.51.100.9");
    assert_eq!(f[24], "201");
    assert_eq!(f[25].len(), 4, "%{{%Y}}t: {line}");
    assert!(f[26].contains('/') && f[26].contains(':'), "%t: {line}");
    assert!(f[27].contains('/') && f[27].contains(':'), "%T: {line}");
    assert_eq!(f[28], "carol");
}

#[test]
fn suppressed_paths_are_not_logged_when_they_succeed() {
    let logs = tempfile::tempdir().expect("tempdir");
    let access = logs.path().join("access.log");
    let fpm = Fpm::start(
        1,
        &format!(
            "access.log = {}\naccess.format = \"%r %s\"\naccess.suppress_path[] = /health",
            access.display()
        ),
    );
    let hello = common::examples_dir().join("hello.sh");
    fpm.get(&hello, &[("REQUEST_URI", "/health?probe=1")]);
    fpm.get(&fpm.path("www/missing.sh"), &[("REQUEST_URI", "/health")]);
    fpm.get(&hello, &[("REQUEST_URI", "/page")]);
    let text = wait_for_file_text(&access, "/page 200");
    assert_eq!(text, "/health 404\n/page 200\n");
}

#[test]
fn status_and_ping_requests_are_logged_too() {
    // cgi-fpm.conf(5): one line per request, as php-fpm writes for its own pages too.
    let logs = tempfile::tempdir().expect("tempdir");
    let access = logs.path().join("access.log");
    let fpm = Fpm::start(
        1,
        &format!(
            "access.log = {}\naccess.format = \"%r %s %{{Content-Type}}o\"\n\
             pm.status_path = /status\nping.path = /ping\nping.response = pong",
            access.display()
        ),
    );
    let page = |uri: &str| {
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        fpm.get(
            Path::new("/nonexistent"),
            &[
                ("REQUEST_URI", uri),
                ("SCRIPT_NAME", path),
                ("QUERY_STRING", query),
            ],
        )
    };
    assert_eq!(page("/ping").body(), b"pong");
    page("/status?json");
    let hello = common::examples_dir().join("hello.sh");
    fpm.get(&hello, &[("REQUEST_URI", "/page")]);
    let text = wait_for_file_text(&access, "/page 200");
    assert_eq!(
        text,
        "/ping 200 text/plain\n/status 200 application/json\n/page 200 text/plain\n"
    );
}

#[test]
fn a_100_kib_stderr_line_arrives_whole() {
    let fpm = Fpm::start(1, "cgi.stderr = log");
    let script = fpm.script(
        "noisy.sh",
        "#!/bin/sh\nhead -c 102400 /dev/zero | tr '\\0' 'x' >&2\necho >&2\necho short line >&2\n\
         printf 'Content-Type: text/plain\\r\\n\\r\\nok'\n",
    );
    let r = fpm.get(&script, &[]);
    assert_eq!(r.body(), b"ok");
    assert!(
        r.stderr.is_empty(),
        "cgi.stderr = log sends nothing to the web server"
    );
    fpm.wait_for_log("said into stderr: \"short line\"", Duration::from_secs(5));
    let log = fpm.log_text();
    let long: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("said into stderr: \"xxx"))
        .collect();
    assert_eq!(long.len(), 1, "one entry for the long line");
    // Count only inside the quoted message: the temp dir in the script path may hold an 'x' too.
    let message = long[0]
        .split("said into stderr: \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default();
    assert_eq!(message.len(), 102_400, "the whole line, not wrapped or cut");
    assert!(message.bytes().all(|b| b == b'x'), "nothing but the line");
    assert!(long[0].contains(&format!("script '{}'", script.display())));
}

#[test]
fn stderr_both_goes_to_the_web_server_and_the_log() {
    let fpm = Fpm::start(1, "cgi.stderr = both");
    let script = fpm.script(
        "warn.sh",
        "#!/bin/sh\necho careful >&2\nprintf 'Content-Type: text/plain\\r\\n\\r\\nok'\n",
    );
    let r = fpm.get(&script, &[]);
    assert_eq!(r.stderr, b"careful\n");
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "Content-Type: text/plain\r\n\r\nok",
        "the response itself is untouched"
    );
    fpm.wait_for_log("said into stderr: \"careful\"", Duration::from_secs(5));
}

/// One static worker with `pool_extra`, under a `[global]` section holding `global_extra`.
fn start_with_global(global_extra: &str, pool_extra: &str) -> Fpm {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("www")).expect("mkdir");
    let config = format!(
        "[global]\n{global_extra}\n\n{}",
        common::pool_section("www", dir.path(), 1, pool_extra)
    );
    let address = dir.path().join("www.sock").display().to_string();
    Fpm::start_with(dir, &config, &address)
}

/// A script that writes one stderr line of `len` copies of `byte`, then answers "ok".
fn long_line_script(fpm: &Fpm, len: usize, byte: char) -> std::path::PathBuf {
    fpm.script(
        "noisy.sh",
        &format!(
            "#!/bin/sh\nhead -c {len} /dev/zero | tr '\\0' '{byte}' >&2\necho >&2\n\
             printf 'Content-Type: text/plain\\r\\n\\r\\nok'\n"
        ),
    )
}

/// The one log line holding `needle`, split into what was kept of the entry's message
/// (after the level label, or the whole line when undecorated) and the note's figure.
fn cut_entry(log: &str, needle: &str, label: &str) -> (String, usize) {
    let entries: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
    assert_eq!(entries.len(), 1, "one entry for the line, not several");
    let message = match entries[0].split_once(label) {
        Some((_, rest)) => rest,
        None => entries[0],
    };
    let (kept, note) = message
        .rsplit_once("... [")
        .unwrap_or_else(|| panic!("no cut note in {:.200}", message));
    let figure = note
        .strip_suffix(" more bytes cut at log_limit]")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad note [{note}"));
    (kept.to_string(), figure)
}

#[test]
fn log_limit_cuts_an_entry_without_splitting_it() {
    let fpm = start_with_global("log_limit = 600", "cgi.stderr = log");
    let script = long_line_script(&fpm, 5000, 'y');
    fpm.get(&script, &[]);
    fpm.wait_for_log("cut at log_limit]", Duration::from_secs(5));
    let (kept, figure) = cut_entry(&fpm.log_text(), "yyyyyyyy", "WARNING: ");
    assert_eq!(kept.len(), 600, "the message is cut at log_limit");
    // The whole message would be its prefix, the 5000 bytes and the closing quote.
    let prefix = kept
        .find("stderr: \"")
        .expect("the line starts in the entry")
        + 9;
    assert_eq!(
        figure,
        prefix + 5000 + 1 - 600,
        "the note counts what was cut"
    );
}

#[test]
fn the_cut_note_counts_a_line_longer_than_the_read_buffer() {
    // Default log_limit (1 MiB), a 2 MiB line: it arrives in many pipe reads, and the note
    // must count every byte past the limit, not the last read's.
    let fpm = Fpm::start(1, "cgi.stderr = log");
    let script = long_line_script(&fpm, 2 << 20, 'q');
    assert_eq!(fpm.get(&script, &[]).body(), b"ok");
    fpm.wait_for_log("cut at log_limit]", Duration::from_secs(10));
    let (kept, figure) = cut_entry(&fpm.log_text(), "qqqqqqqq", "WARNING: ");
    assert_eq!(kept.len(), 1 << 20);
    let prefix = kept
        .find("stderr: \"")
        .expect("the line starts in the entry")
        + 9;
    assert_eq!(figure, prefix + (2 << 20) + 1 - (1 << 20));
}

#[test]
fn captured_stderr_is_a_warning_that_log_level_error_drops() {
    // cgi-fpm.conf(5): each captured stderr line is a WARNING entry; undecorated lines
    // are kept whatever the level.
    let fpm = start_with_global("log_level = error", "cgi.stderr = log");
    let script = fpm.script(
        "warn.sh",
        "#!/bin/sh\necho 'dropped line' >&2\nprintf 'Content-Type: text/plain\\r\\n\\r\\nok'\n",
    );
    assert_eq!(fpm.get(&script, &[]).body(), b"ok");
    let undecorated = start_with_global(
        "log_level = error",
        "catch_workers_output = yes\ndecorate_workers_output = no",
    );
    let script = undecorated.script(
        "warn.sh",
        "#!/bin/sh\necho 'kept line' >&2\nprintf 'Content-Type: text/plain\\r\\n\\r\\nok'\n",
    );
    assert_eq!(undecorated.get(&script, &[]).body(), b"ok");
    undecorated.wait_for_log("kept line", Duration::from_secs(5));
    // The first pool's worker logged (or dropped) its line before it answered.
    assert!(
        !fpm.log_text().contains("dropped line"),
        "{}",
        fpm.log_text()
    );
}

#[test]
fn log_limit_cuts_undecorated_worker_output_too() {
    let fpm = start_with_global(
        "log_limit = 512",
        "catch_workers_output = yes\ndecorate_workers_output = no",
    );
    let script = long_line_script(&fpm, 2000, 'z');
    assert_eq!(fpm.get(&script, &[]).body(), b"ok");
    fpm.wait_for_log("cut at log_limit]", Duration::from_secs(5));
    let (kept, figure) = cut_entry(&fpm.log_text(), "zzzzzzzz", "\u{0}");
    assert_eq!(
        kept,
        "z".repeat(512),
        "the line as written, cut at log_limit"
    );
    assert_eq!(figure, 2000 - 512);
}

#[test]
fn sigusr1_reopens_moved_log_files() {
    let logs = tempfile::tempdir().expect("tempdir");
    let error_log = logs.path().join("error.log");
    let access = logs.path().join("access.log");
    let slow = logs.path().join("slow.log");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("www")).expect("mkdir");
    let config = format!(
        "[global]\nerror_log = {}\n\n{}",
        error_log.display(),
        common::pool_section(
            "www",
            dir.path(),
            2,
            &format!(
                "access.log = {}\naccess.format = \"%r\"\nslowlog = {}\nrequest_slowlog_timeout = 5s",
                access.display(),
                slow.display()
            )
        )
    );
    let address = dir.path().join("www.sock").display().to_string();
    let fpm = Fpm::start_with(dir, &config, &address);
    let hello = common::examples_dir().join("hello.sh");
    fpm.get(&hello, &[("REQUEST_URI", "/before")]);
    wait_for_file_text(&access, "/before\n");
    wait_for_file_text(&error_log, "ready to handle connections");

    // What logrotate does: move the files away, then signal.
    for f in [&error_log, &access, &slow] {
        std::fs::rename(f, f.with_extension("log.1")).expect("mv");
    }
    let workers = fpm.worker_pids();
    fpm.signal(Signal::SIGUSR1);
    wait_for_file_text(&error_log, "log files reopened");
    // Workers restart to take the new files; wait for a full set of new ones.
    wait_until(
        "every worker has been replaced",
        Duration::from_secs(10),
        || {
            let now = fpm.worker_pids();
            now.len() == 2 && now.iter().all(|p| !workers.contains(p))
        },
    );
    fpm.get(&hello, &[("REQUEST_URI", "/after")]);
    wait_for_file_text(&access, "/after\n");
    assert!(slow.exists(), "the slowlog was reopened too");
    let old_access = read(&access.with_extension("log.1"));
    assert_eq!(old_access, "/before\n", "nothing more in the moved file");
    assert!(read(&error_log.with_extension("log.1")).contains("reopening log files"));
}

#[test]
fn error_log_to_syslog() {
    use std::os::unix::net::UnixDatagram;
    // glibc's syslog() always writes to /dev/log. Where nothing listens there, the test
    // listens there itself; where a syslog daemon does, the master runs in a private mount
    // namespace with the test's socket bound over /dev/log. Both need root.
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "intercepting syslog needs root, and CI runs as root"
        );
        eprintln!("SKIPPED: intercepting syslog (/dev/log) needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("www")).expect("mkdir");
    let dev_log = Path::new("/dev/log");
    struct Cleanup(Option<&'static Path>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Some(path) = self.0 {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    let (receiver, _cleanup, private_log) = if dev_log.exists() {
        let socket = dir.path().join("log.sock");
        let receiver = UnixDatagram::bind(&socket).expect("bind the test's log socket");
        (receiver, Cleanup(None), Some(socket))
    } else {
        let receiver = UnixDatagram::bind(dev_log).expect("bind /dev/log");
        (receiver, Cleanup(Some(Path::new("/dev/log"))), None)
    };
    receiver
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let config = format!(
        "[global]\nerror_log = syslog\nsyslog.ident = cgifpm-test\nsyslog.facility = local3\n\n{}",
        common::pool_section("www", dir.path(), 1, "")
    );
    let address = dir.path().join("www.sock").display().to_string();
    let fpm = Fpm::spawn_with_command(dir, &config, &address, &[], |command| {
        if let Some(socket) = &private_log {
            bind_over_dev_log(command, socket);
        }
    });
    fpm.wait_ready();
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    while let Ok(n) = receiver.recv(&mut buf) {
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = msg.contains("ready to handle connections");
        seen.push(msg);
        if done {
            break;
        }
    }
    let ready = seen
        .iter()
        .find(|m| m.contains("ready to handle connections"))
        .unwrap_or_else(|| panic!("no ready message over syslog: {seen:?}"));
    // <PRI>: local3 (19) * 8 + notice (5) = 157.
    assert!(ready.starts_with("<157>"), "{ready}");
    assert!(ready.contains("cgifpm-test["), "{ready}");
    assert!(
        ready.contains("NOTICE: ready to handle connections"),
        "{ready}"
    );
}

/// Start the command in its own mount namespace with `socket` bound over /dev/log, so
/// its syslog(3) messages reach the test instead of the system's daemon.
fn bind_over_dev_log(command: &mut std::process::Command, socket: &Path) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    // Made before the fork: the child may not allocate (the test process has threads).
    let source = std::ffi::CString::new(socket.as_os_str().as_bytes()).expect("socket path");
    let target = c"/dev/log";
    let root = c"/";
    // SAFETY: the closure runs in the forked child before exec and only makes system
    // calls on strings made before the fork.
    unsafe {
        command.pre_exec(move || {
            use nix::libc;
            let check = |rc: libc::c_int| {
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Keep our mounts to ourselves, and the system's from reaching in.
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ))
        });
    }
}

/// What each of `pid`'s descriptors is (`pipe:[123]`, a path, ...), by number.
fn open_descriptors(pid: i32) -> Vec<(i32, String)> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the worker's descriptors")
        .filter_map(|e| {
            let e = e.ok()?;
            let fd = e.file_name().to_str()?.parse().ok()?;
            Some((fd, std::fs::read_link(e.path()).ok()?.display().to_string()))
        })
        .collect()
}

#[test]
fn with_catch_workers_output_a_worker_holds_its_pipes_only_as_stdout_and_stderr() {
    let fpm = Fpm::start(1, "catch_workers_output = yes");
    // Answered: the worker is set up.
    let script = fpm.script(
        "ok.sh",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\nok'\n",
    );
    assert_eq!(fpm.get(&script, &[]).body(), b"ok");
    let workers = fpm.worker_pids();
    assert_eq!(workers.len(), 1, "one worker: {workers:?}");
    let fds = open_descriptors(workers[0]);
    let target = |n: i32| fds.iter().find(|(fd, _)| *fd == n).map(|(_, t)| t.clone());
    let (stdout, stderr) = (target(1), target(2));
    assert!(
        stdout.as_deref().is_some_and(|t| t.starts_with("pipe:"))
            && stderr.as_deref().is_some_and(|t| t.starts_with("pipe:")),
        "stdout and stderr are the master's pipes: {fds:?}"
    );
    // The master's pipe ends were moved onto 1 and 2: a copy left open elsewhere would
    // keep them alive after the worker's stdio is gone, and costs two descriptors.
    let copies: Vec<_> = fds
        .iter()
        .filter(|(fd, t)| *fd > 2 && (Some(t) == stdout.as_ref() || Some(t) == stderr.as_ref()))
        .collect();
    assert!(
        copies.is_empty(),
        "copies of the output pipes: {copies:?} in {fds:?}"
    );
}

#[test]
fn catch_workers_output_logs_script_stderr_as_php_fpm_does() {
    let fpm = Fpm::start(1, "catch_workers_output = yes");
    let script = fpm.script(
        "warn.sh",
        "#!/bin/sh\necho 'PHP Warning: something' >&2\nprintf 'Content-Type: text/plain\\r\\n\\r\\nok'\n",
    );
    let r = fpm.get(&script, &[]);
    assert!(
        r.stderr.is_empty(),
        "with catch_workers_output, stderr goes to the log"
    );
    fpm.wait_for_log(
        "said into stderr: \"PHP Warning: something\"",
        Duration::from_secs(5),
    );
}

#[test]
fn undecorated_worker_output_is_logged_as_written() {
    let fpm = Fpm::start(
        1,
        "catch_workers_output = yes\ndecorate_workers_output = no",
    );
    let script = fpm.script(
        "json.sh",
        "#!/bin/sh\necho '{\"level\":\"warn\",\"msg\":\"structured\"}' >&2\nprintf 'Content-Type: text/plain\\r\\n\\r\\nok'\n",
    );
    fpm.get(&script, &[]);
    fpm.wait_for_log("structured", Duration::from_secs(5));
    let log = fpm.log_text();
    assert!(
        log.lines()
            .any(|l| l == "{\"level\":\"warn\",\"msg\":\"structured\"}"),
        "the line alone, so log shippers can parse it:\n{log}"
    );
}

/// A line a hostile request tries to add to each log.
const FORGED: &str = "\n[01-Jan-2030 00:00:00] ALERT: forged";

fn forged_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|line| line.starts_with("[01-Jan-2030") || line.contains("\r"))
        .collect()
}

#[test]
fn control_bytes_in_request_values_are_escaped_in_every_log() {
    let logs = tempfile::tempdir().expect("tempdir");
    let access = logs.path().join("access.log");
    let slow = logs.path().join("slow.log");
    let fpm = Fpm::start(
        1,
        &format!(
            "access.log = {}\naccess.format = \"%r %s %{{HTTP_X}}e\"\nslowlog = {}\nrequest_slowlog_timeout = 1s",
            access.display(),
            slow.display()
        ),
    );
    let script = fpm.script("slow.sh", "#!/bin/sh\nsleep 1.5\necho\n");
    let script = script.display().to_string();
    let uri = format!("/slow.sh{FORGED}\r\x1b[2J");
    let mut client = fpm.client();
    client
        .request(
            &[
                ("SCRIPT_FILENAME", &script),
                ("REQUEST_METHOD", "GET"),
                ("REQUEST_URI", &uri),
                ("HTTP_X", "a\tb"),
            ],
            b"",
            false,
        )
        .expect("slow request");
    // A missing script whose name carries the forged line: the 404's log line names it.
    let missing = format!("{}{FORGED}", fpm.path("www/nope").display());
    let r = fpm
        .client()
        .request(
            &[("SCRIPT_FILENAME", &missing), ("REQUEST_URI", "/nope")],
            b"",
            false,
        )
        .expect("missing script");
    assert_eq!(r.status(), 404);

    let escaped = "\\x0A[01-Jan-2030 00:00:00] ALERT: forged";
    let access_text = wait_for_file_text(&access, "/nope 404");
    assert!(
        access_text.contains(&format!("{escaped}\\x0D\\x1B[2J 200 a\\x09b\n")),
        "{access_text}"
    );
    let slow_text = wait_for_file_text(&slow, "request = ");
    assert!(
        slow_text.contains(&format!("request = GET /slow.sh{escaped}\\x0D\\x1B[2J\n")),
        "{slow_text}"
    );
    fpm.wait_for_log("nope\\x0A", Duration::from_secs(5));
    let error_text = fpm.log_text();
    assert!(
        error_text.contains(&format!("www/nope{escaped}")),
        "{error_text}"
    );
    assert!(
        error_text.contains(&format!("/slow.sh{escaped}\\x0D\\x1B[2J")),
        "the slowlog's notice in the error log: {error_text}"
    );
    for (name, text) in [
        ("error log", &error_text),
        ("access log", &access_text),
        ("slowlog", &slow_text),
    ] {
        assert!(forged_lines(text).is_empty(), "{name}:\n{text}");
        assert!(!text.contains('\x1b'), "{name} carries an escape: {text}");
    }
}
