//! Directive values as php-fpm reads them. Each parser takes the text after INI unquoting
//! and `$pool` substitution and says in a few words what is wrong; the caller adds file,
//! line, section and key.

use super::model::{AppStart, ListenAddress, LogLevel, ProcessManager, RlimitCore, StderrMode};
use super::suggest::hint;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// yes/on/true/1 and no/off/false/none/0/empty, in any case: the words PHP's INI layer maps
/// to "1" and "", plus 0, which php-fpm also takes.
pub(super) fn boolean(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "yes" | "on" | "true" => Ok(true),
        "0" | "no" | "off" | "false" | "none" | "" => Ok(false),
        _ => Err(format!(
            "expected yes or no (also on/off, true/false, 1/0){}",
            hint(value, ["yes", "no", "on", "off", "true", "false"])
        )),
    }
}

/// A whole number within `[min, max]`. Like php-fpm, only digits with an optional leading `-`.
pub(super) fn integer<T>(value: &str, min: T, max: T) -> Result<T, String>
where
    T: Copy + Into<i128> + TryFrom<i128> + std::fmt::Display,
{
    let digits = value.strip_prefix('-').unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err("not a whole number".to_string());
    }
    let too_large = || format!("must be at most {max}");
    let number: i128 = value.parse().map_err(|_| too_large())?;
    if number < min.into() {
        return Err(format!("must be at least {min}"));
    }
    if number > max.into() {
        return Err(too_large());
    }
    T::try_from(number).map_err(|_| too_large())
}

/// A size in bytes: digits with an optional k, m or g suffix (either case, powers of 1024),
/// as PHP writes its shorthand sizes (`64M`).
pub(super) fn size(value: &str) -> Result<u64, String> {
    let (digits, unit) = match value.chars().last().map(|c| c.to_ascii_lowercase()) {
        Some('k') => (&value[..value.len() - 1], 1u64 << 10),
        Some('m') => (&value[..value.len() - 1], 1 << 20),
        Some('g') => (&value[..value.len() - 1], 1 << 30),
        _ => (value, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err("expected a size in bytes, optionally with k, M or G (64M)".to_string());
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| "size too large".to_string())
}

/// A whole number of seconds with an optional single suffix s, m, h or d, as php-fpm's
/// `fpm_conf_set_time` reads it; `1h30m` is not a duration.
pub(super) fn duration(value: &str) -> Result<Duration, String> {
    let (digits, seconds_per_unit) = match value.chars().last() {
        Some('s') => (&value[..value.len() - 1], 1),
        Some('m') => (&value[..value.len() - 1], 60),
        Some('h') => (&value[..value.len() - 1], 60 * 60),
        Some('d') => (&value[..value.len() - 1], 24 * 60 * 60),
        Some(c) if c.is_ascii_digit() => (value, 1),
        Some(other) => return Err(format!("unknown unit '{other}': use s, m, h or d")),
        None => return Err("empty duration".to_string()),
    };
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err("expected a whole number with an optional unit s, m, h or d".to_string());
    }
    let too_long = || "duration too long".to_string();
    let count: u64 = digits.parse().map_err(|_| too_long())?;
    let seconds = count.checked_mul(seconds_per_unit).ok_or_else(too_long)?;
    Ok(Duration::from_secs(seconds))
}

/// php-fpm's rule for the kind of socket: an address with a `:`, or made only of digits,
/// is TCP; anything else is a unix socket path.
pub(super) fn is_inet_address(address: &str) -> bool {
    address.contains(':') || address.bytes().all(|byte| byte.is_ascii_digit())
}

/// `/path`, `ip:port`, `[ipv6]:port`, `host:port`, `*:port` or a bare `port`.
///
/// php-fpm splits at the last `:`, strips `[...]`, and gives the host to getaddrinfo, keeping
/// the first address; we resolve names the same way, once, at load time. For `*` it does the
/// same, and glibc answers with the loopback addresses (measured: php-fpm 8.2 binds `[::1]`),
/// an accident nobody writes `*` for. We take `*` to mean every IPv4 address, 0.0.0.0.
pub(super) fn listen_address(value: &str) -> Result<ListenAddress, String> {
    if value.is_empty() {
        return Err("empty address".to_string());
    }
    if !is_inet_address(value) {
        return Ok(ListenAddress::Unix(PathBuf::from(value)));
    }
    let Some((host, port_text)) = value.rsplit_once(':') else {
        return Ok(ListenAddress::AnyPort(port(value)?));
    };
    let port = port(port_text)?;
    let host = host
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(format!(
            "missing host before ':{port}' (a bare port listens on every address)"
        ));
    }
    if host == "*" {
        return Ok(ListenAddress::Tcp(SocketAddr::new(
            Ipv4Addr::UNSPECIFIED.into(),
            port,
        )));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ListenAddress::Tcp(SocketAddr::new(ip, port)));
    }
    let mut addresses = (host, port)
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve '{host}': {error}"))?;
    addresses
        .next()
        .map(ListenAddress::Tcp)
        .ok_or_else(|| format!("'{host}' has no address"))
}

/// Whether `value` is the `*:port` form that php-fpm would have bound to loopback.
pub(super) fn is_ipv4_wildcard(value: &str) -> bool {
    value.starts_with("*:")
}

fn port(text: &str) -> Result<u16, String> {
    let invalid = || format!("invalid port '{text}': must be between 1 and 65535");
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(invalid());
    }
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(invalid()),
    }
}

/// A permission mode in octal (`0660`, `660`), at most `0777`.
pub(super) fn octal_mode(value: &str) -> Result<u32, String> {
    let invalid = || "expected an octal mode such as 0660".to_string();
    if value.is_empty() || !value.bytes().all(|byte| (b'0'..=b'7').contains(&byte)) {
        return Err(invalid());
    }
    match u32::from_str_radix(value, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(invalid()),
    }
}

/// The entry of `table` named `value` (any case); otherwise `expected`, with a hint when
/// a name is a likely typo away.
fn one_of<T: Copy>(value: &str, table: &[(&str, T)], expected: &str) -> Result<T, String> {
    match table
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(value))
    {
        Some(&(_, found)) => Ok(found),
        None => Err(format!(
            "{expected}{}",
            hint(value, table.iter().map(|&(name, _)| name))
        )),
    }
}

pub(super) fn log_level(value: &str) -> Result<LogLevel, String> {
    let levels = [
        ("alert", LogLevel::Alert),
        ("error", LogLevel::Error),
        ("warning", LogLevel::Warning),
        ("warn", LogLevel::Warning),
        ("notice", LogLevel::Notice),
        ("debug", LogLevel::Debug),
    ];
    one_of(
        value,
        &levels,
        "expected alert, error, warning, notice or debug",
    )
}

pub(super) fn process_manager(value: &str) -> Result<ProcessManager, String> {
    let managers = [
        ("static", ProcessManager::Static),
        ("dynamic", ProcessManager::Dynamic),
        ("ondemand", ProcessManager::Ondemand),
    ];
    one_of(value, &managers, "expected static, dynamic or ondemand")
}

pub(super) fn stderr_mode(value: &str) -> Result<StderrMode, String> {
    let modes = [
        ("fastcgi", StderrMode::Fastcgi),
        ("log", StderrMode::Log),
        ("both", StderrMode::Both),
        ("discard", StderrMode::Discard),
    ];
    one_of(value, &modes, "expected fastcgi, log, both or discard")
}

pub(super) fn app_start(value: &str) -> Result<AppStart, String> {
    let modes = [
        ("first_use", AppStart::FirstUse),
        ("worker_start", AppStart::WorkerStart),
    ];
    one_of(value, &modes, "expected first_use or worker_start")
}

pub(super) fn rlimit_core(value: &str) -> Result<RlimitCore, String> {
    if value.eq_ignore_ascii_case("unlimited") {
        return Ok(RlimitCore::Unlimited);
    }
    integer(value, 0, u64::MAX)
        .map(RlimitCore::Bytes)
        .map_err(|_| {
            format!(
                "expected 'unlimited' or a number of bytes{}",
                hint(value, ["unlimited"])
            )
        })
}

const SYSLOG_FACILITIES: &[&str] = &[
    "auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news", "syslog", "user",
    "uucp", "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
];

/// A syslog(3) facility name, returned in lower case.
pub(super) fn syslog_facility(value: &str) -> Result<String, String> {
    let name = value.to_ascii_lowercase();
    if SYSLOG_FACILITIES.contains(&name.as_str()) {
        Ok(name)
    } else {
        Err(format!(
            "expected a syslog facility: {}{}",
            SYSLOG_FACILITIES.join(", "),
            hint(value, SYSLOG_FACILITIES.iter().copied())
        ))
    }
}

const EVENT_MECHANISMS: &[&str] = &["epoll", "poll", "select", "kqueue", "port", "/dev/poll"];

pub(super) fn events_mechanism(value: &str) -> Result<String, String> {
    let name = value.to_ascii_lowercase();
    if EVENT_MECHANISMS.contains(&name.as_str()) {
        Ok(name)
    } else {
        Err(format!(
            "expected one of {}{}",
            EVENT_MECHANISMS.join(", "),
            hint(value, EVENT_MECHANISMS.iter().copied())
        ))
    }
}

/// `None` for an empty value, which php-fpm treats as unset.
pub(super) fn optional_text(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_string())
}

pub(super) fn optional_path(value: &str) -> Option<PathBuf> {
    (!value.is_empty()).then(|| PathBuf::from(value))
}

pub(super) fn non_empty_text(value: &str) -> Result<String, String> {
    optional_text(value).ok_or_else(|| "must not be empty".to_string())
}

/// A file extension with its leading dot (`.php`).
pub(super) fn extension(text: &str) -> Result<String, String> {
    if text.len() < 2 || !text.starts_with('.') {
        return Err(format!(
            "'{text}' is not an extension: it must start with '.'"
        ));
    }
    Ok(text.to_string())
}

/// Blank-separated extensions; empty means any.
pub(super) fn extensions(value: &str) -> Result<Vec<String>, String> {
    value.split_whitespace().map(extension).collect()
}

/// `listen.allowed_clients`: comma-separated addresses; empty or `any` means any client.
pub(super) fn allowed_clients(value: &str) -> Result<Vec<IpAddr>, String> {
    if value.trim().eq_ignore_ascii_case("any") {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.parse()
                .map_err(|_| format!("'{item}' is not an IPv4 or IPv6 address"))
        })
        .collect()
}

/// A command line split on blanks, where `"..."` keeps blanks inside one word. The INI layer
/// has already removed its own quoting, so the double quotes must reach us inside `'...'`:
/// `cgi.interpreter[.x] = '"/opt/my app/run" --fast'`.
pub(super) fn command_words(value: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut in_quotes = false;
    for c in value.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                in_word = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_quotes {
        return Err("missing closing '\"'".to_string());
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Checks an `access.format` the way php-fpm's `fpm_log_write` does in test mode.
pub(super) fn access_format(value: &str) -> Result<String, String> {
    // One parser for checking and for logging: the access log's own.
    crate::accesslog::Format::parse(value).map(|_| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn booleans() {
        for yes in ["yes", "YES", "on", "On", "true", "TRUE", "1"] {
            assert_eq!(boolean(yes), Ok(true), "{yes}");
        }
        for no in ["no", "off", "OFF", "false", "none", "None", "0", ""] {
            assert_eq!(boolean(no), Ok(false), "{no}");
        }
        for bad in ["2", "maybe", "y", "n", " yes", "-1"] {
            assert!(boolean(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_with_php_shorthand_suffixes() {
        assert_eq!(size("0"), Ok(0));
        assert_eq!(size("4096"), Ok(4096));
        assert_eq!(size("64M"), Ok(64 << 20));
        assert_eq!(size("64m"), Ok(64 << 20));
        assert_eq!(size("2k"), Ok(2048));
        assert_eq!(size("1G"), Ok(1 << 30));
        for bad in ["", "M", "64 MB", "-1", "1.5M", "99999999999999999999G"] {
            assert!(size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn integers_with_ranges() {
        assert_eq!(integer::<u32>("0", 0, u32::MAX), Ok(0));
        assert_eq!(integer::<u32>("42", 1, 100), Ok(42));
        assert_eq!(integer::<i32>("-19", -19, 20), Ok(-19));
        assert_eq!(
            integer::<u64>("18446744073709551615", 0, u64::MAX),
            Ok(u64::MAX)
        );
        assert_eq!(integer::<u32>("0", 1, 9), Err("must be at least 1".into()));
        assert_eq!(integer::<u32>("-1", 0, 9), Err("must be at least 0".into()));
        assert_eq!(integer::<u32>("10", 0, 9), Err("must be at most 9".into()));
        assert_eq!(
            integer::<u32>("99999999999999999999999999999999999999999", 0, 9),
            Err("must be at most 9".into())
        );
        for bad in ["", "-", "12abc", "1.5", "+3", " 3", "0x10", "1e3"] {
            assert_eq!(
                integer::<u32>(bad, 0, 9),
                Err("not a whole number".into()),
                "{bad}"
            );
        }
    }

    #[test]
    fn durations() {
        let cases = [
            ("0", 0),
            ("10", 10),
            ("10s", 10),
            ("2m", 120),
            ("3h", 3 * 3600),
            ("1d", 86400),
            ("0s", 0),
        ];
        for (text, seconds) in cases {
            assert_eq!(duration(text), Ok(Duration::from_secs(seconds)), "{text}");
        }
        for bad in [
            "",
            "s",
            "1h30m",
            "-5s",
            "5x",
            "5S",
            "1.5s",
            " 5",
            "5 s",
            "99999999999999999999",
        ] {
            assert!(duration(bad).is_err(), "{bad}");
        }
        assert!(
            duration("99999999999999999d")
                .unwrap_err()
                .contains("too long")
        );
        assert!(duration("5x").unwrap_err().contains("unknown unit 'x'"));
    }

    #[test]
    fn listen_forms() {
        let tcp = |text: &str| ListenAddress::Tcp(text.parse().unwrap());
        assert_eq!(listen_address("127.0.0.1:9000"), Ok(tcp("127.0.0.1:9000")));
        assert_eq!(listen_address("[::1]:9000"), Ok(tcp("[::1]:9000")));
        assert_eq!(listen_address("::1:9000"), Ok(tcp("[::1]:9000")));
        assert_eq!(listen_address("[::]:9000"), Ok(tcp("[::]:9000")));
        assert_eq!(listen_address("*:9000"), Ok(tcp("0.0.0.0:9000")));
        assert_eq!(listen_address("9000"), Ok(ListenAddress::AnyPort(9000)));
        assert_eq!(listen_address("65535"), Ok(ListenAddress::AnyPort(65535)));
        assert_eq!(
            listen_address("/run/cgi-fpm.sock"),
            Ok(ListenAddress::Unix("/run/cgi-fpm.sock".into()))
        );
        assert_eq!(
            listen_address("run/www.sock"),
            Ok(ListenAddress::Unix("run/www.sock".into()))
        );
        match listen_address("localhost:9000") {
            Ok(ListenAddress::Tcp(address)) => {
                assert!(address.ip().is_loopback());
                assert_eq!(address.port(), 9000);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn listen_errors() {
        let cases = [
            ("0", "invalid port '0'"),
            ("0.0.0.0:0", "invalid port '0'"),
            ("65536", "invalid port '65536'"),
            ("127.0.0.1:70000", "invalid port '70000'"),
            ("foo:bar", "invalid port 'bar'"),
            ("127.0.0.1:", "invalid port ''"),
            (":9000", "missing host"),
            ("[]:9000", "missing host"),
            ("", "empty address"),
            (
                "no-such-host.invalid:9000",
                "cannot resolve 'no-such-host.invalid'",
            ),
        ];
        for (text, expected) in cases {
            let error = listen_address(text).expect_err(text);
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn domain_rule_is_php_fpms() {
        assert!(is_inet_address("9000"));
        assert!(is_inet_address("a:b"));
        assert!(is_inet_address(""));
        assert!(!is_inet_address("/tmp/sock"));
        assert!(!is_inet_address("sock9000"));
        assert!(is_ipv4_wildcard("*:9000"));
        assert!(!is_ipv4_wildcard("9000"));
    }

    #[test]
    fn modes_levels_and_enumerations() {
        assert_eq!(octal_mode("0660"), Ok(0o660));
        assert_eq!(octal_mode("660"), Ok(0o660));
        assert_eq!(octal_mode("0"), Ok(0));
        assert_eq!(octal_mode("0777"), Ok(0o777));
        for bad in ["", "0888", "abc", "01777", "0x1ff", "-660"] {
            assert!(octal_mode(bad).is_err(), "{bad}");
        }
        assert_eq!(log_level("WARN"), Ok(LogLevel::Warning));
        assert_eq!(log_level("warning"), Ok(LogLevel::Warning));
        assert_eq!(log_level("Debug"), Ok(LogLevel::Debug));
        assert_eq!(log_level("alert"), Ok(LogLevel::Alert));
        assert_eq!(log_level("error"), Ok(LogLevel::Error));
        assert_eq!(log_level("notice"), Ok(LogLevel::Notice));
        assert!(log_level("info").is_err());
        assert_eq!(process_manager("OnDemand"), Ok(ProcessManager::Ondemand));
        assert_eq!(process_manager("static"), Ok(ProcessManager::Static));
        assert_eq!(process_manager("dynamic"), Ok(ProcessManager::Dynamic));
        assert!(process_manager("adaptive").is_err());
        assert_eq!(stderr_mode("both"), Ok(StderrMode::Both));
        assert_eq!(stderr_mode("LOG"), Ok(StderrMode::Log));
        assert_eq!(stderr_mode("discard"), Ok(StderrMode::Discard));
        assert_eq!(stderr_mode("fastcgi"), Ok(StderrMode::Fastcgi));
        assert!(stderr_mode("stdout").is_err());
        assert_eq!(app_start("first_use"), Ok(AppStart::FirstUse));
        assert_eq!(app_start("Worker_Start"), Ok(AppStart::WorkerStart));
        assert!(app_start("ondemand").is_err());
        assert_eq!(rlimit_core("Unlimited"), Ok(RlimitCore::Unlimited));
        assert_eq!(rlimit_core("0"), Ok(RlimitCore::Bytes(0)));
        assert!(rlimit_core("-1").is_err());
        assert_eq!(syslog_facility("LOCAL3"), Ok("local3".into()));
        assert!(syslog_facility("local8").is_err());
        assert_eq!(events_mechanism("EPOLL"), Ok("epoll".into()));
        assert!(events_mechanism("iocp").is_err());
    }

    #[test]
    fn word_lists() {
        assert_eq!(
            extensions(".php  .cgi\t.pl"),
            Ok(vec![".php".into(), ".cgi".into(), ".pl".into()])
        );
        assert_eq!(extensions(""), Ok(vec![]));
        assert!(extensions(".php php").unwrap_err().contains("'php'"));
        assert!(extensions(".").is_err());
        assert_eq!(
            allowed_clients("127.0.0.1, ::1,,"),
            Ok(vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()])
        );
        assert_eq!(allowed_clients("any"), Ok(vec![]));
        assert_eq!(allowed_clients(""), Ok(vec![]));
        assert!(
            allowed_clients("127.0.0.1,localhost")
                .unwrap_err()
                .contains("'localhost'")
        );
        assert_eq!(
            command_words(r#"/usr/bin/env  "my prog" -x"#),
            Ok(vec!["/usr/bin/env".into(), "my prog".into(), "-x".into()])
        );
        assert_eq!(
            command_words(r#"a "" b"#),
            Ok(vec!["a".into(), "".into(), "b".into()])
        );
        assert_eq!(command_words("  "), Ok(vec![]));
        assert!(command_words(r#"/bin/x "open"#).is_err());
    }

    #[test]
    fn access_formats_are_checked_by_the_access_log_parser() {
        let good = r#"%R - %u %t "%m %r%Q%q" %s %f %{milli}d %{kilo}M %C%%"#;
        assert_eq!(access_format(good).as_deref(), Ok(good));
        let error = access_format("%x").expect_err("bad letter");
        assert!(error.contains("unknown format letter %x"), "{error}");
    }

    proptest! {
        #[test]
        fn value_parsers_never_panic(text in "\\PC{0,40}") {
            let _ = boolean(&text);
            let _ = integer::<i32>(&text, -19, 20);
            let _ = duration(&text);
            let _ = octal_mode(&text);
            let _ = access_format(&text);
            let _ = command_words(&text);
            let _ = extensions(&text);
            let _ = allowed_clients(&text);
            if !text.contains(':') {
                // Keeps DNS out of the property test: only `host:port` resolves names.
                let _ = listen_address(&text);
            }
        }

        #[test]
        fn durations_round_trip(seconds in 0u64..1_000_000, unit in prop::sample::select(vec![("s", 1u64), ("m", 60), ("h", 3600), ("d", 86400), ("", 1)])) {
            let parsed = duration(&format!("{seconds}{}", unit.0));
            prop_assert_eq!(parsed, Ok(Duration::from_secs(seconds * unit.1)));
        }
    }
}
