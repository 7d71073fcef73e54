//! A real nginx in front of cgi-fpm: its own prefix directory, an HTTP unix socket, and a
//! `fastcgi_pass` to the address under test.

use super::{require_tool, wait_until, which};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Nginx {
    child: Child,
    pub dir: tempfile::TempDir,
    /// The HTTP unix socket to send requests to.
    pub socket: PathBuf,
}

/// How nginx talks to cgi-fpm.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `unix:/path` or `127.0.0.1:port`.
    pub server: String,
    /// `fastcgi_keep_conn on` with an upstream `keepalive N`.
    pub keepalive: Option<u32>,
}

impl Nginx {
    /// Start nginx serving `docroot` through `upstream`. `None` when nginx is missing
    /// outside CI (the test then skips).
    pub fn start(upstream: &Upstream, docroot: &Path) -> Option<Nginx> {
        let params = fastcgi_params();
        let keepalive = match upstream.keepalive {
            Some(n) => format!("keepalive {n};"),
            None => String::new(),
        };
        let keep_conn = if upstream.keepalive.is_some() {
            "on"
        } else {
            "off"
        };
        let http = format!(
            "upstream cgi_fpm {{
        server {server};
        {keepalive}
    }}",
            server = upstream.server
        );
        let server = format!(
            "location / {{
            {params}
            fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
            fastcgi_keep_conn {keep_conn};
            fastcgi_pass cgi_fpm;
        }}"
        );
        Nginx::start_site(&http, &server, docroot)
    }

    /// Start nginx with `http_extra` in its http block and `server_body` (locations) in a
    /// server on a unix socket with root `docroot`. `None` when nginx is missing outside
    /// CI. A `fastcgi_params` file next to nginx.conf serves `include fastcgi_params;`.
    pub fn start_site(http_extra: &str, server_body: &str, docroot: &Path) -> Option<Nginx> {
        if !require_tool("nginx") {
            return None;
        }
        let nginx = which("nginx")?;
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("http.sock");
        fs::write(dir.path().join("fastcgi_params"), fastcgi_params_file())
            .expect("write fastcgi_params");
        // Workers must reach a socket in a root-only temp dir when the tests run as root.
        let user = if nix::unistd::geteuid().is_root() {
            "user root;"
        } else {
            ""
        };
        let d = dir.path().display();
        let conf = format!(
            "{user}
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    fastcgi_temp_path {d}/fastcgi;
    proxy_temp_path {d}/proxy;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_max_body_size 0;
    {http_extra}
    server {{
        listen unix:{socket};
        root {root};
        {server_body}
    }}
}}
",
            socket = socket.display(),
            root = docroot.display(),
        );
        let conf_path = dir.path().join("nginx.conf");
        fs::write(&conf_path, conf).expect("write nginx.conf");
        let log = fs::File::create(dir.path().join("stderr.log")).expect("log");
        let child = Command::new(nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("start nginx");
        let n = Nginx { child, dir, socket };
        let sock = n.socket.clone();
        wait_until(
            "nginx listens on its unix socket",
            Duration::from_secs(10),
            || std::os::unix::net::UnixStream::connect(&sock).is_ok(),
        );
        Some(n)
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

const SYSTEM_FASTCGI_PARAMS: [&str; 2] = [
    "/etc/nginx/fastcgi_params",
    "/usr/local/nginx/conf/fastcgi_params",
];

/// The system's fastcgi_params when present (the file real sites include), else the same
/// list inline.
fn fastcgi_params() -> String {
    for p in SYSTEM_FASTCGI_PARAMS {
        if Path::new(p).is_file() {
            return format!("include {p};");
        }
    }
    inline_fastcgi_params().join("\n            ")
}

/// The text of a fastcgi_params file: the system's, else the same list.
fn fastcgi_params_file() -> String {
    for p in SYSTEM_FASTCGI_PARAMS {
        if let Ok(text) = fs::read_to_string(p) {
            return text;
        }
    }
    inline_fastcgi_params().join("\n") + "\n"
}

fn inline_fastcgi_params() -> Vec<String> {
    [
        "QUERY_STRING $query_string",
        "REQUEST_METHOD $request_method",
        "CONTENT_TYPE $content_type",
        "CONTENT_LENGTH $content_length",
        "SCRIPT_NAME $fastcgi_script_name",
        "REQUEST_URI $request_uri",
        "DOCUMENT_URI $document_uri",
        "DOCUMENT_ROOT $document_root",
        "SERVER_PROTOCOL $server_protocol",
        "REQUEST_SCHEME $scheme",
        "GATEWAY_INTERFACE CGI/1.1",
        "SERVER_SOFTWARE nginx/$nginx_version",
        "REMOTE_ADDR $remote_addr",
        "REMOTE_PORT $remote_port",
        "SERVER_ADDR $server_addr",
        "SERVER_PORT $server_port",
        "SERVER_NAME $server_name",
        "REDIRECT_STATUS 200",
    ]
    .iter()
    .map(|p| format!("fastcgi_param {p};"))
    .collect()
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT);
        for _ in 0..500 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
