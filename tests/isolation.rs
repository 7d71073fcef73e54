//! Isolation, through the real binary: the user scripts run as, chroot, limits, socket
//! permissions and ACLs, allowed clients, the environment, and PHP settings for php-cgi.
//!
//! Much of this needs root. CI runs the tests as root; elsewhere those tests say why they
//! skip (and with `CI` set they fail instead).

mod common;

use common::nginx::{Nginx, Upstream};
use common::{Fpm, examples_dir, http, require_tool, which};
use nix::unistd::{Gid, Group, User};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Outside CI a test that needs root skips with a message; in CI (run as root) a missing
/// root is a failure.
fn require_root(what: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{what} needs root, and CI runs the tests as root");
    }
    eprintln!("SKIPPED: {what} needs root");
    false
}

fn nobody() -> User {
    User::from_name("nobody")
        .ok()
        .flatten()
        .expect("a user 'nobody'")
}

/// A group for sockets that is neither root's nor nobody's primary one when possible.
fn other_group() -> Gid {
    ["www-data", "daemon", "bin"]
        .iter()
        .find_map(|name| Group::from_name(name).ok().flatten())
        .map(|group| group.gid)
        .unwrap_or(Gid::from_raw(4242))
}

/// Let workers that are not root into the test directory.
fn open_up(dir: &Path) {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod 755");
}

fn write_script(path: &Path, body: &str) -> PathBuf {
    fs::write(path, body).expect("write script");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod");
    path.to_path_buf()
}

fn body_text(response: &common::Response) -> String {
    String::from_utf8_lossy(response.body()).into_owned()
}

/// The value after `name=` on a line of the body.
fn field(body: &str, name: &str) -> Option<String> {
    body.lines()
        .find_map(|line| line.strip_prefix(&format!("{name}=")))
        .map(str::to_string)
}

/// Whether `uid` (with `gid` and no supplementary groups) can connect to the unix socket.
fn can_connect_as(socket: &Path, uid: u32, gid: u32) -> bool {
    let status = Command::new("/usr/bin/perl")
        .arg("-MSocket")
        .arg("-e")
        .arg(
            "socket(my $s, PF_UNIX, SOCK_STREAM, 0) or exit 2; \
             connect($s, pack_sockaddr_un($ARGV[0])) or exit 1; exit 0",
        )
        .arg(socket)
        .uid(uid)
        .gid(gid)
        .status()
        .expect("run perl");
    match status.code() {
        Some(0) => true,
        Some(1) => false,
        other => panic!("the connect probe failed to run: {other:?}"),
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

use std::os::unix::process::CommandExt;

const ID_SCRIPT: &str = "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\n\
    echo \"uid=$(id -u)\"\necho \"gid=$(id -g)\"\necho \"groups=$(id -G)\"\n\
    echo \"user=$USER\"\necho \"home=$HOME\"\necho \"cwd=$(pwd)\"\n\
    echo \"files=$(ulimit -n)\"\necho \"core=$(ulimit -c)\"\n\
    echo \"nice=$(cut -d ' ' -f 19 /proc/$$/stat)\"\n";

#[test]
fn a_pool_with_user_nobody_runs_its_scripts_as_nobody() {
    if !require_root("switching to user nobody") {
        return;
    }
    let nobody = nobody();
    let fpm = Fpm::start(1, "user = nobody\nprocess.priority = 7\nrlimit_files = 333");
    open_up(fpm.dir.path());
    let script = write_script(&fpm.path("www/id.sh"), ID_SCRIPT);
    let response = fpm.get(&script, &[]);
    let body = body_text(&response);
    assert_eq!(response.status(), 200, "{body}\n{}", fpm.log_text());
    assert_eq!(field(&body, "uid"), Some(nobody.uid.to_string()), "{body}");
    assert_eq!(field(&body, "gid"), Some(nobody.gid.to_string()), "{body}");
    assert!(
        !field(&body, "groups")
            .unwrap_or_default()
            .split_whitespace()
            .any(|group| group == "0"),
        "root's groups were dropped: {body}"
    );
    assert_eq!(field(&body, "user").as_deref(), Some("nobody"), "{body}");
    assert_eq!(
        field(&body, "home"),
        Some(nobody.dir.display().to_string()),
        "{body}"
    );
    assert_eq!(field(&body, "files").as_deref(), Some("333"), "{body}");
    assert_eq!(field(&body, "nice").as_deref(), Some("7"), "{body}");
    // The worker itself runs as nobody; the master stays root.
    let worker = fpm.worker_pids()[0];
    let status = fs::read_to_string(format!("/proc/{worker}/status")).expect("status");
    let uids = status
        .lines()
        .find(|line| line.starts_with("Uid:"))
        .expect("Uid line");
    assert!(
        uids.split_whitespace()
            .skip(1)
            .all(|uid| uid == nobody.uid.to_string()),
        "{uids}"
    );
    let master = fs::metadata(format!("/proc/{}", fpm.pid())).expect("master");
    assert_eq!(master.uid(), 0);
}

#[test]
fn process_dumpable_keeps_a_switched_worker_traceable() {
    if !require_root("process.dumpable with a user switch") {
        return;
    }
    // The files under /proc/PID belong to root while a process is not dumpable, to its
    // user otherwise (the directory itself always shows the user).
    let plain = Fpm::start(1, "user = nobody");
    let dumpable = Fpm::start(1, "user = nobody\nprocess.dumpable = yes");
    let owner = |fpm: &Fpm| {
        let worker = fpm.worker_pids()[0];
        fs::metadata(format!("/proc/{worker}/stat"))
            .expect("proc entry")
            .uid()
    };
    // Right after fork a worker is still root: wait until it has switched user.
    let nobody_uid = nobody().uid.as_raw();
    common::wait_until(
        "the dumpable worker's /proc files belong to nobody",
        Duration::from_secs(5),
        || owner(&dumpable) == nobody_uid,
    );
    let plain_worker = plain.worker_pids()[0];
    common::wait_until(
        "the plain worker runs as nobody",
        Duration::from_secs(5),
        || fs::metadata(format!("/proc/{plain_worker}")).is_ok_and(|m| m.uid() == nobody_uid),
    );
    assert_eq!(
        owner(&plain),
        0,
        "not dumpable: its /proc files stay root's"
    );
}

#[test]
fn root_needs_a_pool_user_unless_minus_r() {
    if !require_root("the root rule") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("root.conf");
    let socket = dir.path().join("root.sock");
    fs::write(
        &config,
        format!(
            "[www]\nlisten = {}\npm = static\npm.max_children = 1\ncgi.allowed_roots = /\n",
            socket.display()
        ),
    )
    .expect("write");
    let run = |args: &[&str]| {
        let output = Command::new(common::BIN)
            .args(args)
            .arg("-y")
            .arg(&config)
            .output()
            .expect("run cgi-fpm");
        let text = String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout);
        (output.status.code(), text)
    };
    let (code, text) = run(&["-t"]);
    assert_eq!(code, Some(78), "{text}");
    // The pool's section is where a `user` line belongs: the error points there.
    let at = format!(
        "ERROR: [{}:1] [pool www] please specify user and group other than root",
        config.display()
    );
    assert!(text.contains(&at), "{text}");
    let (code, text) = run(&["-t", "-R"]);
    assert_eq!(code, Some(0), "{text}");
    // At start it is refused the same way, before any socket exists.
    let (code, text) = run(&["-F"]);
    assert_eq!(code, Some(78), "{text}");
    assert!(text.contains("please specify user and group"), "{text}");
    assert!(!socket.exists(), "no socket was left behind");
}

#[test]
fn an_unknown_user_is_refused_by_test_with_its_file_and_line() {
    if !require_root("user lookups") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("user.conf");
    fs::write(
        &config,
        format!(
            "[www]\nlisten = {}\npm = static\npm.max_children = 1\ncgi.allowed_roots = /\nuser = no-such-user-here\n",
            dir.path().join("u.sock").display()
        ),
    )
    .expect("write");
    let output = Command::new(common::BIN)
        .args(["-t", "-y"])
        .arg(&config)
        .output()
        .expect("run cgi-fpm");
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{text}");
    let at = format!(
        "ERROR: [{}:6] [pool www] cannot get uid for user 'no-such-user-here'",
        config.display()
    );
    assert!(text.contains(&at), "{text}");
}

#[test]
fn without_root_user_and_chroot_are_ignored_with_a_notice() {
    // This checks a master that is not root. As root (CI), start it as nobody, in a
    // directory nobody owns; otherwise as whoever runs the tests.
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir(dir.path().join("www")).expect("mkdir www");
    let config = format!(
        "[global]\n\n{}",
        common::pool_section(
            "www",
            dir.path(),
            1,
            "user = nobody\nchroot = /\nprocess.priority = 5"
        )
    );
    let address = dir.path().join("www.sock").display().to_string();
    let master_uid = if is_root() {
        let nobody = nobody();
        for path in [dir.path().to_path_buf(), dir.path().join("www")] {
            nix::unistd::chown(&path, Some(nobody.uid), Some(nobody.gid)).expect("chown");
        }
        nobody.uid.as_raw()
    } else {
        nix::unistd::getuid().as_raw()
    };
    let fpm = Fpm::spawn_with_command(dir, &config, &address, &[], |command| {
        use std::os::unix::process::CommandExt;
        if is_root() {
            // As root, std also drops the supplementary groups.
            command.uid(master_uid).gid(nobody().gid.as_raw());
        }
    });
    fpm.wait_ready();
    let status = fs::read_to_string(format!("/proc/{}/status", fpm.pid())).expect("status");
    let running_as = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse::<u32>().ok());
    assert_eq!(
        running_as,
        Some(master_uid),
        "the master runs as {running_as:?}"
    );
    let script = fpm.script("id.sh", ID_SCRIPT);
    let body = body_text(&fpm.get(&script, &[]));
    assert_eq!(field(&body, "uid"), Some(master_uid.to_string()), "{body}");
    let log = fpm.log_text();
    for directive in ["user", "chroot", "process.priority"] {
        assert!(
            log.contains(&format!(
                "NOTICE: [pool www] '{directive}' directive is ignored when FPM is not running as root"
            )),
            "{log}"
        );
    }
}

#[test]
fn chdir_is_where_scripts_start_and_limits_apply() {
    let fpm = Fpm::start(1, "chdir = /\nrlimit_files = 256\nrlimit_core = 0");
    open_up(fpm.dir.path());
    let script = fpm.script("id.sh", ID_SCRIPT);
    let body = body_text(&fpm.get(&script, &[]));
    assert_eq!(field(&body, "cwd").as_deref(), Some("/"), "{body}");
    assert_eq!(field(&body, "files").as_deref(), Some("256"), "{body}");
    assert_eq!(field(&body, "core").as_deref(), Some("0"), "{body}");
    // Without chdir, a script starts in its own directory.
    let fpm = Fpm::start(1, "");
    let script = fpm.script("id.sh", ID_SCRIPT);
    let body = body_text(&fpm.get(&script, &[]));
    let www = fs::canonicalize(fpm.path("www")).expect("canonical");
    assert_eq!(field(&body, "cwd"), Some(www.display().to_string()));
}

/// A static C program: no loader, no libraries, so it runs in an empty jail.
const PROBE_C: &str = r#"#include <stdio.h>
#include <unistd.h>
int main(void)
{
    char cwd[4096];
    printf("Content-Type: text/plain\r\n\r\n");
    printf("uid=%d\n", (int)getuid());
    printf("cwd=%s\n", getcwd(cwd, sizeof cwd) ? cwd : "?");
    printf("etc_passwd=%s\n", access("/etc/passwd", F_OK) == 0 ? "yes" : "no");
    return 0;
}
"#;

/// Build the probe statically, or say why not (outside CI: skip; in CI: fail).
fn build_static_probe(output: &Path) -> bool {
    if !require_tool("cc") {
        return false;
    }
    let source = output.with_extension("c");
    fs::write(&source, PROBE_C).expect("write probe.c");
    let built = Command::new("cc")
        .arg("-static")
        .arg("-O2")
        .arg("-o")
        .arg(output)
        .arg(&source)
        .output()
        .expect("run cc");
    if built.status.success() {
        return true;
    }
    let why = String::from_utf8_lossy(&built.stderr);
    if std::env::var_os("CI").is_some() {
        panic!("cc -static failed, and CI needs it (libc6-dev has libc.a): {why}");
    }
    eprintln!("SKIPPED: cc -static does not work here (install libc6-dev): {why}");
    false
}

#[test]
fn a_chroot_pool_serves_a_static_binary_inside_the_jail() {
    if !require_root("chroot") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    open_up(dir.path());
    let jail = dir.path().join("jail");
    fs::create_dir_all(jail.join("www")).expect("mkdir jail/www");
    open_up(&jail);
    open_up(&jail.join("www"));
    if !build_static_probe(&jail.join("www/probe")) {
        return;
    }
    let socket = dir.path().join("jail.sock");
    let config = format!(
        "[jail]\nlisten = {socket}\npm = static\npm.max_children = 1\nuser = nobody\n\
         chroot = {jail}\ncgi.allowed_roots = /www\n",
        socket = socket.display(),
        jail = jail.display(),
    );
    let fpm = Fpm::start_with(dir, &config, &socket.display().to_string());
    let response = fpm.get(Path::new("/www/probe"), &[]);
    let body = body_text(&response);
    assert_eq!(response.status(), 200, "{body}\n{}", fpm.log_text());
    assert_eq!(
        field(&body, "uid"),
        Some(nobody().uid.to_string()),
        "{body}"
    );
    assert_eq!(field(&body, "cwd").as_deref(), Some("/www"), "{body}");
    assert_eq!(
        field(&body, "etc_passwd").as_deref(),
        Some("no"),
        "the jail has no /etc: {body}"
    );
    // Paths are read inside the jail: the host's path to the same file names nothing.
    let host_path = fpm.path("jail/www/probe");
    assert_eq!(fpm.get(&host_path, &[]).status(), 404);
    // And the socket, made by the master before the chroot, is outside it.
    assert!(socket.exists());
}

#[test]
fn socket_mode_and_owner_are_as_configured() {
    let fpm = Fpm::start(1, "listen.mode = 0600");
    let meta = fs::metadata(&fpm.address).expect("socket");
    assert_eq!(meta.mode() & 0o7777, 0o600);
    drop(fpm);
    if !require_root("listen.owner and listen.group") {
        return;
    }
    let nobody = nobody();
    let group = other_group();
    let fpm = Fpm::start(
        1,
        &format!("listen.owner = nobody\nlisten.group = {group}\nlisten.mode = 0640"),
    );
    open_up(fpm.dir.path());
    let socket = PathBuf::from(&fpm.address);
    let meta = fs::metadata(&socket).expect("socket");
    assert_eq!(meta.uid(), nobody.uid.as_raw());
    assert_eq!(meta.gid(), group.as_raw());
    assert_eq!(meta.mode() & 0o7777, 0o640);
    // The owner may connect (rw-); the group may not (r--), nor anyone else.
    assert!(can_connect_as(&socket, nobody.uid.as_raw(), 4242));
    assert!(!can_connect_as(&socket, 4243, group.as_raw()));
    assert!(!can_connect_as(&socket, 4243, 4243));
}

#[test]
fn acl_users_and_groups_may_connect_and_no_one_else() {
    if !require_root("connecting as other users") {
        return;
    }
    let fpm = Fpm::start(
        1,
        "listen.acl_users = nobody\nlisten.acl_groups = 4343\nlisten.owner = nobody\nlisten.mode = 0600",
    );
    open_up(fpm.dir.path());
    let socket = PathBuf::from(&fpm.address);
    let meta = fs::metadata(&socket).expect("socket");
    assert_eq!(meta.uid(), 0, "with an ACL, listen.owner is ignored");
    let entries = cgi_fpm::isolation::acl::read(&socket).expect("an ACL");
    use cgi_fpm::isolation::acl::{TAG_GROUP, TAG_MASK, TAG_USER};
    let has = |tag: u16, id: u32| entries.iter().any(|e| e.tag == tag && e.id == id);
    assert!(has(TAG_USER, nobody().uid.as_raw()), "{entries:?}");
    assert!(has(TAG_GROUP, 4343), "{entries:?}");
    assert!(entries.iter().any(|e| e.tag == TAG_MASK && e.perm == 6));
    assert!(can_connect_as(&socket, nobody().uid.as_raw(), 4242));
    assert!(can_connect_as(&socket, 4244, 4343));
    assert!(!can_connect_as(&socket, 4244, 4244));
    fpm.wait_for_log(
        "ACL set, listen.owner = 'nobody' is ignored",
        Duration::from_secs(5),
    );
}

/// Start a TCP pool on `listen` that allows `allowed`.
fn tcp_pool(listen: &str, allowed: &str) -> Fpm {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir(dir.path().join("www")).expect("mkdir");
    let config = format!(
        "[tcp]\nlisten = {listen}\npm = static\npm.max_children = 1\n\
         listen.allowed_clients = {allowed}\ncgi.allowed_roots = {examples}\n",
        examples = examples_dir().display()
    );
    Fpm::start_with(dir, &config, listen)
}

/// Send a whole request and read until the server closes: the bytes it sent back.
fn answer_bytes(address: &str) -> Vec<u8> {
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let hello = examples_dir().join("hello.sh").display().to_string();
    let mut request = Vec::new();
    {
        use cgi_fpm::fastcgi::record::{RecordType, Role, write_begin_request, write_record};
        write_begin_request(&mut request, 1, Role::Responder, 0);
        let mut params = Vec::new();
        cgi_fpm::fastcgi::params::write_pair(&mut params, b"SCRIPT_FILENAME", hello.as_bytes());
        write_record(&mut request, RecordType::Params, 1, &params);
        write_record(&mut request, RecordType::Params, 1, &[]);
        write_record(&mut request, RecordType::Stdin, 1, &[]);
    }
    // The server may close before all of it is written; that is the point.
    let _ = stream.write_all(&request);
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return answer,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return answer,
            Err(e) => panic!("reading from {address}: {e}"),
        }
    }
}

#[test]
fn a_tcp_client_not_in_allowed_clients_is_closed_without_a_response() {
    let port = free_port();
    let refused = tcp_pool(&format!("127.0.0.1:{port}"), "192.0.2.1, ::1");
    let answer = answer_bytes(&refused.address);
    assert!(answer.is_empty(), "got {} bytes", answer.len());
    refused.wait_for_log(
        "ERROR: [pool tcp] Connection disallowed: IP address '127.0.0.1' has been dropped.",
        Duration::from_secs(5),
    );
    // The worker is still there and the pool still refuses, connection after connection.
    assert!(answer_bytes(&refused.address).is_empty());
    drop(refused);

    let port = free_port();
    let allowed = tcp_pool(&format!("127.0.0.1:{port}"), "192.0.2.1,127.0.0.1");
    let answer = answer_bytes(&allowed.address);
    assert!(
        String::from_utf8_lossy(&answer).contains("Hello from sh"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[test]
fn allowed_clients_work_over_ipv6_too() {
    if let Err(e) = std::net::TcpListener::bind("[::1]:0") {
        // CI's machine has ::1 (`ip -6 addr`); a container without IPv6 skips elsewhere.
        assert!(
            std::env::var_os("CI").is_none(),
            "no IPv6 loopback ({e}), and CI requires it"
        );
        eprintln!("SKIPPED: no IPv6 loopback here ({e})");
        return;
    }
    let port = free_port();
    let refused = tcp_pool(&format!("[::1]:{port}"), "127.0.0.1");
    assert!(answer_bytes(&refused.address).is_empty());
    refused.wait_for_log(
        "Connection disallowed: IP address '::1' has been dropped.",
        Duration::from_secs(5),
    );
    drop(refused);
    let port = free_port();
    let allowed = tcp_pool(&format!("[::1]:{port}"), "::1");
    assert!(String::from_utf8_lossy(&answer_bytes(&allowed.address)).contains("Hello from sh"));
}

#[test]
fn clear_env_and_env_values_from_the_masters_environment() {
    let marker = ("CGI_FPM_TEST_MARKER", "marker-4711");
    let start = |clear_env: &str| {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("www")).expect("mkdir");
        let config = format!(
            "[global]\n{}",
            common::pool_section(
                "www",
                dir.path(),
                1,
                &format!(
                    "clear_env = {clear_env}\nenv[FROM_MASTER] = $CGI_FPM_TEST_MARKER\n\
                     env[LITERAL] = as written\nenv[MISSING] = $CGI_FPM_TEST_UNSET_VARIABLE"
                ),
            )
        );
        let address = dir.path().join("www.sock").display().to_string();
        Fpm::start_with_env(dir, &config, &address, &[marker])
    };
    let env_script = examples_dir().join("env.sh");
    let lines = |fpm: &Fpm| -> Vec<String> {
        body_text(&fpm.get(&env_script, &[]))
            .lines()
            .map(str::to_string)
            .collect()
    };

    let cleared = lines(&start("yes"));
    for expected in ["FROM_MASTER=marker-4711", "LITERAL=as written", "MISSING="] {
        assert!(
            cleared.iter().any(|l| l == expected),
            "{expected}: {cleared:?}"
        );
    }
    assert!(
        !cleared
            .iter()
            .any(|l| l.starts_with("CGI_FPM_TEST_MARKER=")),
        "clear_env = yes must not pass the master's environment: {cleared:?}"
    );

    let kept = lines(&start("no"));
    for expected in [
        "CGI_FPM_TEST_MARKER=marker-4711",
        "FROM_MASTER=marker-4711",
        "LITERAL=as written",
        "PATH=/usr/local/bin:/usr/bin:/bin",
    ] {
        assert!(kept.iter().any(|l| l == expected), "{expected}: {kept:?}");
    }
}

/// phpinfo() through nginx shows the pool's admin value; a query that would make php-cgi
/// drop it is refused.
#[test]
fn php_admin_value_reaches_php_cgi_through_nginx() {
    if !require_tool("php-cgi") || !require_tool("nginx") {
        return;
    }
    let php_cgi = which("php-cgi").expect("php-cgi");
    let dir = tempfile::tempdir().expect("tempdir");
    let www = dir.path().join("www");
    fs::create_dir(&www).expect("mkdir www");
    fs::write(www.join("info.php"), "<?php phpinfo();\n").expect("info.php");
    fs::write(
        www.join("ini.php"),
        "<?php echo 'memory_limit=', ini_get('memory_limit'), \"\\n\", \
         'display_errors=', ini_get('display_errors'), \"\\n\";\n",
    )
    .expect("ini.php");
    let socket = dir.path().join("php.sock");
    let config = format!(
        "[php]\nlisten = {socket}\npm = static\npm.max_children = 2\n\
         cgi.allowed_roots = {www}\ncgi.interpreter[.php] = {php_cgi}\n\
         security.limit_extensions = .php\n\
         php_admin_value[memory_limit] = 77M\nphp_value[memory_limit] = 33M\n\
         php_flag[display_errors] = off\n",
        socket = socket.display(),
        www = www.display(),
        php_cgi = php_cgi.display(),
    );
    let fpm = Fpm::start_with(dir, &config, &socket.display().to_string());
    let upstream = Upstream {
        server: format!("unix:{}", socket.display()),
        keepalive: None,
    };
    let Some(nginx) = Nginx::start(&upstream, &www) else {
        return;
    };
    let info = http::get(&nginx.socket, "/info.php").expect("GET /info.php");
    let page = String::from_utf8_lossy(&info.body).into_owned();
    assert_eq!(info.status, 200, "{page}\n{}", fpm.log_text());
    let row = page
        .lines()
        .find(|line| line.contains(">memory_limit<"))
        .unwrap_or_else(|| panic!("no memory_limit row in phpinfo():\n{page}"));
    assert!(row.contains(">77M<"), "{row}");
    let ini = http::get(&nginx.socket, "/ini.php?x=1").expect("GET /ini.php");
    let ini_text = String::from_utf8_lossy(&ini.body).into_owned();
    assert!(ini_text.contains("memory_limit=77M"), "{ini_text}");
    assert!(ini_text.contains("display_errors=0"), "{ini_text}");

    let hidden = http::get(&nginx.socket, "/ini.php?-s").expect("GET /ini.php?-s");
    assert_eq!(
        hidden.status,
        400,
        "{}",
        String::from_utf8_lossy(&hidden.body)
    );
    assert!(!String::from_utf8_lossy(&hidden.body).contains("memory_limit"));
    fpm.wait_for_log(
        "would make php-cgi ignore its options",
        Duration::from_secs(5),
    );
}

/// `env[USER] = $USER` in a master started without USER (as systemd starts services)
/// used to give scripts `USER=` and `HOME=`: they get the pool user's, or none.
#[test]
fn scripts_never_see_an_empty_user_or_home() {
    let start = |extra: &str| {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("www")).expect("mkdir");
        open_up(dir.path());
        let config = format!(
            "[global]\n{}",
            common::pool_section(
                "www",
                dir.path(),
                1,
                &format!("env[USER] = $USER\nenv[HOME] = $HOME\n{extra}"),
            )
        );
        let address = dir.path().join("www.sock").display().to_string();
        Fpm::start_with_env(dir, &config, &address, &[("USER", ""), ("HOME", "")])
    };
    let env_script = examples_dir().join("env.sh");
    let fpm = start("");
    let body = body_text(&fpm.get(&env_script, &[]));
    for variable in ["USER", "HOME"] {
        assert_eq!(field(&body, variable), None, "{variable}: {body}");
    }
    if !require_root("switching to user nobody") {
        return;
    }
    let nobody = nobody();
    let fpm = start("user = nobody");
    let body = body_text(&fpm.get(&env_script, &[]));
    assert_eq!(field(&body, "USER").as_deref(), Some("nobody"), "{body}");
    assert_eq!(
        field(&body, "HOME"),
        Some(nobody.dir.display().to_string()),
        "{body}"
    );
}
