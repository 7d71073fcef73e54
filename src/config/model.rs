//! The effective configuration: what the loader produces and every other module reads.
//!
//! Field names follow php-fpm's directive names (dots become underscores). Defaults are
//! php-fpm's unless a comment says otherwise. Values are already validated and resolved
//! (durations parsed, `$pool` substituted, paths made absolute against the prefix).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest log entry before it is cut. php-fpm's default is 1024, and it wraps longer
/// entries into several lines, which breaks log parsers (php-src#9010); ours keeps every
/// entry on one line and cuts only past 1 MiB.
pub const DEFAULT_LOG_LIMIT: usize = 1 << 20;

/// php-fpm's default `access.format`.
pub const DEFAULT_ACCESS_FORMAT: &str = "%R - %u %t \"%m %r\" %s";

/// The whole configuration, as loaded from the main file and its includes.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The main configuration file, as given (`-y`) or defaulted.
    pub path: PathBuf,
    /// `-p/--prefix`, if given: the base for relative paths in the config.
    pub prefix: Option<PathBuf>,
    pub global: GlobalConfig,
    /// Pools in the order they first appear.
    pub pools: Vec<PoolConfig>,
    /// Non-fatal findings, each one line, already carrying file/section/key context
    /// (e.g. "[pool www] 'pm.status_path' is not implemented yet; ignored").
    pub warnings: Vec<String>,
}

/// Severity of log messages, php-fpm's `log_level` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Notice,
    Warning,
    Error,
    Alert,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Notice => "notice",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
            LogLevel::Alert => "alert",
        }
    }
}

/// Where the error log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorLog {
    /// Standard error of the master. Our default when `error_log` is unset, so that a
    /// foreground or systemd-run master logs somewhere visible; php-fpm defaults to
    /// `log/php-fpm.log` under its prefix instead.
    Stderr,
    File(PathBuf),
    Syslog,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GlobalConfig {
    pub pid: Option<PathBuf>,
    pub error_log: ErrorLog,
    /// Default `daemon`.
    pub syslog_facility: String,
    /// Default `cgi-fpm`.
    pub syslog_ident: String,
    /// Default notice.
    pub log_level: LogLevel,
    /// Default [`DEFAULT_LOG_LIMIT`] (minimum 512).
    pub log_limit: usize,
    /// Default yes.
    pub log_buffering: bool,
    /// Default 0 (off).
    pub emergency_restart_threshold: u32,
    /// Default 0 (off).
    pub emergency_restart_interval: Duration,
    /// Default 0.
    pub process_control_timeout: Duration,
    /// Default 0 (no limit).
    pub process_max: u32,
    pub process_priority: Option<i32>,
    /// php-fpm's default is yes.
    pub daemonize: bool,
    pub rlimit_files: Option<u64>,
    pub rlimit_core: Option<RlimitCore>,
    pub events_mechanism: Option<String>,
    /// Default 10 s; 0 disables.
    pub systemd_interval: Duration,
    /// Prefix of the process titles; unset means `cgi-fpm`.
    pub proctitle_prefix: Option<String>,
    /// `metrics.listen`: where the master itself answers `/metrics`, `/status` and `/ping`
    /// over HTTP; unset, it does not listen.
    pub metrics_listen: Option<ListenAddress>,
    /// `metrics.allowed_clients`: TCP peers let in; empty means any.
    pub metrics_allowed_clients: Vec<std::net::IpAddr>,
}

impl Default for GlobalConfig {
    fn default() -> Self {
        GlobalConfig {
            pid: None,
            error_log: ErrorLog::Stderr,
            syslog_facility: "daemon".to_string(),
            syslog_ident: "cgi-fpm".to_string(),
            log_level: LogLevel::Notice,
            log_limit: DEFAULT_LOG_LIMIT,
            log_buffering: true,
            emergency_restart_threshold: 0,
            emergency_restart_interval: Duration::ZERO,
            process_control_timeout: Duration::ZERO,
            process_max: 0,
            process_priority: None,
            daemonize: true,
            rlimit_files: None,
            rlimit_core: None,
            events_mechanism: None,
            systemd_interval: Duration::from_secs(10),
            proctitle_prefix: None,
            metrics_listen: None,
            metrics_allowed_clients: Vec::new(),
        }
    }
}

/// `rlimit_core`: a number of bytes or `unlimited`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RlimitCore {
    Unlimited,
    Bytes(u64),
}

/// A listening address in php-fpm's forms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddress {
    /// `/path/to/socket` (anything that is neither `host:port` nor all digits).
    Unix(PathBuf),
    /// `ip:port`, `[ipv6]:port`, `host:port` (resolved at load time) or `*:port`.
    Tcp(SocketAddr),
    /// A bare `port`: every address, IPv6 and IPv4-mapped where IPv6 is available.
    AnyPort(u16),
}

impl std::fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddress::Unix(p) => write!(f, "{}", p.display()),
            ListenAddress::Tcp(a) => write!(f, "{a}"),
            ListenAddress::AnyPort(p) => write!(f, "{p}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessManager {
    Static,
    Dynamic,
    Ondemand,
}

impl ProcessManager {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessManager::Static => "static",
            ProcessManager::Dynamic => "dynamic",
            ProcessManager::Ondemand => "ondemand",
        }
    }
}

/// `cgi.stderr`: where a CGI child's standard error goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StderrMode {
    /// As FCGI_STDERR records to the web server (default; nginx logs them).
    Fastcgi,
    /// To the error log, one entry per line.
    Log,
    Both,
    Discard,
}

impl StderrMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StderrMode::Fastcgi => "fastcgi",
            StderrMode::Log => "log",
            StderrMode::Both => "both",
            StderrMode::Discard => "discard",
        }
    }
}

/// `cgi.fastcgi_app_start`: when a worker starts its resident FastCGI apps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppStart {
    /// On the first request that needs the app (default): a worker that never serves
    /// one costs no app.
    FirstUse,
    /// As soon as the worker starts, so that its first request does not wait for the
    /// app's start (php-cgi takes tens of milliseconds, a big WSGI app seconds).
    WorkerStart,
}

impl AppStart {
    pub fn as_str(self) -> &'static str {
        match self {
            AppStart::FirstUse => "first_use",
            AppStart::WorkerStart => "worker_start",
        }
    }
}

/// One `cgi.interpreter[.EXT] = program args...` mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpreter {
    /// The extension with its leading dot, as written (`.php`); matched case-sensitively.
    pub extension: String,
    /// The program and its fixed arguments; the script path is appended at spawn time.
    pub argv: Vec<String>,
}

impl Interpreter {
    /// Whether this interpreter is PHP's CGI binary, which takes the pool's `php_value[]`
    /// and friends as `-d name=value`. Decided on the program's file name alone (or on the
    /// program `/usr/bin/env` is told to run): it begins with `php` and contains `cgi`
    /// (`php-cgi`, `php-cgi8.2`, `php5-cgi`), or it begins with `php` and sits in a
    /// `cgi-bin` directory (Debian's `/usr/lib/cgi-bin/php8.2`). The PHP command-line
    /// binary `php` does not count: it writes no CGI headers.
    pub fn is_php_cgi(&self) -> bool {
        let mut words = self.argv.iter().map(Path::new);
        let Some(mut program) = words.next() else {
            return false;
        };
        if program.file_name().is_some_and(|name| name == "env") {
            // `env [-i] [NAME=value]... program`: the first word that is neither.
            let Some(run) = words.find(|word| {
                let text = word.as_os_str().as_bytes();
                !text.starts_with(b"-") && !text.contains(&b'=')
            }) else {
                return false;
            };
            program = run;
        }
        let Some(name) = program.file_name().map(|name| name.as_bytes()) else {
            return false;
        };
        let in_cgi_bin = program
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|directory| directory == "cgi-bin");
        name.starts_with(b"php") && (in_cgi_bin || name.windows(3).any(|part| part == b"cgi"))
    }
}

/// One client that declares a body and never sends it must not fill the disk; 64 MiB holds
/// any page and most downloads a script makes before it has read its input.
pub const DEFAULT_HELD_OUTPUT_LIMIT: u64 = 64 << 20;

/// The `cgi.*` directives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgiConfig {
    pub interpreters: Vec<Interpreter>,
    /// `cgi.fastcgi_app[.EXT]` (and `cgi.fastcgi_app`, whose extension is empty): commands
    /// run as resident FastCGI applications, one per worker, instead of a CGI child per
    /// request.
    pub fastcgi_apps: Vec<Interpreter>,
    /// `cgi.fastcgi_app_max_requests`: restart an app after this many requests; 0 never.
    pub fastcgi_app_max_requests: u64,
    /// `cgi.fastcgi_app_start`.
    pub fastcgi_app_start: AppStart,
    /// Canonical directories scripts must lie under; empty means anywhere.
    pub allowed_roots: Vec<PathBuf>,
    pub stderr: StderrMode,
    /// `cgi.request_header_timeout`: how long the web server may take to send a request's
    /// head (BEGIN_REQUEST and the params) on a new connection, or once a kept connection
    /// has started one. Zero: no limit.
    pub request_header_timeout: Duration,
    /// `cgi.held_output_limit`: how much of a script's output may be held back (in memory
    /// and then a temporary file) while the request body is still arriving; past it the
    /// script's output is not read, so it blocks. Zero: no limit.
    pub held_output_limit: u64,
}

/// `php_value[]`, `php_flag[]`, `php_admin_value[]`, `php_admin_flag[]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhpSetting {
    pub name: String,
    pub value: String,
    pub admin: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub prefix: Option<PathBuf>,
    pub user: Option<String>,
    pub group: Option<String>,

    pub listen: ListenAddress,
    /// Default 511.
    pub listen_backlog: i32,
    pub listen_owner: Option<String>,
    pub listen_group: Option<String>,
    /// Default 0o660.
    pub listen_mode: u32,
    pub listen_acl_users: Option<String>,
    pub listen_acl_groups: Option<String>,
    /// Empty means any client.
    pub listen_allowed_clients: Vec<std::net::IpAddr>,
    /// FreeBSD routing table (`SO_SETFIB`); unset means the default table.
    pub listen_setfib: Option<u32>,

    pub process_priority: Option<i32>,
    /// Default no.
    pub process_dumpable: bool,

    pub pm: ProcessManager,
    pub pm_max_children: u32,
    pub pm_start_servers: u32,
    pub pm_min_spare_servers: u32,
    pub pm_max_spare_servers: u32,
    /// Default 32.
    pub pm_max_spawn_rate: u32,
    /// Default 10 s.
    pub pm_process_idle_timeout: Duration,
    /// Default 0 (no limit).
    pub pm_max_requests: u64,
    pub pm_status_path: Option<String>,
    pub pm_status_listen: Option<ListenAddress>,
    pub ping_path: Option<String>,
    /// Default `pong`.
    pub ping_response: String,

    pub access_log: Option<PathBuf>,
    /// Default `%R - %u %t "%m %r" %s`.
    pub access_format: String,
    pub access_suppress_path: Vec<String>,

    pub slowlog: Option<PathBuf>,
    pub request_slowlog_timeout: Duration,
    /// Default 20.
    pub request_slowlog_trace_depth: u32,
    /// Our directive: a command run on a slow request, `%p` replaced by the CGI child's pid.
    pub request_slowlog_trace_command: Option<String>,
    pub request_terminate_timeout: Duration,
    pub request_terminate_timeout_track_finished: bool,
    /// Ours: how long a request may wait for a worker of a full pool before the master
    /// answers it 503 (0: it waits as long as the web server lets it).
    pub request_queue_timeout: Duration,

    pub rlimit_files: Option<u64>,
    pub rlimit_core: Option<RlimitCore>,
    pub chroot: Option<PathBuf>,
    pub chdir: Option<PathBuf>,
    /// Default no.
    pub catch_workers_output: bool,
    /// Default yes.
    pub decorate_workers_output: bool,
    /// Default yes.
    pub clear_env: bool,
    /// `env[NAME] = value` in file order, later duplicates replacing earlier ones; `$VAR`
    /// values already taken from the master's environment.
    pub env: Vec<(String, String)>,
    /// Extensions with their leading dot; empty means any. php-fpm's default is `.php .phar`;
    /// ours is empty (any), since CGI scripts come in every language.
    pub security_limit_extensions: Vec<String>,
    pub php_settings: Vec<PhpSetting>,
    /// AppArmor hat to change to in the workers.
    pub apparmor_hat: Option<String>,
    pub cgi: CgiConfig,
    /// Where each directive was last set (`file:line`), and the pool's section under
    /// `""`: for errors found only after loading (unknown user, root without -R).
    pub locations: BTreeMap<String, String>,
}

impl PoolConfig {
    /// `[file:line] ` of the line that set `key`, else of the pool's section; empty for a
    /// pool built in code.
    pub fn location_of(&self, key: &str) -> String {
        self.locations
            .get(key)
            .or_else(|| self.locations.get(""))
            .map(|at| format!("[{at}] "))
            .unwrap_or_default()
    }

    /// A pool with every default as the loader applies it: `pm = static` with one worker,
    /// no limits, logs or checks. Meant for tests and for building pools in code.
    pub fn new(name: &str, listen: ListenAddress) -> Self {
        PoolConfig {
            name: name.to_string(),
            prefix: None,
            user: None,
            group: None,
            listen,
            listen_backlog: 511,
            listen_owner: None,
            listen_group: None,
            listen_mode: 0o660,
            listen_acl_users: None,
            listen_acl_groups: None,
            listen_allowed_clients: Vec::new(),
            listen_setfib: None,
            process_priority: None,
            process_dumpable: false,
            pm: ProcessManager::Static,
            pm_max_children: 1,
            pm_start_servers: 0,
            pm_min_spare_servers: 0,
            pm_max_spare_servers: 0,
            pm_max_spawn_rate: 32,
            pm_process_idle_timeout: Duration::from_secs(10),
            pm_max_requests: 0,
            pm_status_path: None,
            pm_status_listen: None,
            ping_path: None,
            ping_response: "pong".to_string(),
            access_log: None,
            access_format: DEFAULT_ACCESS_FORMAT.to_string(),
            access_suppress_path: Vec::new(),
            slowlog: None,
            request_slowlog_timeout: Duration::ZERO,
            request_slowlog_trace_depth: 20,
            request_slowlog_trace_command: None,
            request_terminate_timeout: Duration::ZERO,
            request_terminate_timeout_track_finished: false,
            request_queue_timeout: Duration::ZERO,
            rlimit_files: None,
            rlimit_core: None,
            chroot: None,
            chdir: None,
            catch_workers_output: false,
            decorate_workers_output: true,
            clear_env: true,
            env: Vec::new(),
            security_limit_extensions: Vec::new(),
            php_settings: Vec::new(),
            apparmor_hat: None,
            cgi: CgiConfig {
                interpreters: Vec::new(),
                fastcgi_apps: Vec::new(),
                fastcgi_app_max_requests: 0,
                fastcgi_app_start: AppStart::FirstUse,
                allowed_roots: Vec::new(),
                stderr: StderrMode::Fastcgi,
                request_header_timeout: Duration::from_secs(30),
                held_output_limit: DEFAULT_HELD_OUTPUT_LIMIT,
            },
            locations: BTreeMap::new(),
        }
    }

    /// Whether `security.limit_extensions` lets `script` run: it must end with one of the
    /// extensions and be longer than it, as php-fpm compares them. An empty list allows any.
    pub fn limits_extension_ok(&self, script: &Path) -> bool {
        let script = script.as_os_str().as_bytes();
        self.security_limit_extensions.is_empty()
            || self.security_limit_extensions.iter().any(|extension| {
                script.len() > extension.len() && script.ends_with(extension.as_bytes())
            })
    }

    /// `cgi.fastcgi_app` without an extension: the app that takes every request of the
    /// pool as it came, without script resolution.
    pub fn whole_pool_app(&self) -> Option<&Interpreter> {
        self.cgi
            .fastcgi_apps
            .iter()
            .find(|app| app.extension.is_empty())
    }

    /// The `cgi.fastcgi_app[.EXT]` for `script`, by the longest matching extension, as for
    /// interpreters. A resident app wins over a `cgi.interpreter[]` of the same script.
    pub fn fastcgi_app_for(&self, script: &Path) -> Option<&Interpreter> {
        let script = script.as_os_str().as_bytes();
        self.cgi
            .fastcgi_apps
            .iter()
            .filter(|app| {
                !app.extension.is_empty()
                    && script.len() > app.extension.len()
                    && script.ends_with(app.extension.as_bytes())
            })
            .max_by_key(|app| app.extension.len())
    }

    /// The `cgi.interpreter[]` mapping for `script`, by the longest matching extension
    /// (so `.tar.gz` wins over `.gz`); `None` means the script is run itself.
    pub fn interpreter_for(&self, script: &Path) -> Option<&Interpreter> {
        let script = script.as_os_str().as_bytes();
        self.cgi
            .interpreters
            .iter()
            .filter(|interpreter| {
                script.len() > interpreter.extension.len()
                    && script.ends_with(interpreter.extension.as_bytes())
            })
            .max_by_key(|interpreter| interpreter.extension.len())
    }
}
