//! Command-line options, php-fpm's flags.

use std::path::PathBuf;

pub const DEFAULT_CONFIG: &str = "/etc/cgi-fpm.conf";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub config: Option<PathBuf>,
    pub prefix: Option<PathBuf>,
    pub pid: Option<PathBuf>,
    /// `-t` once: check; twice: check and dump.
    pub test: u8,
    pub daemonize: Option<bool>,
    pub force_stderr: bool,
    pub allow_root: bool,
    pub version: bool,
    pub help: bool,
    /// `--ping [ADDRESS]`: check the pools (or one address) and exit.
    pub ping: Option<Ping>,
    /// `--ping-timeout SECONDS`.
    pub ping_timeout: Option<std::time::Duration>,
}

/// What `--ping` asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ping {
    /// Every pool of the configuration.
    Pools,
    /// One FastCGI address (`/path.sock` or `host:port`).
    Address(String),
}

impl Options {
    /// The configuration file: `-y`, else `<prefix>/etc/cgi-fpm.conf` with `-p`, else
    /// /etc/cgi-fpm.conf.
    pub fn config_path(&self) -> PathBuf {
        if let Some(c) = &self.config {
            return c.clone();
        }
        match &self.prefix {
            Some(p) => p.join("etc/cgi-fpm.conf"),
            None => PathBuf::from(DEFAULT_CONFIG),
        }
    }
}

pub const USAGE: &str = "\
Usage: cgi-fpm [-y FILE] [-p DIR] [-g FILE] [-t[t]] [-D|-F] [-O] [-R] [-v] [-h]
       cgi-fpm [-y FILE] [-p DIR] --ping [ADDRESS] [--ping-timeout SECONDS]

  -y, --fpm-config FILE      configuration file (default /etc/cgi-fpm.conf,
                             or PREFIX/etc/cgi-fpm.conf with -p)
  -p, --prefix DIR           base for relative paths in the configuration
  -g, --pid FILE             pid file (overrides the configuration's 'pid')
  -t, --test                 check the configuration and exit; -tt also dumps it
  -D, --daemonize            run in the background (overrides 'daemonize')
  -F, --nodaemonize          stay in the foreground (overrides 'daemonize')
  -O, --force-stderr         log to stderr even when 'error_log' is set
  -R, --allow-to-run-as-root let pools run as root
      --ping [ADDRESS]       ask every pool of the configuration over FastCGI (its
                             ping.path, else GET_VALUES), print one line per pool,
                             exit 0 only if all answered; or ask ADDRESS alone
      --ping-timeout SECONDS how long each pool may take to answer (default 5)
  -v, --version              print the version
  -h, --help                 print this help
";

/// Parse arguments (without the program name).
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Options, String> {
    let mut o = Options::default();
    let mut args = args.into_iter().peekable();
    while let Some(arg) = args.next() {
        // --ping takes an optional value: the next argument when it is not an option.
        if arg == "--ping" {
            o.ping = Some(match args.next_if(|next| !next.starts_with('-')) {
                Some(address) => Ping::Address(address),
                None => Ping::Pools,
            });
            continue;
        }
        // --name=value and -yFILE forms as well as separate values.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<PathBuf, String> {
            inline
                .clone()
                .or_else(|| args.next())
                .map(PathBuf::from)
                .ok_or_else(|| format!("option '{name}' requires a value"))
        };
        match flag.as_str() {
            "-y" | "--fpm-config" => o.config = Some(value(&flag)?),
            "-p" | "--prefix" => o.prefix = Some(value(&flag)?),
            "-g" | "--pid" => o.pid = Some(value(&flag)?),
            "-t" | "--test" => o.test = o.test.saturating_add(1),
            "-tt" => o.test = o.test.saturating_add(2),
            "-D" | "--daemonize" => o.daemonize = Some(true),
            "-F" | "--nodaemonize" => o.daemonize = Some(false),
            "-O" | "--force-stderr" => o.force_stderr = true,
            "-R" | "--allow-to-run-as-root" => o.allow_root = true,
            "--ping" => {
                // Only `--ping=ADDRESS` reaches here: the bare flag is handled above.
                let address = value(&flag)?.to_string_lossy().into_owned();
                if address.is_empty() {
                    return Err("option '--ping=' needs an address".into());
                }
                o.ping = Some(Ping::Address(address));
            }
            "--ping-timeout" => {
                let text = value(&flag)?.to_string_lossy().into_owned();
                let seconds: f64 = text
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s <= 3600.0)
                    .ok_or_else(|| {
                        format!("option '--ping-timeout': '{text}' is not a number of seconds in (0, 3600]")
                    })?;
                o.ping_timeout = Some(std::time::Duration::from_secs_f64(seconds));
            }
            "-v" | "--version" => o.version = true,
            "-h" | "--help" => o.help = true,
            s if s.len() > 2
                && (s.starts_with("-y") || s.starts_with("-p") || s.starts_with("-g")) =>
            {
                let path = Some(PathBuf::from(&s[2..]));
                match &s[..2] {
                    "-y" => o.config = path,
                    "-p" => o.prefix = path,
                    _ => o.pid = path,
                }
            }
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Options, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn php_fpm_flags() {
        let o = p(&[
            "-y",
            "/x.conf",
            "-p",
            "/pre",
            "-g",
            "/run/x.pid",
            "-F",
            "-O",
            "-R",
        ])
        .unwrap();
        assert_eq!(o.config, Some(PathBuf::from("/x.conf")));
        assert_eq!(o.prefix, Some(PathBuf::from("/pre")));
        assert_eq!(o.pid, Some(PathBuf::from("/run/x.pid")));
        assert_eq!(o.daemonize, Some(false));
        assert!(o.force_stderr && o.allow_root);
    }

    #[test]
    fn long_forms_and_attached_values() {
        let o = p(&["--fpm-config=/a.conf", "--prefix", "/p", "-g/g.pid"]).unwrap();
        assert_eq!(o.config, Some(PathBuf::from("/a.conf")));
        assert_eq!(o.prefix, Some(PathBuf::from("/p")));
        assert_eq!(o.pid, Some(PathBuf::from("/g.pid")));
    }

    #[test]
    fn test_flag_counts() {
        assert_eq!(p(&["-t"]).unwrap().test, 1);
        assert_eq!(p(&["-t", "-t"]).unwrap().test, 2);
        assert_eq!(p(&["-tt"]).unwrap().test, 2);
    }

    #[test]
    fn config_path_defaults() {
        assert_eq!(p(&[]).unwrap().config_path(), PathBuf::from(DEFAULT_CONFIG));
        assert_eq!(
            p(&["-p", "/opt/c"]).unwrap().config_path(),
            PathBuf::from("/opt/c/etc/cgi-fpm.conf")
        );
    }

    #[test]
    fn ping_with_or_without_an_address() {
        assert_eq!(p(&["--ping"]).unwrap().ping, Some(Ping::Pools));
        let o = p(&["--ping", "-y", "/x.conf"]).unwrap();
        assert_eq!(o.ping, Some(Ping::Pools));
        assert_eq!(o.config, Some(PathBuf::from("/x.conf")));
        assert_eq!(
            p(&["--ping", "/run/a.sock"]).unwrap().ping,
            Some(Ping::Address("/run/a.sock".into()))
        );
        assert_eq!(
            p(&["--ping=127.0.0.1:9000"]).unwrap().ping,
            Some(Ping::Address("127.0.0.1:9000".into()))
        );
        let o = p(&["--ping-timeout", "0.5", "--ping"]).unwrap();
        assert_eq!(o.ping_timeout, Some(std::time::Duration::from_millis(500)));
        for bad in ["0", "-1", "x", "inf", "NaN"] {
            assert!(p(&["--ping-timeout", bad]).is_err(), "{bad}");
        }
        assert!(p(&["--ping="]).is_err());
    }

    #[test]
    fn errors() {
        assert!(p(&["-y"]).unwrap_err().contains("requires a value"));
        assert!(p(&["--bogus"]).unwrap_err().contains("unknown option"));
    }
}
