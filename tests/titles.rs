//! Process titles as `ps` and `pgrep -f` read them: /proc/PID/cmdline of the master, its
//! workers and their scripts, before and after a reload, and with a prefix too long for
//! the room there is.

mod common;

use common::{Fpm, wait_until};
use nix::sys::signal::Signal;
use std::time::Duration;

/// What `ps` shows: the command line with the NULs that pad or separate it trimmed.
fn cmdline(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let text = String::from_utf8_lossy(&raw).into_owned();
    text.trim_end_matches('\0').replace('\0', " ")
}

/// Bytes from the start of the arguments to the end of the environment, the room a
/// title has (fields 48 and 51 of /proc/PID/stat).
fn title_room(pid: i32) -> usize {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<usize> = stat[stat.rfind(')').expect(")") + 1..]
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // The fields after the name start at field 3.
    fields[51 - 3] - fields[48 - 3]
}

/// A pool of two workers under `global`, its master started with MARK=… in its
/// environment (scripts see it: clear_env = no) and a script that shows its own command
/// line and MARK.
fn start(global: &str) -> (Fpm, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("www")).expect("mkdir");
    let config = format!(
        "[global]\n{global}\n\n{}",
        common::pool_section("www", dir.path(), 2, "clear_env = no")
    );
    let address = dir.path().join("www.sock").display().to_string();
    let fpm = Fpm::start_with_env(
        dir,
        &config,
        &address,
        &[("MARK", "the-environment-is-intact")],
    );
    let script = fpm.script(
        "me.sh",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\ntr '\\0' ' ' < /proc/$$/cmdline\necho\necho \"MARK=$MARK\"\n",
    );
    (fpm, script)
}

/// The script's answer: its own command line, then MARK as it saw it.
fn script_view(fpm: &Fpm, script: &std::path::Path) -> String {
    let r = fpm.get(script, &[]);
    assert_eq!(r.status(), 200, "{r:?}");
    String::from_utf8_lossy(r.body()).into_owned()
}

fn assert_titles(fpm: &Fpm, master: &str, worker: &str) {
    assert_eq!(cmdline(fpm.pid()), master);
    wait_until("two workers", Duration::from_secs(10), || {
        fpm.worker_pids().len() == 2
    });
    // A worker shows the master's title from its fork until it sets its own, so a
    // worker read right after it was started may not be renamed yet: wait for it.
    for pid in fpm.worker_pids() {
        wait_until(
            &format!(
                "worker {pid} titled '{worker}' (at first '{}')",
                cmdline(pid)
            ),
            Duration::from_secs(5),
            || cmdline(pid) == worker,
        );
    }
}

#[test]
fn master_and_workers_show_php_fpms_titles_also_after_reloads() {
    let (fpm, script) = start("");
    let master = format!("cgi-fpm: master process ({})", fpm.config.display());
    assert_titles(&fpm, &master, "cgi-fpm: pool www");
    // The script keeps its own command line, and the environment it inherits is whole.
    let view = script_view(&fpm, &script);
    assert!(
        view.starts_with(&format!("/bin/sh {}", script.display())),
        "{view}"
    );
    assert!(view.contains("MARK=the-environment-is-intact"), "{view}");

    // Twice: the second reload runs on arguments saved before the first title was set.
    for round in 1..=2 {
        let old: Vec<i32> = fpm.worker_pids();
        let before = fpm
            .log_text()
            .matches("ready to handle connections")
            .count();
        fpm.signal(Signal::SIGUSR2);
        wait_until(
            &format!("reload {round} is ready"),
            Duration::from_secs(15),
            || {
                fpm.log_text()
                    .matches("ready to handle connections")
                    .count()
                    > before
            },
        );
        wait_until("the old workers are gone", Duration::from_secs(10), || {
            fpm.worker_pids().iter().all(|pid| !old.contains(pid))
        });
        assert_titles(&fpm, &master, "cgi-fpm: pool www");
        assert!(
            script_view(&fpm, &script).contains("MARK=the-environment-is-intact"),
            "after reload {round}"
        );
    }
    assert!(
        !fpm.log_text().contains("proctitle_prefix"),
        "no 'not implemented' warning:\n{}",
        fpm.log_text()
    );
}

#[test]
fn a_prefix_longer_than_the_room_is_cut_and_overwrites_nothing_still_read() {
    // Longer than the arguments and environment together: the title fills the whole
    // room, over the environment strings, and stops one byte short of its end.
    let prefix = "p".repeat(20_000);
    let (fpm, script) = start(&format!("proctitle_prefix = {prefix}"));
    let room = title_room(fpm.pid());
    assert!(room < 20_000, "room {room}");
    // The kernel shows at most one page of a title that ran past the arguments.
    let shown = (room - 1).min(4096);
    let master = cmdline(fpm.pid());
    assert_eq!(master.len(), shown, "{master}");
    assert!(master.bytes().all(|b| b == b'p'), "{master}");
    for pid in fpm.worker_pids() {
        assert_eq!(cmdline(pid), master, "worker {pid}");
    }
    // The environment was moved out of the way first: scripts still get it whole.
    let view = script_view(&fpm, &script);
    assert!(view.contains("MARK=the-environment-is-intact"), "{view}");
}

#[test]
fn a_short_prefix_names_master_and_workers() {
    let (fpm, _script) = start("proctitle_prefix = web1");
    let master = format!("web1: master process ({})", fpm.config.display());
    assert_titles(&fpm, &master, "web1: pool www");
}
