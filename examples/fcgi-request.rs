//! Send one FastCGI request to cgi-fpm (or any FastCGI server) and print the response,
//! like `cgi-fcgi -bind -connect` but without the environment juggling.
//!
//!     cargo run --example fcgi-request -- 127.0.0.1:9000 examples/cgi-bin/hello.sh 'a=1'
//!     echo hello | cargo run --example fcgi-request -- /run/cgi-fpm.sock echo.sh '' POST

use cgi_fpm::client::Client;
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: fcgi-request ADDRESS SCRIPT [QUERY_STRING] [METHOD]");
        eprintln!("  ADDRESS is host:port or a unix socket path; a POST body is read from stdin");
        return ExitCode::from(64);
    }
    // Absolute without resolving symlinks, so the server sees the path as named.
    let script = std::path::absolute(&args[1])
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| args[1].clone());
    let query = args.get(2).cloned().unwrap_or_default();
    let method = args.get(3).cloned().unwrap_or_else(|| "GET".to_string());
    let mut body = Vec::new();
    if method == "POST"
        && let Err(e) = std::io::stdin().read_to_end(&mut body)
    {
        eprintln!("fcgi-request: reading the body from stdin: {e}");
        return ExitCode::from(74);
    }
    let length = body.len().to_string();
    let uri = if query.is_empty() {
        "/".to_string()
    } else {
        format!("/?{query}")
    };
    let params = [
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("SERVER_SOFTWARE", "fcgi-request"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_METHOD", method.as_str()),
        ("REQUEST_URI", uri.as_str()),
        ("SCRIPT_FILENAME", script.as_str()),
        ("QUERY_STRING", query.as_str()),
        ("CONTENT_LENGTH", length.as_str()),
        ("REMOTE_ADDR", "127.0.0.1"),
    ];
    let response = Client::connect(&args[0], Duration::from_secs(30))
        .and_then(|mut c| c.request(&params, &body, false));
    match response {
        Ok(r) => {
            let _ = std::io::stdout().write_all(&r.stdout);
            let _ = std::io::stderr().write_all(&r.stderr);
            if r.status() < 400 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("fcgi-request: {}: {e}", args[0]);
            ExitCode::from(69)
        }
    }
}
