//! `cgi-fpm --ping`: the health check with nothing else installed, against the real
//! server: every pool up, one pool stuck, everything down, and one address alone.

mod common;

use common::{BIN, Fpm, pool_section, wait_until};
use std::fs;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Pool `pinged` answers its ping.path with a custom response; pool `plain` has no ping
/// page (GET_VALUES) and a single worker, so one slow request makes it unable to answer.
fn two_pools() -> Fpm {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir(dir.path().join("www")).expect("mkdir");
    let config = format!(
        "[global]\n{}{}",
        pool_section(
            "pinged",
            dir.path(),
            1,
            "ping.path = /healthz\nping.response = alive"
        ),
        pool_section("plain", dir.path(), 1, ""),
    );
    let address = dir.path().join("pinged.sock").display().to_string();
    let fpm = Fpm::start_with(dir, &config, &address);
    fpm.wait_workers(2);
    fpm
}

fn ping(args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = Command::new(BIN).args(args).output().expect("run --ping");
    (out, started.elapsed())
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_pool_answering_is_exit_0_with_a_line_each() {
    let fpm = two_pools();
    let config = fpm.config.display().to_string();
    let (out, _) = ping(&["-y", &config, "--ping"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with("[pool pinged] ")
            && lines[0].contains(": ok (ping.path /healthz answered in "),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("[pool plain] ")
            && lines[1].contains(": ok (FastCGI GET_VALUES answered in "),
        "{stdout}"
    );
    // One address alone, no configuration needed.
    let plain = fpm.path("plain.sock").display().to_string();
    let (out, _) = ping(&["--ping", &plain]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert!(text(&out).0.starts_with(&format!("{plain}: ok")));
}

#[test]
fn a_pool_that_cannot_answer_in_time_fails_the_check_by_name() {
    let fpm = two_pools();
    let marker = fpm.path("www/started");
    let script = fpm.script(
        "slow.sh",
        &format!(
            "#!/bin/sh\ntouch {}\nsleep 20\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\n",
            marker.display()
        ),
    );
    // Keep plain's only worker busy.
    let plain = fpm.path("plain.sock").display().to_string();
    let busy = {
        let (plain, script) = (plain.clone(), script.display().to_string());
        std::thread::spawn(move || {
            let mut client =
                common::Client::connect(&plain, Duration::from_secs(30)).expect("connect");
            let _ = client.request(
                &[("REQUEST_METHOD", "GET"), ("SCRIPT_FILENAME", &script)],
                b"",
                false,
            );
        })
    };
    wait_until("the slow script runs", Duration::from_secs(10), || {
        marker.exists()
    });
    let config = fpm.config.display().to_string();
    let (out, took) = ping(&["-y", &config, "--ping", "--ping-timeout", "1"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("[pool pinged] ") && stdout.contains(": ok ("),
        "{stdout}"
    );
    assert!(
        stdout.contains("[pool plain] ")
            && stdout.contains(
                "FAILED (FastCGI GET_VALUES): no answer to GET_VALUES within the deadline"
            ),
        "{stdout}"
    );
    assert!(stderr.contains("no good answer from plain"), "{stderr}");
    assert!(!stderr.contains("pinged"), "{stderr}");
    // Both pools were asked at once, each within the deadline.
    assert!(took < Duration::from_secs(4), "--ping took {took:?}");
    drop(fpm);
    let _ = busy.join();
}

#[test]
fn a_stopped_server_fails_every_pool_quickly() {
    let mut fpm = two_pools();
    let config = fpm.config.display().to_string();
    fpm.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        fpm.wait_exit(Duration::from_secs(10)).is_some(),
        "cgi-fpm did not stop"
    );
    let (out, took) = ping(&["-y", &config, "--ping"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert_eq!(stdout.matches(": FAILED (").count(), 2, "{stdout}");
    assert!(stdout.contains("connect: "), "{stdout}");
    assert!(
        stderr.contains("no good answer from pinged, plain"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(3), "--ping took {took:?}");
    let plain = fpm.path("plain.sock").display().to_string();
    let (out, _) = ping(&["--ping", &plain]);
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
}

#[test]
fn a_broken_configuration_is_not_healthy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bad.conf");
    fs::write(&config, "[www]\nlisten = /x.sock\npm = sometimes\n").expect("write");
    let (out, _) = ping(&["-y", config.to_str().expect("utf-8"), "--ping"]);
    assert_ne!(out.status.code(), Some(0), "{:?}", text(&out));
}
