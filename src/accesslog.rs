//! The access log: php-fpm's `access.format` specifiers, parsed once when the config loads
//! and rendered once per request into one line. Lines are never truncated (php-fpm cuts
//! them at 1024 bytes).
//!
//! | spec | value |
//! |---|---|
//! | `%%` | a percent sign |
//! | `%C`, `%{user\|system\|total}C` | CPU used by the CGI child, % of the request's duration |
//! | `%d`, `%{seconds\|mili\|micro…}d` | request duration |
//! | `%{NAME}e` | a FastCGI param (`-` when absent) |
//! | `%f` | script filename | `%l` content length | `%m` method | `%n` pool |
//! | `%M`, `%{bytes\|kilo\|mega…}M` | peak memory (max RSS) of the CGI child |
//! | `%{Header}o` | a response header | `%p` worker pid | `%P` master pid |
//! | `%q` query string | `%Q` `?` when there is one | `%r` URI without the query |
//! | `%R` | REMOTE_ADDR (the client; php-fpm logs the web server's address here) |
//! | `%s` status | `%t`/`%T`, `%{strftime}t` start/end time | `%u` REMOTE_USER |

use crate::fastcgi::Params;
use std::ffi::CString;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DEFAULT_TIME_FORMAT: &str = "%d/%b/%Y:%H:%M:%S %z";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cpu {
    Total,
    User,
    System,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DurationUnit {
    Seconds,
    Millis,
    Micros,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemoryUnit {
    Bytes,
    Kilo,
    Mega,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    Cpu(Cpu),
    Duration(DurationUnit),
    Param(String),
    Script,
    ContentLength,
    Method,
    Memory(MemoryUnit),
    Pool,
    ResponseHeader(String),
    Pid,
    MasterPid,
    Query,
    QueryMark,
    Uri,
    Remote,
    Status,
    /// Start (`%t`) or end (`%T`) time with a strftime pattern.
    Time {
        end: bool,
        pattern: CString,
    },
    User,
}

/// A parsed `access.format`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    tokens: Vec<Token>,
}

/// Everything a line can show about one finished request.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub pool: &'a str,
    pub params: &'a Params,
    pub script: &'a str,
    pub status: u16,
    pub response_headers: &'a [(String, String)],
    pub started: SystemTime,
    pub ended: SystemTime,
    pub cpu_user: Duration,
    pub cpu_system: Duration,
    pub max_rss_bytes: u64,
    pub worker_pid: u32,
    pub master_pid: u32,
}

fn pick<T: Copy>(
    letter: char,
    modifier: Option<&str>,
    default: T,
    choices: &[(&str, T)],
) -> Result<T, String> {
    let Some(modifier) = modifier else {
        return Ok(default);
    };
    choices
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(modifier))
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
            format!(
                "%{{{modifier}}}{letter}: the modifier must be one of {}",
                names.join(", ")
            )
        })
}

fn token_for(letter: char, modifier: Option<&str>) -> Result<Token, String> {
    let named = |kind: fn(String) -> Token| match modifier {
        Some(name) if !name.is_empty() => Ok(kind(name.to_string())),
        _ => Err(format!("%{letter} needs a name: %{{NAME}}{letter}")),
    };
    let plain = |token: Token| match modifier {
        None => Ok(token),
        Some(_) => Err(format!("%{letter} takes no {{modifier}}")),
    };
    match letter {
        'C' => pick(
            letter,
            modifier,
            Cpu::Total,
            &[
                ("total", Cpu::Total),
                ("user", Cpu::User),
                ("system", Cpu::System),
            ],
        )
        .map(Token::Cpu),
        'd' => pick(
            letter,
            modifier,
            DurationUnit::Seconds,
            &[
                ("seconds", DurationUnit::Seconds),
                ("milliseconds", DurationUnit::Millis),
                ("miliseconds", DurationUnit::Millis),
                ("milli", DurationUnit::Millis),
                ("mili", DurationUnit::Millis),
                ("microseconds", DurationUnit::Micros),
                ("micro", DurationUnit::Micros),
            ],
        )
        .map(Token::Duration),
        'M' => pick(
            letter,
            modifier,
            MemoryUnit::Bytes,
            &[
                ("bytes", MemoryUnit::Bytes),
                ("kilobytes", MemoryUnit::Kilo),
                ("kilo", MemoryUnit::Kilo),
                ("megabytes", MemoryUnit::Mega),
                ("mega", MemoryUnit::Mega),
            ],
        )
        .map(Token::Memory),
        'e' => named(Token::Param),
        'o' => named(Token::ResponseHeader),
        't' | 'T' => {
            let pattern = modifier
                .filter(|m| !m.is_empty())
                .unwrap_or(DEFAULT_TIME_FORMAT);
            let pattern = CString::new(pattern)
                .map_err(|_| format!("%{letter}: the time format contains a NUL byte"))?;
            Ok(Token::Time {
                end: letter == 'T',
                pattern,
            })
        }
        '%' => plain(Token::Literal("%".into())),
        'f' => plain(Token::Script),
        'l' => plain(Token::ContentLength),
        'm' => plain(Token::Method),
        'n' => plain(Token::Pool),
        'p' => plain(Token::Pid),
        'P' => plain(Token::MasterPid),
        'q' => plain(Token::Query),
        'Q' => plain(Token::QueryMark),
        'r' => plain(Token::Uri),
        'R' => plain(Token::Remote),
        's' => plain(Token::Status),
        'u' => plain(Token::User),
        other => Err(format!("unknown format letter %{other}")),
    }
}

impl Format {
    pub fn parse(format: &str) -> Result<Format, String> {
        if format.is_empty() {
            return Err("must not be empty".to_string());
        }
        let mut tokens = Vec::new();
        let mut literal = String::new();
        let mut chars = format.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                literal.push(c);
                continue;
            }
            let mut modifier = None;
            let mut letter = chars.next();
            if letter == Some('{') {
                let mut inside = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    inside.push(c);
                }
                letter = chars.next();
                if !closed || letter.is_none() {
                    return Err("missing '}' or format letter after '%{'".to_string());
                }
                modifier = Some(inside);
            }
            let Some(letter) = letter else {
                return Err("a lone '%' ends the format (write '%%' for a percent sign)".into());
            };
            match token_for(letter, modifier.as_deref())? {
                Token::Literal(s) => literal.push_str(&s),
                token => {
                    if !literal.is_empty() {
                        tokens.push(Token::Literal(std::mem::take(&mut literal)));
                    }
                    tokens.push(token);
                }
            }
        }
        if !literal.is_empty() {
            tokens.push(Token::Literal(literal));
        }
        Ok(Format { tokens })
    }

    /// The line for `entry`, newline included.
    pub fn render(&self, entry: &Entry<'_>) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        let param = |name: &str| entry.params.get(name).filter(|v| !v.is_empty());
        let duration = entry
            .ended
            .duration_since(entry.started)
            .unwrap_or(Duration::ZERO);
        for token in &self.tokens {
            match token {
                Token::Literal(s) => out.extend_from_slice(s.as_bytes()),
                Token::Cpu(kind) => {
                    let used = match kind {
                        Cpu::Total => entry.cpu_user + entry.cpu_system,
                        Cpu::User => entry.cpu_user,
                        Cpu::System => entry.cpu_system,
                    };
                    let pct = if duration.is_zero() {
                        0.0
                    } else {
                        used.as_secs_f64() / duration.as_secs_f64() * 100.0
                    };
                    push_fmt(&mut out, format_args!("{pct:.2}"));
                }
                Token::Duration(unit) => match unit {
                    DurationUnit::Seconds => {
                        push_fmt(&mut out, format_args!("{:.3}", duration.as_secs_f64()))
                    }
                    DurationUnit::Millis => push_fmt(
                        &mut out,
                        format_args!("{:.3}", duration.as_secs_f64() * 1000.0),
                    ),
                    DurationUnit::Micros => {
                        push_fmt(&mut out, format_args!("{}", duration.as_micros()))
                    }
                },
                Token::Param(name) => push_or_dash(&mut out, param(name)),
                Token::Script => push_or_dash(
                    &mut out,
                    Some(entry.script.as_bytes()).filter(|s| !s.is_empty()),
                ),
                Token::ContentLength => {
                    let len = param("CONTENT_LENGTH")
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .unwrap_or(0);
                    push_fmt(&mut out, format_args!("{len}"));
                }
                Token::Method => push_or_dash(&mut out, param("REQUEST_METHOD")),
                Token::Memory(unit) => {
                    let n = match unit {
                        MemoryUnit::Bytes => entry.max_rss_bytes,
                        MemoryUnit::Kilo => entry.max_rss_bytes / 1024,
                        MemoryUnit::Mega => entry.max_rss_bytes / 1024 / 1024,
                    };
                    push_fmt(&mut out, format_args!("{n}"));
                }
                Token::Pool => out.extend_from_slice(entry.pool.as_bytes()),
                Token::ResponseHeader(name) => push_or_dash(
                    &mut out,
                    entry
                        .response_headers
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.as_bytes())
                        .filter(|v| !v.is_empty()),
                ),
                Token::Pid => push_fmt(&mut out, format_args!("{}", entry.worker_pid)),
                Token::MasterPid => push_fmt(&mut out, format_args!("{}", entry.master_pid)),
                Token::Query => {
                    crate::escape::push_escaped(&mut out, param("QUERY_STRING").unwrap_or(b""))
                }
                Token::QueryMark => {
                    if param("QUERY_STRING").is_some() {
                        out.push(b'?');
                    }
                }
                Token::Uri => {
                    let uri = param("REQUEST_URI").or_else(|| param("SCRIPT_NAME"));
                    let path = uri.map(|u| u.split(|&b| b == b'?').next().unwrap_or(u));
                    push_or_dash(&mut out, path);
                }
                Token::Remote => push_or_dash(&mut out, param("REMOTE_ADDR")),
                Token::Status => push_fmt(&mut out, format_args!("{}", entry.status)),
                Token::Time { end, pattern } => {
                    let at = if *end { entry.ended } else { entry.started };
                    let secs = at
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs() as nix::libc::time_t)
                        .unwrap_or(0);
                    out.extend_from_slice(crate::clock::strftime_at(secs, pattern).as_bytes());
                }
                Token::User => push_or_dash(&mut out, param("REMOTE_USER")),
            }
        }
        out.push(b'\n');
        out
    }
}

fn push_or_dash(out: &mut Vec<u8>, value: Option<&[u8]>) {
    // A newline in a value would forge a second log line, a tab shift the fields, an
    // escape sequence drive the reader's terminal: control bytes are written as nginx
    // writes them (`\x0A`).
    match value {
        Some(v) => crate::escape::push_escaped(out, v),
        None => out.push(b'-'),
    }
}

fn push_fmt(out: &mut Vec<u8>, args: std::fmt::Arguments<'_>) {
    let mut s = String::new();
    let _ = s.write_fmt(args);
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params::from_pairs(
            [
                ("REQUEST_METHOD", "POST"),
                ("REQUEST_URI", "/cgi/app.sh?x=1"),
                ("QUERY_STRING", "x=1"),
                ("CONTENT_LENGTH", "42"),
                ("REMOTE_ADDR", "192.0.2.7"),
                ("REMOTE_USER", "alice"),
                ("HTTP_USER_AGENT", "agent/1.0"),
            ]
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes())),
        )
    }

    fn entry<'a>(params: &'a Params, headers: &'a [(String, String)]) -> Entry<'a> {
        let started = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        Entry {
            pool: "www",
            params,
            script: "/srv/cgi/app.sh",
            status: 201,
            response_headers: headers,
            started,
            ended: started + Duration::from_millis(1500),
            cpu_user: Duration::from_millis(300),
            cpu_system: Duration::from_millis(150),
            max_rss_bytes: 3 * 1024 * 1024,
            worker_pid: 1234,
            master_pid: 1000,
        }
    }

    #[test]
    fn every_specifier() {
        let p = params();
        let headers = vec![("Content-Type".to_string(), "text/plain".to_string())];
        let e = entry(&p, &headers);
        let f = Format::parse(
            "%% %C %{user}C %{system}C %d %{mili}d %{micro}d %{HTTP_USER_AGENT}e %{NOPE}e %f %l %m \
             %M %{kilo}M %{mega}M %n %{Content-Type}o %{X-None}o %p %P %q %Q %r %R %s %{%s}t %{%s}T %u",
        )
        .unwrap();
        let line = String::from_utf8(f.render(&e)).unwrap();
        assert_eq!(
            line,
            "% 30.00 20.00 10.00 1.500 1500.000 1500000 agent/1.0 - /srv/cgi/app.sh 42 POST \
             3145728 3072 3 www text/plain - 1234 1000 x=1 ? /cgi/app.sh 192.0.2.7 201 \
             1700000000 1700000001 alice\n"
        );
    }

    #[test]
    fn the_default_format() {
        let p = params();
        let e = entry(&p, &[]);
        let line = String::from_utf8(
            Format::parse(crate::config::DEFAULT_ACCESS_FORMAT)
                .unwrap()
                .render(&e),
        )
        .unwrap();
        assert!(line.starts_with("192.0.2.7 - alice "), "{line}");
        assert!(line.ends_with(" \"POST /cgi/app.sh\" 201\n"), "{line}");
    }

    #[test]
    fn lines_are_never_truncated_and_cannot_be_forged() {
        let long = "a".repeat(5000);
        let p = Params::from_pairs([
            (&b"REQUEST_URI"[..], long.as_bytes()),
            (b"HTTP_X", b"one\ntwo"),
        ]);
        let e = entry(&p, &[]);
        let line = Format::parse("%r %{HTTP_X}e").unwrap().render(&e);
        assert_eq!(line.len(), 5000 + 1 + 10 + 1);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(line.ends_with(b" one\\x0Atwo\n"));
    }

    #[test]
    fn parse_errors() {
        for (format, expected) in [
            ("%x", "unknown format letter %x"),
            ("%e", "%e needs a name"),
            ("%{}o", "%o needs a name"),
            ("%{kilo}s", "%s takes no {modifier}"),
            ("%{hours}d", "modifier must be one of"),
            ("%{kilo", "missing '}'"),
            ("100%", "a lone '%'"),
        ] {
            let e = Format::parse(format).unwrap_err();
            assert!(e.contains(expected), "{format}: {e}");
        }
    }
}
