//! Just enough HTTP/1.x for the master's endpoint: read one request head, answer, close.
//! Pure, so the limits are tested without sockets.

/// The most a request head may take; beyond it the client gets 431 and is closed.
pub const MAX_HEAD: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub query: String,
}

/// What the bytes read so far amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// Not a whole head yet: read on.
    Incomplete,
    Complete(Request),
    /// Answer with this status and close.
    Refused(u16),
}

/// Look at what a client sent so far. A head ends with an empty line; bare `\n` line
/// ends are taken too, as most servers do.
pub fn parse(buf: &[u8]) -> Head {
    let end = find(buf, b"\r\n\r\n").or_else(|| find(buf, b"\n\n"));
    let Some(end) = end else {
        return match buf.len() >= MAX_HEAD {
            true => Head::Refused(431),
            false => Head::Incomplete,
        };
    };
    if end > MAX_HEAD {
        return Head::Refused(431);
    }
    let Ok(text) = std::str::from_utf8(&buf[..end]) else {
        return Head::Refused(400);
    };
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Head::Refused(400);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Head::Refused(400);
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => Method::Other,
        _ => return Head::Refused(400),
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Head::Complete(Request {
        method,
        path: path.to_string(),
        query: query.to_string(),
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What a request asks of the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Metrics,
    Status { full: bool },
    Ping,
}

/// The page asked for, or the error status to answer with.
pub fn route(request: &Request) -> Result<Route, u16> {
    let route = match request.path.as_str() {
        "/metrics" => Route::Metrics,
        "/status" => Route::Status {
            full: request
                .query
                .split('&')
                .any(|pair| pair.split('=').next() == Some("full")),
        },
        "/ping" => Route::Ping,
        _ => return Err(404),
    };
    match request.method {
        Method::Get | Method::Head => Ok(route),
        Method::Other => Err(405),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A whole response; the connection closes after it. HEAD gets the headers alone.
pub fn response(status: u16, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let allow = match status {
        405 => "Allow: GET, HEAD\r\n",
        _ => "",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-cache, no-store, must-revalidate, max-age=0\r\n{allow}Connection: close\r\n\r\n",
        reason(status),
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// An error status as a short text response.
pub fn error(status: u16, head_only: bool) -> Vec<u8> {
    response(
        status,
        "text/plain; charset=utf-8",
        &format!("{status} {}\n", reason(status)),
        head_only,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Request {
        match parse(text.as_bytes()) {
            Head::Complete(r) => r,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn a_head_is_complete_only_with_its_empty_line() {
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"),
            Head::Incomplete
        );
        assert_eq!(parse(b""), Head::Incomplete);
        let r = request("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!((r.method, r.path.as_str()), (Method::Get, "/metrics"));
        assert_eq!(request("HEAD /ping HTTP/1.0\n\n").method, Method::Head);
    }

    #[test]
    fn the_query_is_split_off() {
        let r = request("GET /status?full&x=1 HTTP/1.1\r\n\r\n");
        assert_eq!((r.path.as_str(), r.query.as_str()), ("/status", "full&x=1"));
        assert_eq!(route(&r), Ok(Route::Status { full: true }));
        let r = request("GET /status?fullish HTTP/1.1\r\n\r\n");
        assert_eq!(route(&r), Ok(Route::Status { full: false }));
    }

    #[test]
    fn a_head_too_large_is_refused_before_it_ends() {
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD, b'a');
        assert_eq!(parse(&big), Head::Refused(431));
        big.truncate(MAX_HEAD - 1);
        assert_eq!(parse(&big), Head::Incomplete);
    }

    #[test]
    fn garbage_is_a_bad_request() {
        for text in [
            "GET\r\n\r\n",
            "GET /x\r\n\r\n",
            "GET x HTTP/1.1\r\n\r\n",
            "GET /x SPDY/3\r\n\r\n",
            "get /x HTTP/1.1\r\n\r\n",
            "GET /x HTTP/1.1 extra\r\n\r\n",
        ] {
            assert_eq!(parse(text.as_bytes()), Head::Refused(400), "{text:?}");
        }
        assert_eq!(parse(b"GET /\xff HTTP/1.1\r\n\r\n"), Head::Refused(400));
    }

    #[test]
    fn routes_methods_and_paths() {
        assert_eq!(
            route(&request("GET /metrics HTTP/1.1\r\n\r\n")),
            Ok(Route::Metrics)
        );
        assert_eq!(
            route(&request("HEAD /ping HTTP/1.1\r\n\r\n")),
            Ok(Route::Ping)
        );
        assert_eq!(route(&request("GET /nope HTTP/1.1\r\n\r\n")), Err(404));
        assert_eq!(route(&request("GET /metrics/ HTTP/1.1\r\n\r\n")), Err(404));
        assert_eq!(route(&request("POST /metrics HTTP/1.1\r\n\r\n")), Err(405));
        assert_eq!(route(&request("DELETE /nope HTTP/1.1\r\n\r\n")), Err(404));
    }

    #[test]
    fn responses_close_and_head_has_no_body() {
        let full = String::from_utf8(response(200, "text/plain", "pong\n", false)).unwrap();
        assert!(full.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(full.contains("Content-Length: 5\r\n"));
        assert!(full.contains("Connection: close\r\n"));
        assert!(full.ends_with("\r\n\r\npong\n"));
        let head = String::from_utf8(response(200, "text/plain", "pong\n", true)).unwrap();
        assert!(head.contains("Content-Length: 5\r\n"));
        assert!(head.ends_with("\r\n\r\n"));
        let refused = String::from_utf8(error(405, false)).unwrap();
        assert!(refused.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(refused.contains("Allow: GET, HEAD\r\n"));
    }
}
