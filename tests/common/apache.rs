//! A real Apache httpd (Debian's apache2) in front of cgi-fpm with mod_proxy_fcgi in its
//! stock setting (`ProxyFCGIBackendType FPM`): its own ServerRoot, pid file and logs in a
//! temp dir, on a loopback port, in the foreground.

use super::{require_tool, wait_until, which};
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Apache {
    child: Child,
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`, for [`super::http::request_tcp`].
    pub address: String,
}

/// Debian's module directory; other layouts keep theirs next to the binary.
const MODULE_DIRS: &[&str] = &["/usr/lib/apache2/modules", "/usr/lib64/httpd/modules"];

/// What Apache serves: `docroot` as its DocumentRoot, every `*.sh` below it through
/// `SetHandler "proxy:fcgi://BACKEND"`, and `/pm/NAME.sh[/PATH_INFO]` mapped by
/// `ProxyPassMatch` to `scripts/NAME.sh` (`/pmreuse/` the same with `enablereuse=on`).
pub struct Routes<'a> {
    /// cgi-fpm's `127.0.0.1:PORT`.
    pub backend: &'a str,
    pub docroot: &'a Path,
    pub scripts: &'a Path,
}

impl Apache {
    /// `None` when apache2 is missing outside CI (the test then skips).
    pub fn start(routes: &Routes<'_>) -> Option<Apache> {
        if !require_tool("apache2") {
            return None;
        }
        let binary = which("apache2")?;
        let modules = MODULE_DIRS
            .iter()
            .map(Path::new)
            .find(|d| d.join("mod_proxy_fcgi.so").is_file())
            .expect("apache2 is installed but mod_proxy_fcgi.so is in none of the known dirs");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        // As root, Apache's children must run as someone else (it refuses root); the
        // tests then make the document root world-readable for them.
        let identity = if nix::unistd::geteuid().is_root() {
            let nobody = nix::unistd::User::from_name("nobody")
                .ok()
                .flatten()
                .expect("a 'nobody' user for Apache's children");
            format!("User #{}\nGroup #{}\n", nobody.uid, nobody.gid)
        } else {
            String::new()
        };
        let d = dir.path().display();
        let m = modules.display();
        let conf = format!(
            "ServerRoot {d}
PidFile {d}/httpd.pid
DefaultRuntimeDir {d}
ErrorLog {d}/error.log
LogLevel warn
Listen {address}
ServerName localhost
{identity}LoadModule mpm_event_module {m}/mod_mpm_event.so
LoadModule authz_core_module {m}/mod_authz_core.so
LoadModule proxy_module {m}/mod_proxy.so
LoadModule proxy_fcgi_module {m}/mod_proxy_fcgi.so
DocumentRoot {root}
<Directory {root}>
    Require all granted
</Directory>
<FilesMatch \"\\.sh$\">
    SetHandler \"proxy:fcgi://{backend}\"
</FilesMatch>
ProxyPassMatch \"^/pm/(.*\\.sh(/.*)?)$\" \"fcgi://{backend}{scripts}/$1\"
ProxyPassMatch \"^/pmreuse/(.*\\.sh(/.*)?)$\" \"fcgi://{backend}{scripts}/$1\" enablereuse=on
",
            root = routes.docroot.display(),
            backend = routes.backend,
            scripts = routes.scripts.display(),
        );
        let conf_path = dir.path().join("httpd.conf");
        fs::write(&conf_path, conf).expect("write httpd.conf");
        let log = fs::File::create(dir.path().join("stderr.log")).expect("log");
        let child = Command::new(binary)
            .arg("-f")
            .arg(&conf_path)
            .arg("-DFOREGROUND")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("start apache2");
        let mut apache = Apache {
            child,
            dir,
            address,
        };
        let addr = apache.address.clone();
        wait_until("apache2 listens", Duration::from_secs(10), || {
            if let Ok(Some(status)) = apache.child.try_wait() {
                panic!(
                    "apache2 exited at start ({status}): {}{}",
                    fs::read_to_string(apache.dir.path().join("stderr.log")).unwrap_or_default(),
                    apache.error_log()
                );
            }
            std::net::TcpStream::connect(&addr).is_ok()
        });
        Some(apache)
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Drop for Apache {
    fn drop(&mut self) {
        // TERM stops the parent and its children at once ("graceful-stop" would wait).
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..1000 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
