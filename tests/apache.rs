//! Apache httpd's mod_proxy_fcgi in front of cgi-fpm, in its stock setting: the
//! `SetHandler "proxy:fcgi://…"` form and the `ProxyPassMatch` form (which sends no
//! PATH_INFO and percent-encodes the path), as the README tells users to set them up.

mod common;

use common::apache::{Apache, Routes, free_port};
use common::http::{HttpResponse, request_tcp};
use common::{Fpm, examples_dir};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

struct Site {
    fpm: Fpm,
    apache: Apache,
}

/// cgi-fpm on a loopback port serving a copy of the example scripts under www/cgi-bin/,
/// and Apache in front of it. `None` when apache2 is missing outside CI.
fn site() -> Option<Site> {
    let dir = tempfile::tempdir().expect("tempdir");
    // Apache's children run as nobody when the tests run as root: they must reach the
    // document root to map a URL to a file.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let scripts = dir.path().join("www/cgi-bin");
    fs::create_dir_all(&scripts).expect("mkdir");
    for name in ["hello.sh", "echo.sh", "env.sh"] {
        fs::copy(examples_dir().join(name), scripts.join(name)).expect("copy example");
    }
    fs::copy(examples_dir().join("env.sh"), scripts.join("with space.sh")).expect("copy");
    let backend = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "[www]\nlisten = {backend}\npm = static\npm.max_children = 2\n\
         cgi.allowed_roots = {www}\nenv[PATH] = /usr/local/bin:/usr/bin:/bin\n",
        www = dir.path().join("www").display(),
    );
    let fpm = Fpm::start_with(dir, &config, &backend);
    let apache = Apache::start(&Routes {
        backend: &backend,
        docroot: &fpm.path("www"),
        scripts: &fpm.path("www/cgi-bin"),
    })?;
    Some(Site { fpm, apache })
}

impl Site {
    fn send(&self, method: &str, target: &str, body: &[u8]) -> HttpResponse {
        let r = request_tcp(&self.apache.address, method, target, &[], body)
            .unwrap_or_else(|e| panic!("{method} {target} through Apache: {e}"));
        assert_ne!(
            r.status,
            503,
            "{target}: Apache could not reach cgi-fpm\n{}",
            self.apache.error_log()
        );
        r
    }

    fn ok(&self, method: &str, target: &str, body: &[u8]) -> HttpResponse {
        let r = self.send(method, target, body);
        assert_eq!(
            r.status,
            200,
            "{method} {target}: {}\napache: {}\ncgi-fpm: {}",
            r.text(),
            self.apache.error_log(),
            self.fpm.log_text()
        );
        r
    }

    fn scripts(&self) -> PathBuf {
        self.fpm.path("www/cgi-bin")
    }
}

fn env_line<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
}

/// What every form must do: a GET with a query, a 300 KB POST echoed, a missing script.
fn check_basics(site: &Site, prefix: &str) {
    let r = site.ok("GET", &format!("{prefix}/hello.sh?name=apache"), b"");
    let text = r.text();
    assert!(
        text.contains("Hello from sh via cgi-fpm"),
        "{prefix}: {text}"
    );
    assert!(
        text.contains("method=GET query=name=apache"),
        "{prefix}: {text}"
    );
    assert!(
        r.header("Content-Type")
            .is_some_and(|v| v.starts_with("text/plain")),
        "{prefix}: {:?}",
        r.headers
    );

    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let r = site.ok("POST", &format!("{prefix}/echo.sh"), &body);
    assert!(
        r.body == body,
        "{prefix}: the POST came back with {} bytes, not the {} sent",
        r.body.len(),
        body.len()
    );

    let r = site.send("GET", &format!("{prefix}/missing.sh"), b"");
    assert_eq!(r.status, 404, "{prefix}: {}", r.text());
}

#[test]
fn the_sethandler_form_serves_scripts() {
    let Some(site) = site() else {
        return;
    };
    check_basics(&site, "/cgi-bin");
    // Apache sends PATH_INFO itself in this form; the script sees Apache's split.
    let r = site.ok("GET", "/cgi-bin/env.sh/some/pa%20th?q=v", b"");
    let text = r.text();
    let script = site.scripts().join("env.sh");
    assert_eq!(
        env_line(&text, "SCRIPT_FILENAME"),
        script.to_str(),
        "{text}"
    );
    assert_eq!(
        env_line(&text, "SCRIPT_NAME"),
        Some("/cgi-bin/env.sh"),
        "{text}"
    );
    assert_eq!(env_line(&text, "PATH_INFO"), Some("/some/pa th"), "{text}");
    assert_eq!(env_line(&text, "QUERY_STRING"), Some("q=v"), "{text}");
    let r = site.ok("GET", "/cgi-bin/with%20space.sh", b"");
    assert_eq!(
        env_line(&r.text(), "SCRIPT_FILENAME"),
        site.scripts().join("with space.sh").to_str()
    );
    for i in 0..20 {
        let r = site.ok("GET", &format!("/cgi-bin/hello.sh?i={i}"), b"");
        assert!(r.text().contains(&format!("query=i={i}")), "{}", r.text());
    }
}

#[test]
fn the_proxypassmatch_form_serves_scripts_and_finds_path_info() {
    let Some(site) = site() else {
        return;
    };
    check_basics(&site, "/pm");
    // No PATH_INFO from Apache here, and an encoded path: cgi-fpm finds the script file
    // and makes the rest PATH_INFO, as php-fpm's cgi.fix_pathinfo does.
    let r = site.ok("GET", "/pm/env.sh/some/pa%20th?q=v", b"");
    let text = r.text();
    let script = site.scripts().join("env.sh");
    assert_eq!(
        env_line(&text, "SCRIPT_FILENAME"),
        script.to_str(),
        "{text}"
    );
    assert_eq!(env_line(&text, "SCRIPT_NAME"), Some("/pm/env.sh"), "{text}");
    assert_eq!(env_line(&text, "PATH_INFO"), Some("/some/pa th"), "{text}");
    assert_eq!(env_line(&text, "QUERY_STRING"), Some("q=v"), "{text}");
    let r = site.ok("GET", "/pm/with%20space.sh/x", b"");
    let text = r.text();
    assert_eq!(
        env_line(&text, "SCRIPT_FILENAME"),
        site.scripts().join("with space.sh").to_str(),
        "{text}"
    );
    assert_eq!(env_line(&text, "PATH_INFO"), Some("/x"), "{text}");
    // The status page and access log name the file, not Apache's proxy form of it.
    assert!(
        !site.fpm.log_text().contains("proxy:fcgi"),
        "{}",
        site.fpm.log_text()
    );
    for prefix in ["/pm", "/pmreuse"] {
        for i in 0..20 {
            let r = site.ok("GET", &format!("{prefix}/hello.sh?i={i}"), b"");
            assert!(r.text().contains(&format!("query=i={i}")), "{}", r.text());
        }
    }
}
