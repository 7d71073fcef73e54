//! The 503 the master writes itself for a request that waited past request_queue_timeout:
//! built from the bytes the web server sent (its request head), without sockets.
//!
//! The web server gets a complete FastCGI response for the head's request id (STDOUT with
//! CGI headers and a short body, the empty STDOUT, END_REQUEST), so nginx answers its
//! client 503 with `Retry-After`, or, told to (`fastcgi_next_upstream http_503`), tries the
//! next server at once.

use crate::fastcgi::params::decode_pairs;
use crate::fastcgi::record::{
    BeginRequest, ProtocolStatus, RecordType, parse_record, write_end_request, write_stream,
    write_stream_end,
};

/// What answers one refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    /// The records to write back.
    pub bytes: Vec<u8>,
    /// The web server asked to keep the connection (FCGI_KEEP_CONN).
    pub keep_conn: bool,
    /// The whole request was in `sent` (its STDIN ended): nothing of it is left unread,
    /// so a kept connection can go on to the next request.
    pub complete: bool,
    /// `METHOD URI` for the log line, when the params say.
    pub request: Option<String>,
}

/// The answer to the request that starts `sent` (what was read from the connection), or
/// `None` when `sent` does not start with a BEGIN_REQUEST (nothing to answer: close).
/// `retry_after` is the `Retry-After` value in seconds.
pub(super) fn refuse(sent: &[u8], retry_after: u64) -> Option<Refusal> {
    let Ok(Some((first, mut used))) = parse_record(sent) else {
        return None;
    };
    if first.record_type != RecordType::BeginRequest {
        return None;
    }
    let id = first.request_id;
    let keep_conn = BeginRequest::parse(first.content).ok()?.keep_conn();
    let mut params = Vec::new();
    let mut complete = false;
    while let Ok(Some((record, len))) = parse_record(&sent[used..]) {
        used += len;
        if record.request_id != id {
            continue;
        }
        match record.record_type {
            RecordType::Params => params.extend_from_slice(record.content),
            RecordType::Stdin if record.content.is_empty() => {
                complete = true;
                break;
            }
            _ => {}
        }
    }
    // Anything after the end of the request would be a next request the peer should not
    // have sent yet: not a kept connection to trust.
    let complete = complete && used == sent.len();
    let body = crate::cgi::response::public_message(503);
    let cgi = format!(
        "Status: 503 Service Unavailable\r\nRetry-After: {retry_after}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\n"
    );
    let mut bytes = Vec::with_capacity(cgi.len() + 48);
    write_stream(&mut bytes, RecordType::Stdout, id, cgi.as_bytes());
    write_stream_end(&mut bytes, RecordType::Stdout, id);
    write_end_request(&mut bytes, id, 0, ProtocolStatus::RequestComplete);
    Some(Refusal {
        bytes,
        keep_conn,
        complete,
        request: describe(&params),
    })
}

/// `METHOD URI` from encoded params (the URI as the web server sent it, or the script name).
fn describe(params: &[u8]) -> Option<String> {
    let pairs = decode_pairs(params, 4096).ok()?;
    let value = |name: &[u8]| {
        pairs
            .iter()
            .find(|(n, _)| &params[n.clone()] == name)
            .map(|(_, v)| String::from_utf8_lossy(&params[v.clone()]).into_owned())
    };
    let method = value(b"REQUEST_METHOD")?;
    let uri = value(b"REQUEST_URI").or_else(|| value(b"SCRIPT_NAME"))?;
    Some(format!("{method} {uri}"))
}

/// The `Retry-After` for a pool's request_queue_timeout: as long as a request waited in
/// vain, in whole seconds, at least 1.
pub(super) fn retry_after(queue_timeout: std::time::Duration) -> u64 {
    let secs = queue_timeout.as_secs() + u64::from(queue_timeout.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fastcgi::params::write_pair;
    use crate::fastcgi::record::{
        EndRequest, FCGI_KEEP_CONN, Role, write_begin_request, write_record,
    };
    use std::time::Duration;

    fn head(id: u16, flags: u8) -> Vec<u8> {
        let mut out = Vec::new();
        write_begin_request(&mut out, id, Role::Responder, flags);
        let mut params = Vec::new();
        write_pair(&mut params, b"REQUEST_METHOD", b"GET");
        write_pair(&mut params, b"REQUEST_URI", b"/slow.sh?x=1");
        write_record(&mut out, RecordType::Params, id, &params);
        write_stream_end(&mut out, RecordType::Params, id);
        out
    }

    /// The records of `bytes`, as (type, id, content).
    fn records(bytes: &[u8]) -> Vec<(RecordType, u16, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while let Some((record, len)) = parse_record(rest).unwrap() {
            out.push((
                record.record_type,
                record.request_id,
                record.content.to_vec(),
            ));
            rest = &rest[len..];
        }
        assert!(rest.is_empty(), "trailing bytes");
        out
    }

    #[test]
    fn a_refusal_answers_the_heads_request_id_with_503_and_retry_after() {
        let refusal = refuse(&head(7, 0), 3).unwrap();
        let got = records(&refusal.bytes);
        assert_eq!(got.len(), 3);
        assert_eq!((got[0].0, got[0].1), (RecordType::Stdout, 7));
        let cgi = String::from_utf8(got[0].2.clone()).unwrap();
        assert!(
            cgi.starts_with("Status: 503 Service Unavailable\r\nRetry-After: 3\r\n"),
            "{cgi}"
        );
        assert!(cgi.contains("\r\n\r\nThe server is busy"), "{cgi}");
        assert_eq!(
            (got[1].0, got[1].1, got[1].2.len()),
            (RecordType::Stdout, 7, 0)
        );
        assert_eq!((got[2].0, got[2].1), (RecordType::EndRequest, 7));
        let end = EndRequest::parse(&got[2].2).unwrap();
        assert_eq!(end.protocol_status, ProtocolStatus::RequestComplete);
        assert_eq!(refusal.request.as_deref(), Some("GET /slow.sh?x=1"));
        assert!(!refusal.keep_conn);
        assert!(!refusal.complete, "no STDIN end yet");
    }

    #[test]
    fn a_kept_connection_may_go_on_only_when_the_whole_request_was_read() {
        let mut whole = head(1, FCGI_KEEP_CONN);
        write_stream_end(&mut whole, RecordType::Stdin, 1);
        let refusal = refuse(&whole, 1).unwrap();
        assert!(refusal.keep_conn && refusal.complete);
        let mut with_body = head(1, FCGI_KEEP_CONN);
        write_record(&mut with_body, RecordType::Stdin, 1, b"a=1");
        assert!(!refuse(&with_body, 1).unwrap().complete, "body not ended");
        write_stream_end(&mut with_body, RecordType::Stdin, 1);
        assert!(refuse(&with_body, 1).unwrap().complete);
        // Bytes past the request's end: not a connection to go on with.
        let mut more = whole.clone();
        more.extend_from_slice(&head(2, FCGI_KEEP_CONN));
        assert!(!refuse(&more, 1).unwrap().complete);
    }

    #[test]
    fn what_is_not_a_request_gets_no_answer() {
        assert_eq!(refuse(b"", 1), None);
        assert_eq!(refuse(b"GET / HTTP/1.1\r\n\r\n", 1), None);
        let mut values = Vec::new();
        write_record(&mut values, RecordType::GetValues, 0, b"");
        assert_eq!(refuse(&values, 1), None);
        // A head without method or URI is still answered, without a description.
        let mut bare = Vec::new();
        write_begin_request(&mut bare, 1, Role::Responder, 0);
        write_stream_end(&mut bare, RecordType::Params, 1);
        let refusal = refuse(&bare, 1).unwrap();
        assert_eq!(refusal.request, None);
    }

    #[test]
    fn retry_after_is_the_wait_in_whole_seconds() {
        assert_eq!(retry_after(Duration::from_secs(2)), 2);
        assert_eq!(retry_after(Duration::from_millis(2500)), 3);
        assert_eq!(retry_after(Duration::ZERO), 1);
    }
}
