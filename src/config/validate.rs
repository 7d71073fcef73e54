//! The checks php-fpm makes once everything is read (fpm_conf.c `fpm_conf_process_all_pools`
//! and `fpm_conf_post_process`), path resolution, and our `cgi.*` checks. Every problem is
//! collected; nothing stops at the first.
//!
//! Relative paths (pid, error_log, listen sockets, access.log, slowlog, chroot, chdir,
//! cgi.allowed_roots) are taken from the pool's `prefix` when it has one, else from the `-p`
//! prefix when given, else from the directory of the main configuration file. php-fpm falls
//! back to its build prefix instead, which a separate program cannot share; the config file's
//! own directory is the one place a relative path can sensibly mean.

use super::ConfigError;
use super::load::{Draft, PoolDraft, error_at};
use super::model::{Config, ErrorLog, GlobalConfig, ListenAddress, PoolConfig, ProcessManager};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `sun_path` holds 108 bytes on Linux, one of them the terminating NUL.
const MAX_UNIX_SOCKET_PATH: usize = 107;

/// php-fpm's `FPM_BACKLOG_DEFAULT`, the least it accepts for ondemand pools.
const ONDEMAND_MIN_BACKLOG: i32 = 511;

/// Where a configuration came from and what its relative paths mean.
pub(super) struct Origin<'a> {
    pub main: &'a Path,
    pub prefix: Option<&'a Path>,
    /// Absolute: the prefix, or the main file's directory.
    pub base: &'a Path,
}

/// The checked configuration, or the errors together with the warnings found on the way
/// (`-t` shows both: a warning may explain an error).
pub(super) fn finish(
    draft: Draft,
    origin: &Origin,
) -> Result<Config, (Vec<ConfigError>, Vec<String>)> {
    let Draft {
        global,
        pools: pool_drafts,
        main_read,
        includes_missing,
        mut errors,
        mut warnings,
    } = draft;
    let global = resolve_global_paths(global, origin.base);
    // When an include failed, its error says what is wrong; "no pool" would mislead, since
    // the pools are usually in the files that could not be read.
    if pool_drafts.is_empty() && main_read && !includes_missing {
        errors.push(ConfigError {
            file: Some(origin.main.to_path_buf()),
            line: None,
            section: None,
            key: None,
            message: "No pool defined. at least one pool section must be specified in config file"
                .to_string(),
        });
    }
    let mut checked = Vec::new();
    for pool in pool_drafts {
        let mut checks = PoolChecks {
            pool,
            base: origin.base.to_path_buf(),
            errors: &mut errors,
            warnings: &mut warnings,
        };
        checks.run();
        let mut pool = checks.pool;
        let at = |l: &super::load::Location| format!("{}:{}", l.file.display(), l.line);
        let mut locations: std::collections::BTreeMap<String, String> = pool
            .seen
            .iter()
            .map(|(key, location)| (key.to_string(), at(location)))
            .collect();
        locations.insert(String::new(), at(&pool.opened_at));
        pool.config.locations = locations;
        checked.push(pool);
    }
    check_listen_conflicts(&checked, &mut errors);
    if let Some(metrics) = &global.metrics_listen {
        check_metrics_conflicts(&checked, metrics, &mut errors);
    }
    if !errors.is_empty() {
        return Err((errors, warnings));
    }
    Ok(Config {
        path: origin.main.to_path_buf(),
        prefix: origin.prefix.map(Path::to_path_buf),
        global,
        pools: checked.into_iter().map(|draft| draft.config).collect(),
        warnings,
    })
}

fn resolve_global_paths(mut global: GlobalConfig, base: &Path) -> GlobalConfig {
    global.pid = global.pid.map(|pid| base.join(pid));
    if let ErrorLog::File(file) = &global.error_log {
        global.error_log = ErrorLog::File(base.join(file));
    }
    global
}

struct PoolChecks<'a> {
    pool: PoolDraft,
    /// The pool's prefix once checked, else the configuration's base.
    base: PathBuf,
    errors: &'a mut Vec<ConfigError>,
    warnings: &'a mut Vec<String>,
}

impl PoolChecks<'_> {
    fn run(&mut self) {
        self.check_prefix();
        self.check_listen();
        self.check_process_manager();
        self.check_status_and_ping();
        self.check_logs();
        self.check_chroot();
        self.check_chdir();
        self.check_listen_permissions();
        self.check_cgi();
    }

    fn config(&mut self) -> &mut PoolConfig {
        &mut self.pool.config
    }

    fn is_set(&self, key: &str) -> bool {
        self.pool.seen.contains_key(key)
    }

    /// Set, or set to a value already reported as invalid.
    fn is_given(&self, key: &str) -> bool {
        self.is_set(key) || self.pool.rejected.contains(key)
    }

    fn fail(&mut self, key: &str, message: String) {
        let error = self.pool.error(key, message);
        self.errors.push(error);
    }

    fn warn(&mut self, key: &str, message: String) {
        let warning = self.pool.error(key, message);
        self.warnings.push(warning.to_string());
    }

    fn check_prefix(&mut self) {
        let Some(prefix) = self.pool.config.prefix.take() else {
            return;
        };
        let prefix = self.base.join(prefix);
        self.require_directory("prefix", "the prefix", &prefix);
        self.base = prefix.clone();
        self.config().prefix = Some(prefix);
    }

    fn check_listen(&mut self) {
        if !self.is_set("listen") {
            if !self.is_given("listen") {
                self.fail("listen", "no listen address has been defined".to_string());
            }
            return;
        }
        let listen = self.resolve_socket(&self.pool.config.listen.clone(), "listen");
        self.config().listen = listen;
        if let Some(status_listen) = self.pool.config.pm_status_listen.clone() {
            let status_listen = self.resolve_socket(&status_listen, "pm.status_listen");
            self.config().pm_status_listen = Some(status_listen);
        }
    }

    fn resolve_socket(&mut self, address: &ListenAddress, key: &str) -> ListenAddress {
        let ListenAddress::Unix(path) = address else {
            return address.clone();
        };
        let path = self.base.join(path);
        let length = path.as_os_str().as_bytes().len();
        if length > MAX_UNIX_SOCKET_PATH {
            let message = format!(
                "the unix socket path '{}' is too long ({length} bytes, at most {MAX_UNIX_SOCKET_PATH})",
                path.display()
            );
            self.fail(key, message);
        }
        // What the master would refuse at start, -t refuses too.
        if let Some(directory) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !directory.is_dir()
        {
            let message = format!(
                "cannot create the unix socket '{}': the directory '{}' does not exist",
                path.display(),
                directory.display()
            );
            self.fail(key, message);
        } else if let Ok(meta) = std::fs::symlink_metadata(&path)
            && !meta.file_type().is_socket()
        {
            let message = format!(
                "'{}' exists and is not a socket: refusing to replace it",
                path.display()
            );
            self.fail(key, message);
        }
        ListenAddress::Unix(path)
    }

    fn check_process_manager(&mut self) {
        if !self.is_given("pm") {
            let message = "the process manager is missing (static, dynamic or ondemand)";
            self.fail("pm", message.to_string());
        }
        if !self.is_set("pm.max_children") {
            if !self.is_given("pm.max_children") {
                let message = "is not set: it must be a positive value";
                self.fail("pm.max_children", message.to_string());
            }
            // The spare-server rules compare with it: checking them now would only mislead.
            return;
        }
        match self.pool.config.pm {
            ProcessManager::Static => {}
            ProcessManager::Dynamic => self.check_dynamic(),
            ProcessManager::Ondemand => self.check_ondemand(),
        }
    }

    fn check_dynamic(&mut self) {
        let config = &self.pool.config;
        let (max_children, min, max) = (
            config.pm_max_children,
            config.pm_min_spare_servers,
            config.pm_max_spare_servers,
        );
        let errors_before = self.errors.len();
        if min == 0 {
            let message = format!("pm.min_spare_servers({min}) must be a positive value");
            self.fail("pm.min_spare_servers", message);
        }
        if max == 0 {
            let message = format!("pm.max_spare_servers({max}) must be a positive value");
            self.fail("pm.max_spare_servers", message);
        }
        if min > max_children || max > max_children {
            let key = match min > max_children {
                true => "pm.min_spare_servers",
                false => "pm.max_spare_servers",
            };
            let message = format!(
                "pm.min_spare_servers({min}) and pm.max_spare_servers({max}) cannot be greater than pm.max_children({max_children})"
            );
            self.fail(key, message);
        }
        if max < min {
            let message = format!(
                "pm.max_spare_servers({max}) must not be less than pm.min_spare_servers({min})"
            );
            self.fail("pm.max_spare_servers", message);
        }
        if self.errors.len() > errors_before {
            return;
        }
        let start = self.pool.config.pm_start_servers;
        if start == 0 {
            self.config().pm_start_servers = min + (max - min) / 2;
        } else if start < min || start > max {
            let message = format!(
                "pm.start_servers({start}) must not be less than pm.min_spare_servers({min}) and not greater than pm.max_spare_servers({max})"
            );
            self.fail("pm.start_servers", message);
        }
    }

    fn check_ondemand(&mut self) {
        let idle_timeout = self.pool.config.pm_process_idle_timeout;
        if idle_timeout.is_zero() {
            let message = format!(
                "pm.process_idle_timeout({}s) must be greater than 0s",
                idle_timeout.as_secs()
            );
            self.fail("pm.process_idle_timeout", message);
        }
        // -1 asks the kernel for its maximum, which is not too low.
        let backlog = self.pool.config.listen_backlog;
        if (0..ONDEMAND_MIN_BACKLOG).contains(&backlog) {
            let message = format!(
                "listen.backlog({backlog}) was too low for the ondemand process manager; raised to {ONDEMAND_MIN_BACKLOG}"
            );
            self.warn("listen.backlog", message);
            self.config().listen_backlog = ONDEMAND_MIN_BACKLOG;
        }
        let config = self.config();
        config.pm_start_servers = 0;
        config.pm_min_spare_servers = 0;
        config.pm_max_spare_servers = 0;
    }

    fn check_status_and_ping(&mut self) {
        let has_status_listener = self.pool.config.pm_status_listen.is_some();
        if has_status_listener && self.pool.config.pm_status_path.is_none() {
            // php-fpm answers status on every path of the dedicated listener.
            self.config().pm_status_path = Some("/".to_string());
        }
        if let Some(path) = self.pool.config.pm_status_path.clone() {
            let min_length = if has_status_listener { 1 } else { 2 };
            if let Err(problem) = web_path_problem(&path, min_length) {
                self.fail(
                    "pm.status_path",
                    format!("the status path '{path}' {problem}"),
                );
            }
        }
        if let Some(path) = self.pool.config.ping_path.clone() {
            if let Err(problem) = web_path_problem(&path, 2) {
                self.fail("ping.path", format!("the ping path '{path}' {problem}"));
            }
            if self.pool.config.ping_response.is_empty() {
                let message = "the ping response page '' is not long enough".to_string();
                self.fail("ping.response", message);
            }
        }
    }

    fn check_logs(&mut self) {
        let base = self.base.clone();
        let config = self.config();
        config.access_log = config.access_log.as_ref().map(|log| base.join(log));
        config.slowlog = config.slowlog.as_ref().map(|log| base.join(log));
        let config = &self.pool.config;
        let (slowlog_timeout, terminate_timeout) = (
            config.request_slowlog_timeout,
            config.request_terminate_timeout,
        );
        let has_slowlog = config.slowlog.is_some();
        if !slowlog_timeout.is_zero() && !has_slowlog {
            let message = "'slowlog' must be specified for use with 'request_slowlog_timeout'";
            self.fail("request_slowlog_timeout", message.to_string());
        }
        if !terminate_timeout.is_zero() && slowlog_timeout > terminate_timeout {
            let message = format!(
                "'request_slowlog_timeout' ({}s) can't be greater than 'request_terminate_timeout' ({}s)",
                slowlog_timeout.as_secs(),
                terminate_timeout.as_secs()
            );
            self.fail("request_slowlog_timeout", message);
        }
        if self.is_set("request_slowlog_trace_depth") && !has_slowlog {
            let message = "'slowlog' must be specified for use with 'request_slowlog_trace_depth'";
            self.fail("request_slowlog_trace_depth", message.to_string());
        }
    }

    fn require_directory(&mut self, key: &str, what: &str, path: &Path) {
        if !path.is_dir() {
            let message = format!(
                "{what} '{}' does not exist or is not a directory",
                path.display()
            );
            self.fail(key, message);
        }
    }

    fn check_chroot(&mut self) {
        let Some(chroot) = self.pool.config.chroot.take() else {
            return;
        };
        match self.expand_prefix(&chroot) {
            Ok(chroot) => {
                self.require_directory("chroot", "the chroot path", &chroot);
                self.config().chroot = Some(chroot);
            }
            Err(message) => self.fail("chroot", message),
        }
    }

    /// Checked inside the chroot when there is one, where the workers will look for it.
    fn check_chdir(&mut self) {
        let Some(chdir) = self.pool.config.chdir.take() else {
            return;
        };
        let chdir = self.base.join(chdir);
        let inside = match &self.pool.config.chroot {
            Some(chroot) => chroot.join(chdir.strip_prefix("/").unwrap_or(&chdir)),
            None => chdir.clone(),
        };
        self.require_directory("chdir", "the chdir path", &inside);
        self.config().chdir = Some(chdir);
    }

    /// `chroot` may begin with `$prefix`, the pool's prefix (else the base).
    fn expand_prefix(&self, chroot: &Path) -> Result<PathBuf, String> {
        let text = chroot.as_os_str().as_bytes();
        const PREFIX: &[u8] = b"$prefix";
        match text
            .windows(PREFIX.len())
            .position(|window| window == PREFIX)
        {
            None => Ok(self.base.join(chroot)),
            Some(0) => {
                let rest = Path::new(std::ffi::OsStr::from_bytes(&text[PREFIX.len()..]));
                Ok(self.base.join(rest.strip_prefix("/").unwrap_or(rest)))
            }
            Some(_) => Err("'$prefix' must be used at the beginning of the value".to_string()),
        }
    }

    fn check_cgi(&mut self) {
        // php-fpm users turn on catch_workers_output to see their scripts' stderr in the
        // log; a CGI script's stderr is ours to route, so the switch means the same here.
        if self.pool.config.catch_workers_output && !self.is_set("cgi.stderr") {
            self.config().cgi.stderr = super::model::StderrMode::Log;
        }
        let roots = std::mem::take(&mut self.config().cgi.allowed_roots);
        if roots.is_empty() {
            let message =
                "cgi.allowed_roots is not set: any executable file the web server names can be run";
            let pool = &self.pool;
            let warning = error_at(
                &pool.opened_at,
                Some(&pool.config.name),
                None,
                message.into(),
            );
            self.warnings.push(warning.to_string());
        }
        let mut canonical_roots = Vec::new();
        for root in roots {
            let resolved = match self.pool.config.chroot.clone() {
                None => canonical_directory(&self.base.join(root)),
                // A missing chroot is reported already; its roots cannot be checked.
                Some(jail) if !jail.is_dir() => continue,
                Some(jail) => directory_inside(&jail, &root),
            };
            match resolved {
                Ok(RootCheck::Found(canonical)) => canonical_roots.push(canonical),
                Ok(RootCheck::Missing { path, shown }) => {
                    // As php-fpm is with its own paths at -t: a config checked on another
                    // host (or before deployment) is not wrong for a directory not made
                    // yet. The root stays in the list, so confinement never widens: a
                    // script matches it only from a real directory at exactly this path.
                    self.warn(
                        "cgi.allowed_roots",
                        format!(
                            "{shown} does not exist: no script runs from it until it does \
                             (at this very path, without symlinks)"
                        ),
                    );
                    canonical_roots.push(path);
                }
                Err(message) => self.fail("cgi.allowed_roots", message),
            }
        }
        self.config().cgi.allowed_roots = canonical_roots;
        self.check_interpreters_exist();
        self.check_php_settings();
        self.check_fastcgi_apps();
    }

    /// A whole-pool app takes every request, so an app per extension beside it could
    /// never run: that is a mistake worth stopping on.
    fn check_fastcgi_apps(&mut self) {
        let apps = &self.pool.config.cgi.fastcgi_apps;
        if apps.len() > 1 && apps.iter().any(|app| app.extension.is_empty()) {
            self.fail(
                "cgi.fastcgi_app",
                "a pool-wide cgi.fastcgi_app serves every request, so it cannot be combined \
                 with cgi.fastcgi_app[.ext]"
                    .to_string(),
            );
        }
        if self.pool.config.cgi.fastcgi_apps.is_empty()
            && self.pool.config.cgi.fastcgi_app_start == crate::config::AppStart::WorkerStart
        {
            self.warn(
                "cgi.fastcgi_app_start",
                "the pool has no cgi.fastcgi_app, so there is no app to start".to_string(),
            );
        }
    }

    /// php-fpm applies `php_value[]` and friends inside PHP; cgi-fpm hands them to php-cgi,
    /// so without a php-cgi interpreter they do nothing, which deserves a word.
    fn check_php_settings(&mut self) {
        let config = &self.pool.config;
        let cgi = &config.cgi;
        let php_cgi = cgi.interpreters.iter().chain(&cgi.fastcgi_apps);
        if config.php_settings.is_empty() || php_cgi.clone().any(|i| i.is_php_cgi()) {
            return;
        }
        let keys = [
            "php_admin_value[]",
            "php_value[]",
            "php_admin_flag[]",
            "php_flag[]",
        ];
        let key = keys
            .into_iter()
            .find(|key| self.is_set(key))
            .unwrap_or("php_value[]");
        let message = "php_value[], php_flag[], php_admin_value[] and php_admin_flag[] are passed \
                       to php-cgi only (as -d name=value), and no cgi.interpreter[] of this pool \
                       runs php-cgi; they have no effect"
            .to_string();
        self.warn(key, message);
    }

    /// What php-fpm says about socket settings it does not use, and one thing it does not
    /// say: allowed clients cannot be checked on a unix socket.
    fn check_listen_permissions(&mut self) {
        let config = &self.pool.config;
        let is_unix = matches!(config.listen, ListenAddress::Unix(_));
        let has_acl = config.listen_acl_users.is_some() || config.listen_acl_groups.is_some();
        if is_unix && has_acl {
            for (key, value) in [
                ("listen.owner", config.listen_owner.clone()),
                ("listen.group", config.listen_group.clone()),
            ] {
                if let Some(value) = value {
                    self.warn(key, format!("ACL set, {key} = '{value}' is ignored"));
                }
            }
        }
        if !self.pool.config.listen_allowed_clients.is_empty() && is_unix {
            let message = "applies to TCP sockets only; ignored on a unix socket, which the \
                           file's owner, group, mode and ACL protect instead";
            self.warn("listen.allowed_clients", message.to_string());
        }
    }

    /// A missing interpreter only fails requests, so it is a warning. In a chroot it is
    /// looked for inside the jail (symbolic links there are followed as seen from outside,
    /// so this is a good guess, not a proof).
    fn check_interpreters_exist(&mut self) {
        let jail = self.pool.config.chroot.clone();
        let missing: Vec<(String, String)> = self
            .pool
            .config
            .cgi
            .interpreters
            .iter()
            .chain(&self.pool.config.cgi.fastcgi_apps)
            .filter_map(|interpreter| {
                let program = interpreter.argv.first()?;
                let seen_from_here = match &jail {
                    Some(jail) => jail.join(program.trim_start_matches('/')),
                    None => PathBuf::from(program),
                };
                let missing = !is_executable_file(&seen_from_here);
                missing.then(|| (interpreter.extension.clone(), program.clone()))
            })
            .collect();
        let inside = match &jail {
            Some(jail) => format!(" inside the chroot '{}'", jail.display()),
            None => String::new(),
        };
        for (extension, program) in missing {
            let message = format!(
                "the interpreter '{program}' for '{extension}' does not exist{inside} or is not executable"
            );
            self.warn("cgi.interpreter[]", message);
        }
    }
}

/// An allowed root outside a chroot: the canonical directory.
/// An allowed root as checked at load.
#[derive(Debug)]
enum RootCheck {
    /// Its canonical path (as the workers see it).
    Found(PathBuf),
    /// It does not exist (yet): `path` is where it would be, as the workers would see it,
    /// `shown` what to name in the warning.
    Missing { path: PathBuf, shown: String },
}

/// Where a path that does not exist would be: its deepest existing ancestor made
/// canonical, and the missing rest appended as written (only `.` dropped). A `..` in the
/// missing rest cannot be resolved without the directories it climbs from, and a guess
/// could widen the root (`/missing/..` is not `/`), so it is refused.
fn where_missing_would_be(path: &Path) -> Result<PathBuf, String> {
    let mut existing = path;
    let mut missing = Vec::new();
    let canonical = loop {
        match existing.canonicalize() {
            Ok(canonical) => break canonical,
            Err(_) => match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    missing.push(name);
                    existing = parent;
                }
                // `..` as the last part has no file name: not resolvable here.
                _ => {
                    return Err(format!(
                        "'{}' does not exist, and a missing root may not contain '..'",
                        path.display()
                    ));
                }
            },
        }
    };
    let mut plain = canonical;
    for name in missing.into_iter().rev() {
        plain.push(name);
    }
    Ok(plain)
}

fn canonical_directory(root: &Path) -> Result<RootCheck, String> {
    match root.canonicalize() {
        Ok(canonical) if canonical.is_dir() => Ok(RootCheck::Found(canonical)),
        Ok(_) => Err(format!("'{}' is not a directory", root.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(RootCheck::Missing {
            path: where_missing_would_be(root)?,
            shown: format!("'{}'", root.display()),
        }),
        Err(error) => Err(format!("'{}': {error}", root.display())),
    }
}

/// An allowed root of a chroot pool, as the workers will see it once inside the jail:
/// `root` is taken inside `jail`, resolved there, and must stay there.
fn directory_inside(jail: &Path, root: &Path) -> Result<RootCheck, String> {
    let describe = |what: &str| {
        format!(
            "'{}' (inside the chroot '{}'){what}",
            root.display(),
            jail.display()
        )
    };
    let jail = jail
        .canonicalize()
        .map_err(|error| describe(&format!(" cannot be checked: {error}")))?;
    let seen_from_here = jail.join(root.strip_prefix("/").unwrap_or(root));
    let canonical = match seen_from_here.canonicalize() {
        Ok(canonical) => canonical,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let would_be = where_missing_would_be(&seen_from_here).map_err(|_| {
                describe(" does not exist, and a missing root may not contain '..'")
            })?;
            let inside = would_be
                .strip_prefix(&jail)
                .map_err(|_| describe(" leads out of the chroot"))?;
            return Ok(RootCheck::Missing {
                path: Path::new("/").join(inside),
                shown: describe(""),
            });
        }
        Err(error) => return Err(describe(&format!(": {error}"))),
    };
    if !canonical.is_dir() {
        return Err(describe(" is not a directory"));
    }
    let inside = canonical
        .strip_prefix(&jail)
        .map_err(|_| describe(" leads out of the chroot"))?;
    Ok(RootCheck::Found(Path::new("/").join(inside)))
}

fn is_executable_file(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// php-fpm's rules for `pm.status_path` and `ping.path`.
fn web_path_problem(path: &str, min_length: usize) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("must start with a '/'");
    }
    if path.len() < min_length {
        return Err("is not long enough");
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "/_-.~".contains(c);
    if !path.chars().all(allowed) {
        return Err("must contain only the following characters '[alphanum]/_-.~'");
    }
    Ok(())
}

/// php-fpm refuses two pools on one address; we also refuse addresses that cannot both be
/// bound (`9000` and `127.0.0.1:9000`, `0.0.0.0:9000` and `127.0.0.1:9000`). A pool's
/// `pm.status_listen` counts as an address of its own.
fn check_listen_conflicts(pools: &[PoolDraft], errors: &mut Vec<ConfigError>) {
    let endpoints: Vec<(&PoolDraft, &str, &ListenAddress)> = pools
        .iter()
        .filter(|pool| pool.seen.contains_key("listen"))
        .flat_map(|pool| {
            let status = pool.config.pm_status_listen.iter();
            std::iter::once((pool, "listen", &pool.config.listen))
                .chain(status.map(move |address| (pool, "pm.status_listen", address)))
        })
        .collect();
    for (index, &(pool, key, address)) in endpoints.iter().enumerate() {
        let earlier = endpoints[..index]
            .iter()
            .find(|(_, _, other)| addresses_overlap(address, other));
        if let Some(&(other_pool, _, other_address)) = earlier {
            let other_name = &other_pool.config.name;
            let message = if address == other_address {
                format!(
                    "unable to set listen address as it's already used in another pool '{other_name}'"
                )
            } else {
                format!("'{address}' overlaps '{other_address}' of pool '{other_name}'")
            };
            errors.push(pool.error(key, message));
        }
    }
}

/// The master's own endpoint cannot share an address with a pool.
fn check_metrics_conflicts(
    pools: &[PoolDraft],
    metrics: &ListenAddress,
    errors: &mut Vec<ConfigError>,
) {
    for pool in pools.iter().filter(|pool| pool.seen.contains_key("listen")) {
        let addresses = std::iter::once(("listen", &pool.config.listen)).chain(
            pool.config
                .pm_status_listen
                .iter()
                .map(|a| ("pm.status_listen", a)),
        );
        for (key, address) in addresses {
            if addresses_overlap(address, metrics) {
                let message = format!("'{address}' overlaps metrics.listen '{metrics}'");
                errors.push(pool.error(key, message));
            }
        }
    }
}

fn addresses_overlap(a: &ListenAddress, b: &ListenAddress) -> bool {
    use ListenAddress::{AnyPort, Tcp, Unix};
    match (a, b) {
        (Unix(a), Unix(b)) => a == b,
        (AnyPort(a), AnyPort(b)) => a == b,
        (AnyPort(port), Tcp(address)) | (Tcp(address), AnyPort(port)) => address.port() == *port,
        (Tcp(a), Tcp(b)) => {
            let same_family = a.is_ipv4() == b.is_ipv4();
            a.port() == b.port()
                && (a.ip() == b.ip()
                    || (same_family && (a.ip().is_unspecified() || b.ip().is_unspecified())))
        }
        _ => false,
    }
}
