//! A passive reader of a CGI response's header block: it watches the script's stdout as it
//! streams past, without changing it, to learn the status and headers (for the access log)
//! and whether the header block is complete (a timeout may still answer 504 before it is).

/// Headers beyond this are not remembered (the bytes still pass through untouched).
const MAX_HEADER_BYTES: usize = 64 * 1024;

#[derive(Debug, Default, Clone)]
pub struct ResponseHeaders {
    partial: Vec<u8>,
    complete: bool,
    headers: Vec<(String, String)>,
}

impl ResponseHeaders {
    /// Observe the next bytes of the script's stdout.
    pub fn observe(&mut self, bytes: &[u8]) {
        if self.complete {
            return;
        }
        let room = MAX_HEADER_BYTES.saturating_sub(self.partial.len());
        let take = bytes.len().min(room);
        self.partial.extend_from_slice(&bytes[..take]);
        if let Some(end) = header_end(&self.partial) {
            self.parse(end);
        } else if take < bytes.len() {
            // Too long to be headers: stop looking, treat what we have as the block.
            let len = self.partial.len();
            self.parse(len);
        }
    }

    fn parse(&mut self, end: usize) {
        let block = String::from_utf8_lossy(&self.partial[..end]);
        self.headers = block
            .split('\n')
            .filter_map(|line| {
                let line = line.strip_suffix('\r').unwrap_or(line);
                let (name, value) = line.split_once(':')?;
                Some((name.trim().to_string(), value.trim().to_string()))
            })
            .collect();
        self.complete = true;
        self.partial = Vec::new();
    }

    /// The blank line ending the headers has been seen.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The headers, taken out (for the access log once the response is over).
    pub fn take_headers(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.headers)
    }

    /// A header's value; names compare case-insensitively, as HTTP's do.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The status the web server will send: `Status:`, else 302 with `Location:`, else 200.
    pub fn status(&self) -> u16 {
        if let Some(code) = self
            .get("Status")
            .and_then(|s| s.split_whitespace().next())
            .and_then(|c| c.parse().ok())
        {
            return code;
        }
        if self.get("Location").is_some() {
            return 302;
        }
        200
    }
}

/// Where the header block ends (the blank line excluded), for CRLF or bare LF endings.
fn header_end(bytes: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' {
            let line = &bytes[line_start..i];
            if line.is_empty() || line == b"\r" {
                return Some(line_start);
            }
            line_start = i + 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_headers_from_a_split_stream() {
        let response = b"Status: 404 Not Found\r\nContent-Type: text/html\r\nX-A: b:c\r\n\r\nbody";
        for cut in 0..response.len() {
            let mut h = ResponseHeaders::default();
            h.observe(&response[..cut]);
            h.observe(&response[cut..]);
            assert!(h.is_complete(), "cut {cut}");
            assert_eq!(h.status(), 404);
            assert_eq!(h.get("content-type"), Some("text/html"));
            assert_eq!(h.get("X-A"), Some("b:c"));
        }
    }

    #[test]
    fn defaults_and_redirects() {
        let mut h = ResponseHeaders::default();
        h.observe(b"Content-Type: text/plain\n\nhi");
        assert_eq!(h.status(), 200);
        let mut h = ResponseHeaders::default();
        h.observe(b"Location: /elsewhere\n\n");
        assert_eq!(h.status(), 302);
    }

    #[test]
    fn incomplete_until_the_blank_line() {
        let mut h = ResponseHeaders::default();
        h.observe(b"Content-Type: text/plain\r\n");
        assert!(!h.is_complete());
        h.observe(b"\r\n");
        assert!(h.is_complete());
    }

    #[test]
    fn endless_headers_stop_being_collected() {
        let mut h = ResponseHeaders::default();
        for _ in 0..100 {
            h.observe(&[b'x'; 1024]);
        }
        assert!(h.is_complete());
        assert!(h.partial.is_empty());
    }
}
