//! The command line: `-t`, `-tt`, errors and usage.

mod common;

use common::BIN;
use std::path::Path;
use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().expect("run cgi-fpm");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn example_config() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("etc/cgi-fpm.conf")
        .display()
        .to_string()
}

#[test]
fn the_bundled_config_passes_the_test() {
    let config = example_config();
    let (code, text) = run(&["-t", "-y", &config]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!(
            "NOTICE: configuration file {config} test is successful"
        )),
        "{text}"
    );
    // The example confines scripts, so no "any executable can be run" warning.
    assert!(!text.contains("WARNING"), "{text}");
}

#[test]
fn the_bundled_pool_file_passes_the_test_alone() {
    // etc/cgi-fpm.d/www.conf checked by itself: its allowed root, taken from its own
    // directory then, does not exist; that is a warning, not an error.
    let pool = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/cgi-fpm.d/www.conf");
    let (code, text) = run(&["-t", "-y", &pool.display().to_string()]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("'cgi.allowed_roots'") && text.contains("does not exist"),
        "{text}"
    );
}

#[test]
fn tt_dumps_the_effective_config() {
    let (code, text) = run(&["-tt", "-y", &example_config()]);
    assert_eq!(code, 0, "{text}");
    for line in [
        "[www]",
        "listen = 127.0.0.1:9000",
        "pm = static",
        "pm.max_children = 4",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
}

#[test]
fn errors_name_the_file_line_pool_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bad.conf");
    std::fs::write(
        &config,
        "[global]\nlog_level = chatty\n[www]\nlisten = 9000\npm = static\npm.max_children = 0\nno.such.key = 1\n",
    )
    .expect("write");
    let path = config.display().to_string();
    let (code, text) = run(&["-t", "-y", &path]);
    assert_eq!(code, 78, "{text}");
    assert!(
        text.contains(&format!("ERROR: [{path}:2] [global] 'log_level'")),
        "{text}"
    );
    assert!(
        text.contains(&format!("ERROR: [{path}:6] [pool www] 'pm.max_children'")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "ERROR: [{path}:7] [pool www] 'no.such.key': unknown entry"
        )),
        "{text}"
    );
    assert!(text.contains("FPM initialization failed"), "{text}");
}

#[test]
fn a_typo_gets_the_same_hint_under_t_and_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("typo.conf");
    std::fs::write(
        &config,
        "[www]\nlisten = 9000\npm = dynamc\npm.max_chidren = 4\n",
    )
    .expect("write");
    let path = config.display().to_string();
    let expected = [
        format!(
            "ERROR: [{path}:3] [pool www] 'pm': invalid value 'dynamc': expected static, dynamic or ondemand; did you mean 'dynamic'?"
        ),
        format!(
            "ERROR: [{path}:4] [pool www] 'pm.max_chidren': unknown entry; did you mean 'pm.max_children'?"
        ),
    ];
    // A configuration that does not load never starts, so `-F` returns like `-t` does.
    for args in [["-t", "-y", &path], ["-F", "-y", &path]] {
        let (code, text) = run(&args);
        assert_eq!(code, 78, "{args:?}: {text}");
        for line in &expected {
            assert!(
                text.contains(line.as_str()),
                "{args:?}: no {line:?} in:\n{text}"
            );
        }
    }
}

#[test]
fn a_pool_without_allowed_roots_warns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("open.conf");
    std::fs::write(
        &config,
        "[www]\nlisten = 9000\npm = static\npm.max_children = 1\n",
    )
    .expect("write");
    let (code, text) = run(&["-t", "-R", "-y", &config.display().to_string()]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("WARNING:") && text.contains("cgi.allowed_roots is not set"),
        "{text}"
    );
}

#[test]
fn warnings_are_printed_next_to_errors() {
    // cgi-fpm(8): "-t ... warnings are printed too" — also when the file has errors.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("both.conf");
    std::fs::write(
        &config,
        "[www]\nlisten = 9000\npm = static\npm.max_children = 0\n",
    )
    .expect("write");
    let (code, text) = run(&["-t", "-R", "-y", &config.display().to_string()]);
    assert_eq!(code, 78, "{text}");
    assert!(text.contains("'pm.max_children'"), "the error: {text}");
    assert!(
        text.contains("WARNING:") && text.contains("cgi.allowed_roots is not set"),
        "the warning too: {text}"
    );
}

#[test]
fn a_missing_config_file_is_an_error() {
    let (code, text) = run(&["-t", "-y", "/nonexistent/cgi-fpm.conf"]);
    assert_eq!(code, 78, "{text}");
    assert!(text.contains("/nonexistent/cgi-fpm.conf"), "{text}");
}

#[test]
fn usage_errors_and_version() {
    let (code, text) = run(&["--no-such-flag"]);
    assert_eq!(code, 64, "{text}");
    assert!(
        text.contains("unknown option '--no-such-flag'") && text.contains("Usage:"),
        "{text}"
    );
    let (code, text) = run(&["-v"]);
    assert_eq!(code, 0);
    assert!(text.starts_with("cgi-fpm "), "{text}");
}

#[test]
fn test_refuses_a_socket_in_a_missing_directory_as_start_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("missing.conf");
    let socket = dir.path().join("nonexistent/dir/a.sock");
    std::fs::write(
        &config,
        format!(
            "[www]\nlisten = {}\npm = static\npm.max_children = 1\ncgi.allowed_roots = /\n",
            socket.display()
        ),
    )
    .expect("write");
    let config = config.display().to_string();
    let (code, text) = run(&["-t", "-y", &config]);
    assert_eq!(code, 78, "{text}");
    assert!(
        text.contains(&format!(
            "[{config}:2] [pool www] 'listen': cannot create the unix socket"
        )),
        "{text}"
    );
    let (code, start) = run(&["-F", "-y", &config]);
    assert_eq!(code, 78, "{start}");
}

/// The master's own files and limits: a start refuses an error log or pid file in a
/// missing directory and an rlimit_files out of reach, so `-t` does too, with the same
/// words.
#[test]
fn test_refuses_the_masters_files_and_limits_as_start_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("a.sock");
    let missing = dir.path().join("nonexistent");
    let pool = format!(
        "[www]\nlisten = {}\npm = static\npm.max_children = 1\ncgi.allowed_roots = /\n",
        socket.display()
    );
    for (global, says) in [
        (
            format!("error_log = {}/error.log", missing.display()),
            format!(
                "failed to open error_log ({}/error.log): the directory '{}' does not exist",
                missing.display(),
                missing.display()
            ),
        ),
        (
            format!("pid = {}/cgi-fpm.pid", missing.display()),
            format!(
                "failed to write the pid file '{}/cgi-fpm.pid': the directory '{}' does not exist",
                missing.display(),
                missing.display()
            ),
        ),
        (
            "rlimit_files = 999999999999".to_string(),
            "failed to set rlimit_files for the master".to_string(),
        ),
    ] {
        let config = dir.path().join("master.conf");
        std::fs::write(&config, format!("[global]\n{global}\n{pool}")).expect("write");
        let config = config.display().to_string();
        let (code, text) = run(&["-t", "-R", "-y", &config]);
        assert_eq!(code, 78, "{global}: {text}");
        assert!(text.contains(&says), "{global}: {text}");
        let (code, start) = run(&["-F", "-R", "-y", &config]);
        assert_eq!(code, 78, "{global} at start: {start}");
        assert!(!socket.exists(), "{global}: a socket left behind");
    }
}
