//! Responses cgi-fpm writes itself, in CGI form (the web server turns `Status:` into the
//! HTTP status line).

/// The reason phrase for the statuses we produce.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// A complete CGI response with a short plain-text body.
pub fn error_response(status: u16, body: &str) -> Vec<u8> {
    format!(
        "Status: {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\n",
        reason_phrase(status)
    )
    .into_bytes()
}

/// The body a user sees for a refusal; the detail goes to the operator's log only, since
/// paths and policy are nobody else's business.
pub fn public_message(status: u16) -> &'static str {
    match status {
        403 => "Access denied.",
        404 => "File not found.",
        502 => "The script could not be run.",
        503 => "The server is busy; try again shortly.",
        504 => "The script took too long.",
        _ => "The request could not be served.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_is_cgi_headers_then_body() {
        let r = String::from_utf8(error_response(404, public_message(404))).unwrap();
        assert!(r.starts_with("Status: 404 Not Found\r\n"));
        assert!(r.contains("\r\n\r\nFile not found.\n"));
    }
}
