//! `load` end to end: real files in a temporary directory, includes, every error and warning
//! as the user reads it.

use super::*;
use std::fs;
use std::net::SocketAddr;
use std::time::Duration;

struct Files {
    dir: tempfile::TempDir,
}

fn fake_env(name: &str) -> Option<String> {
    match name {
        "POOL_USER" => Some("www-data".to_string()),
        "HOSTNAME" => Some("web1".to_string()),
        "PORT" => Some("9100".to_string()),
        _ => None,
    }
}

impl Files {
    fn new() -> Files {
        match tempfile::tempdir() {
            Ok(dir) => Files { dir },
            Err(error) => panic!("cannot make a temporary directory: {error}"),
        }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// The directory's canonical path, as `cgi.allowed_roots` reports it.
    fn root(&self) -> PathBuf {
        self.dir.path().canonicalize().unwrap_or_default()
    }

    fn write(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.path(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{}: {e}", parent.display()));
        }
        fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }

    fn mkdir(&self, relative: &str) -> PathBuf {
        let path = self.path(relative);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }

    fn load(&self, main: &str) -> Result<Config, Vec<ConfigError>> {
        load_with_env(&self.path(main), None, &fake_env)
    }

    fn load_with_prefix(&self, main: &str, prefix: &str) -> Result<Config, Vec<ConfigError>> {
        load_with_env(&self.path(main), Some(&self.path(prefix)), &fake_env)
    }

    fn loaded(&self, main: &str) -> Config {
        self.load(main)
            .unwrap_or_else(|errors| panic!("{}", joined(&errors)))
    }

    /// The errors of a load that must fail, one per line, with the temp dir shown as `DIR`.
    fn errors(&self, main: &str) -> Vec<String> {
        match self.load(main) {
            Ok(config) => panic!("loaded although it should fail: {config:#?}"),
            Err(errors) => errors
                .iter()
                .map(|e| self.relative(&e.to_string()))
                .collect(),
        }
    }

    /// As [`Files::errors`], each starting at its section: for checks that are about pools,
    /// not lines.
    fn errors_without_files(&self, main: &str) -> Vec<String> {
        self.errors(main)
            .into_iter()
            .map(|error| match error.split_once("] [") {
                Some((_, rest)) => format!("[{rest}"),
                None => error,
            })
            .collect()
    }

    fn relative(&self, text: &str) -> String {
        text.replace(&self.dir.path().display().to_string(), "DIR")
    }

    fn warnings(&self, config: &Config) -> Vec<String> {
        config.warnings.iter().map(|w| self.relative(w)).collect()
    }
}

fn joined(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A pool that passes every check, to which a test adds its own lines.
fn pool_with(name: &str, listen: &str, extra: &str) -> String {
    format!(
        "[{name}]\nlisten = {listen}\npm = static\npm.max_children = 2\ncgi.allowed_roots = /\n{extra}"
    )
}

const MAIN: &str = "\
;;;;;;;;;;;;;;;;;;;;;
; FPM Configuration ;
;;;;;;;;;;;;;;;;;;;;;

; Relative paths are relative to this file's directory, or to -p when given.

[global]
; Pid file
; Default Value: none
pid = run/cgi-fpm.pid

; Error log file
error_log = log/cgi-fpm.log

; Log level
; Possible Values: alert, error, warning, notice, debug
log_level = Warning

;;;;;;;;;;;;;;;;;;;;
; Pool Definitions ;
;;;;;;;;;;;;;;;;;;;;

include=pool.d/*.conf
";

const WWW: &str = r#"; Start a new pool named 'www'.
[www]
user = ${POOL_USER}
group = ${POOL_USER}

; The address on which to accept FastCGI requests.
listen = run/$pool.sock
listen.owner = www-data
listen.group = www-data
listen.mode = 0660

pm = static
pm.max_children = 5

chdir = /
clear_env = no

; Pass environment variables; $VARIABLEs are taken from the current environment.
env[HOSTNAME] = $HOSTNAME
env[PATH] = /usr/local/bin:/usr/bin:/bin
env[TMP] = "/tmp"

security.limit_extensions = .cgi .pl .sh
cgi.interpreter[.pl] = /usr/bin/env perl -T
cgi.interpreter[.sh] = /bin/sh
cgi.allowed_roots = docroot
cgi.stderr = log

php_admin_value[error_log] = /var/log/fpm-php.$pool.log
php_flag[display_errors] = off
"#;

const API: &str = r#"[api]
listen = 127.0.0.1:${PORT}
pm = dynamic
pm.max_children = 10
pm.min_spare_servers = 2
pm.max_spare_servers = 6
access.log = log/$pool.access.log
access.format = "%R - %u %t \"%m %r%Q%q\" %s %f %{mili}d %{kilo}M %C%%"
cgi.allowed_roots = docroot
"#;

fn realistic() -> Files {
    let files = Files::new();
    files.write("cgi-fpm.conf", MAIN);
    files.write("pool.d/www.conf", WWW);
    files.write("pool.d/api.conf", API);
    files.write("pool.d/README", "not a pool: the glob does not match it\n");
    files.mkdir("pool.d/old.conf");
    files.mkdir("docroot");
    files.mkdir("run");
    files
}

#[test]
fn realistic_configuration_loads() {
    let files = realistic();
    let config = files.loaded("cgi-fpm.conf");
    let dir = files.dir.path();
    assert_eq!(config.path, files.path("cgi-fpm.conf"));
    assert_eq!(config.prefix, None);
    assert_eq!(config.global.pid, Some(dir.join("run/cgi-fpm.pid")));
    assert_eq!(
        config.global.error_log,
        ErrorLog::File(dir.join("log/cgi-fpm.log"))
    );
    assert_eq!(config.global.log_level, LogLevel::Warning);

    let names: Vec<_> = config.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["api", "www"], "includes are read in sorted order");
    let (api, www) = (&config.pools[0], &config.pools[1]);

    assert_eq!(www.user.as_deref(), Some("www-data"));
    assert_eq!(www.listen, ListenAddress::Unix(dir.join("run/www.sock")));
    assert_eq!(www.listen_owner.as_deref(), Some("www-data"));
    assert_eq!(www.listen_mode, 0o660);
    assert_eq!(www.listen_backlog, 511);
    assert_eq!(www.pm, ProcessManager::Static);
    assert_eq!(www.pm_max_children, 5);
    assert_eq!(www.chdir, Some(PathBuf::from("/")));
    assert!(!www.clear_env);
    assert_eq!(
        www.env,
        [
            ("HOSTNAME".to_string(), "web1".to_string()),
            (
                "PATH".to_string(),
                "/usr/local/bin:/usr/bin:/bin".to_string()
            ),
            ("TMP".to_string(), "/tmp".to_string()),
        ]
    );
    assert_eq!(www.security_limit_extensions, [".cgi", ".pl", ".sh"]);
    let interpreters: Vec<_> = www
        .cgi
        .interpreters
        .iter()
        .map(|i| (i.extension.as_str(), i.argv.join(" ")))
        .collect();
    assert_eq!(
        interpreters,
        [
            (".pl", "/usr/bin/env perl -T".to_string()),
            (".sh", "/bin/sh".to_string())
        ]
    );
    assert_eq!(www.cgi.allowed_roots, [files.root().join("docroot")]);
    assert_eq!(www.cgi.stderr, StderrMode::Log);
    assert_eq!(
        www.php_settings,
        [
            PhpSetting {
                name: "error_log".into(),
                value: "/var/log/fpm-php.www.log".into(),
                admin: true
            },
            PhpSetting {
                name: "display_errors".into(),
                value: "0".into(),
                admin: false
            },
        ]
    );

    let api_address: SocketAddr = "127.0.0.1:9100".parse().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(api.listen, ListenAddress::Tcp(api_address));
    assert_eq!(api.pm, ProcessManager::Dynamic);
    assert_eq!(api.pm_start_servers, 4, "min + (max - min) / 2");
    assert_eq!(api.access_log, Some(dir.join("log/api.access.log")));
    assert_eq!(
        api.access_format,
        r#"%R - %u %t "%m %r%Q%q" %s %f %{mili}d %{kilo}M %C%%"#
    );
    assert_eq!(api.security_limit_extensions, Vec::<String>::new());
    assert_eq!(api.cgi.stderr, StderrMode::Fastcgi);

    assert_eq!(
        files.warnings(&config),
        [
            "[DIR/pool.d/www.conf:29] [pool www] 'php_admin_value[]': php_value[], php_flag[], php_admin_value[] and php_admin_flag[] are passed to php-cgi only (as -d name=value), and no cgi.interpreter[] of this pool runs php-cgi; they have no effect",
        ]
    );
}

#[test]
fn realistic_configuration_dumps_every_directive() {
    let files = realistic();
    let config = files.loaded("cgi-fpm.conf");
    let text = dump(&config);
    for name in directive_names()
        .into_iter()
        .filter(|&name| name != "include")
    {
        let key = name.trim_end_matches("[]");
        let present = text.lines().any(|line| {
            line.starts_with(&format!("{key} =")) || line.starts_with(&format!("{key}["))
        });
        // php-fpm dumps flags among the values; the sample sets no suppressed path and
        // no resident app (dump.rs tests those).
        let not_in_sample = matches!(
            name,
            "access.suppress_path[]"
                | "php_flag[]"
                | "php_admin_flag[]"
                | "cgi.fastcgi_app[]"
                | "cgi.fastcgi_app"
        );
        assert!(
            present || not_in_sample,
            "{name} is not in the dump:\n{text}"
        );
    }
    assert!(text.contains("[www]\n"));
    assert!(text.contains("php_value[display_errors] = 0\n"));
    assert!(text.contains("php_admin_value[error_log] = /var/log/fpm-php.www.log\n"));
    assert!(text.contains("pm.start_servers = 4\n"));
    assert!(text.contains("listen = 127.0.0.1:9100\n"));
    assert!(text.contains("log_level = warning\n"));
}

#[test]
fn prefix_is_the_base_for_paths_and_includes() {
    let files = Files::new();
    files.mkdir("prefix/var");
    files.write(
        "etc/main.conf",
        "pid = run/x.pid\ninclude = conf.d/*.conf\n",
    );
    files.write(
        "prefix/conf.d/www.conf",
        &pool_with(
            "www",
            "var/www.sock",
            "access.log = log/a.log\nslowlog = log/s.log\n",
        ),
    );
    let config = files
        .load_with_prefix("etc/main.conf", "prefix")
        .unwrap_or_else(|e| panic!("{}", joined(&e)));
    let prefix = files.path("prefix");
    assert_eq!(config.prefix, Some(prefix.clone()));
    assert_eq!(config.global.pid, Some(prefix.join("run/x.pid")));
    let www = &config.pools[0];
    assert_eq!(www.listen, ListenAddress::Unix(prefix.join("var/www.sock")));
    assert_eq!(www.access_log, Some(prefix.join("log/a.log")));
    assert_eq!(www.slowlog, Some(prefix.join("log/s.log")));
    let errors = match files.load_with_prefix("etc/main.conf", "missing") {
        Err(errors) => joined(&errors),
        Ok(_) => panic!("a missing prefix must fail"),
    };
    assert!(
        errors.contains("the global prefix") && errors.contains("does not exist"),
        "{errors}"
    );
}

#[test]
fn pool_prefix_is_the_base_for_its_paths() {
    let files = Files::new();
    files.mkdir("pools/www/jail/srv");
    files.write(
        "main.conf",
        &pool_with(
            "www",
            "www.sock",
            "prefix = pools/$pool\nchroot = $prefix/jail\nchdir = /srv\naccess.log = access.log\n",
        ),
    );
    let config = files.loaded("main.conf");
    let www = &config.pools[0];
    let prefix = files.path("pools/www");
    assert_eq!(www.prefix, Some(prefix.clone()));
    assert_eq!(www.listen, ListenAddress::Unix(prefix.join("www.sock")));
    assert_eq!(www.access_log, Some(prefix.join("access.log")));
    assert_eq!(www.chroot, Some(prefix.join("jail")));
    assert_eq!(www.chdir, Some(PathBuf::from("/srv")));
}

#[test]
fn includes_nest_and_are_relative_to_the_including_file() {
    let files = Files::new();
    files.write("main.conf", "[global]\ninclude = a/one.conf\n");
    files.write("a/one.conf", "log_level = debug\ninclude = b/*.conf\n");
    files.write("a/b/2.conf", &pool_with("two", "9002", ""));
    files.write("a/b/1.conf", &pool_with("one", "9001", ""));
    files.write("a/b/.hidden.conf", "this would be a syntax error\n");
    let config = files.loaded("main.conf");
    assert_eq!(config.global.log_level, LogLevel::Debug);
    let names: Vec<_> = config.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["one", "two"]);
}

#[test]
fn include_that_matches_nothing_is_a_warning() {
    let files = Files::new();
    files.write(
        "main.conf",
        &format!("include = none/*.conf\n{}", pool_with("www", "9000", "")),
    );
    let config = files.loaded("main.conf");
    assert_eq!(
        files.warnings(&config)[0],
        "[DIR/main.conf:1] [global] 'include': nothing matches the include pattern 'none/*.conf'"
    );
}

#[test]
fn includes_nest_at_most_five_files_deep() {
    let files = Files::new();
    files.write("f1.conf", "include = f2.conf\n");
    files.write("f2.conf", "include = f3.conf\n");
    files.write("f3.conf", "include = f4.conf\n");
    files.write(
        "f4.conf",
        &format!("{}include = f5.conf\n", pool_with("www", "9000", "")),
    );
    files.write("f5.conf", "include = f6.conf\n");
    files.write("f6.conf", "pm.max_children = 3\n");
    assert_eq!(
        files.errors("f1.conf"),
        ["[DIR/f5.conf:1] [pool www] 'include': failed to include more than 5 files recursively"]
    );
    files.write("f5.conf", "pm.max_children = 4\n");
    assert_eq!(files.loaded("f1.conf").pools[0].pm_max_children, 4);
}

#[test]
fn include_cycle_stops() {
    let files = Files::new();
    files.write(
        "main.conf",
        &format!("{}include = main.conf\n", pool_with("www", "9000", "")),
    );
    let errors = files.errors("main.conf");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("failed to include more than 5 files")),
        "{errors:?}"
    );
}

#[test]
fn unreadable_files_are_errors() {
    let files = Files::new();
    files.write(
        "main.conf",
        &format!("include = links/*.conf\n{}", pool_with("www", "9000", "")),
    );
    files.mkdir("links");
    if let Err(error) = std::os::unix::fs::symlink(files.path("gone"), files.path("links/x.conf")) {
        panic!("symlink: {error}");
    }
    assert_eq!(
        files.errors("missing.conf"),
        [
            "[DIR/missing.conf] cannot read the configuration file: No such file or directory (os error 2)"
        ]
    );
    let errors = files.errors("main.conf");
    assert_eq!(
        errors,
        [
            "[DIR/main.conf:1] [global] 'include': cannot read 'DIR/links/x.conf': No such file or directory (os error 2)"
        ]
    );
}

#[test]
fn included_file_continues_the_current_section_and_leaves_its_own() {
    let files = Files::new();
    files.write(
        "main.conf",
        "[www]\nlisten = 9000\ninclude = more.conf\npm.max_children = 7\n[global]\nlog_level = error\n",
    );
    files.write(
        "more.conf",
        "pm = static\npm.max_children = 1\ncgi.allowed_roots = /\n[api]\nlisten = 9001\npm = static\n",
    );
    let config = files.loaded("main.conf");
    let www = &config.pools[0];
    let api = &config.pools[1];
    assert_eq!(www.pm, ProcessManager::Static);
    assert_eq!(
        www.pm_max_children, 1,
        "the line after the include went to [api]"
    );
    assert_eq!(api.pm_max_children, 7);
    assert_eq!(config.global.log_level, LogLevel::Error);
}

#[test]
fn sections_reopen_case_insensitively_and_global_switches_back() {
    let files = Files::new();
    files.write(
        "main.conf",
        "log_level = debug\n[www]\nlisten = 9000\n[global]\npid = /run/x.pid\n[WWW]\npm = static\n[Global]\nerror_log = syslog\n[www]\npm.max_children = 3\ncgi.allowed_roots = /\n",
    );
    let config = files.loaded("main.conf");
    assert_eq!(config.pools.len(), 1);
    assert_eq!(config.pools[0].name, "www");
    assert_eq!(config.pools[0].pm_max_children, 3);
    assert_eq!(config.global.log_level, LogLevel::Debug);
    assert_eq!(config.global.pid, Some(PathBuf::from("/run/x.pid")));
    assert_eq!(config.global.error_log, ErrorLog::Syslog);
}

#[test]
fn duplicate_keys_last_wins_and_keys_are_case_insensitive() {
    let files = Files::new();
    files.write(
        "main.conf",
        &pool_with(
            "www",
            "9000",
            "PM.Max_Children = 4\npm.max_children = 6\nCLEAR_ENV = no\n",
        ),
    );
    let www = &files.loaded("main.conf").pools[0];
    assert_eq!(www.pm_max_children, 6);
    assert!(!www.clear_env);
}

#[test]
fn defaults_when_unset() {
    let files = Files::new();
    files.write("main.conf", &pool_with("www", "9000", ""));
    let config = files.loaded("main.conf");
    assert_eq!(config.global, GlobalConfig::default());
    assert_eq!(config.global.error_log, ErrorLog::Stderr);
    let www = &config.pools[0];
    let mut expected = PoolConfig::new("www", ListenAddress::AnyPort(9000));
    expected.pm_max_children = 2;
    expected.cgi.allowed_roots = vec![PathBuf::from("/")];
    // Where each line was: not a setting.
    expected.locations = www.locations.clone();
    assert_eq!(
        www.location_of("pm"),
        format!("[{}:3] ", files.path("main.conf").display())
    );
    assert_eq!(
        www.location_of("user"),
        format!("[{}:1] ", files.path("main.conf").display())
    );
    assert_eq!(*www, expected);
    assert_eq!(www.access_format, DEFAULT_ACCESS_FORMAT);
    assert_eq!(www.ping_response, "pong");
    assert_eq!(www.pm_process_idle_timeout, Duration::from_secs(10));
    assert!(www.clear_env && www.decorate_workers_output && !www.catch_workers_output);
}

#[test]
fn unknown_and_misplaced_keys_name_file_line_section_and_key() {
    let files = Files::new();
    files.write(
        "main.conf",
        &format!(
            "foo = bar\nlisten = 9000\nenv[X] = y\n{}bar = 1\npid = x\nenv = y\nlisten[] = 9000\n",
            pool_with("www", "9000", "")
        ),
    );
    assert_eq!(
        files.errors("main.conf"),
        [
            "[DIR/main.conf:1] [global] 'foo': unknown entry",
            "[DIR/main.conf:2] [global] 'listen': unknown entry in [global]: it belongs in a pool section",
            "[DIR/main.conf:3] [global] 'env[X]': unknown entry in [global]: it belongs in a pool section",
            "[DIR/main.conf:9] [pool www] 'bar': unknown entry",
            "[DIR/main.conf:10] [pool www] 'pid': unknown entry in a pool: it belongs in [global]",
            "[DIR/main.conf:11] [pool www] 'env': unknown entry: 'env' is an array, write env[KEY] = value",
            "[DIR/main.conf:12] [pool www] 'listen[]': unknown entry: 'listen' is not an array",
        ]
    );
}

#[test]
fn typos_in_keys_and_enumerated_values_get_a_hint() {
    let files = Files::new();
    files.write(
        "main.conf",
        &format!(
            "log_levl = notice\nlog_level = notcie\nsyslog.facility = deamon\nrlimit_core = unlimted\n{}pm.max_chidren = 5\nlisen.owner = www-data\nenn[PATH] = /bin\npm = dynamc\ncgi.stderr = dicard\ncatch_workers_output = yse\nno.such.key = 1\npm = adaptive\n",
            pool_with("www", "9000", "")
        ),
    );
    assert_eq!(
        files.errors("main.conf"),
        [
            "[DIR/main.conf:1] [global] 'log_levl': unknown entry; did you mean 'log_level'?",
            "[DIR/main.conf:2] [global] 'log_level': invalid value 'notcie': expected alert, error, warning, notice or debug; did you mean 'notice'?",
            "[DIR/main.conf:3] [global] 'syslog.facility': invalid value 'deamon': expected a syslog facility: auth, authpriv, cron, daemon, ftp, kern, lpr, mail, news, syslog, user, uucp, local0, local1, local2, local3, local4, local5, local6, local7; did you mean 'daemon'?",
            "[DIR/main.conf:4] [global] 'rlimit_core': invalid value 'unlimted': expected 'unlimited' or a number of bytes; did you mean 'unlimited'?",
            "[DIR/main.conf:10] [pool www] 'pm.max_chidren': unknown entry; did you mean 'pm.max_children'?",
            "[DIR/main.conf:11] [pool www] 'lisen.owner': unknown entry; did you mean 'listen.owner'?",
            "[DIR/main.conf:12] [pool www] 'enn[PATH]': unknown entry; did you mean 'env[PATH]'?",
            "[DIR/main.conf:13] [pool www] 'pm': invalid value 'dynamc': expected static, dynamic or ondemand; did you mean 'dynamic'?",
            "[DIR/main.conf:14] [pool www] 'cgi.stderr': invalid value 'dicard': expected fastcgi, log, both or discard; did you mean 'discard'?",
            "[DIR/main.conf:15] [pool www] 'catch_workers_output': invalid value 'yse': expected yes or no (also on/off, true/false, 1/0); did you mean 'yes'?",
            "[DIR/main.conf:16] [pool www] 'no.such.key': unknown entry",
            "[DIR/main.conf:17] [pool www] 'pm': invalid value 'adaptive': expected static, dynamic or ondemand",
        ]
    );
}

#[test]
fn syntax_errors_name_file_line_and_section() {
    let files = Files::new();
    files.write(
        "main.conf",
        &pool_with(
            "www",
            "9000",
            "access.format = a=b\njunk\nenv[X] = \"open\n",
        ),
    );
    assert_eq!(
        files.errors("main.conf"),
        [
            "[DIR/main.conf:6] [pool www] unexpected '=' in the value (put the value in double quotes)",
            "[DIR/main.conf:7] [pool www] 'junk' has no '=': expected 'key = value'",
            "[DIR/main.conf:8] [pool www] missing closing '\"'",
        ]
    );
}

#[test]
fn bad_values_name_the_key_and_value() {
    let files = Files::new();
    files.write(
        "main.conf",
        "log_level = loud\nerror_log = /var/log/$pool.log\n[www]\nlisten = 0\npm = adaptive\npm.max_children = many\nrequest_terminate_timeout = 1h30m\nlisten.mode = 999\nenv[X] =\ncgi.interpreter[php] = /usr/bin/php-cgi\ncgi.interpreter[.py] = python3\nsecurity.limit_extensions = .php php\ncatch_workers_output = 2\n",
    );
    assert_eq!(
        files.errors("main.conf"),
        [
            "[DIR/main.conf:1] [global] 'log_level': invalid value 'loud': expected alert, error, warning, notice or debug",
            "[DIR/main.conf:2] [global] 'error_log': '$pool' can only be used in a pool section",
            "[DIR/main.conf:4] [pool www] 'listen': invalid value '0': invalid port '0': must be between 1 and 65535",
            "[DIR/main.conf:5] [pool www] 'pm': invalid value 'adaptive': expected static, dynamic or ondemand",
            "[DIR/main.conf:6] [pool www] 'pm.max_children': invalid value 'many': not a whole number",
            "[DIR/main.conf:7] [pool www] 'request_terminate_timeout': invalid value '1h30m': expected a whole number with an optional unit s, m, h or d",
            "[DIR/main.conf:8] [pool www] 'listen.mode': invalid value '999': expected an octal mode such as 0660",
            "[DIR/main.conf:9] [pool www] 'env[X]': invalid value '': empty value",
            "[DIR/main.conf:10] [pool www] 'cgi.interpreter[php]': invalid value '/usr/bin/php-cgi': 'php' is not an extension: it must start with '.'",
            "[DIR/main.conf:11] [pool www] 'cgi.interpreter[.py]': invalid value 'python3': the program 'python3' must be an absolute path",
            "[DIR/main.conf:12] [pool www] 'security.limit_extensions': invalid value '.php php': 'php' is not an extension: it must start with '.'",
            "[DIR/main.conf:13] [pool www] 'catch_workers_output': invalid value '2': expected yes or no (also on/off, true/false, 1/0)",
        ]
    );
}

#[test]
fn mandatory_directives() {
    let files = Files::new();
    files.write(
        "main.conf",
        "[global]\n\n[www]\npm = dynamic\n[api]\nlisten = 9001\n",
    );
    assert_eq!(
        files.errors("main.conf"),
        [
            "[DIR/main.conf:3] [pool www] 'listen': no listen address has been defined",
            "[DIR/main.conf:3] [pool www] 'pm.max_children': is not set: it must be a positive value",
            "[DIR/main.conf:5] [pool api] 'pm': the process manager is missing (static, dynamic or ondemand)",
            "[DIR/main.conf:5] [pool api] 'pm.max_children': is not set: it must be a positive value",
        ]
    );
}

#[test]
fn pool_name_is_substituted_everywhere_in_a_pool() {
    let files = Files::new();
    files.write(
        "main.conf",
        &pool_with(
            "blog",
            "/run/$pool.sock",
            "env[POOL] = $pool\nenv[LOG] = /var/log/$pool/$pool.log\nslowlog = /var/log/$pool.slow\n",
        ),
    );
    let blog = &files.loaded("main.conf").pools[0];
    assert_eq!(blog.listen, ListenAddress::Unix("/run/blog.sock".into()));
    assert_eq!(blog.env[0], ("POOL".to_string(), "blog".to_string()));
    assert_eq!(
        blog.env[1],
        ("LOG".to_string(), "/var/log/blog/blog.log".to_string())
    );
    assert_eq!(blog.slowlog, Some(PathBuf::from("/var/log/blog.slow")));
}

#[test]
fn listen_forms_and_wildcard_warning() {
    let files = Files::new();
    files.write(
        "main.conf",
        &[
            pool_with("a", "*:9001", ""),
            pool_with("b", "[::1]:9002", ""),
            pool_with("c", "9003", ""),
            pool_with("d", "localhost:9004", ""),
        ]
        .concat(),
    );
    let config = files.loaded("main.conf");
    let listens: Vec<String> = config.pools.iter().map(|p| p.listen.to_string()).collect();
    assert_eq!(listens[..3], ["0.0.0.0:9001", "[::1]:9002", "9003"]);
    assert!(matches!(config.pools[3].listen, ListenAddress::Tcp(a) if a.ip().is_loopback()));
    assert!(
        files.warnings(&config)[0].starts_with(
            "[DIR/main.conf:2] [pool a] 'listen': '*:9001' listens on every IPv4 address (0.0.0.0)"
        ),
        "{:?}",
        config.warnings
    );
}

#[test]
fn pools_may_not_share_or_overlap_addresses() {
    let files = Files::new();
    files.write(
        "main.conf",
        &[
            pool_with("a", "127.0.0.1:9000", ""),
            pool_with("b", "127.0.0.1:9000", ""),
            pool_with("c", "9000", ""),
            pool_with("d", "/run/x.sock", ""),
            pool_with("e", "/run/x.sock", ""),
            pool_with("f", "0.0.0.0:9100", ""),
            pool_with("g", "10.0.0.1:9100", ""),
            pool_with("h", "[::1]:9100", "pm.status_listen = 127.0.0.1:9000\n"),
        ]
        .concat(),
    );
    assert_eq!(
        files.errors("main.conf"),
        [
            "[DIR/main.conf:7] [pool b] 'listen': unable to set listen address as it's already used in another pool 'a'",
            "[DIR/main.conf:12] [pool c] 'listen': '9000' overlaps '127.0.0.1:9000' of pool 'a'",
            "[DIR/main.conf:22] [pool e] 'listen': unable to set listen address as it's already used in another pool 'd'",
            "[DIR/main.conf:32] [pool g] 'listen': '10.0.0.1:9100' overlaps '0.0.0.0:9100' of pool 'f'",
            "[DIR/main.conf:41] [pool h] 'pm.status_listen': unable to set listen address as it's already used in another pool 'a'",
        ]
    );
}

#[test]
fn a_failed_include_is_not_followed_by_no_pool_defined() {
    // The pools were in the files past the depth limit: one error, not a second,
    // misleading one.
    let files = Files::new();
    for n in 1..=5 {
        files.write(
            &format!("f{n}.conf"),
            &format!("include = f{}.conf\n", n + 1),
        );
    }
    files.write("f6.conf", &pool_with("www", "9000", ""));
    assert_eq!(
        files.errors("f1.conf"),
        ["[DIR/f5.conf:1] [global] 'include': failed to include more than 5 files recursively"]
    );
    // An included file that cannot be read (a dangling link, even as root).
    files.write("main.conf", "include = pools.conf\n");
    if let Err(error) = std::os::unix::fs::symlink(files.path("nowhere"), files.path("pools.conf"))
    {
        panic!("symlink: {error}");
    }
    let errors = files.errors("main.conf");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors.iter().all(|e| !e.contains("No pool defined")),
        "{errors:?}"
    );
}

#[test]
fn no_pool_is_an_error() {
    let files = Files::new();
    files.write("main.conf", "[global]\npid = /run/x.pid\n");
    assert_eq!(
        files.errors("main.conf"),
        [
            "[DIR/main.conf] No pool defined. at least one pool section must be specified in config file"
        ]
    );
}

#[test]
fn dynamic_rules() {
    let files = Files::new();
    let dynamic = |name: &str, port: u16, lines: &str| {
        pool_with(name, &port.to_string(), &format!("pm = dynamic\n{lines}"))
    };
    files.write(
        "main.conf",
        &[
            dynamic("zero", 9001, "pm.min_spare_servers = 0\npm.max_spare_servers = 0\n"),
            dynamic("above", 9002, "pm.min_spare_servers = 1\npm.max_spare_servers = 3\n"),
            dynamic("inverted", 9003, "pm.min_spare_servers = 2\npm.max_spare_servers = 1\n"),
            dynamic("start", 9004, "pm.min_spare_servers = 1\npm.max_spare_servers = 2\npm.start_servers = 2\npm.max_children = 4\npm.start_servers = 3\n"),
        ]
        .concat(),
    );
    let errors = files.errors_without_files("main.conf");
    assert_eq!(
        errors,
        [
            "[pool zero] 'pm.min_spare_servers': pm.min_spare_servers(0) must be a positive value",
            "[pool zero] 'pm.max_spare_servers': pm.max_spare_servers(0) must be a positive value",
            "[pool above] 'pm.max_spare_servers': pm.min_spare_servers(1) and pm.max_spare_servers(3) cannot be greater than pm.max_children(2)",
            "[pool inverted] 'pm.max_spare_servers': pm.max_spare_servers(1) must not be less than pm.min_spare_servers(2)",
            "[pool start] 'pm.start_servers': pm.start_servers(3) must not be less than pm.min_spare_servers(1) and not greater than pm.max_spare_servers(2)",
        ]
    );
}

#[test]
fn dynamic_and_ondemand_load_without_not_implemented_warnings() {
    let files = Files::new();
    files.write(
        "main.conf",
        &[
            pool_with("dyn", "9001", "pm = dynamic\npm.max_children = 9\npm.min_spare_servers = 2\npm.max_spare_servers = 2\n"),
            pool_with("od", "9002", "pm = ondemand\nlisten.backlog = 64\npm.process_idle_timeout = 30s\n"),
        ]
        .concat(),
    );
    let config = files.loaded("main.conf");
    let (dynamic, ondemand) = (&config.pools[0], &config.pools[1]);
    assert_eq!(dynamic.pm_start_servers, 2);
    assert_eq!(ondemand.pm, ProcessManager::Ondemand);
    assert_eq!(ondemand.listen_backlog, 511);
    assert_eq!(ondemand.pm_process_idle_timeout, Duration::from_secs(30));
    let warnings = files.warnings(&config);
    assert!(
        !warnings.iter().any(|w| w.contains("not implemented")),
        "{warnings:#?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("[pool od] 'listen.backlog': listen.backlog(64) was too low"))
    );
    files.write(
        "main.conf",
        &pool_with("od", "9002", "pm = ondemand\npm.process_idle_timeout = 0\n"),
    );
    assert_eq!(
        files.errors("main.conf"),
        [
            "[DIR/main.conf:7] [pool od] 'pm.process_idle_timeout': pm.process_idle_timeout(0s) must be greater than 0s"
        ]
    );
}

#[test]
fn not_implemented_yet_is_warned_once_per_key() {
    let files = Files::new();
    files.write(
        "main.conf",
        &[
            "events.mechanism = epoll\n".to_string(),
            pool_with(
                "a",
                "9001",
                "apparmor_hat = a\napparmor_hat = b\nlisten.setfib = 1\n",
            ),
            pool_with("b", "9002", "apparmor_hat = c\nlisten.setfib = 2\n"),
        ]
        .concat(),
    );
    let config = files.loaded("main.conf");
    assert_eq!(
        files.warnings(&config),
        [
            "[DIR/main.conf:1] [global] 'events.mechanism' is not implemented yet; ignored",
            "[DIR/main.conf:7] [pool a] 'apparmor_hat' is not implemented yet; ignored",
            "[DIR/main.conf:9] [pool a] 'listen.setfib' applies to FreeBSD only; ignored",
        ]
    );
    assert_eq!(config.pools[0].apparmor_hat.as_deref(), Some("b"));
    assert_eq!(config.pools[1].apparmor_hat.as_deref(), Some("c"));
    assert_eq!(config.pools[1].listen_setfib, Some(2));
    assert_eq!(config.global.events_mechanism.as_deref(), Some("epoll"));
}

#[test]
fn status_and_ping_paths() {
    let files = Files::new();
    files.write(
        "main.conf",
        &[
            pool_with("a", "9001", "pm.status_path = status\nping.path = /\n"),
            pool_with(
                "b",
                "9002",
                "pm.status_path = /st atus\nping.path = /ping\nping.response =\n",
            ),
        ]
        .concat(),
    );
    let errors = files.errors_without_files("main.conf");
    assert_eq!(
        errors,
        [
            "[pool a] 'pm.status_path': the status path 'status' must start with a '/'",
            "[pool a] 'ping.path': the ping path '/' is not long enough",
            "[pool b] 'pm.status_path': the status path '/st atus' must contain only the following characters '[alphanum]/_-.~'",
            "[pool b] 'ping.response': the ping response page '' is not long enough",
        ]
    );
    files.write(
        "main.conf",
        &[
            pool_with(
                "a",
                "9001",
                "pm.status_path = /status-1.0_~x\nping.path = /ping\nping.response = ok\n",
            ),
            pool_with("b", "9002", "pm.status_listen = 127.0.0.1:9003\n"),
        ]
        .concat(),
    );
    let config = files.loaded("main.conf");
    assert_eq!(
        config.pools[0].pm_status_path.as_deref(),
        Some("/status-1.0_~x")
    );
    assert_eq!(config.pools[0].ping_response, "ok");
    assert_eq!(config.pools[1].pm_status_path.as_deref(), Some("/"));
}

#[test]
fn slowlog_rules() {
    let files = Files::new();
    files.write(
        "main.conf",
        &[
            pool_with("a", "9001", "request_slowlog_timeout = 5s\n"),
            pool_with(
                "b",
                "9002",
                "slowlog = s.log\nrequest_slowlog_timeout = 2m\nrequest_terminate_timeout = 60\n",
            ),
            pool_with("c", "9003", "request_slowlog_trace_depth = 10\n"),
        ]
        .concat(),
    );
    let errors = files.errors_without_files("main.conf");
    assert_eq!(
        errors,
        [
            "[pool a] 'request_slowlog_timeout': 'slowlog' must be specified for use with 'request_slowlog_timeout'",
            "[pool b] 'request_slowlog_timeout': 'request_slowlog_timeout' (120s) can't be greater than 'request_terminate_timeout' (60s)",
            "[pool c] 'request_slowlog_trace_depth': 'slowlog' must be specified for use with 'request_slowlog_trace_depth'",
        ]
    );
}

#[test]
fn chroot_and_chdir_must_exist() {
    let files = Files::new();
    files.mkdir("jail/srv");
    files.write(
        "main.conf",
        &[
            pool_with("a", "9001", "chdir = missing\n"),
            pool_with("b", "9002", "chroot = jail\nchdir = /nowhere\n"),
            pool_with("c", "9003", "chroot = /x/$prefix\n"),
            pool_with("d", "9004", "chroot = jail\nchdir = /srv\n"),
        ]
        .concat(),
    );
    assert_eq!(
        files.errors("main.conf"),
        [
            "[DIR/main.conf:6] [pool a] 'chdir': the chdir path 'DIR/missing' does not exist or is not a directory",
            "[DIR/main.conf:13] [pool b] 'chdir': the chdir path 'DIR/jail/nowhere' does not exist or is not a directory",
            "[DIR/main.conf:19] [pool c] 'chroot': '$prefix' must be used at the beginning of the value",
        ]
    );
}

#[test]
fn allowed_roots_are_canonical_and_directories() {
    let files = Files::new();
    files.mkdir("www/cgi-bin");
    files.write("www/file", "");
    let symlink = files.path("link");
    if let Err(error) = std::os::unix::fs::symlink(files.path("www"), &symlink) {
        panic!("symlink: {error}");
    }
    files.write(
        "main.conf",
        "[a]\nlisten = 9001\npm = static\npm.max_children = 1\ncgi.allowed_roots = link/cgi-bin  www/../www\n[b]\nlisten = 9002\npm = static\npm.max_children = 1\ncgi.allowed_roots = nope/../www www/file\n",
    );
    assert_eq!(
        files.errors("main.conf"),
        [
            "[DIR/main.conf:10] [pool b] 'cgi.allowed_roots': 'DIR/nope/../www' does not exist, and a missing root may not contain '..'",
            "[DIR/main.conf:10] [pool b] 'cgi.allowed_roots': 'DIR/www/file' is not a directory",
        ]
    );
    files.write(
        "main.conf",
        "[a]\nlisten = 9001\npm = static\npm.max_children = 1\ncgi.allowed_roots = link/cgi-bin  www/../www\n",
    );
    let config = files.loaded("main.conf");
    assert_eq!(
        config.pools[0].cgi.allowed_roots,
        [files.root().join("www/cgi-bin"), files.root().join("www")]
    );
}

#[test]
fn a_missing_allowed_root_is_a_warning_and_stays_a_root() {
    // -t of a pool file on a host where its directories are not made yet passes; the root
    // is kept (not dropped, which would leave the pool unconfined).
    let files = Files::new();
    files.mkdir("jail/www");
    files.write(
        "main.conf",
        "[a]\nlisten = 9001\npm = static\npm.max_children = 1\ncgi.allowed_roots = ./later/cgi-bin\n\
         [b]\nlisten = 9002\npm = static\npm.max_children = 1\nchroot = jail\ncgi.allowed_roots = /www /srv/later\n",
    );
    let config = files.loaded("main.conf");
    assert_eq!(
        files.warnings(&config),
        [
            "[DIR/main.conf:5] [pool a] 'cgi.allowed_roots': 'DIR/./later/cgi-bin' does not exist: no script runs from it until it does (at this very path, without symlinks)",
            "[DIR/main.conf:11] [pool b] 'cgi.allowed_roots': '/srv/later' (inside the chroot 'DIR/jail') does not exist: no script runs from it until it does (at this very path, without symlinks)",
        ]
    );
    assert_eq!(
        config.pools[0].cgi.allowed_roots,
        [files.root().join("later/cgi-bin")]
    );
    assert_eq!(
        config.pools[1].cgi.allowed_roots,
        [PathBuf::from("/www"), PathBuf::from("/srv/later")]
    );
}

#[test]
fn missing_allowed_roots_and_interpreters_are_warnings() {
    let files = Files::new();
    files.write(
        "main.conf",
        "[www]\nlisten = 9000\npm = static\npm.max_children = 1\ncgi.interpreter[.php] = /nonexistent/php-cgi\n",
    );
    let config = files.loaded("main.conf");
    assert_eq!(
        files.warnings(&config),
        [
            "[DIR/main.conf:1] [pool www] cgi.allowed_roots is not set: any executable file the web server names can be run",
            "[DIR/main.conf:5] [pool www] 'cgi.interpreter[]': the interpreter '/nonexistent/php-cgi' for '.php' does not exist or is not executable",
        ]
    );
}

#[test]
fn unix_socket_paths_must_fit() {
    let files = Files::new();
    let long = format!("/run/{}.sock", "x".repeat(120));
    files.write("main.conf", &pool_with("www", &long, ""));
    let errors = files.errors("main.conf");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].contains("is too long (130 bytes, at most 107)"),
        "{errors:?}"
    );
}

#[test]
fn a_socket_start_could_not_create_is_refused_under_test_too() {
    let files = Files::new();
    files.write("not-a-socket", "");
    files.write(
        "main.conf",
        &[
            pool_with("a", "missing/a.sock", ""),
            pool_with("b", "not-a-socket", ""),
        ]
        .concat(),
    );
    let errors = files.errors("main.conf");
    assert_eq!(
        errors,
        [
            "[DIR/main.conf:2] [pool a] 'listen': cannot create the unix socket 'DIR/missing/a.sock': the directory 'DIR/missing' does not exist",
            "[DIR/main.conf:7] [pool b] 'listen': 'DIR/not-a-socket' exists and is not a socket: refusing to replace it",
        ]
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let files = Files::new();
    files.write(
        "main.conf",
        "[global]\nfoo = 1\nbar\n[www]\nlisten = 0\nlisten = /run/ok.sock\npm = static\n",
    );
    let errors = files.errors("main.conf");
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(errors[3].contains("'pm.max_children': is not set"));
}

#[test]
fn utf8_bom_and_crlf_files_load() {
    let files = Files::new();
    files.write(
        "main.conf",
        "\u{feff}[www]\r\nlisten = 9000\r\npm = static\r\npm.max_children = 2 ; two\r\ncgi.allowed_roots = /\r\n",
    );
    assert_eq!(files.loaded("main.conf").pools[0].pm_max_children, 2);
}

#[test]
fn environment_is_read_for_variables() {
    let files = Files::new();
    files.write(
        "main.conf",
        "[www]\nlisten = ${PORT}\npm = static\npm.max_children = 1\ncgi.allowed_roots = /\nenv[A] = 'x${PORT}'\nenv[B] = \"${PORT}\"\nenv[C] = $PORT\nenv[D] = ${UNSET}x\nenv[E] = '${PORT}'\n",
    );
    let config = files.loaded("main.conf");
    let www = &config.pools[0];
    assert_eq!(www.listen, ListenAddress::AnyPort(9100));
    let values: Vec<_> = www.env.iter().map(|(_, v)| v.as_str()).collect();
    // E: a value starting with `$` names a variable, here `{PORT}`, as php-fpm reads it.
    assert_eq!(values, ["x${PORT}", "9100", "9100", "x", ""]);
    // Unset variables give empty values without a word, as in php-fpm (documented).
    assert!(files.warnings(&config).is_empty(), "{:?}", config.warnings);
}

#[test]
fn public_load_reads_the_process_environment() {
    let files = Files::new();
    files.write("main.conf", &pool_with("www", "9000", "env[P] = $PATH\n"));
    let config = load(&files.path("main.conf"), None).unwrap_or_else(|e| panic!("{}", joined(&e)));
    assert_eq!(
        config.pools[0].env[0].1,
        std::env::var("PATH").unwrap_or_default()
    );
}

#[test]
fn directive_names_lists_arrays_with_brackets() {
    let names = directive_names();
    for name in [
        "pid",
        "include",
        "listen",
        "env[]",
        "cgi.interpreter[]",
        "php_admin_flag[]",
        "cgi.stderr",
    ] {
        assert!(names.contains(&name), "{name}");
    }
    assert_eq!(names.iter().filter(|&&name| name == "include").count(), 1);
}

#[test]
fn script_helpers() {
    let mut pool = PoolConfig::new("www", ListenAddress::AnyPort(9000));
    assert!(pool.limits_extension_ok(Path::new("/srv/anything")));
    pool.security_limit_extensions = vec![".cgi".into(), ".tar.gz".into()];
    assert!(pool.limits_extension_ok(Path::new("/srv/a.cgi")));
    assert!(pool.limits_extension_ok(Path::new("/srv/a.tar.gz")));
    assert!(!pool.limits_extension_ok(Path::new("/srv/a.CGI")));
    assert!(!pool.limits_extension_ok(Path::new(".cgi")));
    assert!(!pool.limits_extension_ok(Path::new("/srv/a.pl")));
    pool.cgi.interpreters = vec![
        Interpreter {
            extension: ".gz".into(),
            argv: vec!["/bin/zcat".into()],
        },
        Interpreter {
            extension: ".tar.gz".into(),
            argv: vec!["/bin/tar".into()],
        },
    ];
    let chosen = |script: &str| {
        pool.interpreter_for(Path::new(script))
            .map(|i| i.argv[0].clone())
    };
    assert_eq!(chosen("/a.tar.gz").as_deref(), Some("/bin/tar"));
    assert_eq!(chosen("/a.gz").as_deref(), Some("/bin/zcat"));
    assert_eq!(chosen("/a.sh"), None);
    assert_eq!(chosen(".gz"), None);
}

#[test]
fn chroot_pools_name_their_roots_inside_the_jail() {
    let files = Files::new();
    files.mkdir("jail/www/cgi-bin");
    files.mkdir("outside");
    if let Err(error) = std::os::unix::fs::symlink("../outside", files.path("jail/out")) {
        panic!("symlink: {error}");
    }
    files.write(
        "main.conf",
        &[
            "[a]\nlisten = 9001\npm = static\npm.max_children = 1\nchroot = jail\n",
            "cgi.allowed_roots = /www/cgi-bin www\n",
            "[b]\nlisten = 9002\npm = static\npm.max_children = 1\nchroot = jail\n",
            "cgi.allowed_roots = /out /nope\n",
        ]
        .concat(),
    );
    assert_eq!(
        files.errors("main.conf"),
        [
            "[DIR/main.conf:12] [pool b] 'cgi.allowed_roots': '/out' (inside the chroot 'DIR/jail') leads out of the chroot",
        ]
    );
    files.write(
        "good.conf",
        "[a]\nlisten = 9001\npm = static\npm.max_children = 1\nchroot = jail\ncgi.allowed_roots = /www/cgi-bin www\ncgi.interpreter[.sh] = /bin/sh\n",
    );
    let config = files.loaded("good.conf");
    assert_eq!(
        config.pools[0].cgi.allowed_roots,
        [PathBuf::from("/www/cgi-bin"), PathBuf::from("/www")]
    );
    assert_eq!(
        files.warnings(&config),
        [
            "[DIR/good.conf:7] [pool a] 'cgi.interpreter[]': the interpreter '/bin/sh' for '.sh' does not exist inside the chroot 'DIR/jail' or is not executable"
        ]
    );
}

#[test]
fn php_cgi_is_recognised_by_name() {
    let interpreter = |argv: &[&str]| Interpreter {
        extension: ".php".into(),
        argv: argv.iter().map(|word| word.to_string()).collect(),
    };
    for php_cgi in [
        &["/usr/bin/php-cgi"][..],
        &["/usr/bin/php-cgi8.2", "-c", "/etc/php.ini"],
        &["/usr/local/bin/php5-cgi"],
        &["/usr/lib/cgi-bin/php8.2"],
        &["/usr/lib/cgi-bin/php"],
        &["/usr/bin/env", "-i", "A=1", "php-cgi"],
    ] {
        assert!(interpreter(php_cgi).is_php_cgi(), "{php_cgi:?}");
    }
    for other in [
        &["/usr/bin/php"][..],
        &["/usr/bin/php8.2"],
        &["/usr/bin/perl"],
        &["/usr/bin/env", "python3"],
        &["/usr/bin/env"],
        &["/opt/cgi/runner", "php-cgi"],
        &[],
    ] {
        assert!(!interpreter(other).is_php_cgi(), "{other:?}");
    }
}

#[test]
fn php_settings_without_php_cgi_warn_once_per_pool() {
    let files = Files::new();
    files.write(
        "main.conf",
        &[
            pool_with(
                "a",
                "9001",
                "php_flag[display_errors] = off\nphp_value[memory_limit] = 32M\n",
            ),
            pool_with(
                "b",
                "9002",
                "php_value[memory_limit] = 32M\ncgi.interpreter[.php] = /nonexistent/php-cgi\n",
            ),
        ]
        .concat(),
    );
    let config = files.loaded("main.conf");
    let warnings = files.warnings(&config);
    assert_eq!(
        warnings[0],
        "[DIR/main.conf:7] [pool a] 'php_value[]': php_value[], php_flag[], php_admin_value[] and php_admin_flag[] are passed to php-cgi only (as -d name=value), and no cgi.interpreter[] of this pool runs php-cgi; they have no effect"
    );
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[1].contains("'/nonexistent/php-cgi' for '.php' does not exist"));
}

#[test]
fn socket_settings_that_do_not_apply_are_warned_about() {
    let files = Files::new();
    files.mkdir("run");
    files.write(
        "main.conf",
        &[
            pool_with(
                "a",
                "run/a.sock",
                "listen.owner = www-data\nlisten.group = www-data\nlisten.acl_users = nobody\nlisten.allowed_clients = 127.0.0.1\n",
            ),
            pool_with(
                "b",
                "127.0.0.1:9002",
                "listen.allowed_clients = 127.0.0.1, ::1\n",
            ),
        ]
        .concat(),
    );
    let config = files.loaded("main.conf");
    assert_eq!(
        files.warnings(&config),
        [
            "[DIR/main.conf:6] [pool a] 'listen.owner': ACL set, listen.owner = 'www-data' is ignored",
            "[DIR/main.conf:7] [pool a] 'listen.group': ACL set, listen.group = 'www-data' is ignored",
            "[DIR/main.conf:9] [pool a] 'listen.allowed_clients': applies to TCP sockets only; ignored on a unix socket, which the file's owner, group, mode and ACL protect instead",
        ]
    );
    let b = &config.pools[1];
    assert_eq!(b.listen_allowed_clients.len(), 2);
}

#[test]
fn metrics_listen_parses_dumps_and_may_not_share_a_pool_address() {
    let files = Files::new();
    files.write(
        "main.conf",
        &format!(
            "[global]\nmetrics.listen = 127.0.0.1:9253\nmetrics.allowed_clients = 127.0.0.1, ::1\n{}",
            pool_with("a", "127.0.0.1:9000", "")
        ),
    );
    let config = files.loaded("main.conf");
    assert_eq!(
        config
            .global
            .metrics_listen
            .as_ref()
            .map(ToString::to_string),
        Some("127.0.0.1:9253".to_string())
    );
    assert_eq!(config.global.metrics_allowed_clients.len(), 2);
    let dump = crate::config::dump(&config);
    assert!(dump.contains("metrics.listen = 127.0.0.1:9253\n"), "{dump}");
    assert!(
        dump.contains("metrics.allowed_clients = 127.0.0.1,::1\n"),
        "{dump}"
    );

    files.write(
        "clash.conf",
        &format!(
            "[global]\nmetrics.listen = 9000\n{}",
            pool_with("a", "127.0.0.1:9000", "")
        ),
    );
    let errors = files.errors("clash.conf").join("\n");
    assert!(
        errors.contains("overlaps metrics.listen '9000'"),
        "{errors}"
    );
}

#[test]
fn fastcgi_app_start_is_read_and_warns_without_an_app() {
    let files = Files::new();
    files.write(
        "main.conf",
        &[
            pool_with(
                "early",
                "9001",
                "cgi.fastcgi_app[.php] = /usr/bin/php-cgi\ncgi.fastcgi_app_start = worker_start\n",
            ),
            pool_with("plain", "9002", "cgi.fastcgi_app_start = worker_start\n"),
            pool_with("lazy", "9003", "cgi.fastcgi_app[.php] = /usr/bin/php-cgi\n"),
        ]
        .concat(),
    );
    let config = files.loaded("main.conf");
    assert_eq!(config.pools[0].cgi.fastcgi_app_start, AppStart::WorkerStart);
    assert_eq!(config.pools[2].cgi.fastcgi_app_start, AppStart::FirstUse);
    let warnings: Vec<String> = files
        .warnings(&config)
        .into_iter()
        .filter(|w| w.contains("cgi.fastcgi_app_start"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains("[pool plain]") && warnings[0].contains("no app to start"),
        "{warnings:#?}"
    );
    files.write(
        "bad.conf",
        &pool_with("www", "9000", "cgi.fastcgi_app_start = ondemand\n"),
    );
    let errors = files.errors("bad.conf");
    assert!(
        errors[0].contains("expected first_use or worker_start"),
        "{errors:#?}"
    );
}
