//! Whether a request head has arrived, judged from raw bytes without consuming them: the
//! master and a worker peek at a connection's socket with it, so that a connection reaches
//! a worker's request loop only once its head (BEGIN_REQUEST and the whole PARAMS stream)
//! is there, and a client that trickles its head costs a descriptor, never a worker.

use super::record::{HEADER_LEN, RecordType, VERSION_1};

/// What the bytes at the start of a connection amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// A request head is complete, or something else a worker must answer came first (a
    /// management record, an abort, bytes that are not FastCGI): hand it to a worker.
    Ready,
    /// Only part of a head so far; nothing else.
    Partial,
}

/// Look at the records in `bytes` (the start of what the peer sent).
pub fn scan(bytes: &[u8]) -> Head {
    let mut rest = bytes;
    loop {
        if rest.len() < HEADER_LEN {
            return Head::Partial;
        }
        if rest[0] != VERSION_1 {
            // Not FastCGI 1: the worker's decoder says so properly.
            return Head::Ready;
        }
        let content = u16::from_be_bytes([rest[4], rest[5]]) as usize;
        let padding = rest[6] as usize;
        match RecordType::from_u8(rest[1]) {
            // The empty PARAMS record ends the head.
            RecordType::Params if content == 0 => return Head::Ready,
            RecordType::BeginRequest | RecordType::Params => {}
            _ => return Head::Ready,
        }
        let whole = HEADER_LEN + content + padding;
        if rest.len() < whole {
            return Head::Partial;
        }
        rest = &rest[whole..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fastcgi::record::{Role, write_begin_request, write_record, write_stream_end};

    fn head() -> Vec<u8> {
        let mut out = Vec::new();
        write_begin_request(&mut out, 1, Role::Responder, 1);
        let mut params = Vec::new();
        crate::fastcgi::params::write_pair(&mut params, b"SCRIPT_FILENAME", b"/srv/a.sh");
        write_record(&mut out, RecordType::Params, 1, &params);
        write_record(&mut out, RecordType::Params, 1, &params);
        write_stream_end(&mut out, RecordType::Params, 1);
        out
    }

    #[test]
    fn every_prefix_of_a_head_is_partial_and_the_whole_is_ready() {
        let whole = head();
        // The empty PARAMS record (8 bytes, no padding) ends it: every shorter prefix is
        // partial.
        for len in 0..whole.len() {
            assert_eq!(
                scan(&whole[..len]),
                Head::Partial,
                "{len} of {} bytes",
                whole.len()
            );
        }
        assert_eq!(scan(&whole), Head::Ready);
        let mut with_body = whole.clone();
        write_record(&mut with_body, RecordType::Stdin, 1, b"body");
        assert_eq!(scan(&with_body), Head::Ready);
    }

    #[test]
    fn anything_else_first_goes_to_a_worker() {
        let mut values = Vec::new();
        write_record(&mut values, RecordType::GetValues, 0, b"");
        assert_eq!(scan(&values), Head::Ready);
        let mut abort = Vec::new();
        write_begin_request(&mut abort, 1, Role::Responder, 1);
        write_record(&mut abort, RecordType::AbortRequest, 1, b"");
        assert_eq!(scan(&abort), Head::Ready);
        assert_eq!(scan(b"GET / HTTP/1.1\r\n"), Head::Ready);
        assert_eq!(scan(b""), Head::Partial);
    }
}
