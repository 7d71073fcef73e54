//! The Debian package (`cargo deb`, metadata in Cargo.toml): built here from the binary
//! under test, unpacked into a scratch root with `dpkg-deb -x`, and checked the way an
//! operator would meet it: the files where Debian puts them, the configuration as
//! conffiles that the packaged binary's `-t` accepts, a systemd unit that names the
//! packaged paths, and a logrotate file that sends USR1 to the configured pid.
//!
//! `cargo-deb` is installed by scripts/install-test-deps.sh; outside CI a machine without
//! it skips this test, saying so.

mod common;

use common::{BIN, which};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn cargo_deb() -> Option<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    let found = which("cargo-deb").or_else(|| {
        cargo_home
            .map(|h| h.join("bin/cargo-deb"))
            .filter(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("cargo-deb is not installed, and CI requires it (scripts/install-test-deps.sh)");
        }
        eprintln!("SKIPPED: cargo-deb is not installed (run scripts/install-test-deps.sh)");
    }
    found
}

fn run(command: &mut Command) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `key = value` in an INI file.
fn ini_value(config: &str, key: &str) -> Option<String> {
    config.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

#[test]
fn the_deb_installs_a_daemon_that_accepts_its_own_configuration() {
    if which("dpkg-deb").is_none() {
        // Debian's own tool; on a Debian machine it is always there.
        assert!(
            std::env::var_os("CI").is_none(),
            "dpkg-deb is missing, and CI requires it"
        );
        eprintln!("SKIPPED: dpkg-deb is not installed (not a Debian machine)");
        return;
    }
    let Some(cargo_deb) = cargo_deb() else {
        return;
    };
    let scratch = tempfile::tempdir().expect("tempdir");
    // Package the binary under test: a target dir of our own holds it where the
    // metadata's `target/release/cgi-fpm` asset points, so `--no-build` builds nothing.
    let target = scratch.path().join("target");
    fs::create_dir_all(target.join("release")).expect("mkdir");
    fs::copy(BIN, target.join("release/cgi-fpm")).expect("copy binary");
    let deb = scratch.path().join("cgi-fpm.deb");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(&cargo_deb)
        // --fast: the test checks the layout, not the compression ratio.
        .args(["deb", "--no-build", "--fast", "--output"])
        .arg(&deb)
        .current_dir(REPO)
        .env("CARGO", &cargo)
        .env("CARGO_TARGET_DIR", &target));

    // The control fields an operator sees in `apt show`.
    let fields = text(&run(Command::new("dpkg-deb").arg("-f").arg(&deb).args([
        "Package",
        "Section",
        "Depends",
        "Maintainer",
    ])));
    assert!(fields.contains("Package: cgi-fpm"), "{fields}");
    assert!(fields.contains("Section: httpd"), "{fields}");
    assert!(fields.contains("Depends: libc6"), "{fields}");

    let root = scratch.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let control = scratch.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));

    // The binary, and both manual pages (compressed or not).
    let binary = root.join("usr/sbin/cgi-fpm");
    let version = text(&run(Command::new(&binary).arg("-v")));
    assert!(version.starts_with("cgi-fpm "), "{version}");
    for page in ["man8/cgi-fpm.8", "man5/cgi-fpm.conf.5"] {
        let plain = root.join("usr/share/man").join(page);
        let gz = PathBuf::from(format!("{}.gz", plain.display()));
        assert!(plain.is_file() || gz.is_file(), "no {page} in the package");
    }

    // The configuration: conffiles, and the packaged binary accepts it.
    let conffiles = fs::read_to_string(control.join("conffiles")).unwrap_or_default();
    for file in [
        "/etc/cgi-fpm/cgi-fpm.conf",
        "/etc/cgi-fpm/cgi-fpm.d/www.conf",
        "/etc/logrotate.d/cgi-fpm",
    ] {
        assert!(
            conffiles.lines().any(|l| l == file),
            "{file} is not a conffile: {conffiles}"
        );
        assert!(root.join(&file[1..]).is_file(), "{file} is not packaged");
    }
    let config = root.join("etc/cgi-fpm/cgi-fpm.conf");
    let check = run(Command::new(&binary).arg("-t").arg("-y").arg(&config));
    let said = String::from_utf8_lossy(&check.stderr);
    assert!(said.contains("test is successful"), "{said}");
    assert!(
        !said.contains("nothing matches"),
        "the pool file is not found: {said}"
    );

    // systemd: the unit runs the packaged binary on the packaged configuration, and is
    // the repository's unit but for those paths.
    let unit_path = ["lib/systemd/system", "usr/lib/systemd/system"]
        .iter()
        .map(|d| root.join(d).join("cgi-fpm.service"))
        .find(|p| p.is_file())
        .expect("a cgi-fpm.service in the package");
    let unit = fs::read_to_string(&unit_path).expect("read unit");
    assert!(
        unit.contains("ExecStart=/usr/sbin/cgi-fpm -F -y /etc/cgi-fpm/cgi-fpm.conf"),
        "{unit}"
    );
    let directives = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    let repo_unit = fs::read_to_string(Path::new(REPO).join("etc/systemd/cgi-fpm.service"))
        .expect("read repo unit")
        .replace("/usr/local/sbin/cgi-fpm", "/usr/sbin/cgi-fpm")
        .replace("/etc/cgi-fpm.conf", "/etc/cgi-fpm/cgi-fpm.conf");
    assert_eq!(
        directives(&unit),
        directives(&repo_unit),
        "etc/debian/cgi-fpm.service drifted from etc/systemd/cgi-fpm.service"
    );
    // Installing enables and starts the service (Debian's way for a daemon); socket
    // activation stays opt-in, shipped as an example.
    let postinst = fs::read_to_string(control.join("postinst")).unwrap_or_default();
    assert!(
        postinst.contains("deb-systemd-helper enable cgi-fpm.service")
            && postinst.contains("deb-systemd-invoke $_dh_action cgi-fpm.service"),
        "{postinst}"
    );
    assert!(!postinst.contains("cgi-fpm.socket"), "{postinst}");
    assert!(
        root.join("usr/share/doc/cgi-fpm/examples/systemd/cgi-fpm.socket")
            .is_file()
    );

    // logrotate rotates the configured error log and sends USR1 to the configured pid.
    let global = fs::read_to_string(&config).expect("read config");
    let pid = ini_value(&global, "pid").expect("the packaged config sets a pid file");
    let error_log = ini_value(&global, "error_log").expect("and an error_log");
    let rotate = fs::read_to_string(root.join("etc/logrotate.d/cgi-fpm")).expect("logrotate");
    assert!(rotate.starts_with(&format!("{error_log} {{")), "{rotate}");
    assert!(
        rotate.contains(&format!("kill -USR1 \"$(cat {pid})\"")),
        "{rotate}"
    );
}
