//! The core: the real binary serving CGI scripts to a FastCGI client over real sockets.

mod common;

use cgi_fpm::fastcgi::ProtocolStatus;
use cgi_fpm::fastcgi::record::{RecordType, Role, write_begin_request, write_record};
use common::{Fpm, examples_dir, require_tool, wait_until};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

fn env_lines(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn get_returns_the_scripts_headers_and_body() {
    let fpm = Fpm::start(2, "");
    let r = fpm.get(
        &examples_dir().join("hello.sh"),
        &[("QUERY_STRING", "a=1&b=2")],
    );
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("Content-Type").as_deref(), Some("text/plain"));
    let body = String::from_utf8_lossy(r.body());
    assert!(body.contains("Hello from sh via cgi-fpm"), "{body}");
    assert!(body.contains("method=GET query=a=1&b=2"), "{body}");
    assert_eq!(r.app_status, 0);
    assert_eq!(r.protocol_status, Some(ProtocolStatus::RequestComplete));
}

#[test]
fn post_body_reaches_the_script() {
    let fpm = Fpm::start(1, "");
    let echo = examples_dir().join("echo.sh").display().to_string();
    let body = b"name=value&other=thing";
    let len = body.len().to_string();
    let r = fpm
        .client()
        .request(
            &[
                ("REQUEST_METHOD", "POST"),
                ("SCRIPT_FILENAME", &echo),
                ("CONTENT_LENGTH", &len),
                ("CONTENT_TYPE", "application/x-www-form-urlencoded"),
            ],
            body,
            false,
        )
        .expect("request");
    assert_eq!(r.status(), 200);
    assert_eq!(r.body(), body);
}

#[test]
fn the_environment_round_trips_and_nothing_else_leaks() {
    // The master's own environment must not reach scripts (clear_env defaults to yes).
    let fpm = Fpm::start(1, "env[POOL_VAR] = from-pool");
    let env = examples_dir().join("env.sh").display().to_string();
    let r = fpm
        .client()
        .request(
            &[
                ("REQUEST_METHOD", "POST"),
                ("SCRIPT_FILENAME", &env),
                ("SCRIPT_NAME", "/cgi-bin/env.sh"),
                ("PATH_INFO", "/extra/path"),
                ("QUERY_STRING", "x=1&y=%20"),
                ("CONTENT_LENGTH", "3"),
                ("CONTENT_TYPE", "text/plain"),
                ("HTTP_X_CUSTOM_HEADER", "custom value"),
                ("HTTP_PROXY", "http://attacker:3128"),
                ("SERVER_SOFTWARE", "test-client"),
            ],
            b"abc",
            false,
        )
        .expect("request");
    let lines = env_lines(r.body());
    for expected in [
        "REQUEST_METHOD=POST",
        "SCRIPT_NAME=/cgi-bin/env.sh",
        "PATH_INFO=/extra/path",
        "QUERY_STRING=x=1&y=%20",
        "CONTENT_LENGTH=3",
        "CONTENT_TYPE=text/plain",
        "HTTP_X_CUSTOM_HEADER=custom value",
        "SERVER_SOFTWARE=test-client",
        "GATEWAY_INTERFACE=CGI/1.1",
        "REDIRECT_STATUS=200",
        "POOL_VAR=from-pool",
    ] {
        assert!(
            lines.iter().any(|l| l == expected),
            "missing {expected} in:\n{}",
            lines.join("\n")
        );
    }
    assert!(
        lines.iter().any(|l| l == &format!("SCRIPT_FILENAME={env}")),
        "SCRIPT_FILENAME"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("HTTP_PROXY=")),
        "HTTP_PROXY must be dropped (httpoxy)"
    );
    // Test runners set HOME and CARGO_* variables for the master; none may leak.
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("HOME=") || l.starts_with("CARGO")),
        "master environment leaked:\n{}",
        lines.join("\n")
    );
}

#[test]
fn path_info_is_split_from_the_script_filename() {
    let fpm = Fpm::start(1, "");
    let env = examples_dir().join("env.sh").display().to_string();
    let filename = format!("{env}/users/7");
    let r = fpm
        .client()
        .request(
            &[
                ("REQUEST_METHOD", "GET"),
                ("SCRIPT_FILENAME", &filename),
                ("SCRIPT_NAME", "/cgi-bin/env.sh/users/7"),
            ],
            b"",
            false,
        )
        .expect("request");
    assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&r.stdout));
    let lines = env_lines(r.body());
    assert!(
        lines.contains(&"PATH_INFO=/users/7".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"SCRIPT_NAME=/cgi-bin/env.sh".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&format!("SCRIPT_FILENAME={env}")),
        "{lines:?}"
    );
}

#[test]
fn a_kept_connection_serves_several_requests() {
    let fpm = Fpm::start(1, "");
    let hello = examples_dir().join("hello.sh").display().to_string();
    let mut client = fpm.client();
    for i in 0..5 {
        let q = format!("n={i}");
        let r = client
            .request(
                &[
                    ("REQUEST_METHOD", "GET"),
                    ("SCRIPT_FILENAME", &hello),
                    ("QUERY_STRING", &q),
                ],
                b"",
                true,
            )
            .expect("kept request");
        assert!(
            String::from_utf8_lossy(r.body()).contains(&format!("query=n={i}")),
            "request {i}"
        );
    }
    // Without FCGI_KEEP_CONN the application closes the connection after the response.
    client
        .request(
            &[("REQUEST_METHOD", "GET"), ("SCRIPT_FILENAME", &hello)],
            b"",
            false,
        )
        .expect("last request");
    assert!(client.is_closed(), "connection should be closed");
}

#[test]
fn get_values_reports_the_pool_size_and_no_multiplexing() {
    let fpm = Fpm::start(3, "");
    let mut client = fpm.client();
    let values = client
        .get_values(&["FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS"])
        .expect("GET_VALUES");
    assert_eq!(values.get_str("FCGI_MAX_CONNS"), Some("3"));
    assert_eq!(values.get_str("FCGI_MAX_REQS"), Some("3"));
    assert_eq!(values.get_str("FCGI_MPXS_CONNS"), Some("0"));
    // The same connection still serves a request afterwards.
    let hello = examples_dir().join("hello.sh").display().to_string();
    let r = client
        .request(&[("SCRIPT_FILENAME", &hello)], b"", false)
        .expect("request after GET_VALUES");
    assert_eq!(r.status(), 200);
}

#[test]
fn unknown_management_types_and_roles_are_answered() {
    let fpm = Fpm::start(1, "");
    let mut client = fpm.client();
    let mut bytes = Vec::new();
    write_record(&mut bytes, RecordType::Other(77), 0, b"");
    write_begin_request(&mut bytes, 5, Role::Authorizer, 1);
    client.send_raw(&bytes).expect("send");
    let (t, _, content) = client.read_record().expect("read").expect("a record");
    assert_eq!(t, RecordType::UnknownType);
    assert_eq!(content[0], 77);
    let (t, id, content) = client.read_record().expect("read").expect("a record");
    assert_eq!((t, id), (RecordType::EndRequest, 5));
    assert_eq!(content[4], ProtocolStatus::UnknownRole.as_u8());
}

#[test]
fn a_ten_mib_response_arrives_whole() {
    let fpm = Fpm::start(1, "");
    // 32-byte lines: 327680 of them make 10 MiB.
    let script = fpm.script(
        "big.sh",
        "#!/bin/sh\nprintf 'Content-Type: application/octet-stream\\r\\n\\r\\n'\n\
         yes 'abcdefghijklmnopqrstuvwxyz01234' | head -c 10485760\n",
    );
    let r = fpm.get(&script, &[]);
    let body = r.body();
    assert_eq!(body.len(), 10 * 1024 * 1024);
    assert!(
        body.chunks(32)
            .all(|c| c == b"abcdefghijklmnopqrstuvwxyz01234\n"),
        "body corrupted"
    );
}

/// A body echoed by `cat` while it is still being sent: this needs both directions pumped
/// at once (fcgiwrap copies the whole body first and deadlocks here).
#[test]
fn a_one_mib_body_is_echoed_byte_for_byte() {
    let fpm = Fpm::start(1, "");
    let echo = examples_dir().join("echo.sh").display().to_string();
    let body: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let len = body.len().to_string();
    let r = fpm
        .client()
        .request(
            &[
                ("REQUEST_METHOD", "POST"),
                ("SCRIPT_FILENAME", &echo),
                ("CONTENT_LENGTH", &len),
            ],
            &body,
            false,
        )
        .expect("request");
    assert_eq!(r.body().len(), body.len());
    assert!(r.body() == &body[..], "echoed body differs");
}

/// 100 MiB streamed through `cat` while the worker's memory stays small, during the
/// upload (when the response is held back and spooled) as well as after it.
#[test]
fn a_hundred_mib_post_streams_with_bounded_worker_memory() {
    // The echo holds all 100 MiB back until the body is complete: past the default
    // 64 MiB limit it would block (by design) and never finish.
    let fpm = Fpm::start(1, "cgi.held_output_limit = 128M");
    let workers = fpm.worker_pids();
    assert_eq!(workers.len(), 1);
    let worker = workers[0];
    let echo = examples_dir().join("echo.sh").display().to_string();
    const TOTAL: usize = 100 * 1024 * 1024;
    let len = TOTAL.to_string();
    let stream = std::os::unix::net::UnixStream::connect(&fpm.address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let writer = stream.try_clone().expect("clone stream");
    let mut client = common::Client::from_stream(Box::new(stream));
    client
        .send_head(
            1,
            &[
                ("REQUEST_METHOD", "POST"),
                ("SCRIPT_FILENAME", &echo),
                ("CONTENT_LENGTH", &len),
            ],
            false,
        )
        .expect("head");
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    let uploading = Arc::new(AtomicBool::new(true));
    let done = Arc::new(AtomicBool::new(false));
    let (peak_upload, peak_after, upload_samples) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    // Sample the worker's RSS on a timer, independent of what the client is doing.
    let sampler = {
        let (uploading, done) = (uploading.clone(), done.clone());
        let (peak_upload, peak_after) = (peak_upload.clone(), peak_after.clone());
        let upload_samples = upload_samples.clone();
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let rss = common::rss_kib(worker).unwrap_or(0);
                if uploading.load(Ordering::Relaxed) {
                    peak_upload.fetch_max(rss, Ordering::Relaxed);
                    upload_samples.fetch_add(1, Ordering::Relaxed);
                } else {
                    peak_after.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let sender_uploading = uploading.clone();
    let sender = std::thread::spawn(move || {
        let mut stream = writer;
        let chunk: Vec<u8> = (0..60000u32).map(|i| (i % 251) as u8).collect();
        let mut sent = 0;
        let mut out = Vec::new();
        while sent < TOTAL {
            let n = chunk.len().min(TOTAL - sent);
            out.clear();
            cgi_fpm::fastcgi::record::write_record(&mut out, RecordType::Stdin, 1, &chunk[..n]);
            stream.write_all(&out).expect("send body");
            sent += n;
        }
        out.clear();
        cgi_fpm::fastcgi::record::write_record(&mut out, RecordType::Stdin, 1, &[]);
        stream.write_all(&out).expect("end body");
        sender_uploading.store(false, Ordering::Relaxed);
    });
    let mut received = 0usize;
    let mut header_skipped = false;
    let mut pending = Vec::new();
    let response = client
        .read_response_with(1, |data| {
            if !header_skipped {
                pending.extend_from_slice(data);
                if let Some(pos) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    received += pending.len() - pos - 4;
                    header_skipped = true;
                }
            } else {
                received += data.len();
            }
        })
        .expect("response");
    sender.join().expect("sender thread");
    done.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler thread");
    assert_eq!(response.app_status, 0);
    assert_eq!(received, TOTAL, "echoed byte count");
    let (upload, after, samples) = (
        peak_upload.load(Ordering::Relaxed),
        peak_after.load(Ordering::Relaxed),
        upload_samples.load(Ordering::Relaxed),
    );
    println!(
        "worker RSS peak during a 100 MiB echo: {upload} KiB uploading ({samples} samples), \
         {after} KiB after"
    );
    assert!(samples >= 3 && upload > 0, "RSS sampled during the upload");
    for (when, peak) in [("during the upload", upload), ("after it", after)] {
        assert!(
            peak < 16 * 1024,
            "worker RSS {peak} KiB {when} exceeds 16 MiB"
        );
    }
}

#[test]
fn missing_scripts_are_404_and_forbidden_ones_403() {
    let fpm = Fpm::start(
        1,
        "security.limit_extensions = .sh .py\ncgi.interpreter[.nox] = /nonexistent/interpreter",
    );
    let r = fpm.get(&fpm.path("www/missing.sh"), &[]);
    assert_eq!(r.status(), 404);
    assert_eq!(r.body(), b"File not found.\n");

    let outside = fpm.path("outside.sh");
    std::fs::write(&outside, "#!/bin/sh\necho\n").expect("write");
    std::fs::set_permissions(
        &outside,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let r = fpm.get(&outside, &[]);
    assert_eq!(r.status(), 403, "outside cgi.allowed_roots");
    // The same file reached from inside the root: by '..', and by a symlink.
    let climbing = fpm.path("www/../outside.sh");
    assert_eq!(fpm.get(&climbing, &[]).status(), 403, "via '..'");
    std::os::unix::fs::symlink(&outside, fpm.path("www/escape.sh")).expect("symlink");
    let r = fpm.get(&fpm.path("www/escape.sh"), &[]);
    assert_eq!(r.status(), 403, "via a symlink out of the root");

    let plain = fpm.script("plain.txt", "text");
    let r = fpm.get(&plain, &[]);
    assert_eq!(
        r.status(),
        403,
        "extension not in security.limit_extensions"
    );

    let not_exec = fpm.script("noexec.sh", "#!/bin/sh\necho\n");
    std::fs::set_permissions(
        &not_exec,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    let r = fpm.get(&not_exec, &[]);
    assert_eq!(r.status(), 403, "not executable");

    let log = fpm.log_text();
    assert!(log.contains("does not exist"), "404 reason logged:\n{log}");
    assert!(log.contains("outside cgi.allowed_roots"), "{log}");
    assert!(log.contains("(with '..')"), "{log}");
    assert!(log.contains("escape.sh' resolves to"), "{log}");
    assert!(log.contains("security.limit_extensions"), "{log}");
    assert!(log.contains("is not executable"), "{log}");
}

#[test]
fn a_root_missing_at_start_confines_until_it_exists() {
    // cgi.allowed_roots naming a directory not made yet: the pool starts (with a warning)
    // and stays confined to it; nothing outside runs, and scripts run once it exists.
    let dir = tempfile::tempdir().expect("tempdir");
    let later = dir.path().join("later");
    std::fs::create_dir(dir.path().join("www")).expect("mkdir");
    let config = format!(
        "[global]\n\n{}",
        common::pool_section(
            "www",
            dir.path(),
            1,
            &format!("cgi.allowed_roots = {}", later.display())
        )
    );
    let address = dir.path().join("www.sock").display().to_string();
    let fpm = Fpm::start_with(dir, &config, &address);
    fpm.wait_for_log(
        "does not exist: no script runs from it",
        Duration::from_secs(5),
    );
    let hello = "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\nhello'\n";
    let outside = fpm.script("outside.sh", hello);
    assert_eq!(
        fpm.get(&outside, &[]).status(),
        403,
        "outside the only root"
    );
    let examples = common::examples_dir().join("hello.sh");
    assert_eq!(fpm.get(&examples, &[]).status(), 403, "not unconfined");

    std::fs::create_dir(&later).expect("mkdir later");
    let inside = later.join("inside.sh");
    std::fs::write(&inside, hello).expect("write");
    std::fs::set_permissions(&inside, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let r = fpm.get(&inside, &[]);
    assert_eq!(r.status(), 200, "{}", fpm.log_text());
    assert_eq!(r.body(), b"hello");
    std::os::unix::fs::symlink(&outside, later.join("escape.sh")).expect("symlink");
    assert_eq!(
        fpm.get(&later.join("escape.sh"), &[]).status(),
        403,
        "a symlink out of the new root"
    );
}

#[test]
fn a_script_that_cannot_be_executed_is_502() {
    let fpm = Fpm::start(1, "");
    let script = fpm.script("badshebang.sh", "#!/nonexistent/interpreter\n");
    let r = fpm.get(&script, &[]);
    assert_eq!(r.status(), 502);
    fpm.wait_for_log("cannot execute", Duration::from_secs(5));
}

#[test]
fn a_script_with_no_output_is_502() {
    let fpm = Fpm::start(1, "");
    let script = fpm.script("silent.sh", "#!/bin/sh\nexit 3\n");
    let r = fpm.get(&script, &[]);
    assert_eq!(r.status(), 502);
    assert_eq!(r.app_status, 3);
    fpm.wait_for_log(
        "produced no output and exited with code 3",
        Duration::from_secs(5),
    );
}

#[test]
fn stderr_goes_to_the_web_server_by_default() {
    let fpm = Fpm::start(1, "");
    let script = fpm.script(
        "warn.sh",
        "#!/bin/sh\necho 'something odd' >&2\nprintf 'Content-Type: text/plain\\r\\n\\r\\nok'\n",
    );
    let r = fpm.get(&script, &[]);
    assert_eq!(r.body(), b"ok");
    assert_eq!(r.stderr, b"something odd\n");
}

#[test]
fn scripts_in_several_languages_run() {
    let fpm = Fpm::start(2, "");
    let ex = examples_dir();
    for (script, expected) in [
        ("hello.sh", "Hello from sh"),
        ("hello.py", "Hello from python3"),
        ("hello.pl", "Hello from perl"),
    ] {
        let r = fpm.get(&ex.join(script), &[("QUERY_STRING", "lang=1")]);
        let body = String::from_utf8_lossy(r.body());
        assert_eq!(
            r.status(),
            200,
            "{script}: {}",
            String::from_utf8_lossy(&r.stdout)
        );
        assert!(body.contains(expected), "{script}: {body}");
        assert!(body.contains("method=GET query=lang=1"), "{script}: {body}");
    }
}

#[test]
fn a_compiled_binary_runs() {
    if !require_tool("cc") {
        return;
    }
    let fpm = Fpm::start(1, "");
    let binary = fpm.path("www/hello");
    let status = std::process::Command::new("cc")
        .arg("-O2")
        .arg("-o")
        .arg(&binary)
        .arg(examples_dir().join("hello.c"))
        .status()
        .expect("run cc");
    assert!(status.success(), "cc failed");
    let r = fpm.get(&binary, &[("QUERY_STRING", "c=1")]);
    assert_eq!(r.status(), 200);
    assert!(String::from_utf8_lossy(r.body()).contains("Hello from C"));
}

#[test]
fn php_runs_through_php_cgi() {
    if !require_tool("php-cgi") {
        return;
    }
    let php_cgi = common::which("php-cgi").expect("php-cgi");
    let fpm = Fpm::start(1, &format!("cgi.interpreter[.php] = {}", php_cgi.display()));
    let r = fpm.get(
        &examples_dir().join("hello.php"),
        &[("QUERY_STRING", "p=1")],
    );
    let body = String::from_utf8_lossy(r.body());
    assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&r.stdout));
    assert!(body.contains("Hello from PHP via cgi-fpm"), "{body}");
    assert!(body.contains("method=GET query=p=1"), "{body}");
}

#[test]
fn malformed_input_closes_only_that_connection() {
    let fpm = Fpm::start(1, "");
    let mut bad = fpm.client();
    bad.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    assert!(bad.is_closed(), "a non-FastCGI peer is disconnected");
    fpm.wait_for_log("malformed FastCGI request", Duration::from_secs(5));
    let r = fpm.get(&examples_dir().join("hello.sh"), &[]);
    assert_eq!(r.status(), 200, "the worker still serves");
}

#[test]
fn oversized_params_get_a_clear_error() {
    let fpm = Fpm::start(1, "");
    let big = "x".repeat(60_000);
    let hello = examples_dir().join("hello.sh").display().to_string();
    let mut params: Vec<(String, String)> = (0..20)
        .map(|i| (format!("HTTP_X_BIG_{i}"), big.clone()))
        .collect();
    params.push(("SCRIPT_FILENAME".into(), hello));
    let refs: Vec<(&str, &str)> = params
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let mut client = fpm.client();
    let r = client.request(&refs, b"", false).expect("a response");
    assert_eq!(r.status(), 431);
    fpm.wait_for_log("FastCGI params larger than", Duration::from_secs(5));
    assert_eq!(fpm.get(&examples_dir().join("hello.sh"), &[]).status(), 200);
}

#[test]
fn a_killed_worker_is_replaced_within_a_second() {
    let fpm = Fpm::start(3, "");
    let before = fpm.worker_pids();
    assert_eq!(before.len(), 3);
    let victim = before[0];
    let killed_at = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    wait_until(
        "the pool is back to 3 workers",
        Duration::from_secs(1),
        || {
            let now = fpm.worker_pids();
            now.len() == 3 && !now.contains(&victim)
        },
    );
    println!("worker replaced after {:?}", killed_at.elapsed());
    fpm.wait_for_log(
        &format!("child {victim} exited on signal 9 (SIGKILL)"),
        Duration::from_secs(2),
    );
    for _ in 0..10 {
        assert_eq!(fpm.get(&examples_dir().join("hello.sh"), &[]).status(), 200);
    }
}

#[test]
fn sigterm_stops_the_master_and_removes_the_socket() {
    let mut fpm = Fpm::start(2, "");
    let workers = fpm.worker_pids();
    fpm.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(fpm.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(!Path::new(&fpm.address).exists(), "socket file removed");
    for w in workers {
        assert!(!common::alive(w), "worker {w} still running");
    }
    let log = fpm.log_text();
    assert!(log.contains("NOTICE: Terminating ..."), "{log}");
    assert!(log.contains("exiting, bye-bye!"), "{log}");
}

#[test]
fn a_second_instance_refuses_a_socket_in_use() {
    let first = Fpm::start(1, "");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "[www]\nlisten = {}\npm = static\npm.max_children = 1\n",
        first.address
    );
    let mut second = Fpm::spawn(dir, &config, &first.address, &[]);
    let code = second.wait_exit(Duration::from_secs(10));
    assert!(
        matches!(code, Some(c) if c != 0),
        "second instance exit: {code:?}"
    );
    assert!(
        second.log_text().contains("seems to already listen"),
        "{}",
        second.log_text()
    );
    assert_eq!(
        first.get(&examples_dir().join("hello.sh"), &[]).status(),
        200
    );
}

/// An idle kept connection waits with the master, not in a worker: with a single worker,
/// a client that keeps its connection open does not stop another from being served, and
/// its own next request is still answered.
#[test]
fn an_idle_kept_connection_does_not_hold_the_only_worker() {
    let fpm = Fpm::start(1, "");
    let hello = examples_dir().join("hello.sh").display().to_string();
    let params = |q: &'static str| {
        vec![
            ("REQUEST_METHOD", "GET"),
            ("SCRIPT_FILENAME", hello.as_str()),
            ("QUERY_STRING", q),
        ]
    };
    let mut kept = fpm.client();
    let r = kept
        .request(&params("first"), b"", true)
        .expect("first request");
    assert!(String::from_utf8_lossy(r.body()).contains("query=first"));
    // The kept connection now idles. Another client, on its own connection, is served
    // by the only worker meanwhile (without parking it would wait for ever).
    for i in 0..3 {
        let mut other =
            common::Client::connect(&fpm.address, Duration::from_secs(5)).expect("connect");
        let r = other
            .request(&params("other"), b"", false)
            .unwrap_or_else(|e| panic!("request {i} while a connection idles: {e}"));
        assert!(String::from_utf8_lossy(r.body()).contains("query=other"));
    }
    // The parked connection's next requests are handed to a worker and answered.
    for q in ["second", "third"] {
        let r = kept.request(&params(q), b"", true).expect("kept request");
        assert!(String::from_utf8_lossy(r.body()).contains(&format!("query={q}")));
    }
    // And one that ends the connection closes it.
    kept.request(&params("last"), b"", false).expect("last");
    assert!(kept.is_closed());
}

/// A web server that closes an idle kept connection leaves nothing behind in the master.
#[test]
fn closed_parked_connections_are_released() {
    let fpm = Fpm::start(2, "");
    let hello = examples_dir().join("hello.sh").display().to_string();
    let baseline = common::open_fds(fpm.pid());
    // Ten idle kept connections against two workers: each request is answered only
    // because the connections before it were parked with the master, not kept by a worker.
    let mut kept = Vec::new();
    for i in 0..10 {
        let mut c = common::Client::connect(&fpm.address, Duration::from_secs(5)).expect("connect");
        c.request(&[("SCRIPT_FILENAME", &hello)], b"", true)
            .unwrap_or_else(|e| panic!("request on kept connection {i}: {e}"));
        kept.push(c);
    }
    common::wait_for_parked(&fpm, baseline, 10);
    drop(kept);
    wait_until(
        "the master releases the closed ones",
        Duration::from_secs(5),
        || common::open_fds(fpm.pid()) == baseline,
    );
    for _ in 0..50 {
        let mut c = fpm.client();
        c.request(&[("SCRIPT_FILENAME", &hello)], b"", true)
            .expect("request");
        drop(c);
    }
    wait_until(
        "the master holds no parked connection",
        Duration::from_secs(5),
        || common::open_fds(fpm.pid()) == baseline,
    );
}
