//! The manual pages stay in step with the code: every directive the loader knows is
//! documented in cgi-fpm.conf(5), every option in cgi-fpm(8), and both render without a
//! single groff warning.

mod common;

use common::require_tool;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn man_page(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("man").join(name)
}

fn read(name: &str) -> String {
    let path = man_page(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A loop over what a parser found passes on nothing: each of these checks first that
/// it found about as much as there is (php-fpm alone shares some 60 directives with
/// cgi-fpm), so that a broken tag parser or an emptied list fails instead.
fn assert_plausible(what: &str, found: usize, at_least: usize) {
    assert!(
        found >= at_least,
        "only {found} {what} found (at least {at_least} expected): is the parser broken?"
    );
}

/// The directives a page documents: the first word of each `.TP` entry's tag, with an
/// array written `.BI env[ NAME ]` (or `.B env[]`) counted as `env[]`.
fn documented_directives(page: &str) -> BTreeSet<String> {
    let lines: Vec<&str> = page.lines().collect();
    lines
        .windows(2)
        .filter(|pair| pair[0].trim() == ".TP")
        .filter_map(|pair| {
            let tag = pair[1];
            let rest = [".B ", ".BI ", ".BR "]
                .iter()
                .find_map(|macro_name| tag.strip_prefix(macro_name))?;
            let word = rest.split_whitespace().next()?.trim_matches('"');
            let name = match word.strip_suffix('[') {
                Some(array) => format!("{array}[]"),
                None => word.to_string(),
            };
            Some(name.replace("\\-", "-"))
        })
        .collect()
}

#[test]
fn every_directive_the_loader_knows_is_in_the_man_page() {
    let documented = documented_directives(&read("cgi-fpm.conf.5"));
    let known: BTreeSet<String> = cgi_fpm::config::directive_names()
        .into_iter()
        .map(str::to_string)
        .collect();
    assert_plausible("directives known to the loader", known.len(), 60);
    assert_plausible("directives in cgi-fpm.conf(5)", documented.len(), 60);
    let undocumented: Vec<_> = known.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "man/cgi-fpm.conf.5 does not document: {undocumented:?}"
    );
    // And the page documents no directive the loader does not know (a typo, or one
    // that was renamed).
    let unknown: Vec<_> = documented.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "man/cgi-fpm.conf.5 documents unknown directives: {unknown:?}"
    );
}

/// The page's `.TP` entries, each with its tag line and body.
fn entries(page: &str) -> Vec<String> {
    let mut entry = String::new();
    let mut entries = Vec::new();
    for line in page.lines() {
        if line.starts_with(".TP") || line.starts_with(".SH") || line.starts_with(".SS") {
            if !entry.is_empty() {
                entries.push(std::mem::take(&mut entry));
            }
            if line.starts_with(".TP") {
                entry.push_str(line);
                entry.push('\n');
            }
        } else if !entry.is_empty() {
            entry.push_str(line);
            entry.push('\n');
        }
    }
    entries.push(entry);
    entries.retain(|e| !e.is_empty());
    entries
}

/// An entry says "Not implemented yet" exactly when the loader still warns that the
/// directive is not implemented: the page cannot fall behind the code, either way.
#[test]
fn the_man_page_says_which_directives_are_not_implemented_yet() {
    let later: BTreeSet<&str> = cgi_fpm::config::unimplemented_directives()
        .into_iter()
        .collect();
    let mut checked = 0;
    let mut not_yet = 0;
    for entry in entries(&read("cgi-fpm.conf.5")) {
        let Some(name) = documented_directives(&entry).into_iter().next() else {
            continue;
        };
        checked += 1;
        let says = entry.to_ascii_lowercase().contains("not implemented yet");
        let is = later.contains(name.as_str());
        not_yet += usize::from(says);
        assert_eq!(
            says,
            is,
            "{name}: the man page says {}implemented, the loader {}:\n{entry}",
            if says { "not " } else { "" },
            if is { "warns it is not" } else { "acts on it" }
        );
    }
    assert_plausible("directive entries in cgi-fpm.conf(5)", checked, 60);
    // Every directive the loader calls unimplemented had its entry read above.
    assert_eq!(
        not_yet,
        later.len(),
        "unimplemented directives {later:?}: not every one has an entry that says so"
    );
}

#[test]
fn every_directive_entry_says_its_default_or_that_it_is_required() {
    let page = read("cgi-fpm.conf.5");
    let entries = entries(&page);
    let mut directives = 0;
    for entry in entries.iter().filter(|entry| !entry.is_empty()) {
        let tag = entry.lines().nth(1).unwrap_or_default();
        let is_directive = !documented_directives(entry).is_empty();
        directives += usize::from(is_directive);
        let says = [
            "Default",
            "Required",
            "FreeBSD only",
            "where the line stands",
        ]
        .iter()
        .any(|word| entry.contains(word));
        assert!(
            !is_directive || says,
            "no default given for {tag}:\n{entry}"
        );
    }
    assert_plausible("directive entries in cgi-fpm.conf(5)", directives, 60);
}

#[test]
fn every_command_line_option_is_in_the_man_page() {
    let page = read("cgi-fpm.8").replace("\\-", "-");
    let mut options = 0;
    for line in cgi_fpm::cli::USAGE.lines() {
        let line = line.trim_start();
        if !line.starts_with('-') {
            continue;
        }
        for option in line
            .split_whitespace()
            .take(2)
            .map(|word| word.trim_end_matches(','))
            .filter(|word| word.starts_with('-'))
        {
            assert!(page.contains(option), "cgi-fpm.8 does not mention {option}");
            options += 1;
        }
    }
    // -y, --fpm-config, -p, --prefix ... --ping, --ping-timeout, -v, -h: about twenty.
    assert_plausible("options in the usage text", options, 20);
    for section in ["OPTIONS", "SIGNALS", "FILES", "EXIT STATUS", "EXAMPLES"] {
        assert!(
            page.contains(&format!(".SH {section}"))
                || page.contains(&format!(".SH \"{section}\"")),
            "cgi-fpm.8 has no {section} section"
        );
    }
}

#[test]
fn the_man_pages_render_without_warnings() {
    if !require_tool("groff") {
        return;
    }
    for name in ["cgi-fpm.8", "cgi-fpm.conf.5"] {
        let output = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(man_page(name))
            .output()
            .expect("run groff");
        let complaints = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && complaints.trim().is_empty(),
            "groff warns about {name}:\n{complaints}"
        );
    }
}

#[test]
fn the_tag_parser_reads_scalars_and_arrays() {
    let page = ".TP\n.B pid\ntext\n.TP\n.BI env[ NAME ] \" = \" value\n.TP\n.BI access.suppress_path[] \" = \" uri\n.TP\n.BR \\-t \", \" \\-\\-test\n.PP\n.B not_a_tag\n";
    let found: Vec<String> = documented_directives(page).into_iter().collect();
    assert_eq!(found, ["-t", "access.suppress_path[]", "env[]", "pid"]);
}

#[test]
fn the_nginx_snippet_passes_nginx_t() {
    if !require_tool("nginx") {
        return;
    }
    let nginx = common::which("nginx").expect("nginx");
    let dir = tempfile::tempdir().expect("tempdir");
    let snippet = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/nginx/cgi-fpm.conf");
    // The snippet includes fastcgi_params from nginx's configuration directory.
    let params = Path::new("/etc/nginx/fastcgi_params");
    let params_text = std::fs::read_to_string(params)
        .unwrap_or_else(|_| "fastcgi_param QUERY_STRING $query_string;\n".to_string());
    std::fs::write(dir.path().join("fastcgi_params"), params_text).expect("fastcgi_params");
    let d = dir.path().display();
    let conf = format!(
        "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n\
         access_log off;\nclient_body_temp_path {d}/body;\nfastcgi_temp_path {d}/fastcgi;\n\
         proxy_temp_path {d}/proxy;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n\
         server {{\nlisten unix:{d}/http.sock;\nroot {d};\ninclude {snippet};\n}}\n}}\n",
        snippet = snippet.display()
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("nginx.conf");
    let output = Command::new(nginx)
        .arg("-t")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf_path)
        .output()
        .expect("run nginx -t");
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "nginx -t:\n{text}");
    assert!(text.contains("test is successful"), "{text}");
}

fn repo_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The bundled pool's listen address, which the nginx snippet and the socket unit must
/// name too.
const BUNDLED_LISTEN: &str = "127.0.0.1:9000";

#[test]
fn the_snippet_and_the_socket_unit_name_the_bundled_pools_address() {
    let pool = repo_file("etc/cgi-fpm.d/www.conf");
    assert!(
        pool.lines()
            .any(|l| l == format!("listen = {BUNDLED_LISTEN}")),
        "the bundled pool listens elsewhere: update BUNDLED_LISTEN, the snippet and the unit"
    );
    let snippet = repo_file("etc/nginx/cgi-fpm.conf");
    let passes: Vec<&str> = snippet
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("fastcgi_pass"))
        .collect();
    assert!(!passes.is_empty());
    for pass in passes {
        assert_eq!(pass, format!("fastcgi_pass {BUNDLED_LISTEN};"));
    }
    let unit = repo_file("etc/systemd/cgi-fpm.socket");
    let streams: Vec<&str> = unit
        .lines()
        .filter(|l| l.starts_with("ListenStream="))
        .collect();
    assert_eq!(streams, [format!("ListenStream={BUNDLED_LISTEN}")]);
}

#[test]
fn the_nginx_snippet_passes_path_info_to_scripts() {
    // The snippet as shipped, pointed at this test's pool: a .php script (run by /bin/sh
    // here, so php-cgi is not needed) and a CGI script, each with a path below it.
    let fpm = common::Fpm::start(1, "cgi.interpreter[.php] = /bin/sh");
    let script = "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\n\
                  echo \"PATH_INFO=$PATH_INFO\"\necho \"SCRIPT_NAME=$SCRIPT_NAME\"\n";
    fpm.script("app.php", script);
    std::fs::create_dir(fpm.path("www/cgi-bin")).expect("mkdir cgi-bin");
    fpm.script("cgi-bin/app.sh", script);
    let snippet = repo_file("etc/nginx/cgi-fpm.conf")
        .replace(BUNDLED_LISTEN, &format!("unix:{}", fpm.address));
    let Some(nginx) = common::nginx::Nginx::start_site("", &snippet, &fpm.path("www")) else {
        return;
    };
    for (target, path_info, script_name) in [
        ("/app.php/extra/path", "/extra/path", "/app.php"),
        ("/cgi-bin/app.sh/users/7", "/users/7", "/cgi-bin/app.sh"),
    ] {
        let r = common::http::get(&nginx.socket, target).expect("GET through nginx");
        let text = r.text();
        assert_eq!(r.status, 200, "{target}: {text}\n{}", nginx.error_log());
        assert!(
            text.contains(&format!("PATH_INFO={path_info}\n")),
            "{target}: {text}"
        );
        assert!(
            text.contains(&format!("SCRIPT_NAME={script_name}\n")),
            "{target}: {text}"
        );
    }
}

#[test]
fn the_man_pages_example_passes_t_on_a_host_without_its_paths() {
    // Its script root (/srv/www/cgi-bin) and included files need not exist for a check;
    // only the socket's directory must (systemd's RuntimeDirectory makes /run/cgi-fpm):
    // it is moved to a temporary one here.
    let page = read("cgi-fpm.conf.5");
    let example: String = page
        .split(".SH EXAMPLE\n")
        .nth(1)
        .and_then(|rest| rest.split(".EX\n").nth(1))
        .and_then(|rest| rest.split(".EE").next())
        .expect("an EXAMPLE section")
        .lines()
        .filter(|l| !l.starts_with('.'))
        .map(|l| l.replace("\\-", "-") + "\n")
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let example = example.replace("/run/cgi-fpm/", &format!("{}/", dir.path().display()));
    let config = dir.path().join("example.conf");
    std::fs::write(&config, example).expect("write");
    let mut command = Command::new(common::BIN);
    command.arg("-t").arg("-y").arg(&config);
    if nix::unistd::geteuid().is_root() {
        command.arg("-R");
    }
    let out = command.output().expect("run cgi-fpm -t");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("'/srv/www/cgi-bin' does not exist"), "{text}");
}
