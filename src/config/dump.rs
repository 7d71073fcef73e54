//! `-tt`: the effective configuration, every directive with its value after defaults,
//! substitution and path resolution, in php-fpm's order (`fpm_conf_dump`), ours after.
//! Unset values read `undefined`, as in php-fpm.

use super::model::{Config, ErrorLog, GlobalConfig, ListenAddress, PoolConfig, RlimitCore};
use std::fmt::Display;
use std::path::PathBuf;
use std::time::Duration;

pub(super) fn render(config: &Config) -> String {
    let mut out = Dump(String::new());
    out.global(&config.global);
    for pool in &config.pools {
        out.0.push('\n');
        out.pool(pool);
    }
    out.0
}

struct Dump(String);

const UNDEFINED: &str = "undefined";

fn seconds(duration: Duration) -> String {
    format!("{}s", duration.as_secs())
}

fn yes_no(flag: bool) -> &'static str {
    if flag { "yes" } else { "no" }
}

fn or_undefined<T: Display>(value: Option<T>) -> String {
    value.map_or_else(|| UNDEFINED.to_string(), |value| value.to_string())
}

fn path_or_undefined(path: &Option<PathBuf>) -> String {
    or_undefined(path.as_ref().map(|path| path.display()))
}

fn rlimit_core(limit: Option<RlimitCore>) -> String {
    match limit {
        None => UNDEFINED.to_string(),
        Some(RlimitCore::Unlimited) => "unlimited".to_string(),
        Some(RlimitCore::Bytes(bytes)) => bytes.to_string(),
    }
}

/// Words with blanks or quotes are written in double quotes, as `cgi.interpreter[]` reads them.
fn command_line(argv: &[String]) -> String {
    let quoted: Vec<String> = argv
        .iter()
        .map(|word| {
            match word.contains(|c: char| c.is_whitespace() || c == '"') || word.is_empty() {
                true => format!("\"{word}\""),
                false => word.clone(),
            }
        })
        .collect();
    quoted.join(" ")
}

impl Dump {
    fn line(&mut self, name: &str, value: impl Display) {
        self.0.push_str(&format!("{name} = {value}\n"));
    }

    fn global(&mut self, global: &GlobalConfig) {
        self.0.push_str("[global]\n");
        self.line("pid", path_or_undefined(&global.pid));
        let error_log = match &global.error_log {
            ErrorLog::Stderr => "(stderr)".to_string(),
            ErrorLog::Syslog => "syslog".to_string(),
            ErrorLog::File(path) => path.display().to_string(),
        };
        self.line("error_log", error_log);
        self.line("syslog.ident", &global.syslog_ident);
        self.line("syslog.facility", &global.syslog_facility);
        self.line("log_buffering", yes_no(global.log_buffering));
        self.line("log_level", global.log_level.as_str());
        self.line("log_limit", global.log_limit);
        self.line(
            "emergency_restart_interval",
            seconds(global.emergency_restart_interval),
        );
        self.line(
            "emergency_restart_threshold",
            global.emergency_restart_threshold,
        );
        self.line(
            "process_control_timeout",
            seconds(global.process_control_timeout),
        );
        self.line("process.max", global.process_max);
        self.line("process.priority", or_undefined(global.process_priority));
        self.line("daemonize", yes_no(global.daemonize));
        self.line("rlimit_files", or_undefined(global.rlimit_files));
        self.line("rlimit_core", rlimit_core(global.rlimit_core));
        self.line(
            "events.mechanism",
            or_undefined(global.events_mechanism.as_ref()),
        );
        self.line("systemd_interval", seconds(global.systemd_interval));
        self.line(
            "proctitle_prefix",
            or_undefined(global.proctitle_prefix.as_ref()),
        );
        self.line(
            "metrics.listen",
            or_undefined(global.metrics_listen.as_ref()),
        );
        let clients: Vec<String> = global
            .metrics_allowed_clients
            .iter()
            .map(ToString::to_string)
            .collect();
        let clients = (!clients.is_empty()).then(|| clients.join(","));
        self.line("metrics.allowed_clients", or_undefined(clients));
    }

    fn pool(&mut self, pool: &PoolConfig) {
        self.0.push_str(&format!("[{}]\n", pool.name));
        self.line("prefix", path_or_undefined(&pool.prefix));
        self.line("user", or_undefined(pool.user.as_ref()));
        self.line("group", or_undefined(pool.group.as_ref()));
        self.line("listen", &pool.listen);
        self.line("listen.backlog", pool.listen_backlog);
        self.line(
            "listen.acl_users",
            or_undefined(pool.listen_acl_users.as_ref()),
        );
        self.line(
            "listen.acl_groups",
            or_undefined(pool.listen_acl_groups.as_ref()),
        );
        self.line("listen.owner", or_undefined(pool.listen_owner.as_ref()));
        self.line("listen.group", or_undefined(pool.listen_group.as_ref()));
        self.line("listen.mode", format!("{:04o}", pool.listen_mode));
        let clients: Vec<String> = pool
            .listen_allowed_clients
            .iter()
            .map(ToString::to_string)
            .collect();
        let clients = (!clients.is_empty()).then(|| clients.join(","));
        self.line("listen.allowed_clients", or_undefined(clients));
        self.line("listen.setfib", or_undefined(pool.listen_setfib));
        self.line("process.priority", or_undefined(pool.process_priority));
        self.line("process.dumpable", yes_no(pool.process_dumpable));
        self.process_manager(pool);
        self.line("pm.status_path", or_undefined(pool.pm_status_path.as_ref()));
        self.line(
            "pm.status_listen",
            or_undefined(pool.pm_status_listen.as_ref().map(ListenAddress::to_string)),
        );
        self.line("ping.path", or_undefined(pool.ping_path.as_ref()));
        self.line("ping.response", &pool.ping_response);
        self.logs(pool);
        self.line("rlimit_files", or_undefined(pool.rlimit_files));
        self.line("rlimit_core", rlimit_core(pool.rlimit_core));
        self.line("chroot", path_or_undefined(&pool.chroot));
        self.line("chdir", path_or_undefined(&pool.chdir));
        self.line("catch_workers_output", yes_no(pool.catch_workers_output));
        self.line(
            "decorate_workers_output",
            yes_no(pool.decorate_workers_output),
        );
        self.line("clear_env", yes_no(pool.clear_env));
        self.line(
            "security.limit_extensions",
            pool.security_limit_extensions.join(" "),
        );
        self.line("apparmor_hat", or_undefined(pool.apparmor_hat.as_ref()));
        for (name, value) in &pool.env {
            self.line(&format!("env[{name}]"), value);
        }
        for setting in &pool.php_settings {
            let kind = if setting.admin {
                "php_admin_value"
            } else {
                "php_value"
            };
            self.line(&format!("{kind}[{}]", setting.name), &setting.value);
        }
        self.cgi(pool);
    }

    fn process_manager(&mut self, pool: &PoolConfig) {
        self.line("pm", pool.pm.as_str());
        self.line("pm.max_children", pool.pm_max_children);
        self.line("pm.start_servers", pool.pm_start_servers);
        self.line("pm.min_spare_servers", pool.pm_min_spare_servers);
        self.line("pm.max_spare_servers", pool.pm_max_spare_servers);
        self.line("pm.max_spawn_rate", pool.pm_max_spawn_rate);
        self.line(
            "pm.process_idle_timeout",
            seconds(pool.pm_process_idle_timeout),
        );
        self.line("pm.max_requests", pool.pm_max_requests);
    }

    fn logs(&mut self, pool: &PoolConfig) {
        self.line("access.log", path_or_undefined(&pool.access_log));
        self.line("access.format", &pool.access_format);
        for path in &pool.access_suppress_path {
            self.line("access.suppress_path[]", path);
        }
        self.line("slowlog", path_or_undefined(&pool.slowlog));
        self.line(
            "request_slowlog_timeout",
            seconds(pool.request_slowlog_timeout),
        );
        self.line(
            "request_slowlog_trace_depth",
            pool.request_slowlog_trace_depth,
        );
        self.line(
            "request_slowlog_trace_command",
            or_undefined(pool.request_slowlog_trace_command.as_ref()),
        );
        self.line(
            "request_terminate_timeout",
            seconds(pool.request_terminate_timeout),
        );
        self.line(
            "request_terminate_timeout_track_finished",
            yes_no(pool.request_terminate_timeout_track_finished),
        );
        self.line("request_queue_timeout", seconds(pool.request_queue_timeout));
    }

    fn cgi(&mut self, pool: &PoolConfig) {
        for interpreter in &pool.cgi.interpreters {
            let name = format!("cgi.interpreter[{}]", interpreter.extension);
            self.line(&name, command_line(&interpreter.argv));
        }
        for app in &pool.cgi.fastcgi_apps {
            let name = match app.extension.as_str() {
                "" => "cgi.fastcgi_app".to_string(),
                extension => format!("cgi.fastcgi_app[{extension}]"),
            };
            self.line(&name, command_line(&app.argv));
        }
        self.line(
            "cgi.fastcgi_app_max_requests",
            pool.cgi.fastcgi_app_max_requests.to_string(),
        );
        self.line("cgi.fastcgi_app_start", pool.cgi.fastcgi_app_start.as_str());
        let roots: Vec<String> = pool
            .cgi
            .allowed_roots
            .iter()
            .map(|root| root.display().to_string())
            .collect();
        let roots = (!roots.is_empty()).then(|| roots.join(" "));
        self.line("cgi.allowed_roots", or_undefined(roots));
        self.line("cgi.stderr", pool.cgi.stderr.as_str());
        self.line(
            "cgi.request_header_timeout",
            seconds(pool.cgi.request_header_timeout),
        );
        self.line("cgi.held_output_limit", size(pool.cgi.held_output_limit));
    }
}

/// A size as the config writes it: the largest k/M/G unit that divides it exactly.
fn size(bytes: u64) -> String {
    for (unit, suffix) in [(1u64 << 30, "G"), (1 << 20, "M"), (1 << 10, "k")] {
        if bytes != 0 && bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{Interpreter, PhpSetting};

    fn sample() -> Config {
        let mut pool = PoolConfig::new("www", ListenAddress::AnyPort(9000));
        pool.env.push(("PATH".into(), "/bin".into()));
        pool.php_settings.push(PhpSetting {
            name: "memory_limit".into(),
            value: "32M".into(),
            admin: true,
        });
        pool.access_suppress_path.push("/ping".into());
        pool.cgi.fastcgi_apps.push(Interpreter {
            extension: ".php".into(),
            argv: vec!["/usr/bin/php-cgi".into()],
        });
        pool.cgi.interpreters.push(Interpreter {
            extension: ".x".into(),
            argv: vec!["/opt/my app/run".into(), "-q".into()],
        });
        Config {
            path: "/etc/cgi-fpm.conf".into(),
            prefix: None,
            global: GlobalConfig::default(),
            pools: vec![
                pool.clone(),
                PoolConfig::new("api", ListenAddress::Unix("/run/api.sock".into())),
            ],
            warnings: Vec::new(),
        }
    }

    #[test]
    fn sections_and_values_in_order() {
        let text = render(&sample());
        assert!(text.starts_with("[global]\npid = undefined\nerror_log = (stderr)\n"));
        assert!(text.contains("\n\n[www]\nprefix = undefined\n"));
        assert!(text.contains("\n\n[api]\n"));
        assert!(text.contains("listen = 9000\n"));
        assert!(text.contains("listen = /run/api.sock\n"));
        assert!(text.contains("listen.mode = 0660\n"));
        assert!(text.contains("pm.process_idle_timeout = 10s\n"));
        assert!(text.contains("systemd_interval = 10s\n"));
        assert!(text.contains("access.format = %R - %u %t \"%m %r\" %s\n"));
        assert!(text.contains("access.suppress_path[] = /ping\n"));
        assert!(text.contains("env[PATH] = /bin\n"));
        assert!(text.contains("php_admin_value[memory_limit] = 32M\n"));
        assert!(text.contains("cgi.interpreter[.x] = \"/opt/my app/run\" -q\n"));
        assert!(text.contains("cgi.fastcgi_app[.php] = /usr/bin/php-cgi\n"));
        assert!(text.contains("cgi.fastcgi_app_max_requests = 0\n"));
        assert!(text.contains("cgi.fastcgi_app_start = first_use\n"));
        assert!(text.contains("cgi.stderr = fastcgi\n"));
        assert!(text.contains("cgi.request_header_timeout = 30s\n"));
        assert!(text.contains("request_queue_timeout = 0s\n"));
        assert!(text.contains("cgi.held_output_limit = 64M\n"));
        assert!(text.contains("clear_env = yes\n"));
        let www = text.find("[www]").unwrap_or(0);
        let listen = text[www..].find("\nlisten = ").unwrap_or(0);
        let pm = text[www..].find("\npm = ").unwrap_or(0);
        assert!(listen < pm, "listen comes before pm, as in php-fpm");
    }

    #[test]
    fn every_line_is_name_equals_value() {
        for line in render(&sample()).lines() {
            let is_header = line.starts_with('[') && line.ends_with(']');
            assert!(
                line.is_empty() || is_header || line.contains(" = "),
                "{line}"
            );
        }
    }
}
