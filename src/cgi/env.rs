//! The CGI child's environment (RFC 3875 meta-variables), as a pure function of the
//! request's params, the pool's settings and the resolved script.

use super::resolve::Resolved;
use crate::fastcgi::Params;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// The pool settings that shape a child's environment.
#[derive(Debug, Clone, Default)]
pub struct EnvPolicy {
    /// The master's environment, passed on only when `clear_env = no`.
    pub inherited: Vec<(OsString, OsString)>,
    /// `env[NAME] = value` entries.
    pub pool_env: Vec<(String, String)>,
}

/// Params the child never sees.
///
/// `HTTP_PROXY` comes from a client's `Proxy:` header, and many HTTP libraries take it as
/// their proxy setting ("httpoxy", CVE-2016-5385): a client could route a script's
/// outgoing requests through a server of its choosing.
const DROPPED_PARAMS: &[&[u8]] = &[b"HTTP_PROXY"];

/// An environment under construction: later entries replace earlier ones of the same name.
#[derive(Default)]
struct EnvBuilder {
    entries: Vec<(OsString, OsString)>,
    index: HashMap<OsString, usize>,
}

impl EnvBuilder {
    fn set(&mut self, name: OsString, value: OsString) {
        match self.index.get(&name) {
            Some(&i) => self.entries[i].1 = value,
            None => {
                self.index.insert(name.clone(), self.entries.len());
                self.entries.push((name, value));
            }
        }
    }

    fn get(&self, name: &str) -> Option<&OsStr> {
        self.index
            .get(OsStr::new(name))
            .map(|&i| self.entries[i].1.as_os_str())
    }
}

/// A name exec can carry: non-empty, without `=` or NUL. A value must not hold NUL.
fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && !name.contains(&b'=') && !name.contains(&0)
}

/// Build the child's environment.
///
/// Precedence, lowest first: the inherited environment (`clear_env = no`), the pool's
/// `env[]`, the request's params, and finally what cgi-fpm itself decided about the script
/// (SCRIPT_FILENAME, PATH_INFO). Params win over `env[]` as they do in php-fpm, where a
/// request's variables override the worker's environment.
pub fn build_env(
    params: &Params,
    policy: &EnvPolicy,
    script: &Resolved,
) -> Vec<(OsString, OsString)> {
    let mut env = EnvBuilder::default();
    for (name, value) in &policy.inherited {
        env.set(name.clone(), value.clone());
    }
    for (name, value) in &policy.pool_env {
        env.set(name.into(), value.into());
    }
    for (name, value) in params.iter() {
        if !valid_name(name) || value.contains(&0) || DROPPED_PARAMS.contains(&name) {
            continue;
        }
        env.set(
            OsString::from_vec(name.to_vec()),
            OsString::from_vec(value.to_vec()),
        );
    }

    env.set(
        "SCRIPT_FILENAME".into(),
        script.script_filename.clone().into_os_string(),
    );
    if let Some(info) = &script.path_info {
        apply_path_info(&mut env, info);
    }
    // Ours, not the request's: a script must be able to trust what the gateway says it is.
    env.set("GATEWAY_INTERFACE".into(), "CGI/1.1".into());
    // php-cgi (cgi.force_redirect) refuses to run without it, guarding against being
    // called directly as a CGI binary; here a web server always stands in front. A
    // request's own value never replaces it (the man page promises cgi-fpm's wins).
    env.set("REDIRECT_STATUS".into(), "200".into());
    env.entries
}

/// A resident app's params, encoded as FastCGI pairs straight into `out`: what
/// `build_env` gives for the request with no pool environment (the app has its own),
/// without building that environment first. This runs on every request to a resident
/// app, where the map and its per-variable allocations cost more than the relay's
/// syscalls. A request with a PATH_INFO split takes the general path.
pub fn encode_app_params(params: &Params, script: &Resolved, out: &mut Vec<u8>) {
    use crate::fastcgi::params::write_pair;
    if script.path_info.is_some() {
        for (name, value) in build_env(params, &EnvPolicy::default(), script) {
            write_pair(out, name.as_bytes(), value.as_bytes());
        }
        return;
    }
    let kept = |name: &[u8], value: &[u8]| {
        valid_name(name)
            && !value.contains(&0)
            && !DROPPED_PARAMS.contains(&name)
            && !OURS.contains(&name)
    };
    let pairs: Vec<(&[u8], &[u8])> = params.iter().collect();
    for (i, &(name, value)) in pairs.iter().enumerate() {
        // A later pair of the same name replaces this one, as in `build_env`.
        if kept(name, value) && !pairs[i + 1..].iter().any(|&(n, v)| n == name && kept(n, v)) {
            write_pair(out, name, value);
        }
    }
    write_pair(
        out,
        b"SCRIPT_FILENAME",
        script.script_filename.as_os_str().as_bytes(),
    );
    write_pair(out, b"GATEWAY_INTERFACE", b"CGI/1.1");
    write_pair(out, b"REDIRECT_STATUS", b"200");
}

/// The variables cgi-fpm sets itself, whatever the request says (see `build_env`).
const OURS: &[&[u8]] = &[b"SCRIPT_FILENAME", b"GATEWAY_INTERFACE", b"REDIRECT_STATUS"];

/// The request named a path below the script: that remainder is the PATH_INFO, and the
/// web server's SCRIPT_NAME, which still carries it, is trimmed to name the script alone.
fn apply_path_info(env: &mut EnvBuilder, info: &OsStr) {
    let given = env.get("PATH_INFO").filter(|v| !v.is_empty());
    if given.is_none() {
        env.set("PATH_INFO".into(), info.to_os_string());
    }
    if let Some(name) = env.get("SCRIPT_NAME") {
        let name = name.as_bytes();
        if let Some(trimmed) = name.strip_suffix(info.as_bytes())
            && !trimmed.is_empty()
        {
            let trimmed = OsString::from_vec(trimmed.to_vec());
            env.set("SCRIPT_NAME".into(), trimmed);
        }
    }
    if env.get("PATH_TRANSLATED").is_none_or(OsStr::is_empty)
        && let Some(root) = env.get("DOCUMENT_ROOT")
    {
        let mut translated = root.to_os_string();
        translated.push(env.get("PATH_INFO").unwrap_or(info));
        env.set("PATH_TRANSLATED".into(), translated);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn script(path: &str, info: Option<&str>) -> Resolved {
        Resolved {
            script_filename: PathBuf::from(path),
            canonical: PathBuf::from(path),
            path_info: info.map(OsString::from),
            argv: vec![path.into()],
            working_directory: PathBuf::from("/"),
        }
    }

    fn lookup<'a>(env: &'a [(OsString, OsString)], name: &str) -> Option<&'a str> {
        env.iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.to_str())
    }

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::from_pairs(pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    /// `encode_app_params` against `build_env`, as the maps an app builds from the pairs.
    fn app_params_match_build_env(p: &Params, s: &Resolved) {
        let mut encoded = Vec::new();
        encode_app_params(p, s, &mut encoded);
        let decoded = Params::decode(encoded, &crate::fastcgi::params::Limits::default()).unwrap();
        let mut fast: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for (name, value) in decoded.iter() {
            fast.retain(|(n, _)| n != name);
            fast.push((name.to_vec(), value.to_vec()));
        }
        fast.sort();
        let mut general: Vec<(Vec<u8>, Vec<u8>)> = build_env(p, &EnvPolicy::default(), s)
            .into_iter()
            .map(|(n, v)| (n.into_vec(), v.into_vec()))
            .collect();
        general.sort();
        assert_eq!(fast, general);
        assert_eq!(decoded.len(), general.len(), "no name twice");
    }

    #[test]
    fn a_resident_apps_params_are_the_cgi_environment_without_the_pools() {
        let tricky = params(&[
            ("REQUEST_METHOD", "GET"),
            ("SCRIPT_FILENAME", "/srv/other.php"),
            ("HTTP_PROXY", "http://evil"),
            ("QUERY_STRING", "a=1"),
            ("QUERY_STRING", "a=2"),
            ("REDIRECT_STATUS", "999"),
            ("GATEWAY_INTERFACE", "CGI/9"),
            ("", "empty name"),
            ("BAD=NAME", "x"),
            ("HTTP_X", "first"),
            ("HTTP_X", "nul\0later"),
            ("SCRIPT_NAME", "/a.php/extra"),
            ("DOCUMENT_ROOT", "/srv"),
        ]);
        app_params_match_build_env(&tricky, &script("/srv/a.php", None));
        app_params_match_build_env(&tricky, &script("/srv/a.php", Some("/extra")));
        app_params_match_build_env(&params(&[]), &script("/srv/a.php", None));
    }

    #[test]
    fn params_become_meta_variables() {
        let p = params(&[
            ("REQUEST_METHOD", "POST"),
            ("QUERY_STRING", "a=1&b=2"),
            ("CONTENT_LENGTH", "5"),
            ("HTTP_X_CUSTOM", "yes"),
        ]);
        let env = build_env(&p, &EnvPolicy::default(), &script("/srv/a.sh", None));
        assert_eq!(lookup(&env, "REQUEST_METHOD"), Some("POST"));
        assert_eq!(lookup(&env, "QUERY_STRING"), Some("a=1&b=2"));
        assert_eq!(lookup(&env, "CONTENT_LENGTH"), Some("5"));
        assert_eq!(lookup(&env, "HTTP_X_CUSTOM"), Some("yes"));
        assert_eq!(lookup(&env, "GATEWAY_INTERFACE"), Some("CGI/1.1"));
        assert_eq!(lookup(&env, "REDIRECT_STATUS"), Some("200"));
        assert_eq!(lookup(&env, "SCRIPT_FILENAME"), Some("/srv/a.sh"));
    }

    #[test]
    fn nothing_leaks_from_the_master_unless_asked() {
        let policy = EnvPolicy {
            inherited: vec![],
            pool_env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        };
        let env = build_env(&params(&[]), &policy, &script("/a", None));
        let names: Vec<_> = env.iter().map(|(n, _)| n.to_str().unwrap()).collect();
        let mut names = names;
        names.sort_unstable();
        assert_eq!(
            names,
            vec![
                "GATEWAY_INTERFACE",
                "PATH",
                "REDIRECT_STATUS",
                "SCRIPT_FILENAME"
            ]
        );
    }

    #[test]
    fn precedence_inherited_then_pool_then_params() {
        let policy = EnvPolicy {
            inherited: vec![
                ("A".into(), "inherited".into()),
                ("B".into(), "inherited".into()),
            ],
            pool_env: vec![("B".into(), "pool".into()), ("C".into(), "pool".into())],
        };
        let p = params(&[
            ("C", "param"),
            ("REDIRECT_STATUS", "999"),
            ("GATEWAY_INTERFACE", "CGI/9"),
        ]);
        let env = build_env(&p, &policy, &script("/a", None));
        assert_eq!(lookup(&env, "A"), Some("inherited"));
        assert_eq!(lookup(&env, "B"), Some("pool"));
        assert_eq!(lookup(&env, "C"), Some("param"));
        assert_eq!(
            lookup(&env, "REDIRECT_STATUS"),
            Some("200"),
            "cgi-fpm's own value wins over a param"
        );
        assert_eq!(lookup(&env, "GATEWAY_INTERFACE"), Some("CGI/1.1"));
        assert_eq!(
            env.iter().filter(|(n, _)| n == "REDIRECT_STATUS").count(),
            1
        );
        assert_eq!(env.iter().filter(|(n, _)| n == "B").count(), 1);
    }

    #[test]
    fn unusable_and_dangerous_params_are_dropped() {
        let p = Params::from_pairs([
            (&b""[..], &b"x"[..]),
            (b"A=B", b"x"),
            (b"NUL\0NAME", b"x"),
            (b"NULVALUE", b"a\0b"),
            (b"HTTP_PROXY", b"http://evil:3128"),
            (b"OK", b"fine"),
        ]);
        let env = build_env(&p, &EnvPolicy::default(), &script("/a", None));
        assert_eq!(lookup(&env, "OK"), Some("fine"));
        assert_eq!(lookup(&env, "HTTP_PROXY"), None);
        assert_eq!(lookup(&env, "NULVALUE"), None);
        assert!(env.iter().all(|(n, _)| valid_name(n.as_bytes())));
    }

    #[test]
    fn path_info_split_rewrites_script_name() {
        let p = params(&[
            ("SCRIPT_NAME", "/cgi/app.sh/users/7"),
            ("DOCUMENT_ROOT", "/srv"),
            ("SCRIPT_FILENAME", "/srv/cgi/app.sh/users/7"),
        ]);
        let env = build_env(
            &p,
            &EnvPolicy::default(),
            &script("/srv/cgi/app.sh", Some("/users/7")),
        );
        assert_eq!(lookup(&env, "SCRIPT_FILENAME"), Some("/srv/cgi/app.sh"));
        assert_eq!(lookup(&env, "PATH_INFO"), Some("/users/7"));
        assert_eq!(lookup(&env, "SCRIPT_NAME"), Some("/cgi/app.sh"));
        assert_eq!(lookup(&env, "PATH_TRANSLATED"), Some("/srv/users/7"));
    }

    #[test]
    fn path_info_from_the_web_server_is_kept() {
        let p = params(&[("PATH_INFO", "/given"), ("SCRIPT_NAME", "/app.sh")]);
        let env = build_env(
            &p,
            &EnvPolicy::default(),
            &script("/srv/app.sh", Some("/other")),
        );
        assert_eq!(lookup(&env, "PATH_INFO"), Some("/given"));
        assert_eq!(lookup(&env, "SCRIPT_NAME"), Some("/app.sh"));
    }
}
