//! From a request's params to the program to run: which file, whether the pool allows it,
//! and with which interpreter.
//!
//! Every refusal carries the HTTP status a user of the web server should see and a reason
//! for the operator's log.

use super::php;
use super::proxy_path::script_path;
use crate::config::PoolConfig;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// The request's view of where the script is.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScriptRequest<'a> {
    pub script_filename: Option<&'a [u8]>,
    pub document_root: Option<&'a [u8]>,
    pub script_name: Option<&'a [u8]>,
    /// QUERY_STRING: some ask php-cgi to ignore its options (see `cgi::php`).
    pub query_string: Option<&'a [u8]>,
}

/// A script that may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The script as the request named it, minus any trailing path info: the value of the
    /// child's SCRIPT_FILENAME.
    pub script_filename: PathBuf,
    /// The file itself, every symlink resolved: what is checked and what runs.
    pub canonical: PathBuf,
    /// Path components after the script (`/a.sh/x/y` → `/x/y`), when the request named a
    /// path below the script file.
    pub path_info: Option<OsString>,
    /// The program and its arguments: an interpreter's argv plus the script, or the script.
    pub argv: Vec<OsString>,
    /// See [`Resolved::directory`].
    pub working_directory: PathBuf,
}

impl Resolved {
    /// The working directory for the child: the pool's `chdir` when set (the directory
    /// php-fpm's workers run in), else the script's own directory, as RFC 3875 suggests
    /// and as CGI scripts that open files relative to themselves expect.
    pub fn directory(&self) -> &Path {
        &self.working_directory
    }
}

/// Why a script does not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// For the log: what exactly was wrong.
    pub reason: String,
}

impl Refusal {
    fn not_found(reason: String) -> Refusal {
        Refusal {
            status: 404,
            reason,
        }
    }

    fn forbidden(reason: String) -> Refusal {
        Refusal {
            status: 403,
            reason,
        }
    }
}

fn non_empty(v: Option<&[u8]>) -> Option<&[u8]> {
    v.filter(|v| !v.is_empty())
}

/// The script path the request names: SCRIPT_FILENAME (without Apache's proxy prefix), else
/// DOCUMENT_ROOT + SCRIPT_NAME; and, for Apache's proxy form, the same percent-decoded.
fn requested_paths(req: &ScriptRequest<'_>) -> Result<(PathBuf, Option<PathBuf>), Refusal> {
    let (path, decoded) = if let Some(f) = non_empty(req.script_filename) {
        let sent = script_path(f);
        (sent.path.into_owned(), sent.decoded)
    } else if let (Some(root), Some(name)) =
        (non_empty(req.document_root), non_empty(req.script_name))
    {
        let mut joined = root.to_vec();
        if !name.starts_with(b"/") {
            joined.push(b'/');
        }
        joined.extend_from_slice(name);
        (joined, None)
    } else {
        return Err(Refusal::not_found(
            "the request names no script: neither SCRIPT_FILENAME nor DOCUMENT_ROOT and \
             SCRIPT_NAME are set"
                .into(),
        ));
    };
    let decoded = decoded.map(checked_path).transpose()?;
    Ok((checked_path(path)?, decoded))
}

fn checked_path(path: Vec<u8>) -> Result<PathBuf, Refusal> {
    if path.contains(&0) {
        return Err(Refusal::not_found("script path contains a NUL byte".into()));
    }
    let path = PathBuf::from(OsString::from_vec(path));
    if !path.is_absolute() {
        return Err(Refusal::forbidden(format!(
            "script path '{}' is not absolute",
            path.display()
        )));
    }
    Ok(path)
}

/// The file a request names and its path info. A percent-decoded alternative (Apache's
/// ProxyPass form encodes) is taken when the path as sent names no file by itself: a
/// SetHandler path is the file's own name, which may hold a literal `%`, while the
/// ProxyPass form's trailing path info is encoded too.
fn split_requested(
    requested: PathBuf,
    decoded: Option<PathBuf>,
) -> Result<(PathBuf, Split), Refusal> {
    let as_sent = split_path_info(&requested);
    match (decoded, as_sent) {
        (Some(decoded), as_sent) if !matches!(&as_sent, Ok((_, None, _))) => {
            let split = split_path_info(&decoded)?;
            Ok((decoded, split))
        }
        (_, as_sent) => Ok((requested, as_sent?)),
    }
}

type Split = (PathBuf, Option<OsString>, std::fs::Metadata);

/// Find the longest prefix of `path` that exists; what follows it is path info.
///
/// `/srv/cgi/app.sh/users/7` names `/srv/cgi/app.sh` with path info `/users/7`, which is how
/// web servers pass PATH_INFO when they do not split it themselves.
fn split_path_info(path: &Path) -> Result<Split, Refusal> {
    let mut candidate = path.to_path_buf();
    let mut tail: Vec<OsString> = Vec::new();
    loop {
        match std::fs::metadata(&candidate) {
            Ok(meta) => {
                if tail.is_empty() || meta.is_file() {
                    let info = (!tail.is_empty()).then(|| {
                        let mut info = OsString::new();
                        for part in tail.iter().rev() {
                            info.push("/");
                            info.push(part);
                        }
                        info
                    });
                    return Ok((candidate, info, meta));
                }
                // We walked up to a directory: the named file simply does not exist.
                return Err(Refusal::not_found(format!(
                    "script '{}' does not exist",
                    path.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(Refusal::forbidden(format!(
                    "script '{}' cannot be reached: {e}",
                    path.display()
                )));
            }
            Err(_) => {
                let Some(name) = candidate.file_name().map(OsStr::to_os_string) else {
                    return Err(Refusal::not_found(format!(
                        "script '{}' does not exist",
                        path.display()
                    )));
                };
                tail.push(name);
                if !candidate.pop() || candidate.as_os_str().len() <= 1 {
                    return Err(Refusal::not_found(format!(
                        "script '{}' does not exist",
                        path.display()
                    )));
                }
            }
        }
    }
}

/// Resolve and vet the script a request names.
pub fn resolve(req: &ScriptRequest<'_>, pool: &PoolConfig) -> Result<Resolved, Refusal> {
    let (requested, decoded) = requested_paths(req)?;
    let (requested, (script_filename, path_info, meta)) = split_requested(requested, decoded)?;
    // `..` is resolved by canonicalisation below, so confinement still holds; but a request
    // that climbs is suspicious enough to say so in the log.
    let climbs = requested
        .components()
        .any(|c| matches!(c, Component::ParentDir));
    if !meta.is_file() {
        return Err(Refusal::forbidden(format!(
            "script '{}' is not a regular file",
            script_filename.display()
        )));
    }
    let canonical = std::fs::canonicalize(&script_filename).map_err(|e| {
        Refusal::forbidden(format!(
            "script '{}' cannot be resolved: {e}",
            script_filename.display()
        ))
    })?;
    let roots = &pool.cgi.allowed_roots;
    if !roots.is_empty() && !roots.iter().any(|root| canonical.starts_with(root)) {
        return Err(Refusal::forbidden(format!(
            "script '{}'{} resolves to '{}', outside cgi.allowed_roots",
            script_filename.display(),
            if climbs { " (with '..')" } else { "" },
            canonical.display()
        )));
    }
    if !pool.limits_extension_ok(&script_filename) {
        return Err(Refusal::forbidden(format!(
            "access to the script '{}' has been denied (see security.limit_extensions)",
            script_filename.display()
        )));
    }
    let argv = match pool.interpreter_for(&script_filename) {
        // A resident FastCGI app reads the script itself, as an interpreter does.
        _ if pool.fastcgi_app_for(&script_filename).is_some() => {
            if nix::unistd::access(&canonical, nix::unistd::AccessFlags::R_OK).is_err() {
                return Err(Refusal::forbidden(format!(
                    "script '{}' is not readable",
                    script_filename.display()
                )));
            }
            Vec::new()
        }
        Some(interp) => {
            if nix::unistd::access(&canonical, nix::unistd::AccessFlags::R_OK).is_err() {
                return Err(Refusal::forbidden(format!(
                    "script '{}' is not readable",
                    script_filename.display()
                )));
            }
            let mut argv: Vec<OsString> = interp.argv.iter().map(OsString::from).collect();
            if interp.is_php_cgi() {
                argv.extend(php::ini_arguments(&pool.php_settings));
                let query = req.query_string.unwrap_or_default();
                if argv.len() > 1 && php::query_hides_options(query) {
                    return Err(Refusal {
                        status: 400,
                        reason: format!(
                            "the query string '{}' would make php-cgi ignore its options (the \
                             pool's php_value/php_admin_value settings and the interpreter's \
                             arguments)",
                            String::from_utf8_lossy(query).escape_debug()
                        ),
                    });
                }
            }
            argv.push(script_filename.clone().into_os_string());
            argv
        }
        None => {
            let executable = meta.permissions().mode() & 0o111 != 0
                && nix::unistd::access(&canonical, nix::unistd::AccessFlags::X_OK).is_ok();
            if !executable {
                return Err(Refusal::forbidden(format!(
                    "script '{}' is not executable and no cgi.interpreter matches its extension",
                    script_filename.display()
                )));
            }
            vec![canonical.clone().into_os_string()]
        }
    };
    let working_directory = match &pool.chdir {
        Some(directory) => directory.clone(),
        None => canonical.parent().unwrap_or(Path::new("/")).to_path_buf(),
    };
    Ok(Resolved {
        script_filename,
        canonical,
        path_info,
        argv,
        working_directory,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Interpreter, ListenAddress};
    use std::fs;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;

    struct Tree {
        dir: tempfile::TempDir,
    }

    impl Tree {
        fn new() -> Tree {
            let dir = tempfile::tempdir().expect("tempdir");
            let t = Tree { dir };
            fs::create_dir(t.path("www")).expect("mkdir");
            fs::create_dir(t.path("outside")).expect("mkdir");
            t.file("www/run.sh", 0o755);
            t.file("www/plain.txt", 0o644);
            t.file("www/page.php", 0o644);
            t.file("outside/secret.sh", 0o755);
            t
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }

        fn file(&self, rel: &str, mode: u32) {
            fs::write(self.path(rel), b"#!/bin/sh\necho hi\n").expect("write");
            fs::set_permissions(self.path(rel), fs::Permissions::from_mode(mode)).expect("chmod");
        }

        fn policy(&self) -> PoolConfig {
            let mut pool = PoolConfig::new("test", ListenAddress::AnyPort(9000));
            pool.cgi.allowed_roots = vec![fs::canonicalize(self.path("www")).expect("canon")];
            pool.cgi.interpreters = vec![Interpreter {
                extension: ".php".into(),
                argv: vec!["/usr/bin/php-cgi".into(), "-q".into()],
            }];
            pool
        }
    }

    fn by_filename(path: &Path) -> Vec<u8> {
        path.as_os_str().as_bytes().to_vec()
    }

    fn resolve_file(path: &Path, policy: &PoolConfig) -> Result<Resolved, Refusal> {
        let f = by_filename(path);
        resolve(
            &ScriptRequest {
                script_filename: Some(&f),
                ..Default::default()
            },
            policy,
        )
    }

    #[test]
    fn an_executable_runs_itself() {
        let t = Tree::new();
        let r = resolve_file(&t.path("www/run.sh"), &t.policy()).expect("resolves");
        assert_eq!(r.argv, vec![r.canonical.clone().into_os_string()]);
        assert_eq!(r.path_info, None);
        assert_eq!(r.directory(), fs::canonicalize(t.path("www")).unwrap());
    }

    #[test]
    fn an_interpreter_gets_the_script_as_its_last_argument() {
        let t = Tree::new();
        let r = resolve_file(&t.path("www/page.php"), &t.policy()).expect("resolves");
        assert_eq!(
            r.argv,
            vec![
                OsString::from("/usr/bin/php-cgi"),
                OsString::from("-q"),
                t.path("www/page.php").into_os_string()
            ]
        );
    }

    #[test]
    fn document_root_plus_script_name_is_the_fallback() {
        let t = Tree::new();
        let root = by_filename(&t.path("www"));
        let r = resolve(
            &ScriptRequest {
                script_filename: Some(b""),
                document_root: Some(&root),
                script_name: Some(b"/run.sh"),
                ..Default::default()
            },
            &t.policy(),
        )
        .expect("resolves");
        assert_eq!(r.script_filename, t.path("www/run.sh"));
    }

    #[test]
    fn path_info_is_split_off() {
        let t = Tree::new();
        let r = resolve_file(&t.path("www/run.sh/users/7"), &t.policy()).expect("resolves");
        assert_eq!(r.script_filename, t.path("www/run.sh"));
        assert_eq!(r.path_info, Some(OsString::from("/users/7")));
    }

    #[test]
    fn missing_scripts_are_404() {
        let t = Tree::new();
        for p in ["www/nope.sh", "www/nope.sh/more", "nodir/x.sh"] {
            let e = resolve_file(&t.path(p), &t.policy()).unwrap_err();
            assert_eq!(e.status, 404, "{p}: {}", e.reason);
        }
        let e = resolve(&ScriptRequest::default(), &t.policy()).unwrap_err();
        assert_eq!(e.status, 404);
    }

    #[test]
    fn directories_and_relative_paths_are_403() {
        let t = Tree::new();
        assert_eq!(
            resolve_file(&t.path("www"), &t.policy())
                .unwrap_err()
                .status,
            403
        );
        assert_eq!(
            resolve_file(Path::new("www/run.sh"), &t.policy())
                .unwrap_err()
                .status,
            403
        );
    }

    #[test]
    fn not_executable_without_interpreter_is_403() {
        let t = Tree::new();
        let e = resolve_file(&t.path("www/plain.txt"), &t.policy()).unwrap_err();
        assert_eq!(e.status, 403);
        assert!(e.reason.contains("not executable"), "{}", e.reason);
    }

    #[test]
    fn outside_the_roots_is_403_however_it_is_reached() {
        let t = Tree::new();
        symlink(t.path("outside/secret.sh"), t.path("www/link.sh")).unwrap();
        for p in [
            "outside/secret.sh",
            "www/../outside/secret.sh",
            "www/link.sh",
        ] {
            let e = resolve_file(&t.path(p), &t.policy()).unwrap_err();
            assert_eq!(e.status, 403, "{p}");
            assert!(
                e.reason.contains("outside cgi.allowed_roots"),
                "{}",
                e.reason
            );
        }
        // A symlink that stays inside is fine, and what runs is its target.
        symlink(t.path("www/run.sh"), t.path("www/alias.sh")).unwrap();
        let r = resolve_file(&t.path("www/alias.sh"), &t.policy()).expect("resolves");
        assert_eq!(r.canonical, fs::canonicalize(t.path("www/run.sh")).unwrap());
        assert_eq!(r.script_filename, t.path("www/alias.sh"));
    }

    #[test]
    fn no_roots_means_anywhere() {
        let t = Tree::new();
        let mut policy = t.policy();
        policy.cgi.allowed_roots.clear();
        assert!(resolve_file(&t.path("outside/secret.sh"), &policy).is_ok());
    }

    #[test]
    fn limit_extensions_refuse_others() {
        let t = Tree::new();
        let mut policy = t.policy();
        policy.security_limit_extensions = vec![".php".into()];
        assert!(resolve_file(&t.path("www/page.php"), &policy).is_ok());
        let e = resolve_file(&t.path("www/run.sh"), &policy).unwrap_err();
        assert_eq!(e.status, 403);
        assert!(e.reason.contains("security.limit_extensions"));
        t.file("www/noext", 0o755);
        assert_eq!(
            resolve_file(&t.path("www/noext"), &policy)
                .unwrap_err()
                .status,
            403
        );
    }

    fn php_policy(t: &Tree) -> PoolConfig {
        let mut policy = t.policy();
        policy.php_settings = vec![
            crate::config::PhpSetting {
                name: "memory_limit".into(),
                value: "77M".into(),
                admin: true,
            },
            crate::config::PhpSetting {
                name: "display_errors".into(),
                value: "0".into(),
                admin: false,
            },
        ];
        policy
    }

    fn with_query(path: &Path, query: &[u8], policy: &PoolConfig) -> Result<Resolved, Refusal> {
        let f = by_filename(path);
        resolve(
            &ScriptRequest {
                script_filename: Some(&f),
                query_string: Some(query),
                ..Default::default()
            },
            policy,
        )
    }

    #[test]
    fn php_settings_go_to_php_cgi_before_the_script() {
        let t = Tree::new();
        let r = with_query(&t.path("www/page.php"), b"a=1", &php_policy(&t)).expect("resolves");
        let expected: Vec<OsString> = [
            "/usr/bin/php-cgi",
            "-q",
            "-d",
            "display_errors=0",
            "-d",
            "memory_limit=77M",
        ]
        .iter()
        .map(OsString::from)
        .chain([t.path("www/page.php").into_os_string()])
        .collect();
        assert_eq!(r.argv, expected);
        // Other interpreters and executables get none of it.
        let mut policy = php_policy(&t);
        policy.cgi.interpreters[0].argv = vec!["/usr/bin/php".into()];
        let r = with_query(&t.path("www/page.php"), b"", &policy).expect("resolves");
        assert_eq!(r.argv.len(), 2, "{:?}", r.argv);
        let r = with_query(&t.path("www/run.sh"), b"", &php_policy(&t)).expect("resolves");
        assert_eq!(r.argv.len(), 1);
    }

    #[test]
    fn a_query_that_would_hide_php_cgis_options_is_refused() {
        let t = Tree::new();
        let e = with_query(&t.path("www/page.php"), b"-s", &php_policy(&t)).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(
            e.reason.contains("php-cgi ignore its options"),
            "{}",
            e.reason
        );
        // Nothing to lose without options; other scripts are not concerned.
        let mut bare = t.policy();
        bare.cgi.interpreters[0].argv = vec!["/usr/bin/php-cgi".into()];
        assert!(with_query(&t.path("www/page.php"), b"-s", &bare).is_ok());
        assert!(with_query(&t.path("www/run.sh"), b"-s", &php_policy(&t)).is_ok());
    }

    #[test]
    fn the_pools_chdir_is_the_working_directory() {
        let t = Tree::new();
        let mut policy = t.policy();
        policy.chdir = Some(PathBuf::from("/"));
        let r = resolve_file(&t.path("www/run.sh"), &policy).expect("resolves");
        assert_eq!(r.directory(), Path::new("/"));
    }

    /// SCRIPT_FILENAME as Apache's mod_proxy_fcgi sends it for `path` below the tree.
    fn from_apache(
        t: &Tree,
        host: &str,
        rel: &str,
        policy: &PoolConfig,
    ) -> Result<Resolved, Refusal> {
        let raw = format!("{host}{}/{rel}", t.dir.path().display());
        resolve(
            &ScriptRequest {
                script_filename: Some(raw.as_bytes()),
                ..Default::default()
            },
            policy,
        )
    }

    #[test]
    fn apaches_sethandler_form_runs_the_file() {
        let t = Tree::new();
        for host in [
            "proxy:fcgi://localhost",
            "PROXY:FCGI://127.0.0.1:9000",
            "proxy:balancer://c",
        ] {
            let r = from_apache(&t, host, "www/run.sh", &t.policy()).expect(host);
            assert_eq!(r.script_filename, t.path("www/run.sh"), "{host}");
            assert_eq!(r.path_info, None);
        }
        // The file's own name, `%` and all: the SetHandler form does not encode.
        t.file("www/p%41.sh", 0o755);
        let r = from_apache(&t, "proxy:fcgi://h", "www/p%41.sh", &t.policy()).expect("literal");
        assert_eq!(r.script_filename, t.path("www/p%41.sh"));
    }

    #[test]
    fn apaches_proxypass_form_gets_its_path_info_query_cut_and_decoding() {
        let t = Tree::new();
        let r = from_apache(
            &t,
            "proxy:fcgi://127.0.0.1:9000",
            "www/run.sh/extra/path?a=1",
            &t.policy(),
        )
        .expect("resolves");
        assert_eq!(r.script_filename, t.path("www/run.sh"));
        assert_eq!(r.path_info, Some(OsString::from("/extra/path")));
        t.file("www/a b.sh", 0o755);
        let r = from_apache(&t, "proxy:fcgi://h:1", "www/a%20b.sh/pa%20th", &t.policy())
            .expect("decoded");
        assert_eq!(r.script_filename, t.path("www/a b.sh"));
        assert_eq!(r.path_info, Some(OsString::from("/pa th")));
        // Path info of an unencoded script name is decoded too.
        let r = from_apache(&t, "proxy:fcgi://h:1", "www/run.sh/pa%20th", &t.policy())
            .expect("decoded info");
        assert_eq!(r.path_info, Some(OsString::from("/pa th")));
        // `%2541` is what Apache sends for a file named `p%41.sh`.
        t.file("www/p%41.sh", 0o755);
        let r = from_apache(&t, "proxy:fcgi://h", "www/p%2541.sh", &t.policy()).expect("p%41");
        assert_eq!(r.script_filename, t.path("www/p%41.sh"));
    }

    #[test]
    fn a_decoded_climb_stays_inside_the_roots() {
        let t = Tree::new();
        for rel in [
            "www/%2e%2e/outside/secret.sh",
            "www/%2E%2E%2Foutside%2Fsecret.sh",
        ] {
            let e = from_apache(&t, "proxy:fcgi://h", rel, &t.policy()).unwrap_err();
            assert_eq!(e.status, 403, "{rel}: {}", e.reason);
            assert!(
                e.reason.contains("outside cgi.allowed_roots"),
                "{}",
                e.reason
            );
            assert!(e.reason.contains("(with '..')"), "{}", e.reason);
        }
        let e = from_apache(&t, "proxy:fcgi://h", "www/run.sh%00.txt", &t.policy()).unwrap_err();
        assert_eq!(e.status, 404, "{}", e.reason);
        // Without the proxy prefix nothing is decoded.
        let plain = by_filename(&t.path("www/%2e%2e/outside/secret.sh"));
        let e = resolve(
            &ScriptRequest {
                script_filename: Some(&plain),
                ..Default::default()
            },
            &t.policy(),
        )
        .unwrap_err();
        assert_eq!(e.status, 404, "{}", e.reason);
        // A prefix with no path is refused, as php-fpm does.
        let e = resolve(
            &ScriptRequest {
                script_filename: Some(b"proxy:fcgi://localhost"),
                ..Default::default()
            },
            &t.policy(),
        )
        .unwrap_err();
        assert_eq!(e.status, 403, "{}", e.reason);
    }
}
