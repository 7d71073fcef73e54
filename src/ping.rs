//! `cgi-fpm --ping`: a health check that needs nothing but this binary.
//!
//! Each pool of the configuration is asked over FastCGI, as a web server would ask it:
//! its `ping.path` when set (the answer must be `ping.response`), else FastCGI's
//! `GET_VALUES` management record, which any worker answers. A pool that does not
//! answer within the deadline, or answers wrongly, fails the check. This runs in a
//! short-lived process of its own, never in the master, so it may use threads.

use crate::client::{Client, Stream};
use crate::config::{Config, ListenAddress};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The deadline when `--ping-timeout` is not given: below Docker's default HEALTHCHECK
/// timeout (30 s), long enough for a pool whose workers are all busy for a moment.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// What to ask and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The pool's name, or the address itself for `--ping ADDRESS`.
    pub name: String,
    pub address: Address,
    /// `ping.path` and `ping.response`, when the pool has a ping page.
    pub ping_page: Option<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp(String),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "{}", path.display()),
            Address::Tcp(address) => write!(f, "{address}"),
        }
    }
}

/// The pools of `config`, each at its listening address. A bare port listens on every
/// address, so it is asked on the loopback.
pub fn targets(config: &Config) -> Vec<Target> {
    config
        .pools
        .iter()
        .map(|pool| Target {
            name: pool.name.clone(),
            address: match &pool.listen {
                ListenAddress::Unix(path) => Address::Unix(path.clone()),
                ListenAddress::Tcp(addr) => Address::Tcp(connectable(*addr).to_string()),
                ListenAddress::AnyPort(port) => {
                    Address::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, *port)).to_string())
                }
            },
            ping_page: pool
                .ping_path
                .clone()
                .map(|path| (path, pool.ping_response.clone())),
        })
        .collect()
}

/// `0.0.0.0:9000` and `[::]:9000` (`*:9000`) are where a server listens, not where a client
/// can connect: ask the loopback of the same family.
fn connectable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let loopback = match addr {
            SocketAddr::V4(_) => std::net::IpAddr::V4(Ipv4Addr::LOCALHOST),
            SocketAddr::V6(_) => std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        };
        SocketAddr::new(loopback, addr.port())
    } else {
        addr
    }
}

/// `--ping ADDRESS`: a unix socket path (anything with a `/`) or `host:port`.
pub fn target_for_address(address: &str) -> Target {
    let parsed = if address.contains('/') {
        Address::Unix(PathBuf::from(address))
    } else {
        Address::Tcp(address.to_string())
    };
    Target {
        name: address.to_string(),
        address: parsed,
        ping_page: None,
    }
}

/// How one target answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answered correctly, in this long.
    Answered(Duration),
    /// Did not, and why.
    Failed(String),
}

/// One line for the target's outcome.
pub fn report_line(target: &Target, outcome: &Outcome) -> String {
    let what = match &target.ping_page {
        Some((path, _)) => format!("ping.path {path}"),
        None => "FastCGI GET_VALUES".to_string(),
    };
    let name = if target.name == target.address.to_string() {
        target.name.clone()
    } else {
        format!("[pool {}] {}", target.name, target.address)
    };
    match outcome {
        Outcome::Answered(took) => format!(
            "{name}: ok ({what} answered in {:.1} ms)",
            took.as_secs_f64() * 1000.0
        ),
        Outcome::Failed(why) => format!("{name}: FAILED ({what}): {why}"),
    }
}

/// Ask every target at once, each within `timeout`; outcomes in the targets' order.
pub fn check_all(targets: &[Target], timeout: Duration) -> Vec<Outcome> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = targets
            .iter()
            .map(|target| scope.spawn(move || check(target, timeout)))
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Outcome::Failed("the check itself panicked".into()))
            })
            .collect()
    })
}

/// Ask one target.
pub fn check(target: &Target, timeout: Duration) -> Outcome {
    let started = Instant::now();
    let deadline = started + timeout;
    let result = connect(&target.address, deadline).and_then(|stream| {
        let mut client = Client::from_stream(stream);
        match &target.ping_page {
            Some((path, expected)) => ask_ping_page(&mut client, path, expected),
            None => client
                .get_values(&["FCGI_MAX_CONNS"])
                .map(|_| ())
                .map_err(|e| explain("GET_VALUES", e)),
        }
    });
    match result {
        Ok(()) => Outcome::Answered(started.elapsed()),
        Err(why) => Outcome::Failed(why),
    }
}

fn explain(what: &str, e: io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("no answer to {what} within the deadline")
        }
        _ => format!("{what}: {e}"),
    }
}

fn ask_ping_page(client: &mut Client, path: &str, expected: &str) -> Result<(), String> {
    let params = [
        ("REQUEST_METHOD", "GET"),
        ("SCRIPT_NAME", path),
        ("SCRIPT_FILENAME", path),
        ("REQUEST_URI", path),
        ("QUERY_STRING", ""),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("HTTP_USER_AGENT", "cgi-fpm --ping"),
    ];
    let response = client
        .request(&params, b"", false)
        .map_err(|e| explain("the ping request", e))?;
    let status = response.status();
    let body = String::from_utf8_lossy(response.body());
    if status != 200 {
        return Err(format!("the ping page answered {status}"));
    }
    if body.trim() != expected.trim() {
        return Err(format!(
            "the ping page answered '{}', not '{}'",
            body.trim().escape_debug(),
            expected.escape_debug()
        ));
    }
    Ok(())
}

/// Connect within the deadline, with reads and writes bounded by what is left of it.
fn connect(address: &Address, deadline: Instant) -> Result<Box<dyn Stream>, String> {
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| "no answer within the deadline".to_string())
    };
    let connect_error = |e: io::Error| format!("connect: {e}");
    match address {
        Address::Unix(path) => {
            let stream = UnixStream::connect(path).map_err(connect_error)?;
            let left = left()?;
            stream
                .set_read_timeout(Some(left))
                .and_then(|()| stream.set_write_timeout(Some(left)))
                .map_err(connect_error)?;
            Ok(Box::new(stream))
        }
        Address::Tcp(text) => {
            let addrs: Vec<SocketAddr> = text
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve '{text}': {e}"))?
                .collect();
            let mut last = format!("'{text}' resolves to no address");
            for addr in addrs {
                match TcpStream::connect_timeout(&addr, left()?) {
                    Ok(stream) => {
                        let left = left()?;
                        stream
                            .set_read_timeout(Some(left))
                            .and_then(|()| stream.set_write_timeout(Some(left)))
                            .and_then(|()| stream.set_nodelay(true))
                            .map_err(connect_error)?;
                        return Ok(Box::new(stream));
                    }
                    Err(e) => last = connect_error(e),
                }
            }
            Err(last)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoolConfig;

    fn config(pools: Vec<PoolConfig>) -> Config {
        Config {
            path: "/etc/cgi-fpm.conf".into(),
            prefix: None,
            global: crate::config::GlobalConfig::default(),
            pools,
            warnings: Vec::new(),
        }
    }

    #[test]
    fn every_pool_is_a_target_at_a_connectable_address() {
        let mut a = PoolConfig::new("a", ListenAddress::Unix("/run/a.sock".into()));
        a.ping_path = Some("/ping".into());
        let b = PoolConfig::new("b", ListenAddress::AnyPort(9000));
        let c = PoolConfig::new("c", ListenAddress::Tcp("0.0.0.0:9001".parse().unwrap()));
        let d = PoolConfig::new("d", ListenAddress::Tcp("[::]:9002".parse().unwrap()));
        let e = PoolConfig::new("e", ListenAddress::Tcp("10.1.2.3:9003".parse().unwrap()));
        let targets = targets(&config(vec![a, b, c, d, e]));
        let addresses: Vec<String> = targets.iter().map(|t| t.address.to_string()).collect();
        assert_eq!(
            addresses,
            [
                "/run/a.sock",
                "127.0.0.1:9000",
                "127.0.0.1:9001",
                "[::1]:9002",
                "10.1.2.3:9003"
            ]
        );
        assert_eq!(
            targets[0].ping_page,
            Some(("/ping".to_string(), "pong".to_string()))
        );
        assert_eq!(targets[1].ping_page, None);
    }

    #[test]
    fn an_address_is_a_socket_path_or_host_and_port() {
        assert_eq!(
            target_for_address("/run/x.sock").address,
            Address::Unix("/run/x.sock".into())
        );
        assert_eq!(
            target_for_address("./x.sock").address,
            Address::Unix("./x.sock".into())
        );
        assert_eq!(
            target_for_address("localhost:9000").address,
            Address::Tcp("localhost:9000".into())
        );
    }

    #[test]
    fn lines_name_the_pool_the_address_and_the_question() {
        let mut target = target_for_address("127.0.0.1:9000");
        assert_eq!(
            report_line(&target, &Outcome::Answered(Duration::from_micros(1500))),
            "127.0.0.1:9000: ok (FastCGI GET_VALUES answered in 1.5 ms)"
        );
        target.name = "www".into();
        target.ping_page = Some(("/ping".into(), "pong".into()));
        assert_eq!(
            report_line(&target, &Outcome::Failed("connect: refused".into())),
            "[pool www] 127.0.0.1:9000: FAILED (ping.path /ping): connect: refused"
        );
    }

    #[test]
    fn nothing_listening_fails_quickly_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let target = target_for_address(dir.path().join("none.sock").to_str().unwrap());
        match check(&target, Duration::from_secs(5)) {
            Outcome::Failed(why) => assert!(why.starts_with("connect: "), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_listener_that_never_answers_fails_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mute.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let started = Instant::now();
        let outcome = check(
            &target_for_address(path.to_str().unwrap()),
            Duration::from_millis(300),
        );
        assert_eq!(
            outcome,
            Outcome::Failed("no answer to GET_VALUES within the deadline".into())
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
