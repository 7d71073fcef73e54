//! The CGI child's environment (RFC 3875 meta-variables), as a pure function of the
//! request's params, the pool's settings and the resolved script.

use super::resolve::Resolved;
use crate::fastcgi::Params;
use std::borrow::Cow;
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

/// One variable of a child's environment, name and value: borrowed from the request,
/// the pool or the script wherever it can be, owned only where cgi-fpm makes it up.
pub type EnvVar<'a> = (Cow<'a, OsStr>, Cow<'a, OsStr>);

/// An environment under construction: later entries replace earlier ones of the same
/// name, in the place of the first.
///
/// Entries are collected as they come and sorted out once at the end: building a map of
/// owned names cost two allocations per variable plus SipHash, the largest part of a
/// worker's own work per request (BENCHMARKS.md).
struct EnvBuilder<'a> {
    entries: Vec<EnvVar<'a>>,
}

impl<'a> EnvBuilder<'a> {
    fn set(&mut self, name: impl Into<Cow<'a, OsStr>>, value: impl Into<Cow<'a, OsStr>>) {
        self.entries.push((name.into(), value.into()));
    }

    /// The value `name` has so far: the one set last.
    fn get(&self, name: &str) -> Option<&OsStr> {
        self.entries
            .iter()
            .rev()
            .find(|(n, _)| n.as_bytes() == name.as_bytes())
            .map(|(_, v)| v.as_ref())
    }

    /// The environment: each name once, where it was first set, with the value it was
    /// set to last. Sorting positions by name finds the duplicates in n log n, whatever
    /// the request sends (up to 4096 params).
    fn finish(self) -> Vec<EnvVar<'a>> {
        let mut entries = self.entries;
        let mut order: Vec<usize> = (0..entries.len()).collect();
        order.sort_unstable_by(|&a, &b| entries[a].0.cmp(&entries[b].0).then(a.cmp(&b)));
        let mut replaced = vec![false; entries.len()];
        let mut start = 0;
        while start < order.len() {
            let first = order[start];
            let mut end = start + 1;
            while end < order.len() && entries[order[end]].0 == entries[first].0 {
                end += 1;
            }
            let last = order[end - 1];
            if last != first {
                entries[first].1 = std::mem::take(&mut entries[last].1);
                for &later in &order[start + 1..end] {
                    replaced[later] = true;
                }
            }
            start = end;
        }
        let mut position = 0;
        entries.retain(|_| {
            let keep = !replaced[position];
            position += 1;
            keep
        });
        entries
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
pub fn build_env<'a>(
    params: &'a Params,
    policy: &'a EnvPolicy,
    script: &'a Resolved,
) -> Vec<EnvVar<'a>> {
    let mut env = EnvBuilder {
        entries: Vec::with_capacity(
            policy.inherited.len() + policy.pool_env.len() + params.len() + OURS.len() + 3,
        ),
    };
    for (name, value) in &policy.inherited {
        env.set(name.as_os_str(), value.as_os_str());
    }
    for (name, value) in &policy.pool_env {
        env.set(OsStr::new(name), OsStr::new(value));
    }
    for (name, value) in params.iter() {
        if !valid_name(name) || value.contains(&0) || DROPPED_PARAMS.contains(&name) {
            continue;
        }
        env.set(OsStr::from_bytes(name), OsStr::from_bytes(value));
    }

    env.set(
        OsStr::new("SCRIPT_FILENAME"),
        script.script_filename.as_os_str(),
    );
    if let Some(info) = &script.path_info {
        apply_path_info(&mut env, info);
    }
    // Ours, not the request's: a script must be able to trust what the gateway says it is.
    env.set(OsStr::new("GATEWAY_INTERFACE"), OsStr::new("CGI/1.1"));
    // php-cgi (cgi.force_redirect) refuses to run without it, guarding against being
    // called directly as a CGI binary; here a web server always stands in front. A
    // request's own value never replaces it (the man page promises cgi-fpm's wins).
    env.set(OsStr::new("REDIRECT_STATUS"), OsStr::new("200"));
    env.finish()
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
    let pairs: Vec<(&[u8], &[u8])> = params.iter().filter(|&(n, v)| kept(n, v)).collect();
    let replaced = replaced_later(&pairs);
    for (&(name, value), replaced) in pairs.iter().zip(replaced) {
        // A later pair of the same name replaces this one, as in `build_env`.
        if !replaced {
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

/// For each pair, whether a later one has the same name. Sorting positions by name
/// finds them in n log n: comparing each pair with every later one cost a request of
/// 4096 params millions of comparisons.
fn replaced_later(pairs: &[(&[u8], &[u8])]) -> Vec<bool> {
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_unstable_by(|&a, &b| pairs[a].0.cmp(pairs[b].0).then(a.cmp(&b)));
    let mut replaced = vec![false; pairs.len()];
    for adjacent in order.windows(2) {
        if pairs[adjacent[0]].0 == pairs[adjacent[1]].0 {
            replaced[adjacent[0]] = true;
        }
    }
    replaced
}

/// The variables cgi-fpm sets itself, whatever the request says (see `build_env`).
const OURS: &[&[u8]] = &[b"SCRIPT_FILENAME", b"GATEWAY_INTERFACE", b"REDIRECT_STATUS"];

/// The request named a path below the script: that remainder is the PATH_INFO, and the
/// web server's SCRIPT_NAME, which still carries it, is trimmed to name the script alone.
fn apply_path_info<'a>(env: &mut EnvBuilder<'a>, info: &'a OsStr) {
    let given = env.get("PATH_INFO").filter(|v| !v.is_empty());
    if given.is_none() {
        env.set(OsStr::new("PATH_INFO"), info);
    }
    if let Some(name) = env.get("SCRIPT_NAME") {
        let name = name.as_bytes();
        if let Some(trimmed) = name.strip_suffix(info.as_bytes())
            && !trimmed.is_empty()
        {
            let trimmed = OsString::from_vec(trimmed.to_vec());
            env.set(OsStr::new("SCRIPT_NAME"), trimmed);
        }
    }
    if env.get("PATH_TRANSLATED").is_none_or(OsStr::is_empty)
        && let Some(root) = env.get("DOCUMENT_ROOT")
    {
        let mut translated = root.to_os_string();
        translated.push(env.get("PATH_INFO").unwrap_or(info));
        env.set(OsStr::new("PATH_TRANSLATED"), translated);
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

    /// `build_env`'s result, owned, for tests that build it inline.
    fn built(p: &Params, policy: &EnvPolicy, s: &Resolved) -> Vec<(OsString, OsString)> {
        build_env(p, policy, s)
            .into_iter()
            .map(|(n, v)| (n.into_owned(), v.into_owned()))
            .collect()
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
    fn app_params_match_built(p: &Params, s: &Resolved) {
        let mut encoded = Vec::new();
        encode_app_params(p, s, &mut encoded);
        let decoded = Params::decode(encoded, &crate::fastcgi::params::Limits::default()).unwrap();
        let mut fast: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for (name, value) in decoded.iter() {
            fast.retain(|(n, _)| n != name);
            fast.push((name.to_vec(), value.to_vec()));
        }
        fast.sort();
        let mut general: Vec<(Vec<u8>, Vec<u8>)> = built(p, &EnvPolicy::default(), s)
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
        app_params_match_built(&tricky, &script("/srv/a.php", None));
        app_params_match_built(&tricky, &script("/srv/a.php", Some("/extra")));
        app_params_match_built(&params(&[]), &script("/srv/a.php", None));
    }

    #[test]
    fn params_become_meta_variables() {
        let p = params(&[
            ("REQUEST_METHOD", "POST"),
            ("QUERY_STRING", "a=1&b=2"),
            ("CONTENT_LENGTH", "5"),
            ("HTTP_X_CUSTOM", "yes"),
        ]);
        let env = built(&p, &EnvPolicy::default(), &script("/srv/a.sh", None));
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
        let env = built(&params(&[]), &policy, &script("/a", None));
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
        let env = built(&p, &policy, &script("/a", None));
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
            env.iter()
                .filter(|(n, _)| n.as_bytes() == b"REDIRECT_STATUS")
                .count(),
            1
        );
        assert_eq!(env.iter().filter(|(n, _)| n.as_bytes() == b"B").count(), 1);
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
        let env = built(&p, &EnvPolicy::default(), &script("/a", None));
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
        let env = built(
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
        let env = built(
            &p,
            &EnvPolicy::default(),
            &script("/srv/app.sh", Some("/other")),
        );
        assert_eq!(lookup(&env, "PATH_INFO"), Some("/given"));
        assert_eq!(lookup(&env, "SCRIPT_NAME"), Some("/app.sh"));
    }

    #[test]
    fn a_replaced_variable_keeps_the_place_it_was_first_set_in() {
        let p = params(&[("A", "1"), ("B", "2"), ("A", "3"), ("C", "4")]);
        let env = built(&p, &EnvPolicy::default(), &script("/a", None));
        let names: Vec<_> = env.iter().map(|(n, _)| n.to_str().unwrap()).collect();
        assert_eq!(&names[..3], ["A", "B", "C"]);
        assert_eq!(lookup(&env, "A"), Some("3"));
    }

    /// The environment as the map-based builder made it before entries were sorted out
    /// at the end: the behaviour the faster one must keep, order included.
    fn reference(
        params: &Params,
        policy: &EnvPolicy,
        script: &Resolved,
    ) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = Vec::new();
        fn set(env: &mut Vec<(OsString, OsString)>, name: &OsStr, value: &OsStr) {
            match env.iter_mut().find(|(n, _)| n == name) {
                Some(entry) => entry.1 = value.to_os_string(),
                None => env.push((name.to_os_string(), value.to_os_string())),
            }
        }
        fn get<'e>(env: &'e [(OsString, OsString)], name: &str) -> Option<&'e OsStr> {
            env.iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_os_str())
        }
        for (name, value) in &policy.inherited {
            set(&mut env, name, value);
        }
        for (name, value) in &policy.pool_env {
            set(&mut env, OsStr::new(name), OsStr::new(value));
        }
        for (name, value) in params.iter() {
            if valid_name(name) && !value.contains(&0) && !DROPPED_PARAMS.contains(&name) {
                set(&mut env, OsStr::from_bytes(name), OsStr::from_bytes(value));
            }
        }
        set(
            &mut env,
            OsStr::new("SCRIPT_FILENAME"),
            script.script_filename.as_os_str(),
        );
        if let Some(info) = &script.path_info {
            if get(&env, "PATH_INFO").filter(|v| !v.is_empty()).is_none() {
                set(&mut env, OsStr::new("PATH_INFO"), info);
            }
            if let Some(trimmed) = get(&env, "SCRIPT_NAME")
                .and_then(|n| n.as_bytes().strip_suffix(info.as_bytes()))
                .filter(|t| !t.is_empty())
                .map(<[u8]>::to_vec)
            {
                set(
                    &mut env,
                    OsStr::new("SCRIPT_NAME"),
                    OsStr::from_bytes(&trimmed),
                );
            }
            if get(&env, "PATH_TRANSLATED").is_none_or(OsStr::is_empty)
                && let Some(root) = get(&env, "DOCUMENT_ROOT")
            {
                let mut translated = root.to_os_string();
                translated.push(get(&env, "PATH_INFO").unwrap_or(info));
                set(&mut env, OsStr::new("PATH_TRANSLATED"), &translated);
            }
        }
        set(
            &mut env,
            OsStr::new("GATEWAY_INTERFACE"),
            OsStr::new("CGI/1.1"),
        );
        set(&mut env, OsStr::new("REDIRECT_STATUS"), OsStr::new("200"));
        env
    }

    use proptest::prelude::*;

    /// Names that collide with each other, with cgi-fpm's own and with PATH_INFO's.
    fn name() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "A",
            "B",
            "C",
            "",
            "X=Y",
            "HTTP_PROXY",
            "PATH_INFO",
            "SCRIPT_NAME",
            "DOCUMENT_ROOT",
            "PATH_TRANSLATED",
            "SCRIPT_FILENAME",
            "REDIRECT_STATUS",
            "GATEWAY_INTERFACE",
        ])
        .prop_map(str::to_string)
    }

    fn value() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["", "1", "/srv", "/app.sh/x", "/x", "a\0b"])
            .prop_map(str::to_string)
    }

    proptest! {
        #[test]
        fn the_environment_is_what_the_map_based_builder_made(
            pairs in prop::collection::vec((name(), value()), 0..24),
            inherited in prop::collection::vec((name(), value()), 0..4),
            pool_env in prop::collection::vec((name(), value()), 0..4),
            info in prop::option::of(prop::sample::select(vec!["/x", "/y/z", ""])),
        ) {
            let p = Params::from_pairs(pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
            let policy = EnvPolicy {
                inherited: inherited
                    .iter()
                    .filter(|(n, v)| valid_name(n.as_bytes()) && !v.contains('\0'))
                    .map(|(n, v)| (n.into(), v.into()))
                    .collect(),
                pool_env,
            };
            let s = script("/srv/app.sh", info);
            prop_assert_eq!(built(&p, &policy, &s), reference(&p, &policy, &s));
        }
    }
}
