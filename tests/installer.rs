//! scripts/install-test-deps.sh on a machine that lacks something: it must install it and
//! exit 0 on that first run, whether or not a policy-rc.d already exists, as root or
//! through sudo. The package manager, `id` and `sudo` are stubs on PATH, and the
//! policy-rc.d path is moved into a scratch directory (CGI_FPM_POLICY_RC_D).

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install-test-deps.sh");

struct Machine {
    dir: tempfile::TempDir,
}

impl Machine {
    /// A PATH with only the stubs and the few tools the script uses to write the policy:
    /// every test dependency looked up on PATH (cgi-fcgi, php-cgi, perl, cc…) is missing.
    fn new(uid: u32, apt_status: i32) -> Machine {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).expect("mkdir bin");
        for tool in ["tee", "chmod", "rm", "cat"] {
            let real = ["/usr/bin", "/bin"]
                .iter()
                .map(|d| Path::new(d).join(tool))
                .find(|p| p.exists())
                .unwrap_or_else(|| panic!("{tool} not found in /usr/bin or /bin"));
            symlink(real, bin.join(tool)).expect("symlink");
        }
        let log = dir.path().join("calls.log");
        let policy = dir.path().join("policy-rc.d");
        let m = Machine { dir };
        m.stub("id", &format!("[ \"$1\" = -u ] && echo {uid}\n"));
        m.stub(
            "sudo",
            &format!(
                "echo \"sudo $*\" >> {log}\nexec \"$@\"\n",
                log = log.display()
            ),
        );
        // cargo installs cargo-deb for the package test; the stub only notes it.
        m.stub(
            "cargo",
            &format!("echo \"cargo $*\" >> {log}\n", log = log.display()),
        );
        // apt-get notes each call and whether the policy that keeps services from
        // starting is in place while it installs.
        m.stub(
            "apt-get",
            &format!(
                "echo \"apt-get $*\" >> {log}\n\
                 if [ \"$1\" = install ]; then\n\
                 \t[ -x {policy} ] && echo 'policy in place' >> {log}\n\
                 \texit {apt_status}\n\
                 fi\n\
                 exit 0\n",
                log = log.display(),
                policy = policy.display(),
            ),
        );
        m
    }

    /// A python3 without prometheus_client or flup whose pip refuses, as PEP 668 says,
    /// to install into it unless told to break the system's packages when `managed`.
    fn python(&self, managed: bool) {
        let log = self.dir.path().join("calls.log");
        self.stub(
            "python3",
            &format!(
                "case \"$*\" in\n\
                 \t*EXTERNALLY-MANAGED*) exit {marker} ;;\n\
                 \t'-m pip --version') exit 0 ;;\n\
                 \t'-m pip install'*)\n\
                 \t\techo \"python3 $*\" >> {log}\n\
                 \t\tcase \"$*\" in *--break-system-packages*) exit 0 ;; esac\n\
                 \t\t[ {managed} = yes ] && {{ echo externally-managed-environment >&2; exit 1; }}\n\
                 \t\texit 0 ;;\n\
                 esac\n\
                 exit 1\n",
                marker = if managed { 0 } else { 1 },
                managed = if managed { "yes" } else { "no" },
                log = log.display(),
            ),
        );
    }

    fn stub(&self, name: &str, body: &str) {
        let path = self.dir.path().join("bin").join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}")).expect("write stub");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod stub");
    }

    fn policy(&self) -> PathBuf {
        self.dir.path().join("policy-rc.d")
    }

    fn calls(&self) -> String {
        fs::read_to_string(self.dir.path().join("calls.log")).unwrap_or_default()
    }

    fn run(&self) -> Output {
        Command::new("/bin/sh")
            .arg(SCRIPT)
            .env_clear()
            .env("PATH", self.dir.path().join("bin"))
            .env("CGI_FPM_POLICY_RC_D", self.policy())
            .output()
            .expect("run install-test-deps.sh")
    }
}

fn explain(m: &Machine, out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}\ncalls:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        m.calls()
    )
}

fn assert_installed(m: &Machine, out: &Output) {
    assert_eq!(out.status.code(), Some(0), "{}", explain(m, out));
    let calls = m.calls();
    assert!(
        calls.contains("apt-get install") && calls.contains("libfcgi-bin"),
        "nothing was installed: {}",
        explain(m, out)
    );
    assert!(
        calls.contains("policy in place"),
        "packages were installed without a policy-rc.d: {}",
        explain(m, out)
    );
    assert!(
        calls.contains("cargo install --quiet --locked cargo-deb"),
        "cargo-deb was not installed: {}",
        explain(m, out)
    );
    assert!(
        !calls.contains("sudo cargo"),
        "cargo-deb belongs to the user, not root through sudo: {}",
        explain(m, out)
    );
}

#[test]
fn a_first_run_as_root_without_a_policy_installs_and_exits_0() {
    let m = Machine::new(0, 0);
    let out = m.run();
    assert_installed(&m, &out);
    assert!(!m.calls().contains("sudo"), "{}", explain(&m, &out));
    assert!(
        !m.policy().exists(),
        "the policy-rc.d the script created was left behind"
    );
}

#[test]
fn a_first_run_as_root_with_a_policy_installs_exits_0_and_keeps_it() {
    let m = Machine::new(0, 0);
    fs::write(m.policy(), "#!/bin/sh\n# the image's own\nexit 101\n").expect("write");
    fs::set_permissions(m.policy(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = m.run();
    assert_installed(&m, &out);
    assert_eq!(
        fs::read_to_string(m.policy()).expect("the existing policy-rc.d is still there"),
        "#!/bin/sh\n# the image's own\nexit 101\n"
    );
}

#[test]
fn a_first_run_through_sudo_installs_and_exits_0_with_or_without_a_policy() {
    for existing in [false, true] {
        let m = Machine::new(1000, 0);
        if existing {
            fs::write(m.policy(), "#!/bin/sh\nexit 101\n").expect("write");
            fs::set_permissions(m.policy(), fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let out = m.run();
        assert_installed(&m, &out);
        assert!(
            m.calls().contains("sudo apt-get install"),
            "{}",
            explain(&m, &out)
        );
        assert_eq!(m.policy().exists(), existing, "{}", explain(&m, &out));
    }
}

#[test]
fn a_failed_install_fails_the_run_and_still_removes_its_policy() {
    let m = Machine::new(0, 100);
    let out = m.run();
    assert_ne!(out.status.code(), Some(0), "{}", explain(&m, &out));
    assert!(!m.policy().exists(), "{}", explain(&m, &out));
}

/// Debian's python3 is externally managed wherever PATH finds it (here, not at
/// /usr/bin/python3): prometheus_client comes from Debian and flup through pip with
/// --break-system-packages, after the packages, and the run exits 0.
#[test]
fn an_externally_managed_python_gets_debians_package_and_pip_past_pep_668() {
    let m = Machine::new(0, 0);
    m.python(true);
    let out = m.run();
    assert_installed(&m, &out);
    let calls = m.calls();
    assert!(
        calls.contains("python3-prometheus-client"),
        "prometheus_client not taken from Debian: {}",
        explain(&m, &out)
    );
    let pip = calls
        .lines()
        .find(|l| l.starts_with("python3 -m pip install") && l.contains("--break-system-packages"))
        .unwrap_or_else(|| panic!("flup not installed past PEP 668: {}", explain(&m, &out)));
    assert!(pip.contains("flup"), "{pip}");
    assert!(!pip.contains("prometheus_client"), "{pip}");
    let apt = calls.find("apt-get install").expect("apt-get install");
    let pip_at = calls.find(pip).expect("pip line");
    assert!(apt < pip_at, "pip ran before the packages: {calls}");
}

/// A python3 of its own (pyenv, a virtualenv) takes both packages from PyPI as the user,
/// never through sudo.
#[test]
fn another_python_gets_both_packages_from_pypi_as_the_user() {
    let m = Machine::new(1000, 0);
    m.python(false);
    let out = m.run();
    assert_installed(&m, &out);
    let calls = m.calls();
    let pip = calls
        .lines()
        .find(|l| l.starts_with("python3 -m pip install"))
        .unwrap_or_else(|| panic!("nothing installed with pip: {}", explain(&m, &out)));
    assert!(
        pip.contains("--user") && pip.contains("prometheus_client") && pip.contains("flup"),
        "{pip}"
    );
    assert!(!calls.contains("python3-prometheus-client"), "{calls}");
    assert!(!calls.contains("sudo python3"), "{calls}");
}

/// A machine that lacks one thing (groff) and has everything else: apt-get is asked for
/// that one package, nothing else is touched, and the run exits 0.
#[test]
fn a_machine_missing_only_groff_installs_groff_base_alone_and_exits_0() {
    let m = Machine::new(0, 0);
    for tool in [
        "nginx",
        "apache2",
        "cgi-fcgi",
        "php-cgi",
        "perl",
        "gdb",
        "dpkg-shlibdeps",
        "cargo-deb",
    ] {
        m.stub(tool, "exit 0\n");
    }
    m.stub("cc", "echo /usr/lib/x86_64-linux-gnu/libc.a\n");
    // A python3 that has prometheus_client, flup and pip.
    m.stub("python3", "exit 0\n");
    let out = m.run();
    assert_eq!(out.status.code(), Some(0), "{}", explain(&m, &out));
    let calls = m.calls();
    let install = calls
        .lines()
        .find(|l| l.starts_with("apt-get install"))
        .unwrap_or_else(|| panic!("groff was not installed: {}", explain(&m, &out)));
    assert_eq!(
        install
            .split_whitespace()
            .filter(|w| !w.starts_with('-'))
            .collect::<Vec<_>>(),
        ["apt-get", "install", "groff-base"],
        "{}",
        explain(&m, &out)
    );
    assert!(calls.contains("policy in place"), "{}", explain(&m, &out));
    assert!(!m.policy().exists(), "{}", explain(&m, &out));
    assert!(!calls.contains("pip install"), "{calls}");
    assert!(!calls.contains("cargo install"), "{calls}");
}

/// Without cargo on PATH, cargo-deb cannot be installed: the run says why instead of
/// failing with a bare "cargo: not found".
#[test]
fn without_cargo_the_run_says_to_install_rust_first() {
    let m = Machine::new(0, 0);
    for tool in [
        "nginx",
        "apache2",
        "cgi-fcgi",
        "php-cgi",
        "perl",
        "gdb",
        "dpkg-shlibdeps",
        "groff",
        "python3",
    ] {
        m.stub(tool, "exit 0\n");
    }
    m.stub("cc", "echo /usr/lib/x86_64-linux-gnu/libc.a\n");
    fs::remove_file(m.dir.path().join("bin").join("cargo")).expect("rm cargo stub");
    let out = m.run();
    assert_ne!(out.status.code(), Some(0), "{}", explain(&m, &out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cargo is not on PATH"),
        "{}",
        explain(&m, &out)
    );
}
