//! A small synchronous FastCGI client (the web server's side), built on the same codec.
//! The integration tests drive cgi-fpm with it, and `examples/fcgi-request.rs` lets a
//! newcomer send a request by hand.

use crate::fastcgi::params::write_pair;
use crate::fastcgi::record::{
    EndRequest, FCGI_KEEP_CONN, RecordType, Role, parse_record, write_begin_request, write_record,
    write_stream, write_stream_end,
};
use crate::fastcgi::{Params, ProtocolStatus};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Where a FastCGI server listens: a unix socket path or `host:port`.
pub fn connect(address: &str, timeout: Duration) -> io::Result<Box<dyn Stream>> {
    if address.starts_with('/') || address.starts_with('.') {
        let s = UnixStream::connect(Path::new(address))?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Box::new(s))
    } else {
        let s = TcpStream::connect(address)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.set_nodelay(true)?;
        Ok(Box::new(s))
    }
}

/// A connected byte stream (unix or TCP).
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// What the application sent back for one request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Response {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub app_status: u32,
    pub protocol_status: Option<ProtocolStatus>,
}

impl Response {
    /// The CGI headers and body of stdout, split at the first blank line.
    pub fn split(&self) -> (String, &[u8]) {
        let out = &self.stdout;
        for (sep, len) in [(&b"\r\n\r\n"[..], 4), (&b"\n\n"[..], 2)] {
            if let Some(pos) = out.windows(len).position(|w| w == sep) {
                return (
                    String::from_utf8_lossy(&out[..pos]).into_owned(),
                    &out[pos + len..],
                );
            }
        }
        (String::from_utf8_lossy(out).into_owned(), &[])
    }

    /// A CGI header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<String> {
        let (head, _) = self.split();
        head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    /// The HTTP status the web server would send: `Status:`, else 302 with `Location:`,
    /// else 200.
    pub fn status(&self) -> u16 {
        if let Some(s) = self.header("Status") {
            return s
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
        }
        if self.header("Location").is_some() {
            return 302;
        }
        200
    }

    pub fn body(&self) -> &[u8] {
        self.split().1
    }
}

/// BEGIN_REQUEST (a responder) and the params stream, ended.
fn encode_head(out: &mut Vec<u8>, id: u16, params: &[(&str, &str)], keep_conn: bool) {
    let flags = if keep_conn { FCGI_KEEP_CONN } else { 0 };
    write_begin_request(out, id, Role::Responder, flags);
    let mut p = Vec::new();
    for (n, v) in params {
        write_pair(&mut p, n.as_bytes(), v.as_bytes());
    }
    write_stream(out, RecordType::Params, id, &p);
    write_stream_end(out, RecordType::Params, id);
}

/// A FastCGI connection that can carry several requests when kept.
pub struct Client {
    stream: Box<dyn Stream>,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(address: &str, timeout: Duration) -> io::Result<Client> {
        Ok(Client {
            stream: connect(address, timeout)?,
            buf: Vec::new(),
        })
    }

    pub fn from_stream(stream: Box<dyn Stream>) -> Client {
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// Send raw bytes (for tests that speak the protocol badly on purpose).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Send a whole request: BEGIN_REQUEST, params, and the body.
    pub fn send_request(
        &mut self,
        id: u16,
        params: &[(&str, &str)],
        body: &[u8],
        keep_conn: bool,
    ) -> io::Result<()> {
        let mut out = Vec::with_capacity(1024 + body.len() + body.len() / 8);
        encode_head(&mut out, id, params, keep_conn);
        write_stream(&mut out, RecordType::Stdin, id, body);
        write_stream_end(&mut out, RecordType::Stdin, id);
        self.stream.write_all(&out)
    }

    /// Send the head of a request only (BEGIN_REQUEST and params), for tests that stream
    /// the body themselves.
    pub fn send_head(
        &mut self,
        id: u16,
        params: &[(&str, &str)],
        keep_conn: bool,
    ) -> io::Result<()> {
        let mut out = Vec::new();
        encode_head(&mut out, id, params, keep_conn);
        self.stream.write_all(&out)
    }

    /// Send body bytes; an empty slice ends the body.
    pub fn send_stdin(&mut self, id: u16, data: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(data.len() + 64);
        if data.is_empty() {
            write_stream_end(&mut out, RecordType::Stdin, id);
        } else {
            write_stream(&mut out, RecordType::Stdin, id, data);
        }
        self.stream.write_all(&out)
    }

    /// Read one record: (type, request id, content). `None` at end of stream.
    pub fn read_record(&mut self) -> io::Result<Option<(RecordType, u16, Vec<u8>)>> {
        loop {
            let parsed = parse_record(&self.buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if let Some((rec, used)) = parsed {
                let owned = (rec.record_type, rec.request_id, rec.content.to_vec());
                self.buf.drain(..used);
                return Ok(Some(owned));
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside a record",
                    ))
                };
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Read records until END_REQUEST for `id`; `on_stdout` sees output as it streams.
    pub fn read_response_with(
        &mut self,
        id: u16,
        mut on_stdout: impl FnMut(&[u8]),
    ) -> io::Result<Response> {
        let mut response = Response::default();
        loop {
            let Some((t, rid, content)) = self.read_record()? else {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before END_REQUEST",
                ));
            };
            if rid != id {
                continue;
            }
            match t {
                RecordType::Stdout => {
                    on_stdout(&content);
                    response.stdout.extend_from_slice(&content);
                }
                RecordType::Stderr => response.stderr.extend_from_slice(&content),
                RecordType::EndRequest => {
                    let end = EndRequest::parse(&content)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    response.app_status = end.app_status;
                    response.protocol_status = Some(end.protocol_status);
                    return Ok(response);
                }
                _ => {}
            }
        }
    }

    pub fn read_response(&mut self, id: u16) -> io::Result<Response> {
        self.read_response_with(id, |_| {})
    }

    /// One request, one response.
    pub fn request(
        &mut self,
        params: &[(&str, &str)],
        body: &[u8],
        keep_conn: bool,
    ) -> io::Result<Response> {
        self.send_request(1, params, body, keep_conn)?;
        self.read_response(1)
    }

    /// FCGI_GET_VALUES for `names`.
    pub fn get_values(&mut self, names: &[&str]) -> io::Result<Params> {
        let mut q = Vec::new();
        for n in names {
            write_pair(&mut q, n.as_bytes(), b"");
        }
        let mut out = Vec::new();
        write_record(&mut out, RecordType::GetValues, 0, &q);
        self.stream.write_all(&out)?;
        loop {
            let Some((t, _, content)) = self.read_record()? else {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before GET_VALUES_RESULT",
                ));
            };
            if t == RecordType::GetValuesResult {
                return Params::decode(content, &crate::fastcgi::Limits::default())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }

    /// Whether the server closed the connection (reads EOF within the stream's timeout).
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0))
    }
}
