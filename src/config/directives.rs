//! Every directive the loader knows, as data: its name, scope, support status and how its
//! value lands in the model. php-fpm's own directives come first, in php-fpm's order, then
//! ours (`cgi.*`, `request_slowlog_trace_command`).
//!
//! Setters only parse and store. Paths stay as written here: they are resolved against the
//! prefix once the whole configuration is read (a pool's `prefix` may come after them).

use super::ini::EnvLookup;
use super::model::{ErrorLog, GlobalConfig, Interpreter, ListenAddress, PhpSetting, PoolConfig};
use super::values::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Scope {
    Global,
    Pool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    Implemented,
    /// Parsed, validated and stored, but nothing acts on it yet: one warning per load.
    Later,
    /// Means nothing on this system (the text says why, e.g. "applies to FreeBSD only"):
    /// accepted, validated and stored, with one warning per load.
    NotApplicable(&'static str),
}

/// What a setter may need besides the value, and where it leaves remarks that are not errors.
pub(super) struct ValueContext<'a> {
    pub env: EnvLookup<'a>,
    /// Warnings about an accepted value; the caller adds file, line and section.
    pub notes: Vec<String>,
}

type Outcome = Result<(), String>;
type GlobalSetter = fn(&mut GlobalConfig, &str, &mut ValueContext) -> Outcome;
type PoolSetter = fn(&mut PoolConfig, &str, &mut ValueContext) -> Outcome;
/// Gets the array key (empty for `name[]`) and the value.
type PoolArraySetter = fn(&mut PoolConfig, &str, &str, &mut ValueContext) -> Outcome;

#[derive(Clone, Copy)]
pub(super) enum Apply {
    /// `include = glob`, handled by the loader.
    Include,
    Global(GlobalSetter),
    Pool(PoolSetter),
    PoolArray(PoolArraySetter),
}

#[derive(Clone, Copy)]
pub(super) struct Directive {
    /// Lower case (keys match case-insensitively); arrays end in `[]`, as in `env[]`.
    pub name: &'static str,
    pub scope: Scope,
    pub status: Status,
    pub apply: Apply,
}

impl Directive {
    pub(super) fn is_array(&self) -> bool {
        matches!(self.apply, Apply::PoolArray(_))
    }

    /// The key as matched in a config line: the name without its `[]`.
    pub(super) fn key(&self) -> &'static str {
        self.name.strip_suffix("[]").unwrap_or(self.name)
    }
}

const fn global(name: &'static str, status: Status, setter: GlobalSetter) -> Directive {
    Directive {
        name,
        scope: Scope::Global,
        status,
        apply: Apply::Global(setter),
    }
}

const fn pool(name: &'static str, status: Status, setter: PoolSetter) -> Directive {
    Directive {
        name,
        scope: Scope::Pool,
        status,
        apply: Apply::Pool(setter),
    }
}

const fn pool_array(name: &'static str, status: Status, setter: PoolArraySetter) -> Directive {
    Directive {
        name,
        scope: Scope::Pool,
        status,
        apply: Apply::PoolArray(setter),
    }
}

const fn include(scope: Scope) -> Directive {
    Directive {
        name: "include",
        scope,
        status: Status::Implemented,
        apply: Apply::Include,
    }
}

use Status::{Implemented, Later, NotApplicable};

pub(super) static DIRECTIVES: &[Directive] = &[
    // [global], in php-fpm's order (fpm_conf.c, php-fpm.conf.in).
    global("pid", Implemented, |g, v, _| {
        g.pid = optional_path(v);
        Ok(())
    }),
    global("error_log", Implemented, |g, v, _| {
        g.error_log = match v {
            "" => ErrorLog::Stderr,
            _ if v.eq_ignore_ascii_case("syslog") => ErrorLog::Syslog,
            _ => ErrorLog::File(v.into()),
        };
        Ok(())
    }),
    global("syslog.ident", Implemented, |g, v, _| {
        g.syslog_ident = non_empty_text(v)?;
        Ok(())
    }),
    global("syslog.facility", Implemented, |g, v, _| {
        g.syslog_facility = syslog_facility(v)?;
        Ok(())
    }),
    global("log_buffering", Later, |g, v, _| {
        g.log_buffering = boolean(v)?;
        Ok(())
    }),
    global("log_level", Implemented, |g, v, _| {
        g.log_level = log_level(v)?;
        Ok(())
    }),
    global("log_limit", Implemented, |g, v, _| {
        g.log_limit = integer::<u32>(v, 512, i32::MAX as u32)? as usize;
        Ok(())
    }),
    global("emergency_restart_threshold", Implemented, |g, v, _| {
        g.emergency_restart_threshold = integer(v, 0, u32::MAX)?;
        Ok(())
    }),
    global("emergency_restart_interval", Implemented, |g, v, _| {
        g.emergency_restart_interval = duration(v)?;
        Ok(())
    }),
    global("process_control_timeout", Implemented, |g, v, _| {
        g.process_control_timeout = duration(v)?;
        Ok(())
    }),
    global("process.max", Implemented, |g, v, _| {
        g.process_max = integer(v, 0, u32::MAX)?;
        Ok(())
    }),
    global("process.priority", Implemented, |g, v, _| {
        g.process_priority = Some(integer(v, -19, 20)?);
        Ok(())
    }),
    global("daemonize", Implemented, |g, v, _| {
        g.daemonize = boolean(v)?;
        Ok(())
    }),
    global("rlimit_files", Implemented, |g, v, _| {
        g.rlimit_files = Some(integer(v, 0, u64::MAX)?);
        Ok(())
    }),
    global("rlimit_core", Implemented, |g, v, _| {
        g.rlimit_core = Some(rlimit_core(v)?);
        Ok(())
    }),
    global("events.mechanism", Later, |g, v, _| {
        g.events_mechanism = Some(events_mechanism(v)?);
        Ok(())
    }),
    global("systemd_interval", Implemented, |g, v, _| {
        g.systemd_interval = duration(v)?;
        Ok(())
    }),
    global("proctitle_prefix", Implemented, |g, v, _| {
        g.proctitle_prefix = optional_text(v);
        Ok(())
    }),
    global("metrics.listen", Implemented, |g, v, _| {
        g.metrics_listen = match v.trim() {
            "" => None,
            v => Some(listen_address(v)?),
        };
        Ok(())
    }),
    global("metrics.allowed_clients", Implemented, |g, v, _| {
        g.metrics_allowed_clients = allowed_clients(v)?;
        Ok(())
    }),
    include(Scope::Global),
    // Pools, in php-fpm's order (fpm_conf.c, www.conf.in).
    pool("prefix", Implemented, |p, v, _| {
        p.prefix = optional_path(v);
        Ok(())
    }),
    pool("user", Implemented, |p, v, _| {
        p.user = optional_text(v);
        Ok(())
    }),
    pool("group", Implemented, |p, v, _| {
        p.group = optional_text(v);
        Ok(())
    }),
    pool("listen", Implemented, |p, v, context| {
        p.listen = listen_address(v)?;
        if is_ipv4_wildcard(v) {
            context.notes.push(format!(
                "'{v}' listens on every IPv4 address (0.0.0.0); php-fpm resolves '*' as a host \
                 name, which glibc answers with the loopback address"
            ));
        }
        Ok(())
    }),
    pool("listen.backlog", Implemented, |p, v, _| {
        p.listen_backlog = integer(v, -1, i32::MAX)?;
        Ok(())
    }),
    pool("listen.acl_users", Implemented, |p, v, _| {
        p.listen_acl_users = optional_text(v);
        Ok(())
    }),
    pool("listen.acl_groups", Implemented, |p, v, _| {
        p.listen_acl_groups = optional_text(v);
        Ok(())
    }),
    pool("listen.owner", Implemented, |p, v, _| {
        p.listen_owner = optional_text(v);
        Ok(())
    }),
    pool("listen.group", Implemented, |p, v, _| {
        p.listen_group = optional_text(v);
        Ok(())
    }),
    pool("listen.mode", Implemented, |p, v, _| {
        p.listen_mode = octal_mode(v)?;
        Ok(())
    }),
    pool("listen.allowed_clients", Implemented, |p, v, _| {
        p.listen_allowed_clients = allowed_clients(v)?;
        Ok(())
    }),
    pool(
        "listen.setfib",
        NotApplicable("applies to FreeBSD only"),
        |p, v, _| {
            // php-fpm's -1 means "the default table", as leaving it unset does.
            let table: i64 = integer(v, -1, i64::from(u32::MAX))?;
            p.listen_setfib = u32::try_from(table).ok();
            Ok(())
        },
    ),
    pool("process.priority", Implemented, |p, v, _| {
        p.process_priority = Some(integer(v, -19, 20)?);
        Ok(())
    }),
    pool("process.dumpable", Implemented, |p, v, _| {
        p.process_dumpable = boolean(v)?;
        Ok(())
    }),
    pool("pm", Implemented, |p, v, _| {
        p.pm = process_manager(v)?;
        Ok(())
    }),
    pool("pm.max_children", Implemented, |p, v, _| {
        p.pm_max_children = integer(v, 1, i32::MAX as u32)?;
        Ok(())
    }),
    pool("pm.start_servers", Implemented, |p, v, _| {
        p.pm_start_servers = integer(v, 0, i32::MAX as u32)?;
        Ok(())
    }),
    pool("pm.min_spare_servers", Implemented, |p, v, _| {
        p.pm_min_spare_servers = integer(v, 0, i32::MAX as u32)?;
        Ok(())
    }),
    pool("pm.max_spare_servers", Implemented, |p, v, _| {
        p.pm_max_spare_servers = integer(v, 0, i32::MAX as u32)?;
        Ok(())
    }),
    pool("pm.max_spawn_rate", Implemented, |p, v, _| {
        p.pm_max_spawn_rate = integer(v, 1, i32::MAX as u32)?;
        Ok(())
    }),
    pool("pm.process_idle_timeout", Implemented, |p, v, _| {
        p.pm_process_idle_timeout = duration(v)?;
        Ok(())
    }),
    pool("pm.max_requests", Implemented, |p, v, _| {
        p.pm_max_requests = integer(v, 0, u64::MAX)?;
        Ok(())
    }),
    pool("pm.status_path", Implemented, |p, v, _| {
        p.pm_status_path = optional_text(v);
        Ok(())
    }),
    pool("pm.status_listen", Implemented, |p, v, _| {
        p.pm_status_listen = match v {
            "" => None,
            _ => Some(listen_address(v)?),
        };
        Ok(())
    }),
    pool("ping.path", Implemented, |p, v, _| {
        p.ping_path = optional_text(v);
        Ok(())
    }),
    pool("ping.response", Implemented, |p, v, _| {
        p.ping_response = v.to_string();
        Ok(())
    }),
    pool("access.log", Implemented, |p, v, _| {
        p.access_log = optional_path(v);
        Ok(())
    }),
    pool("access.format", Implemented, |p, v, _| {
        p.access_format = access_format(v)?;
        Ok(())
    }),
    pool_array("access.suppress_path[]", Implemented, |p, key, v, _| {
        if !key.is_empty() {
            return Err(format!(
                "keys are not allowed here ('[{key}]'): write access.suppress_path[] = /path"
            ));
        }
        if !v.starts_with('/') {
            return Err("the path must begin with '/'".to_string());
        }
        p.access_suppress_path.push(v.to_string());
        Ok(())
    }),
    pool("slowlog", Implemented, |p, v, _| {
        p.slowlog = optional_path(v);
        Ok(())
    }),
    pool("request_slowlog_timeout", Implemented, |p, v, _| {
        p.request_slowlog_timeout = duration(v)?;
        Ok(())
    }),
    pool("request_slowlog_trace_depth", Implemented, |p, v, _| {
        p.request_slowlog_trace_depth = integer(v, 1, i32::MAX as u32)?;
        Ok(())
    }),
    pool("request_terminate_timeout", Implemented, |p, v, _| {
        p.request_terminate_timeout = duration(v)?;
        Ok(())
    }),
    pool(
        "request_terminate_timeout_track_finished",
        Implemented,
        |p, v, _| {
            p.request_terminate_timeout_track_finished = boolean(v)?;
            Ok(())
        },
    ),
    pool("request_queue_timeout", Implemented, |p, v, _| {
        p.request_queue_timeout = duration(v)?;
        Ok(())
    }),
    pool("rlimit_files", Implemented, |p, v, _| {
        p.rlimit_files = Some(integer(v, 0, u64::MAX)?);
        Ok(())
    }),
    pool("rlimit_core", Implemented, |p, v, _| {
        p.rlimit_core = Some(rlimit_core(v)?);
        Ok(())
    }),
    pool("chroot", Implemented, |p, v, _| {
        p.chroot = optional_path(v);
        Ok(())
    }),
    pool("chdir", Implemented, |p, v, _| {
        p.chdir = optional_path(v);
        Ok(())
    }),
    pool("catch_workers_output", Implemented, |p, v, _| {
        p.catch_workers_output = boolean(v)?;
        Ok(())
    }),
    pool("decorate_workers_output", Implemented, |p, v, _| {
        p.decorate_workers_output = boolean(v)?;
        Ok(())
    }),
    pool("clear_env", Implemented, |p, v, _| {
        p.clear_env = boolean(v)?;
        Ok(())
    }),
    pool("security.limit_extensions", Implemented, |p, v, _| {
        p.security_limit_extensions = extensions(v)?;
        Ok(())
    }),
    pool("apparmor_hat", Later, |p, v, _| {
        p.apparmor_hat = optional_text(v);
        Ok(())
    }),
    pool_array("env[]", Implemented, set_env),
    pool_array("php_value[]", Implemented, |p, key, v, _| {
        set_php(p, key, v.to_string(), false)
    }),
    pool_array("php_flag[]", Implemented, |p, key, v, _| {
        set_php(p, key, php_flag(v)?, false)
    }),
    pool_array("php_admin_value[]", Implemented, |p, key, v, _| {
        set_php(p, key, v.to_string(), true)
    }),
    pool_array("php_admin_flag[]", Implemented, |p, key, v, _| {
        set_php(p, key, php_flag(v)?, true)
    }),
    include(Scope::Pool),
    // Ours.
    pool("request_slowlog_trace_command", Implemented, |p, v, _| {
        p.request_slowlog_trace_command = optional_text(v);
        Ok(())
    }),
    pool_array("cgi.interpreter[]", Implemented, set_interpreter),
    pool_array("cgi.fastcgi_app[]", Implemented, |p, key, v, _| {
        let extension = extension(key)?;
        set_fastcgi_app(p, extension, v)
    }),
    pool("cgi.fastcgi_app", Implemented, |p, v, _| {
        set_fastcgi_app(p, String::new(), v)
    }),
    pool("cgi.fastcgi_app_max_requests", Implemented, |p, v, _| {
        p.cgi.fastcgi_app_max_requests = integer(v, 0, u64::MAX)?;
        Ok(())
    }),
    pool("cgi.fastcgi_app_start", Implemented, |p, v, _| {
        p.cgi.fastcgi_app_start = app_start(v)?;
        Ok(())
    }),
    pool("cgi.allowed_roots", Implemented, |p, v, _| {
        p.cgi.allowed_roots = v.split_whitespace().map(Into::into).collect();
        Ok(())
    }),
    pool("cgi.stderr", Implemented, |p, v, _| {
        p.cgi.stderr = stderr_mode(v)?;
        Ok(())
    }),
    pool("cgi.request_header_timeout", Implemented, |p, v, _| {
        p.cgi.request_header_timeout = duration(v)?;
        Ok(())
    }),
    pool("cgi.held_output_limit", Implemented, |p, v, _| {
        p.cgi.held_output_limit = size(v)?;
        Ok(())
    }),
];

/// What a key means in a scope.
pub(super) enum Lookup {
    Found(&'static Directive),
    /// A known directive, but of the other scope (`listen` in `[global]`).
    OtherScope(Scope),
    /// A known directive used with the wrong shape (`env = x`, `listen[] = x`).
    WrongShape(&'static Directive),
    Unknown,
}

pub(super) fn lookup(key: &str, as_array: bool, scope: Scope) -> Lookup {
    let mut candidates = DIRECTIVES
        .iter()
        .filter(|directive| directive.key().eq_ignore_ascii_case(key));
    // `cgi.fastcgi_app` has both shapes: prefer the one written.
    let in_scope = candidates
        .clone()
        .filter(|directive| directive.scope == scope)
        .min_by_key(|directive| directive.is_array() != as_array);
    match (in_scope, candidates.next()) {
        (Some(directive), _) if directive.is_array() == as_array => Lookup::Found(directive),
        (Some(directive), _) => Lookup::WrongShape(directive),
        (None, Some(other)) => Lookup::OtherScope(other.scope),
        (None, None) => Lookup::Unknown,
    }
}

/// The known key of this shape and scope nearest to a mistyped `key`, for a hint.
pub(super) fn nearest(key: &str, as_array: bool, scope: Scope) -> Option<&'static str> {
    let keys = DIRECTIVES
        .iter()
        .filter(|directive| directive.scope == scope && directive.is_array() == as_array)
        .map(Directive::key);
    super::suggest::closest(key, keys)
}

/// `env[NAME] = value`. As in php-fpm the value must not be empty, and a value `$VAR` takes
/// VAR from the master's environment (read now, at load time).
fn set_env(pool: &mut PoolConfig, name: &str, value: &str, context: &mut ValueContext) -> Outcome {
    if name.is_empty() {
        return Err("a variable name is needed: env[NAME] = value".to_string());
    }
    if value.is_empty() {
        return Err("empty value".to_string());
    }
    let value = match value.strip_prefix('$') {
        Some(variable) => (context.env)(variable).unwrap_or_default(),
        None => value.to_string(),
    };
    match pool.env.iter_mut().find(|(existing, _)| existing == name) {
        Some(entry) => entry.1 = value,
        None => pool.env.push((name.to_string(), value)),
    }
    Ok(())
}

/// php-fpm stores flags as "1"/"0" among the values.
fn php_flag(value: &str) -> Result<String, String> {
    Ok(if boolean(value)? { "1" } else { "0" }.to_string())
}

fn set_php(pool: &mut PoolConfig, name: &str, value: String, admin: bool) -> Outcome {
    if name.is_empty() {
        return Err("a setting name is needed: php_value[name] = value".to_string());
    }
    let same = |setting: &&mut PhpSetting| setting.name == name && setting.admin == admin;
    match pool.php_settings.iter_mut().find(same) {
        Some(setting) => setting.value = value,
        None => pool.php_settings.push(PhpSetting {
            name: name.to_string(),
            value,
            admin,
        }),
    }
    Ok(())
}

/// `cgi.interpreter[.EXT] = /program args...`; a later line for the same extension replaces it.
fn set_interpreter(pool: &mut PoolConfig, key: &str, value: &str, _: &mut ValueContext) -> Outcome {
    let extension = extension(key)?;
    let argv = command_words(value)?;
    let Some(program) = argv.first() else {
        return Err("a program is needed: cgi.interpreter[.ext] = /path/to/program".to_string());
    };
    if !program.starts_with('/') {
        return Err(format!("the program '{program}' must be an absolute path"));
    }
    let interpreters = &mut pool.cgi.interpreters;
    interpreters.retain(|interpreter| interpreter.extension != extension);
    interpreters.push(Interpreter { extension, argv });
    Ok(())
}

/// `cgi.fastcgi_app[.EXT] = /program args...` (an empty extension: the whole pool); a later
/// line for the same extension replaces it.
fn set_fastcgi_app(pool: &mut PoolConfig, extension: String, value: &str) -> Outcome {
    let argv = command_words(value)?;
    let Some(program) = argv.first() else {
        return Err("a program is needed: cgi.fastcgi_app[.ext] = /path/to/program".to_string());
    };
    if !program.starts_with('/') {
        return Err(format!("the program '{program}' must be an absolute path"));
    }
    let apps = &mut pool.cgi.fastcgi_apps;
    apps.retain(|app| app.extension != extension);
    apps.push(Interpreter { extension, argv });
    Ok(())
}

/// Every directive name, arrays written `name[]`, each once, in table order.
pub(super) fn names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for directive in DIRECTIVES {
        if !names.contains(&directive.name) {
            names.push(directive.name);
        }
    }
    names
}

pub(super) fn unimplemented() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for directive in DIRECTIVES.iter().filter(|d| d.status == Later) {
        if !names.contains(&directive.name) {
            names.push(directive.name);
        }
    }
    names
}

/// Placeholder for a pool being read, before its `listen` is known.
pub(super) fn unset_listen() -> ListenAddress {
    ListenAddress::AnyPort(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn context() -> ValueContext<'static> {
        ValueContext {
            env: &|name| (name == "HOSTNAME").then(|| "web1".to_string()),
            notes: Vec::new(),
        }
    }

    fn apply(pool: &mut PoolConfig, name: &str, key: Option<&str>, value: &str) -> Outcome {
        let directive = match lookup(name, key.is_some(), Scope::Pool) {
            Lookup::Found(directive) => directive,
            _ => panic!("{name} is not a pool directive"),
        };
        let mut context = context();
        match (directive.apply, key) {
            (Apply::Pool(setter), None) => setter(pool, value, &mut context),
            (Apply::PoolArray(setter), Some(key)) => setter(pool, key, value, &mut context),
            _ => panic!("{name}: wrong shape"),
        }
    }

    fn pool() -> PoolConfig {
        PoolConfig::new("www", unset_listen())
    }

    #[test]
    fn every_php_fpm_directive_is_known() {
        let names: HashSet<&str> = names().into_iter().collect();
        let php_fpm_global = [
            "pid",
            "error_log",
            "syslog.facility",
            "syslog.ident",
            "log_level",
            "log_limit",
            "log_buffering",
            "emergency_restart_threshold",
            "emergency_restart_interval",
            "process_control_timeout",
            "process.max",
            "process.priority",
            "daemonize",
            "rlimit_files",
            "rlimit_core",
            "events.mechanism",
            "systemd_interval",
            "proctitle_prefix",
            "include",
        ];
        let php_fpm_pool = [
            "prefix",
            "user",
            "group",
            "listen",
            "listen.backlog",
            "listen.owner",
            "listen.group",
            "listen.mode",
            "listen.acl_users",
            "listen.acl_groups",
            "listen.allowed_clients",
            "listen.setfib",
            "process.priority",
            "process.dumpable",
            "pm",
            "pm.max_children",
            "pm.start_servers",
            "pm.min_spare_servers",
            "pm.max_spare_servers",
            "pm.max_spawn_rate",
            "pm.process_idle_timeout",
            "pm.max_requests",
            "pm.status_path",
            "pm.status_listen",
            "ping.path",
            "ping.response",
            "access.log",
            "access.format",
            "access.suppress_path[]",
            "slowlog",
            "request_slowlog_timeout",
            "request_slowlog_trace_depth",
            "request_terminate_timeout",
            "request_terminate_timeout_track_finished",
            "rlimit_files",
            "rlimit_core",
            "chroot",
            "chdir",
            "catch_workers_output",
            "decorate_workers_output",
            "clear_env",
            "security.limit_extensions",
            "env[]",
            "php_value[]",
            "php_flag[]",
            "php_admin_value[]",
            "php_admin_flag[]",
            "apparmor_hat",
        ];
        for name in php_fpm_global.iter().chain(&php_fpm_pool) {
            assert!(names.contains(name), "{name} is missing");
        }
        for ours in [
            "cgi.interpreter[]",
            "cgi.fastcgi_app[]",
            "cgi.fastcgi_app",
            "cgi.fastcgi_app_max_requests",
            "cgi.fastcgi_app_start",
            "cgi.allowed_roots",
            "cgi.stderr",
            "cgi.request_header_timeout",
            "cgi.held_output_limit",
            "request_queue_timeout",
        ] {
            assert!(names.contains(ours), "{ours} is missing");
        }
    }

    #[test]
    fn names_are_unique_and_lower_case() {
        let all = names();
        let unique: HashSet<_> = all.iter().collect();
        assert_eq!(unique.len(), all.len());
        for directive in DIRECTIVES {
            assert_eq!(directive.name, directive.name.to_ascii_lowercase());
            assert_eq!(
                directive.name.ends_with("[]"),
                directive.is_array(),
                "{}",
                directive.name
            );
        }
        let per_scope: HashSet<_> = DIRECTIVES.iter().map(|d| (d.name, d.scope)).collect();
        assert_eq!(
            per_scope.len(),
            DIRECTIVES.len(),
            "a name appears twice in one scope"
        );
    }

    #[test]
    fn statuses_as_agreed() {
        let implemented: HashSet<_> = DIRECTIVES
            .iter()
            .filter(|d| d.status == Implemented)
            .map(|d| (d.scope, d.name))
            .collect();
        let expected: HashSet<_> = [
            (Scope::Global, "pid"),
            (Scope::Global, "error_log"),
            (Scope::Global, "log_level"),
            (Scope::Global, "include"),
            (Scope::Pool, "include"),
            (Scope::Pool, "prefix"),
            (Scope::Pool, "listen"),
            (Scope::Pool, "listen.backlog"),
            (Scope::Pool, "listen.owner"),
            (Scope::Pool, "listen.group"),
            (Scope::Pool, "listen.mode"),
            (Scope::Pool, "pm"),
            (Scope::Pool, "pm.max_children"),
            (Scope::Pool, "pm.start_servers"),
            (Scope::Pool, "pm.min_spare_servers"),
            (Scope::Pool, "pm.max_spare_servers"),
            (Scope::Pool, "pm.max_spawn_rate"),
            (Scope::Pool, "pm.process_idle_timeout"),
            (Scope::Pool, "pm.max_requests"),
            (Scope::Pool, "pm.status_path"),
            (Scope::Pool, "pm.status_listen"),
            (Scope::Pool, "ping.path"),
            (Scope::Pool, "ping.response"),
            (Scope::Pool, "chdir"),
            (Scope::Pool, "clear_env"),
            (Scope::Pool, "env[]"),
            (Scope::Pool, "security.limit_extensions"),
            (Scope::Pool, "cgi.interpreter[]"),
            (Scope::Pool, "cgi.fastcgi_app[]"),
            (Scope::Pool, "cgi.fastcgi_app"),
            (Scope::Pool, "cgi.fastcgi_app_max_requests"),
            (Scope::Pool, "cgi.fastcgi_app_start"),
            (Scope::Pool, "cgi.allowed_roots"),
            (Scope::Pool, "cgi.stderr"),
            (Scope::Global, "syslog.ident"),
            (Scope::Global, "syslog.facility"),
            (Scope::Global, "log_limit"),
            (Scope::Global, "daemonize"),
            (Scope::Global, "systemd_interval"),
            (Scope::Global, "process_control_timeout"),
            (Scope::Global, "emergency_restart_threshold"),
            (Scope::Global, "emergency_restart_interval"),
            (Scope::Global, "process.max"),
            (Scope::Pool, "request_terminate_timeout"),
            (Scope::Pool, "request_terminate_timeout_track_finished"),
            (Scope::Pool, "request_slowlog_timeout"),
            (Scope::Pool, "request_slowlog_trace_depth"),
            (Scope::Pool, "request_slowlog_trace_command"),
            (Scope::Pool, "slowlog"),
            (Scope::Pool, "access.log"),
            (Scope::Pool, "access.format"),
            (Scope::Pool, "access.suppress_path[]"),
            (Scope::Pool, "catch_workers_output"),
            (Scope::Pool, "decorate_workers_output"),
            // Isolation and php-fpm drop-in.
            (Scope::Global, "process.priority"),
            (Scope::Global, "rlimit_files"),
            (Scope::Global, "rlimit_core"),
            (Scope::Global, "proctitle_prefix"),
            (Scope::Pool, "user"),
            (Scope::Pool, "group"),
            (Scope::Pool, "listen.acl_users"),
            (Scope::Pool, "listen.acl_groups"),
            (Scope::Pool, "listen.allowed_clients"),
            (Scope::Pool, "process.priority"),
            (Scope::Pool, "process.dumpable"),
            (Scope::Pool, "rlimit_files"),
            (Scope::Pool, "rlimit_core"),
            (Scope::Pool, "chroot"),
            (Scope::Pool, "php_value[]"),
            (Scope::Pool, "php_flag[]"),
            (Scope::Pool, "php_admin_value[]"),
            (Scope::Pool, "php_admin_flag[]"),
            (Scope::Pool, "cgi.request_header_timeout"),
            (Scope::Pool, "cgi.held_output_limit"),
            (Scope::Pool, "request_queue_timeout"),
            // The master's own endpoint.
            (Scope::Global, "metrics.listen"),
            (Scope::Global, "metrics.allowed_clients"),
        ]
        .into_iter()
        .collect();
        assert_eq!(implemented, expected);
        let not_applicable: Vec<_> = DIRECTIVES
            .iter()
            .filter(|d| matches!(d.status, NotApplicable(_)))
            .map(|d| d.name)
            .collect();
        assert_eq!(not_applicable, ["listen.setfib"]);
    }

    #[test]
    fn lookup_by_scope_and_shape() {
        assert!(
            matches!(lookup("LISTEN", false, Scope::Pool), Lookup::Found(d) if d.name == "listen")
        );
        assert!(matches!(
            lookup("listen", false, Scope::Global),
            Lookup::OtherScope(Scope::Pool)
        ));
        assert!(matches!(
            lookup("pid", false, Scope::Pool),
            Lookup::OtherScope(Scope::Global)
        ));
        assert!(matches!(
            lookup("env", true, Scope::Global),
            Lookup::OtherScope(Scope::Pool)
        ));
        assert!(
            matches!(lookup("rlimit_files", false, Scope::Global), Lookup::Found(d) if d.scope == Scope::Global)
        );
        assert!(
            matches!(lookup("rlimit_files", false, Scope::Pool), Lookup::Found(d) if d.scope == Scope::Pool)
        );
        assert!(matches!(
            lookup("env", false, Scope::Pool),
            Lookup::WrongShape(_)
        ));
        assert!(matches!(
            lookup("listen", true, Scope::Pool),
            Lookup::WrongShape(_)
        ));
        assert!(matches!(lookup("foo", false, Scope::Pool), Lookup::Unknown));
        assert!(
            matches!(lookup("include", false, Scope::Pool), Lookup::Found(d) if matches!(d.apply, Apply::Include))
        );
    }

    #[test]
    fn env_entries() {
        let mut p = pool();
        apply(&mut p, "env", Some("PATH"), "/bin").unwrap();
        apply(&mut p, "env", Some("HOST"), "$HOSTNAME").unwrap();
        apply(&mut p, "env", Some("MISSING"), "$NOT_SET").unwrap();
        apply(&mut p, "env", Some("PATH"), "/usr/bin").unwrap();
        assert_eq!(
            p.env,
            vec![
                ("PATH".to_string(), "/usr/bin".to_string()),
                ("HOST".to_string(), "web1".to_string()),
                ("MISSING".to_string(), String::new()),
            ]
        );
        assert_eq!(
            apply(&mut p, "env", Some("X"), ""),
            Err("empty value".into())
        );
        assert!(
            apply(&mut p, "env", Some(""), "x")
                .unwrap_err()
                .contains("name is needed")
        );
    }

    #[test]
    fn php_settings() {
        let mut p = pool();
        apply(&mut p, "php_value", Some("memory_limit"), "32M").unwrap();
        apply(&mut p, "php_admin_flag", Some("log_errors"), "on").unwrap();
        apply(&mut p, "php_flag", Some("display_errors"), "off").unwrap();
        apply(&mut p, "php_value", Some("memory_limit"), "64M").unwrap();
        apply(&mut p, "php_admin_value", Some("memory_limit"), "128M").unwrap();
        let settings: Vec<_> = p
            .php_settings
            .iter()
            .map(|s| (s.name.as_str(), s.value.as_str(), s.admin))
            .collect();
        assert_eq!(
            settings,
            vec![
                ("memory_limit", "64M", false),
                ("log_errors", "1", true),
                ("display_errors", "0", false),
                ("memory_limit", "128M", true),
            ]
        );
        assert!(apply(&mut p, "php_flag", Some("x"), "maybe").is_err());
        assert!(apply(&mut p, "php_value", Some(""), "x").is_err());
    }

    #[test]
    fn fastcgi_apps_per_extension_and_for_the_whole_pool() {
        let mut p = pool();
        apply(&mut p, "cgi.fastcgi_app", Some(".php"), "/usr/bin/php-cgi").unwrap();
        apply(&mut p, "cgi.fastcgi_app", Some(".fcgi"), "/srv/a -x").unwrap();
        apply(
            &mut p,
            "cgi.fastcgi_app",
            Some(".php"),
            "/usr/bin/php-cgi8.2",
        )
        .unwrap();
        apply(&mut p, "cgi.fastcgi_app_max_requests", None, "500").unwrap();
        let php = std::path::Path::new("/srv/www/index.php");
        assert_eq!(
            p.fastcgi_app_for(php).unwrap().argv,
            ["/usr/bin/php-cgi8.2"]
        );
        assert!(
            p.fastcgi_app_for(std::path::Path::new("/x.php.txt"))
                .is_none()
        );
        assert!(p.fastcgi_app_for(std::path::Path::new(".php")).is_none());
        assert!(p.whole_pool_app().is_none());
        assert_eq!(p.cgi.fastcgi_app_max_requests, 500);
        apply(&mut p, "cgi.fastcgi_app", None, "/usr/bin/python3 app.py").unwrap();
        assert_eq!(
            p.whole_pool_app().unwrap().argv,
            ["/usr/bin/python3", "app.py"]
        );
        // The whole-pool app never answers for an extension.
        assert_eq!(p.fastcgi_app_for(php).unwrap().extension, ".php");
        assert!(apply(&mut p, "cgi.fastcgi_app", None, "python3").is_err());
        assert!(apply(&mut p, "cgi.fastcgi_app", Some("php"), "/x").is_err());
        assert!(apply(&mut p, "cgi.fastcgi_app", None, "").is_err());
        assert!(apply(&mut p, "cgi.fastcgi_app_max_requests", None, "-1").is_err());
    }

    #[test]
    fn interpreters() {
        let mut p = pool();
        apply(
            &mut p,
            "cgi.interpreter",
            Some(".php"),
            "/usr/bin/php-cgi -d x=1",
        )
        .unwrap();
        apply(
            &mut p,
            "cgi.interpreter",
            Some(".py"),
            r#"/usr/bin/env "python3" -u"#,
        )
        .unwrap();
        apply(
            &mut p,
            "cgi.interpreter",
            Some(".php"),
            "/usr/bin/php-cgi8.2",
        )
        .unwrap();
        let got: Vec<_> = p
            .cgi
            .interpreters
            .iter()
            .map(|i| (i.extension.as_str(), i.argv.join("|")))
            .collect();
        assert_eq!(
            got,
            vec![
                (".py", "/usr/bin/env|python3|-u".to_string()),
                (".php", "/usr/bin/php-cgi8.2".to_string())
            ]
        );
        let cases = [
            ("php", "/usr/bin/php-cgi", "must start with '.'"),
            ("", "/usr/bin/php-cgi", "must start with '.'"),
            (".php", "php-cgi", "must be an absolute path"),
            (".php", "", "a program is needed"),
            (".php", r#"/bin/x "open"#, "missing closing"),
        ];
        for (extension, value, expected) in cases {
            let error = apply(&mut p, "cgi.interpreter", Some(extension), value).unwrap_err();
            assert!(error.contains(expected), "{extension} {value}: {error}");
        }
    }

    #[test]
    fn suppress_paths() {
        let mut p = pool();
        apply(&mut p, "access.suppress_path", Some(""), "/ping").unwrap();
        apply(&mut p, "access.suppress_path", Some(""), "/health").unwrap();
        assert_eq!(p.access_suppress_path, vec!["/ping", "/health"]);
        assert!(
            apply(&mut p, "access.suppress_path", Some("x"), "/a")
                .unwrap_err()
                .contains("keys are not allowed")
        );
        assert!(
            apply(&mut p, "access.suppress_path", Some(""), "b")
                .unwrap_err()
                .contains("begin with '/'")
        );
    }

    #[test]
    fn scalar_setters_store_and_reject() {
        let mut p = pool();
        let good = [
            ("listen.setfib", "-1"),
            ("listen.backlog", "-1"),
            ("pm.status_listen", "127.0.0.1:9001"),
            ("cgi.allowed_roots", " /srv/a  /srv/b "),
            ("security.limit_extensions", ".cgi .pl"),
            ("user", ""),
        ];
        for (name, value) in good {
            apply(&mut p, name, None, value).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert_eq!(p.listen_setfib, None);
        assert_eq!(p.listen_backlog, -1);
        assert_eq!(
            p.cgi.allowed_roots,
            vec![std::path::PathBuf::from("/srv/a"), "/srv/b".into()]
        );
        assert_eq!(p.security_limit_extensions, vec![".cgi", ".pl"]);
        assert_eq!(p.user, None);
        let bad = [
            ("listen.backlog", "-2"),
            ("pm.max_children", "0"),
            ("pm.max_spawn_rate", "0"),
            ("process.priority", "21"),
            ("request_slowlog_trace_depth", "0"),
            ("listen.mode", "0999"),
            ("security.limit_extensions", "php"),
            ("cgi.stderr", "stdout"),
            ("cgi.request_header_timeout", "soon"),
            ("cgi.held_output_limit", "64 MB"),
            ("clear_env", "maybe"),
            ("access.format", "%x"),
            ("request_terminate_timeout", "1h30m"),
            ("request_queue_timeout", "2.5s"),
            ("rlimit_core", "-1"),
        ];
        for (name, value) in bad {
            assert!(
                apply(&mut p, name, None, value).is_err(),
                "{name} = {value}"
            );
        }
    }
}
