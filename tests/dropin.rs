//! php-fpm drop-in: `cgi-fpm -t` on the configuration files php-fpm users have (Debian's
//! package, php-src's templates; see tests/dropin/README.md), as shipped and with every
//! commented-out directive switched on. Each must pass, with at most one warning per key.

mod common;

use common::BIN;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn corpus(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/dropin")
        .join(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `cgi-fpm -t -y main`: exit code and everything it printed.
fn check(main: &Path) -> (Option<i32>, String) {
    let output = Command::new(BIN)
        .arg("-t")
        .arg("-y")
        .arg(main)
        .output()
        .expect("run cgi-fpm");
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    (output.status.code(), text)
}

/// The key each WARNING line is about (the first quoted word after the section), or the
/// whole message when it names none.
fn warnings_by_key(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().filter(|line| line.contains("] WARNING: ")) {
        let message = line.split_once("WARNING: ").map_or(line, |(_, m)| m);
        let after_section = message
            .find("] '")
            .map(|at| &message[at + 2..])
            .unwrap_or(message);
        let key = after_section
            .strip_prefix('\'')
            .and_then(|rest| rest.split_once('\''))
            .map_or(after_section, |(key, _)| key);
        by_key
            .entry(key.to_string())
            .or_default()
            .push(line.to_string());
    }
    by_key
}

/// `;name = value` and `; name = value` lines become active; other comments stay.
fn enable_every_directive(text: &str) -> String {
    text.lines()
        .map(|line| {
            let Some(rest) = line.strip_prefix(';') else {
                return line.to_string();
            };
            let rest = rest.trim_start();
            let Some((key, _)) = rest.split_once('=') else {
                return line.to_string();
            };
            let key = key.trim();
            let is_directive = !key.is_empty()
                && key.chars().all(|c| {
                    c.is_ascii_lowercase() || "_.[]".contains(c) || c.is_ascii_alphanumeric()
                })
                && key.starts_with(|c: char| c.is_ascii_lowercase());
            if is_directive {
                rest.to_string()
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Directories the stock values name on the build machine, pointed at ones that exist.
fn localise(text: &str, dir: &Path) -> String {
    text.replace(
        "prefix = /path/to/pools/$pool",
        &format!("prefix = {}/pools/$pool", dir.display()),
    )
    .replace("chdir = /var/www", "chdir = /")
}

fn assert_passes(main: &Path, what: &str) -> BTreeMap<String, Vec<String>> {
    let (code, text) = check(main);
    assert_eq!(code, Some(0), "{what}:\n{text}");
    assert!(
        text.contains(&format!(
            "NOTICE: configuration file {} test is successful",
            main.display()
        )),
        "{what}:\n{text}"
    );
    assert!(!text.contains("ERROR"), "{what}:\n{text}");
    let by_key = warnings_by_key(&text);
    for (key, lines) in &by_key {
        assert_eq!(
            lines.len(),
            1,
            "{what}: more than one warning about {key}:\n{}",
            lines.join("\n")
        );
    }
    println!("{what}: {} warning(s)\n{text}", by_key.len());
    by_key
}

/// Debian's files in a temporary /etc/php/8.2/fpm: the include line is the only change.
fn install_debian(dir: &Path, every_directive: bool) -> PathBuf {
    let pool_dir = dir.join("pool.d");
    fs::create_dir_all(&pool_dir).expect("mkdir pool.d");
    fs::create_dir_all(dir.join("pools/www")).expect("mkdir pools/www");
    let mut main = corpus("debian/php-fpm.conf");
    let mut www = corpus("debian/pool.d/www.conf");
    assert!(main.contains("include=/etc/php/8.2/fpm/pool.d/*.conf"));
    main = main.replace(
        "include=/etc/php/8.2/fpm/pool.d/*.conf",
        &format!("include={}/*.conf", pool_dir.display()),
    );
    if every_directive {
        main = enable_every_directive(&main);
        www = localise(&enable_every_directive(&www), dir);
    }
    fs::write(dir.join("php-fpm.conf"), main).expect("write php-fpm.conf");
    fs::write(pool_dir.join("www.conf"), www).expect("write www.conf");
    dir.join("php-fpm.conf")
}

/// php-src's templates as `make install` fills them in, under a temporary sysconfdir.
fn install_php_src(dir: &Path, every_directive: bool) -> PathBuf {
    let pool_dir = dir.join("php-fpm.d");
    fs::create_dir_all(&pool_dir).expect("mkdir php-fpm.d");
    fs::create_dir_all(dir.join("pools/www")).expect("mkdir pools/www");
    // Where the enabled `pid` and `error_log` put their files, relative to the prefix;
    // `make install` creates them, and a start (so -t) needs them.
    for made in ["log", "run"] {
        fs::create_dir_all(dir.join(made)).expect("mkdir log, run");
    }
    // The build's defaults are nobody/nobody; the group is nobody's own here (Debian
    // calls it nogroup).
    let user = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .expect("a user 'nobody'");
    let group = nix::unistd::Group::from_gid(user.gid)
        .ok()
        .flatten()
        .map_or_else(|| user.gid.to_string(), |group| group.name);
    let fill = |text: String| {
        text.replace("@php_fpm_sysconfdir@", &dir.display().to_string())
            .replace("@php_fpm_user@", "nobody")
            .replace("@php_fpm_group@", &group)
            .replace("@prefix@", "/usr/local")
            .replace("@php_fpm_prefix@", "/usr/local")
            .replace("@EXPANDED_LOCALSTATEDIR@", "/usr/local/var")
    };
    let mut main = fill(corpus("php-src/php-fpm.conf.in"));
    let mut www = fill(corpus("php-src/www.conf.in"));
    let active = |text: &str| {
        text.lines()
            .filter(|line| !line.starts_with(';'))
            .all(|line| !line.contains('@'))
    };
    assert!(active(&main) && active(&www), "a placeholder is left");
    if every_directive {
        main = enable_every_directive(&main);
        www = localise(&enable_every_directive(&www), dir);
    }
    fs::write(dir.join("php-fpm.conf"), main).expect("write php-fpm.conf");
    fs::write(pool_dir.join("www.conf"), www).expect("write www.conf");
    dir.join("php-fpm.conf")
}

#[test]
fn debians_stock_files_pass_the_test() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = install_debian(dir.path(), false);
    let warnings = assert_passes(&main, "Debian php-fpm.conf + pool.d/www.conf");
    // Nothing in the stock files is refused or warned about twice; the unix socket path
    // under /run/php need not exist for -t.
    assert!(!warnings.contains_key("listen"), "{warnings:?}");
}

#[test]
fn debians_files_with_every_directive_enabled_pass_the_test() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = install_debian(dir.path(), true);
    let warnings = assert_passes(&main, "Debian, every directive enabled");
    // The keys that do nothing here say so, once each.
    for key in [
        "listen.setfib",
        "php_admin_value[]",
        "listen.allowed_clients",
    ] {
        assert!(warnings.contains_key(key), "{key}: {warnings:?}");
    }
}

#[test]
fn php_srcs_templates_pass_the_test() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = install_php_src(dir.path(), false);
    assert_passes(&main, "php-src php-fpm.conf.in + www.conf.in");
}

#[test]
fn php_srcs_templates_with_every_directive_enabled_pass_the_test() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = install_php_src(dir.path(), true);
    let warnings = assert_passes(&main, "php-src, every directive enabled");
    // Accepted, but not acted on yet: one warning.
    assert!(warnings.contains_key("events.mechanism"), "{warnings:?}");
    assert!(!warnings.contains_key("proctitle_prefix"), "{warnings:?}");
}

#[test]
fn enabling_directives_leaves_prose_alone() {
    let text = "; Where requests arrive = here\n;listen = 1\n; process.max = 128\n;env[PATH] = /bin\n; Default Value: 0\n";
    assert_eq!(
        enable_every_directive(text),
        "; Where requests arrive = here\nlisten = 1\nprocess.max = 128\nenv[PATH] = /bin\n; Default Value: 0\n"
    );
}
