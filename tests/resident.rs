//! Resident FastCGI applications (`cgi.fastcgi_app`): php-cgi, a Perl FCGI.pm loop and a
//! flup WSGI app run once per worker and serve every request over a kept connection; the
//! faults (an app that exits between requests, dies in one, hangs, cannot start) each
//! cost at most the request in hand.

mod common;

use cgi_fpm::fastcgi::record::RecordType;
use common::{Fpm, alive, children_of, wait_until};
use std::collections::HashSet;
use std::time::{Duration, Instant};

fn php_cgi() -> Option<String> {
    common::require_tool("php-cgi").then(|| {
        common::which("php-cgi")
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    })
}

/// The pid a test script printed as the first word of its body.
fn pid_of(body: &[u8]) -> i32 {
    String::from_utf8_lossy(body)
        .split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {:?}", String::from_utf8_lossy(body)))
}

/// Every process below the master: workers and their apps.
fn descendants(pid: i32) -> Vec<i32> {
    let mut all = Vec::new();
    let mut next = vec![pid];
    while let Some(p) = next.pop() {
        for child in children_of(p) {
            all.push(child);
            next.push(child);
        }
    }
    all
}

const PID_PHP: &str =
    "<?php echo getmypid(), ' ', ini_get('memory_limit'), ' ', getenv('FROM_POOL'), \"\\n\";";

#[test]
fn php_cgi_serves_forty_requests_with_one_app_per_worker_beside_cgi_scripts() {
    let Some(php) = php_cgi() else { return };
    let fpm = Fpm::start(
        2,
        &format!(
            "cgi.fastcgi_app[.php] = {php}\nphp_admin_value[memory_limit] = 77M\nenv[FROM_POOL] = pool-env\n"
        ),
    );
    let page = fpm.script("pid.php", PID_PHP);
    let shell = fpm.script(
        "hi.sh",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nshell %s\\n' $$\n",
    );
    let workers: HashSet<i32> = fpm.worker_pids().into_iter().collect();
    let mut apps = HashSet::new();
    for _ in 0..40 {
        let response = fpm.get(&page, &[]);
        assert_eq!(response.status(), 200, "{response:?}");
        let body = String::from_utf8_lossy(response.body()).into_owned();
        assert!(
            body.contains(" 77M pool-env"),
            "PHP settings and env[] reach the app: {body}"
        );
        let pid = pid_of(response.body());
        assert!(!workers.contains(&pid), "the app is not a worker");
        apps.insert(pid);
        // The CGI script in the same pool still runs as a child of its own per request.
        let cgi = fpm.get(&shell, &[]);
        assert!(cgi.body().starts_with(b"shell "), "{cgi:?}");
    }
    assert!(
        apps.len() <= 2,
        "40 requests were served by {} apps for 2 workers: {apps:?}",
        apps.len()
    );
    for app in &apps {
        let parent = common::parent_of(*app).unwrap_or(0);
        assert!(workers.contains(&parent), "app {app} is a worker's child");
    }
    // A missing script is still the resolver's 404, not the app's business.
    let missing = fpm.get(&fpm.path("www/none.php"), &[]);
    assert_eq!(missing.status(), 404);
}

#[test]
fn an_app_that_exits_between_requests_costs_no_request() {
    let Some(php) = php_cgi() else { return };
    let fpm = Fpm::start(
        1,
        &format!("cgi.fastcgi_app[.php] = {php}\nenv[PHP_FCGI_MAX_REQUESTS] = 3\n"),
    );
    let page = fpm.script("pid.php", PID_PHP);
    let mut apps = HashSet::new();
    for i in 0..10 {
        let response = fpm.get(&page, &[]);
        assert_eq!(response.status(), 200, "request {i}: {response:?}");
        apps.insert(pid_of(response.body()));
    }
    assert!(apps.len() >= 3, "php-cgi stops after 3 requests: {apps:?}");
    // A kill between requests is no different.
    let last = pid_of(fpm.get(&page, &[]).body());
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(last),
        nix::sys::signal::Signal::SIGKILL,
    );
    wait_until("the killed app is gone", Duration::from_secs(5), || {
        !alive(last) || common::parent_of(last).is_none()
    });
    let response = fpm.get(&page, &[]);
    assert_eq!(response.status(), 200, "{response:?}");
    assert_ne!(pid_of(response.body()), last);
    assert!(
        !fpm.log_text().contains("answered 502"),
        "{}",
        fpm.log_text()
    );
}

/// Left to itself php-cgi ends after 500 requests; a pool's resident php-cgi does not, so
/// that it lives as long as php-fpm's workers do (restarts are `pm.max_requests`').
#[test]
fn a_resident_php_cgi_outlives_its_own_five_hundred_requests() {
    let Some(php) = php_cgi() else { return };
    let fpm = Fpm::start(1, &format!("cgi.fastcgi_app[.php] = {php}\n"));
    let page = fpm.script("pid.php", PID_PHP);
    let mut client =
        common::Client::connect(&fpm.address, Duration::from_secs(10)).expect("connect");
    let mut apps = HashSet::new();
    for i in 0..520 {
        let response = client
            .request(
                &[
                    ("REQUEST_METHOD", "GET"),
                    ("SCRIPT_FILENAME", &page.display().to_string()),
                ],
                b"",
                true,
            )
            .expect("request");
        assert_eq!(response.status(), 200, "request {i}: {response:?}");
        apps.insert(pid_of(response.body()));
    }
    assert_eq!(
        apps.len(),
        1,
        "520 requests took {} apps: {apps:?}",
        apps.len()
    );
}

/// Once an app has shown how many requests it serves before it leaves (php-cgi's
/// PHP_FCGI_MAX_REQUESTS), its successor is started while it still serves, so that no
/// request waits for an app to start.
#[test]
fn the_successor_of_an_app_that_leaves_by_itself_is_started_ahead() {
    let Some(php) = php_cgi() else { return };
    let mut fpm = Fpm::start(
        1,
        &format!("cgi.fastcgi_app[.php] = {php}\nenv[PHP_FCGI_MAX_REQUESTS] = 3\n"),
    );
    let page = fpm.script("pid.php", PID_PHP);
    let mut served_by = Vec::new();
    for i in 0..12 {
        let response = fpm.get(&page, &[]);
        assert_eq!(response.status(), 200, "request {i}: {response:?}");
        served_by.push(pid_of(response.body()));
    }
    // The first app is started on demand and teaches the lifetime; the second is started
    // on demand too, and each later one ahead of its need while its predecessor serves.
    let log = fpm.log_text();
    let on_demand = log.matches(" started: '").count();
    let ahead = log.matches(" started ahead").count();
    assert!(
        on_demand == 2 && ahead >= 3,
        "{on_demand} apps started on demand, {ahead} ahead; served by {served_by:?}\n{log}"
    );
    for (i, window) in served_by.chunks(3).enumerate() {
        assert!(
            window.iter().all(|p| *p == window[0]),
            "each app serves its 3 requests: window {i} of {served_by:?}"
        );
    }
    assert!(!log.contains("answered 502"), "{log}");
    // An app started ahead goes with its worker like the one in hand.
    let everyone = descendants(fpm.pid());
    fpm.signal(nix::sys::signal::Signal::SIGQUIT);
    assert_eq!(fpm.wait_exit(Duration::from_secs(10)), Some(0));
    for pid in everyone {
        wait_until(
            &format!("process {pid} is gone after the stop"),
            Duration::from_secs(5),
            || !alive(pid),
        );
    }
}

#[test]
fn an_app_that_dies_in_a_request_fails_that_request_only() {
    let Some(php) = php_cgi() else { return };
    let fpm = Fpm::start(1, &format!("cgi.fastcgi_app[.php] = {php}\n"));
    let page = fpm.script("pid.php", PID_PHP);
    // ob_flush first: php-cgi's output_buffering would keep 'partial' from flush().
    let die = fpm.script(
        "die.php",
        "<?php echo 'partial'; ob_flush(); flush(); posix_kill(getmypid(), 9); sleep(5);",
    );
    let die_quiet = fpm.script("quiet.php", "<?php posix_kill(getmypid(), 9); sleep(5);");
    let before = pid_of(fpm.get(&page, &[]).body());
    let quiet = fpm.get(&die_quiet, &[]);
    assert_eq!(quiet.status(), 502, "{quiet:?}");
    fpm.wait_for_log("ended in the middle of the request", Duration::from_secs(5));
    let after = fpm.get(&page, &[]);
    assert_eq!(after.status(), 200);
    assert_ne!(pid_of(after.body()), before);
    // Output already sent stays, cut short.
    let cut = fpm.get(&die, &[]);
    assert!(cut.body().starts_with(b"partial"), "{cut:?}");
    assert_eq!(fpm.get(&page, &[]).status(), 200);
}

#[test]
fn a_timed_out_request_kills_the_app_and_the_next_one_gets_a_fresh_app() {
    let Some(php) = php_cgi() else { return };
    let fpm = Fpm::start(
        1,
        // The deadline also covers the start of a fresh app for the request after the
        // kill (its clock starts when the request is accepted); php-cgi's start takes
        // over a second on a starved machine, so 1 s made that request a 504 too.
        &format!("cgi.fastcgi_app[.php] = {php}\nrequest_terminate_timeout = 4s\n"),
    );
    let page = fpm.script("pid.php", PID_PHP);
    let slow = fpm.script("slow.php", "<?php sleep(30); echo 'late';");
    let first = pid_of(fpm.get(&page, &[]).body());
    let started = Instant::now();
    let response = fpm.get(&slow, &[]);
    assert_eq!(response.status(), 504, "{response:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    fpm.wait_for_log("execution timed out", Duration::from_secs(5));
    wait_until("the timed-out app is gone", Duration::from_secs(5), || {
        !alive(first)
    });
    let next = fpm.get(&page, &[]);
    assert_eq!(next.status(), 200);
    assert_ne!(pid_of(next.body()), first);
}

#[test]
fn an_app_that_cannot_start_is_a_502_with_the_reason_and_backs_off() {
    let fpm = Fpm::start(1, "cgi.fastcgi_app[.php] = /nonexistent/app\n");
    let page = fpm.script("pid.php", PID_PHP);
    assert_eq!(fpm.get(&page, &[]).status(), 502);
    fpm.wait_for_log(
        "cannot start FastCGI app '/nonexistent/app'",
        Duration::from_secs(5),
    );
    assert_eq!(fpm.get(&page, &[]).status(), 502);
    fpm.wait_for_log("is not restarted for", Duration::from_secs(5));
    // An app that starts and exits at once: retried once, then 502, then backing off.
    let fpm = Fpm::start(1, "cgi.fastcgi_app[.php] = /bin/true\n");
    let page = fpm.script("pid.php", PID_PHP);
    assert_eq!(fpm.get(&page, &[]).status(), 502);
    fpm.wait_for_log("answered 502", Duration::from_secs(5));
    for _ in 0..20 {
        assert_eq!(fpm.get(&page, &[]).status(), 502);
    }
    let started = fpm.log_text().matches("started: '/bin/true'").count();
    assert!(
        (1..=4).contains(&started),
        "a broken app is started, then backs off: {started} starts in 21 requests\n{}",
        fpm.log_text()
    );
}

#[test]
fn apps_go_with_their_workers_and_the_master() {
    let Some(php) = php_cgi() else { return };
    let mut fpm = Fpm::start(
        1,
        &format!("cgi.fastcgi_app[.php] = {php}\npm.max_requests = 2\n"),
    );
    let page = fpm.script("pid.php", PID_PHP);
    let first = pid_of(fpm.get(&page, &[]).body());
    let _ = fpm.get(&page, &[]);
    // pm.max_requests: the worker leaves, and its app with it.
    wait_until(
        "the app of the worker that left is gone",
        Duration::from_secs(5),
        || !alive(first),
    );
    let second = pid_of(fpm.get(&page, &[]).body());
    assert_ne!(first, second);
    // A worker killed outright takes its app along (parent-death signal).
    let worker = common::parent_of(second).expect("the app's worker");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the worker");
    wait_until(
        "the app of the killed worker is gone",
        Duration::from_secs(5),
        || !alive(second),
    );
    fpm.wait_workers(1);
    let third = pid_of(fpm.get(&page, &[]).body());
    let everyone = descendants(fpm.pid());
    assert!(everyone.contains(&third));
    fpm.signal(nix::sys::signal::Signal::SIGQUIT);
    assert_eq!(fpm.wait_exit(Duration::from_secs(10)), Some(0));
    for pid in everyone {
        wait_until(
            &format!("process {pid} is gone after the stop"),
            Duration::from_secs(5),
            || !alive(pid),
        );
    }
}

// FCGI.pm replaces %ENV with each request's params, so the pool's env[] is read first.
const PERL_APP: &str = r#"use FCGI;
my $from_pool = $ENV{FROM_POOL};
my $request = FCGI::Request();
while ($request->Accept() >= 0) {
    my $body = '';
    read(STDIN, $body, $ENV{CONTENT_LENGTH} || 0);
    print "Content-Type: text/plain\r\n\r\n$$ perl $ENV{REQUEST_URI} $from_pool [$body]\n";
}
"#;

const FLUP_APP: &str = r#"import os
from flup.server.fcgi import WSGIServer

def app(environ, start_response):
    body = environ['wsgi.input'].read(int(environ.get('CONTENT_LENGTH') or 0))
    start_response('200 OK', [('Content-Type', 'text/plain')])
    text = '%d wsgi %s %s [%s]\n' % (os.getpid(), environ['REQUEST_URI'],
                                     os.environ.get('FROM_POOL'), body.decode())
    return [text.encode()]

WSGIServer(app).run()
"#;

/// `cgi.fastcgi_app = …` for a whole pool: the app sees every request as it came (no
/// script resolution: there is no SCRIPT_FILENAME at all), directly and behind nginx.
fn serves_a_whole_pool(program: &str, app_file: &str, app_text: &str, marker: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = dir.path().join(app_file);
    std::fs::write(&app, app_text).expect("write app");
    let config = format!(
        "[global]\n\n[app]\nlisten = {sock}\npm = static\npm.max_children = 2\n\
         cgi.fastcgi_app = {program} {app}\nenv[FROM_POOL] = pool-env\n\
         env[PATH] = /usr/local/bin:/usr/bin:/bin\n",
        sock = dir.path().join("app.sock").display(),
        app = app.display()
    );
    let address = dir.path().join("app.sock").display().to_string();
    let fpm = Fpm::start_with(dir, &config, &address);
    let mut apps = HashSet::new();
    for i in 0..20 {
        let uri = format!("/hello/{i}");
        let body = format!("body{i}");
        let length = body.len().to_string();
        let response = fpm
            .client()
            .request(
                &[
                    ("REQUEST_METHOD", "POST"),
                    ("REQUEST_URI", &uri),
                    ("PATH_INFO", &uri),
                    ("CONTENT_LENGTH", &length),
                    ("SERVER_PROTOCOL", "HTTP/1.1"),
                ],
                body.as_bytes(),
                false,
            )
            .expect("FastCGI request");
        let text = String::from_utf8_lossy(response.body()).into_owned();
        assert!(
            text.contains(&format!("{marker} {uri} pool-env [{body}]")),
            "request {i}: {response:?}\nlog:\n{}",
            fpm.log_text()
        );
        apps.insert(pid_of(response.body()));
    }
    assert!(apps.len() <= 2, "{} apps for 2 workers", apps.len());

    let docroot = fpm.path("www");
    std::fs::create_dir_all(&docroot).expect("docroot");
    let upstream = common::nginx::Upstream {
        server: format!("unix:{}", fpm.address),
        keepalive: Some(2),
    };
    let Some(nginx) = common::nginx::Nginx::start(&upstream, &docroot) else {
        return;
    };
    for i in 0..20 {
        let response = common::http::get(&nginx.socket, &format!("/via/nginx/{i}"))
            .expect("request through nginx");
        assert_eq!(response.status, 200, "{}", nginx.error_log());
        assert!(
            response
                .text()
                .contains(&format!("{marker} /via/nginx/{i}")),
            "{response:?}"
        );
        apps.insert(pid_of(&response.body));
    }
    assert!(apps.len() <= 2, "{} apps for 2 workers", apps.len());
}

/// Whether perl with FCGI.pm is there (a skip says why; CI requires it).
fn fcgi_pm() -> bool {
    if !common::require_tool("perl") {
        return false;
    }
    let has_module = std::process::Command::new("perl")
        .args(["-MFCGI", "-e", "1"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_module {
        assert!(
            std::env::var_os("CI").is_none(),
            "FCGI.pm (libfcgi-perl) is required in CI"
        );
        eprintln!("SKIPPED: FCGI.pm is not installed (apt-get install libfcgi-perl)");
    }
    has_module
}

#[test]
fn a_perl_fcgi_loop_serves_a_whole_pool() {
    if !fcgi_pm() {
        return;
    }
    serves_a_whole_pool("/usr/bin/perl", "app.pl", PERL_APP, "perl");
}

// Answers every request with output without end, never reading the body.
const FLOOD_APP: &str = r#"use FCGI;
my $request = FCGI::Request();
while ($request->Accept() >= 0) {
    print "Content-Type: text/plain\r\n\r\n";
    my $chunk = "y\n" x 4096;
    print $chunk while 1;
}
"#;

/// As for a CGI child (faults::output_held_for_an_incomplete_body_stops_at_its_limit): a
/// response held until the body is complete spills to disk up to cgi.held_output_limit,
/// and past it the app is not read (it blocks on its socket) until the body is complete.
#[test]
fn an_apps_output_held_for_an_incomplete_body_stops_at_its_limit() {
    if !fcgi_pm() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let app = dir.path().join("flood.pl");
    std::fs::write(&app, FLOOD_APP).expect("write app");
    let address = dir.path().join("app.sock").display().to_string();
    let config = format!(
        "[global]\n\n[app]\nlisten = {address}\npm = static\npm.max_children = 1\n\
         cgi.fastcgi_app = /usr/bin/perl {app}\ncgi.held_output_limit = 1M\n",
        app = app.display()
    );
    let fpm = Fpm::start_with(dir, &config, &address);
    let worker = fpm.worker_pids()[0];
    let mut client = fpm.client();
    client
        .send_head(
            1,
            &[("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", "100")],
            false,
        )
        .expect("head");
    client.send_stdin(1, &[b'x'; 10]).expect("10 bytes of 100");
    fpm.wait_for_log("cgi.held_output_limit", Duration::from_secs(5));
    // Without the limit the app's output spools as fast as perl prints it; with it the
    // spool stays at the limit (plus at most the app's buffer of records).
    common::assert_held_output_capped_at_1_mib(&fpm, worker);
    // The body completes: everything held comes out in order, and the app goes on.
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
    let end_of_head = got.windows(4).position(|w| w == b"\r\n\r\n");
    let (head, body) = got.split_at(end_of_head.expect("a response head") + 4);
    assert_eq!(head, b"Content-Type: text/plain\r\n\r\n");
    assert!(got.len() >= 2 << 20, "the app goes on after the body");
    assert!(
        body.chunks(2).all(|pair| pair == b"y\n" || pair == b"y"),
        "in order"
    );
}

/// python3 with flup, or None (a skip outside CI, a failure in CI).
fn python_with_flup() -> Option<String> {
    let Some(python) = common::which("python3") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 is required in CI"
        );
        eprintln!("SKIPPED: python3 is not installed");
        return None;
    };
    let has_flup = std::process::Command::new(&python)
        .args(["-c", "import flup.server.fcgi"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_flup {
        assert!(
            std::env::var_os("CI").is_none(),
            "flup is required in CI (scripts/install-test-deps.sh)"
        );
        eprintln!("SKIPPED: flup is not installed (pip install flup)");
        return None;
    }
    Some(python.display().to_string())
}

#[test]
fn a_flup_wsgi_app_serves_a_whole_pool() {
    let Some(python) = python_with_flup() else {
        return;
    };
    serves_a_whole_pool(&python, "app.py", FLUP_APP, "wsgi");
}

#[test]
fn php_cgi_behind_nginx_with_keepalive() {
    let Some(php) = php_cgi() else { return };
    let fpm = Fpm::start(2, &format!("cgi.fastcgi_app[.php] = {php}\n"));
    fpm.script("pid.php", PID_PHP);
    fpm.script(
        "echo.php",
        "<?php echo getmypid(), ' ', strlen(file_get_contents('php://input')), \"\\n\";",
    );
    let upstream = common::nginx::Upstream {
        server: format!("unix:{}", fpm.address),
        keepalive: Some(4),
    };
    let Some(nginx) = common::nginx::Nginx::start(&upstream, &fpm.path("www")) else {
        return;
    };
    let body = vec![b'x'; 300 * 1024];
    let mut apps = HashSet::new();
    for i in 0..40 {
        let response = if i % 4 == 0 {
            common::http::request(&nginx.socket, "POST", "/echo.php", &[], &body)
        } else {
            common::http::get(&nginx.socket, "/pid.php")
        }
        .expect("request through nginx");
        assert_eq!(response.status, 200, "{}", nginx.error_log());
        if i % 4 == 0 {
            assert!(
                response.text().ends_with(&format!(" {}\n", body.len())),
                "{}",
                response.text()
            );
        }
        apps.insert(pid_of(&response.body));
    }
    assert!(
        apps.len() <= 2,
        "40 requests, {} apps for 2 workers",
        apps.len()
    );
}

/// The web server aborts a request (ABORT_REQUEST), or closes its connection, while the
/// app works on it: php-cgi does not notice either, so after a short grace the app is
/// stopped, and the next request gets a fresh one.
#[test]
fn an_aborted_or_abandoned_request_stops_an_app_that_does_not_end_it() {
    let Some(php) = php_cgi() else { return };
    let fpm = Fpm::start(1, &format!("cgi.fastcgi_app[.php] = {php}\n"));
    let page = fpm.script("pid.php", PID_PHP);
    let slow = fpm.script("slow.php", "<?php sleep(30); echo 'late';");
    let slow_path = slow.display().to_string();
    let params = [
        ("REQUEST_METHOD", "GET"),
        ("SCRIPT_FILENAME", slow_path.as_str()),
        ("REQUEST_URI", "/slow.php"),
    ];
    for abandon in [false, true] {
        let app = pid_of(fpm.get(&page, &[]).body());
        let mut client = fpm.client();
        client.send_request(1, &params, b"", true).expect("send");
        wait_until(
            "the app has the slow request",
            Duration::from_secs(5),
            || {
                fpm.log_text().matches("execution").count() == 0
                    && common::children_of(app).is_empty()
                    && std::fs::read_to_string(format!("/proc/{app}/wchan"))
                        .is_ok_and(|w| w.contains("nanosleep") || w.contains("hrtimer"))
            },
        );
        let started = Instant::now();
        if abandon {
            drop(client);
        } else {
            let mut abort = Vec::new();
            cgi_fpm::fastcgi::record::write_record(
                &mut abort,
                cgi_fpm::fastcgi::record::RecordType::AbortRequest,
                1,
                &[],
            );
            client.send_raw(&abort).expect("send abort");
            let answer = client
                .read_response(1)
                .expect("END_REQUEST after the abort");
            assert!(answer.stdout.is_empty(), "{answer:?}");
        }
        wait_until(
            "the app that ignored the abort is stopped",
            Duration::from_secs(5),
            || !alive(app),
        );
        assert!(started.elapsed() < Duration::from_secs(4));
        let next = fpm.get(&page, &[]);
        assert_eq!(next.status(), 200, "{next:?}");
        assert_ne!(pid_of(next.body()), app);
    }
    assert_eq!(
        fpm.log_text()
            .matches("did not end the aborted request")
            .count(),
        2,
        "{}",
        fpm.log_text()
    );
}

/// The status page at `address` (`query`: `json&full`, `full`, ...), as the body's text.
fn status_page(address: &str, query: &str) -> String {
    let uri = format!("/status?{query}");
    let response = common::Client::connect(address, Duration::from_secs(10))
        .expect("connect to the status listener")
        .request(
            &[
                ("REQUEST_METHOD", "GET"),
                ("SCRIPT_NAME", "/status"),
                ("QUERY_STRING", query),
                ("REQUEST_URI", &uri),
            ],
            b"",
            false,
        )
        .expect("status request");
    assert_eq!(response.status(), 200, "{response:?}");
    String::from_utf8_lossy(response.body()).into_owned()
}

/// A php script that waits for the file `gate`, then prints its pid.
fn gated_php(fpm: &Fpm, name: &str, gate: &std::path::Path) -> std::path::PathBuf {
    fpm.script(
        name,
        &format!(
            "<?php while (!file_exists('{}')) usleep(20000); echo getmypid(), \"\\n\";",
            gate.display()
        ),
    )
}

/// A GET for `script` on a thread of its own.
fn get_in_background(
    fpm: &Fpm,
    script: &std::path::Path,
) -> std::thread::JoinHandle<std::io::Result<common::Response>> {
    let (address, script) = (fpm.address.clone(), script.display().to_string());
    std::thread::spawn(move || {
        common::Client::connect(&address, Duration::from_secs(30)).and_then(|mut c| {
            c.request(
                &[
                    ("REQUEST_METHOD", "GET"),
                    ("SCRIPT_FILENAME", &script),
                    ("REQUEST_URI", "/gated.php"),
                ],
                b"",
                false,
            )
        })
    })
}

/// `?full` names the app that serves a worker's request beside php-fpm's fields (its
/// keys unchanged), while the request runs and after it (as the script is).
#[test]
fn the_status_page_names_the_app_that_serves_a_request() {
    let Some(php) = php_cgi() else { return };
    // The page comes from a worker of its own: a pool worker that answered it would show
    // the status request in its row instead of the one it served.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("www")).expect("mkdir www");
    let status = dir.path().join("status.sock").display().to_string();
    let config = format!(
        "[global]\n\n{}",
        common::pool_section(
            "www",
            dir.path(),
            2,
            &format!(
                "cgi.fastcgi_app[.php] = {php}\npm.status_path = /status\npm.status_listen = {status}\n"
            ),
        )
    );
    let address = dir.path().join("www.sock").display().to_string();
    let fpm = Fpm::start_with(dir, &config, &address);
    let gate = fpm.path("gate");
    let gated = gated_php(&fpm, "gated.php", &gate);
    let shell_gate = fpm.path("shell-gate");
    let shell = fpm.script(
        "gated.sh",
        &format!(
            "#!/bin/sh\nwhile [ ! -e {} ]; do sleep 0.02; done\nprintf 'Content-Type: text/plain\\n\\nshell\\n'\n",
            shell_gate.display()
        ),
    );
    let request = get_in_background(&fpm, &gated);
    let script = gated.display().to_string();
    let mut row = serde_json::Value::Null;
    wait_until(
        "the status page shows the gated request with its app",
        Duration::from_secs(10),
        || {
            let page: serde_json::Value =
                serde_json::from_str(&status_page(&status, "json&full")).expect("json");
            row = page["processes"]
                .as_array()
                .and_then(|p| p.iter().find(|p| p["script"] == script.as_str()))
                .cloned()
                .unwrap_or_default();
            row["app pid"].as_i64().is_some_and(|p| p > 0)
        },
    );
    assert_eq!(row["state"], "Running", "{row}");
    let worker = row["pid"].as_i64().expect("worker pid") as i32;
    let app = row["app pid"].as_i64().expect("app pid") as i32;
    assert_eq!(
        common::parent_of(app),
        Some(worker),
        "the app is the worker's"
    );
    let cmdline = std::fs::read(format!("/proc/{app}/cmdline")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("php-cgi"),
        "{cmdline:?}"
    );
    // The text page has it as a field of its own after php-fpm's.
    let text = status_page(&status, "full");
    assert!(
        text.contains(&format!(
            "last request memory:  0\napp pid:              {app}\n"
        )),
        "{text}"
    );
    std::fs::write(&gate, b"").expect("open the gate");
    let response = request.join().expect("thread").expect("gated request");
    assert_eq!(pid_of(response.body()), app, "the app on the page answered");
    // Idle, the row still names the last request's app, as it names its script; a
    // CGI script's request names none.
    wait_until("the worker is idle", Duration::from_secs(5), || {
        let page: serde_json::Value =
            serde_json::from_str(&status_page(&status, "json&full")).expect("json");
        page["processes"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["pid"] == worker && p["state"] == "Idle" && p["app pid"] == app)
        })
    });
    // A CGI script's request names none (asked while it runs: the status request
    // itself would take over an idle worker's row).
    let shell_request = get_in_background(&fpm, &shell);
    let shell_script = shell.display().to_string();
    wait_until(
        "the status page shows the shell script with no app",
        Duration::from_secs(10),
        || {
            let page: serde_json::Value =
                serde_json::from_str(&status_page(&status, "json&full")).expect("json");
            page["processes"].as_array().is_some_and(|p| {
                p.iter().any(|p| {
                    p["script"] == shell_script.as_str()
                        && p["state"] == "Running"
                        && p["app pid"] == 0
                })
            })
        },
    );
    std::fs::write(&shell_gate, b"").expect("open the shell's gate");
    let response = shell_request
        .join()
        .expect("thread")
        .expect("shell request");
    assert_eq!(response.body(), b"shell\n");
}

/// A flup app that writes each request's URI to its fd 2 and to wsgi.errors (which flup
/// sends as FCGI_STDERR records), and, for `/later`, writes to fd 2 after the response
/// and then creates the file `LATER`.
const STDERR_APP: &str = r#"import os, sys, threading
from flup.server.fcgi import WSGIServer

def later():
    sys.stderr.write('written after the response\n')
    sys.stderr.flush()
    open(os.environ['LATER'], 'w').close()

def app(environ, start_response):
    uri = environ['REQUEST_URI']
    sys.stderr.write('fd2 %s\n' % uri)
    sys.stderr.flush()
    environ['wsgi.errors'].write('record %s\n' % uri)
    environ['wsgi.errors'].flush()
    if uri == '/later':
        threading.Timer(0.1, later).start()
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [('%d\n' % os.getpid()).encode()]

WSGIServer(app).run()
"#;

/// `cgi.stderr` takes a resident app's stderr as it takes a CGI child's: its FCGI_STDERR
/// records and its fd 2 during a request go to the web server (`fastcgi`), the log
/// (`log`, one entry per line naming the script) or nowhere (`discard`); what it writes
/// to fd 2 between requests belongs to no request and is logged unless discarded.
#[test]
fn cgi_stderr_takes_an_apps_stderr_records_and_its_fd_2() {
    let Some(python) = python_with_flup() else {
        return;
    };
    for mode in ["fastcgi", "log", "discard"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = dir.path().join("app.py");
        std::fs::write(&app, STDERR_APP).expect("write app");
        let later = dir.path().join("later-done");
        let config = format!(
            "[global]\n\n[app]\nlisten = {sock}\npm = static\npm.max_children = 1\n\
             cgi.fastcgi_app = {python} {app}\ncgi.stderr = {mode}\nenv[LATER] = {later}\n",
            sock = dir.path().join("app.sock").display(),
            app = app.display(),
            later = later.display(),
        );
        let address = dir.path().join("app.sock").display().to_string();
        let fpm = Fpm::start_with(dir, &config, &address);
        let get = |uri: &str| {
            fpm.client()
                .request(
                    &[
                        ("REQUEST_METHOD", "GET"),
                        ("REQUEST_URI", uri),
                        ("SERVER_NAME", "localhost"),
                        ("SERVER_PORT", "80"),
                        ("SERVER_PROTOCOL", "HTTP/1.1"),
                    ],
                    b"",
                    false,
                )
                .expect("FastCGI request")
        };
        let response = get("/one");
        assert_eq!(response.status(), 200, "{mode}: {response:?}");
        let pid = pid_of(response.body());
        let stderr = String::from_utf8_lossy(&response.stderr).into_owned();
        let log = fpm.log_text();
        let said = |line: &str| format!("said into stderr: \"{line}\"");
        match mode {
            "fastcgi" => {
                // Two channels: their order is the order the worker read them in.
                let mut lines: Vec<&str> = stderr.lines().collect();
                lines.sort_unstable();
                assert_eq!(lines, ["fd2 /one", "record /one"], "{mode}; log:\n{log}");
                assert!(!log.contains("/one"), "{mode}: {log}");
            }
            "log" => {
                assert_eq!(stderr, "", "{mode}");
                for line in ["fd2 /one", "record /one"] {
                    assert!(log.contains(&said(line)), "{mode}: no {line:?} in\n{log}");
                }
            }
            _ => {
                assert_eq!(stderr, "", "{mode}");
                assert!(!log.contains("/one"), "{mode}: {log}");
            }
        }
        // Between requests: logged, naming the app, when the next request comes.
        assert_eq!(get("/later").status(), 200);
        wait_until(
            "the app wrote to fd 2 after its response",
            Duration::from_secs(5),
            || later.exists(),
        );
        let next = get("/two");
        assert_eq!(pid_of(next.body()), pid, "{mode}: one app throughout");
        let stderr = String::from_utf8_lossy(&next.stderr).into_owned();
        assert!(!stderr.contains("after the response"), "{mode}: {stderr}");
        let log = fpm.log_text();
        let between = format!("FastCGI app {pid} {}", said("written after the response"));
        assert_eq!(log.contains(&between), mode != "discard", "{mode}: {log}");
    }
}

/// `cgi.fastcgi_app_start = worker_start`: each worker's app runs before any request, and
/// the first request goes to it.
#[test]
fn apps_start_with_their_workers_when_asked() {
    let Some(php) = php_cgi() else { return };
    let fpm = Fpm::start(
        2,
        &format!("cgi.fastcgi_app[.php] = {php}\ncgi.fastcgi_app_start = worker_start\n"),
    );
    let page = fpm.script("pid.php", PID_PHP);
    let workers = fpm.worker_pids();
    let mut apps = HashSet::new();
    wait_until(
        "every worker has started its app",
        Duration::from_secs(10),
        || {
            apps = workers
                .iter()
                .flat_map(|w| common::children_of(*w))
                .collect();
            apps.len() == workers.len()
        },
    );
    for app in &apps {
        let cmdline = std::fs::read(format!("/proc/{app}/cmdline")).unwrap_or_default();
        assert!(
            String::from_utf8_lossy(&cmdline).contains("php-cgi"),
            "{cmdline:?}"
        );
    }
    for _ in 0..6 {
        let response = fpm.get(&page, &[]);
        assert_eq!(response.status(), 200, "{response:?}");
        let pid = pid_of(response.body());
        assert!(apps.contains(&pid), "{pid} is not one of {apps:?}");
    }
    // A worker that comes later (after pm.max_requests, a crash) starts its app too.
    let worker = workers[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill a worker");
    wait_until("a new worker replaces it", Duration::from_secs(10), || {
        let now = fpm.worker_pids();
        now.len() == 2 && !now.contains(&worker)
    });
    let fresh = fpm
        .worker_pids()
        .into_iter()
        .find(|w| !workers.contains(w))
        .expect("the new worker");
    wait_until(
        "the new worker has started its app",
        Duration::from_secs(10),
        || !common::children_of(fresh).is_empty(),
    );

    // The default starts nothing before the first request for it.
    let lazy = Fpm::start(1, &format!("cgi.fastcgi_app[.php] = {php}\n"));
    let page = lazy.script("pid.php", PID_PHP);
    let worker = lazy.worker_pids()[0];
    assert!(common::children_of(worker).is_empty());
    let pid = pid_of(lazy.get(&page, &[]).body());
    assert_eq!(common::children_of(worker), [pid]);
}

/// The slowlog of a resident request describes the app and runs the trace command
/// against the app's pid, not the worker's.
#[test]
fn the_slowlog_traces_the_app_of_a_slow_request() {
    let Some(php) = php_cgi() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let slowlog = dir.path().join("slow.log");
    std::fs::create_dir(dir.path().join("www")).expect("mkdir www");
    let config = format!(
        "[global]\n\n{}",
        common::pool_section(
            "www",
            dir.path(),
            1,
            &format!(
                "cgi.fastcgi_app[.php] = {php}\nslowlog = {}\nrequest_slowlog_timeout = 1s\n\
                 request_slowlog_trace_command = \"echo traced %p && cat /proc/%p/comm\"\n",
                slowlog.display()
            ),
        )
    );
    let address = dir.path().join("www.sock").display().to_string();
    let fpm = Fpm::start_with(dir, &config, &address);
    let page = fpm.script("pid.php", PID_PHP);
    let app = pid_of(fpm.get(&page, &[]).body());
    let worker = fpm.worker_pids()[0];
    let gate = fpm.path("gate");
    let gated = gated_php(&fpm, "gated.php", &gate);
    let request = get_in_background(&fpm, &gated);
    let traced = format!("traced {app}\nphp-cgi");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&slowlog).is_ok_and(|t| t.contains(&traced)) {
        assert!(
            Instant::now() < deadline,
            "no {traced:?} in the slowlog within 10 s:\n{}\nlog:\n{}",
            std::fs::read_to_string(&slowlog).unwrap_or_default(),
            fpm.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(&gate, b"").expect("open the gate");
    let response = request.join().expect("thread").expect("gated request");
    assert_eq!(pid_of(response.body()), app);
    let record = std::fs::read_to_string(&slowlog).expect("slowlog");
    assert!(
        record.contains(&format!("script_filename = {}", gated.display())),
        "{record}"
    );
    assert!(
        record.contains(&format!("cgi process {app} (state ")),
        "the record describes the app: {record}"
    );
    assert!(!record.contains(&format!("traced {worker}")), "{record}");
    fpm.wait_for_log("executing too slow", Duration::from_secs(5));
}

/// Requests to a resident php-cgi from several threads while the master reloads (USR2)
/// three times: none fails, and every app seen is gone once its worker has left (no
/// orphaned app, whatever the reload did to its worker).
#[test]
fn reloads_under_load_lose_no_request_and_orphan_no_app() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let Some(php) = php_cgi() else { return };
    // A small PHP_FCGI_MAX_REQUESTS adds apps that end by themselves to the mix.
    let fpm = Fpm::start(
        3,
        &format!("cgi.fastcgi_app[.php] = {php}\nenv[PHP_FCGI_MAX_REQUESTS] = 25\n"),
    );
    let page = fpm.script("pid.php", PID_PHP).display().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (stop, ok) = (stop.clone(), ok.clone());
            let (address, page) = (fpm.address.clone(), page.clone());
            std::thread::spawn(move || {
                let mut apps = HashSet::new();
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let result = common::Client::connect(&address, Duration::from_secs(30))
                        .and_then(|mut c| {
                            c.request(
                                &[("REQUEST_METHOD", "GET"), ("SCRIPT_FILENAME", &page)],
                                b"",
                                false,
                            )
                        });
                    match result {
                        Ok(r) if r.status() == 200 => {
                            apps.insert(pid_of(r.body()));
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => errors.push(format!("{r:?}")),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                (apps, errors)
            })
        })
        .collect();
    let flowing = |more: usize| {
        let from = ok.load(Ordering::Relaxed);
        wait_until(
            &format!("{more} more requests are answered"),
            Duration::from_secs(20),
            || ok.load(Ordering::Relaxed) >= from + more,
        );
    };
    // Every process below the master at some point: old workers, apps, successors
    // started ahead that no response names.
    let mut below = HashSet::new();
    flowing(30);
    for _ in 0..3 {
        below.extend(descendants(fpm.pid()));
        fpm.reload();
        below.extend(descendants(fpm.pid()));
        flowing(30);
    }
    below.extend(descendants(fpm.pid()));
    stop.store(true, Ordering::Relaxed);
    let mut apps = HashSet::new();
    let mut errors = Vec::new();
    for thread in threads {
        let (seen, failed) = thread.join().expect("load thread");
        apps.extend(seen);
        errors.extend(failed);
    }
    println!(
        "{} requests answered by {} apps across 3 reloads",
        ok.load(Ordering::Relaxed),
        apps.len()
    );
    assert!(errors.is_empty(), "failed requests: {errors:?}");
    fpm.wait_workers(3);
    let workers = fpm.worker_pids();
    let master = fpm.pid();
    for pid in apps.into_iter().chain(below) {
        wait_until(
            &format!("process {pid} is gone, or a current worker or its app"),
            Duration::from_secs(10),
            || {
                common::parent_of(pid)
                    .is_none_or(|parent| parent == master || workers.contains(&parent))
            },
        );
    }
}
