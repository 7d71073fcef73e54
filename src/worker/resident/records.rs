//! The pure half of relaying a request to a resident FastCGI application: what the worker
//! writes to the app, what each record from the app means, and the decisions about the
//! app's life (retry, restart, back-off). No descriptors here.

use crate::fastcgi::ProtocolError;
use crate::fastcgi::record::{
    EndRequest, FCGI_KEEP_CONN, HEADER_LEN, ProtocolStatus, RecordType, Role, parse_record,
    write_begin_request, write_record, write_stream, write_stream_end,
};
use std::time::Duration;

/// The one request id the worker uses on its connection to the app: one request at a time.
pub(crate) const APP_REQUEST_ID: u16 = 1;

/// BEGIN_REQUEST (responder, keep the connection) and the params, ended.
pub(crate) fn request_head(out: &mut Vec<u8>, encoded_params: &[u8]) {
    write_begin_request(out, APP_REQUEST_ID, Role::Responder, FCGI_KEEP_CONN);
    write_stream(out, RecordType::Params, APP_REQUEST_ID, encoded_params);
    write_stream_end(out, RecordType::Params, APP_REQUEST_ID);
}

/// Body bytes for the app (nothing for empty `data`: the empty record ends the body).
pub(crate) fn stdin(out: &mut Vec<u8>, data: &[u8]) {
    write_stream(out, RecordType::Stdin, APP_REQUEST_ID, data);
}

pub(crate) fn stdin_end(out: &mut Vec<u8>) {
    write_stream_end(out, RecordType::Stdin, APP_REQUEST_ID);
}

pub(crate) fn abort(out: &mut Vec<u8>) {
    write_record(out, RecordType::AbortRequest, APP_REQUEST_ID, &[]);
}

/// What one record from the app means for the request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AppEvent<'a> {
    /// Response bytes (empty: the app ended its stdout stream, which we end ourselves).
    Stdout(&'a [u8]),
    Stderr(&'a [u8]),
    /// The app is done with the request.
    End {
        app_status: u32,
        protocol_status: ProtocolStatus,
    },
    /// Management records and anything for another request id: nothing to relay.
    Ignored,
}

/// The app's side of the connection, decoded from a fixed buffer: at most one maximal
/// record plus a read's worth is held, whatever the response size.
pub(crate) struct AppInput {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

/// Room for a maximal record (header, 65535 bytes, 255 padding) and then some.
const APP_INPUT_CAPACITY: usize = 128 * 1024;

impl Default for AppInput {
    fn default() -> Self {
        AppInput {
            buf: vec![0; APP_INPUT_CAPACITY].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }
}

impl AppInput {
    /// Where the next read goes; empty only while a whole record waits to be decoded.
    pub(crate) fn space(&mut self) -> &mut [u8] {
        if self.start > 0 && (self.start == self.end || self.buf.len() - self.end < HEADER_LEN) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    pub(crate) fn commit(&mut self, read: usize) {
        self.end = (self.end + read).min(self.buf.len());
    }

    /// Bytes read but not decoded.
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.end - self.start
    }

    pub(crate) fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// The next whole record's meaning, if one is buffered.
    pub(crate) fn next_event(&mut self) -> Result<Option<AppEvent<'_>>, ProtocolError> {
        // A record may straddle the end of the buffer: move it down before it is needed.
        if self.start > 0 && self.buf.len() - self.start < HEADER_LEN + 65535 + 255 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let Some((record, used)) = parse_record(&self.buf[self.start..self.end])? else {
            return Ok(None);
        };
        self.start += used;
        if record.request_id != APP_REQUEST_ID {
            return Ok(Some(AppEvent::Ignored));
        }
        Ok(Some(match record.record_type {
            RecordType::Stdout => AppEvent::Stdout(record.content),
            RecordType::Stderr => AppEvent::Stderr(record.content),
            RecordType::EndRequest => {
                let end = EndRequest::parse(record.content)?;
                AppEvent::End {
                    app_status: end.app_status,
                    protocol_status: end.protocol_status,
                }
            }
            _ => AppEvent::Ignored,
        }))
    }
}

/// A copy of what went to the app for the request in hand, up to a limit: if the app
/// turns out to have gone away before it said anything (php-cgi ends itself after
/// PHP_FCGI_MAX_REQUESTS, right after answering), the request is sent again to a fresh
/// app instead of failing. A request larger than the limit cannot be replayed.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    bytes: Vec<u8>,
    overflowed: bool,
}

/// How much of a request is kept for a replay: heads and small bodies.
pub(crate) const REPLAY_LIMIT: usize = 64 * 1024;

impl Replay {
    pub(crate) fn record(&mut self, sent: &[u8]) {
        if self.overflowed {
            return;
        }
        if self.bytes.len() + sent.len() > REPLAY_LIMIT {
            self.overflowed = true;
            self.bytes = Vec::new();
        } else {
            self.bytes.extend_from_slice(sent);
        }
    }

    /// Everything sent so far, if all of it was kept.
    pub(crate) fn bytes(&self) -> Option<&[u8]> {
        (!self.overflowed).then_some(&self.bytes[..])
    }
}

/// How an app that closed its connection in the middle of a request had been doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gone {
    /// It sent some record for the request: a replay could repeat what it did.
    pub said_anything: bool,
    /// Everything sent to it for the request is kept (see `Replay`).
    pub replay_complete: bool,
    pub retried: bool,
    /// Requests it had completed before this one.
    pub served_before: u64,
    /// It exited by itself with status 0 (php-cgi's end after PHP_FCGI_MAX_REQUESTS),
    /// not by a signal or an error: it left between requests, ours merely crossed its exit.
    pub exited_cleanly: bool,
}

/// Whether a request whose app went away may be sent again to a fresh app: only when the
/// app left by itself at the end of its life (it had served requests and exited cleanly)
/// without a word about this request, the whole request is kept, and it was not retried
/// already. A request that crashed its app is never repeated.
pub(crate) fn may_retry(gone: Gone) -> bool {
    !gone.said_anything
        && gone.replay_complete
        && !gone.retried
        && gone.served_before > 0
        && gone.exited_cleanly
}

/// Whether an app's end counts against restarting it: it died before completing any
/// request, soon after its start (a bad path, a syntax error, a missing module).
pub(crate) fn failed_start(served: u64, lifetime: Duration) -> bool {
    served == 0 && lifetime < Duration::from_secs(1)
}

/// How long to wait before starting an app again after `failures` starts in a row that
/// died before answering a request: none for the first, then doubling from 250 ms up to
/// 30 s, so a broken app never spins a CPU.
pub(crate) fn restart_delay(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let exponent = (failures - 1).min(7);
    (Duration::from_millis(250) * (1 << exponent)).min(Duration::from_secs(30))
}

/// Whether to start an app's successor now that it has served `served` of the
/// `lifetime` requests it will serve: in its last fifth (at least its last request), so
/// that the successor has started by the time it is needed, and no earlier, since it
/// waits as a second process.
pub(crate) fn start_successor(served: u64, lifetime: u64) -> bool {
    served < lifetime && served + (lifetime / 5).max(1) >= lifetime
}

/// Whether to stop the app after a request: it has served `cgi.fastcgi_app_max_requests`
/// (`max` 0: never) or the request left it in an unknown state.
pub(crate) fn retire_after(served: u64, max: u64, clean: bool) -> bool {
    !clean || (max > 0 && served >= max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fastcgi::record::write_end_request;

    fn events(bytes: &[u8], reads: usize) -> Vec<String> {
        let mut input = AppInput::default();
        let mut seen = Vec::new();
        for chunk in bytes.chunks(reads) {
            let space = input.space();
            space[..chunk.len()].copy_from_slice(chunk);
            input.commit(chunk.len());
            while let Some(event) = input.next_event().unwrap() {
                seen.push(format!("{event:?}"));
            }
        }
        assert_eq!(input.buffered(), 0);
        seen
    }

    #[test]
    fn the_head_asks_to_keep_the_connection() {
        let mut out = Vec::new();
        request_head(&mut out, b"\x01\x01AB");
        let (begin, used) = parse_record(&out).unwrap().unwrap();
        assert_eq!(begin.record_type, RecordType::BeginRequest);
        assert_eq!(begin.request_id, APP_REQUEST_ID);
        assert_eq!(begin.content[2], FCGI_KEEP_CONN);
        let (params, used2) = parse_record(&out[used..]).unwrap().unwrap();
        assert_eq!(params.content, b"\x01\x01AB");
        let (end, _) = parse_record(&out[used + used2..]).unwrap().unwrap();
        assert_eq!(
            (end.record_type, end.content.len()),
            (RecordType::Params, 0)
        );
    }

    #[test]
    fn app_records_decode_the_same_whatever_the_reads() {
        let mut stream = Vec::new();
        write_record(
            &mut stream,
            RecordType::Stdout,
            APP_REQUEST_ID,
            b"Status: 200\r\n\r\nhi",
        );
        write_record(&mut stream, RecordType::Stderr, APP_REQUEST_ID, b"warn");
        write_record(&mut stream, RecordType::GetValuesResult, 0, b"");
        write_record(&mut stream, RecordType::Stdout, 7, b"not ours");
        write_stream(
            &mut stream,
            RecordType::Stdout,
            APP_REQUEST_ID,
            &[b'x'; 70000],
        );
        write_stream_end(&mut stream, RecordType::Stdout, APP_REQUEST_ID);
        write_end_request(
            &mut stream,
            APP_REQUEST_ID,
            3,
            ProtocolStatus::RequestComplete,
        );
        let whole = events(&stream, stream.len());
        for reads in [1, 7, 8, 4096, 65536] {
            assert_eq!(events(&stream, reads), whole, "reads of {reads}");
        }
        assert_eq!(whole.len(), 8);
        assert!(whole[0].starts_with("Stdout("));
        assert!(whole[1].starts_with("Stderr("));
        assert_eq!(whole[2], "Ignored");
        assert_eq!(whole[3], "Ignored");
        assert_eq!(whole[6], "Stdout([])");
        assert_eq!(
            whole[7],
            "End { app_status: 3, protocol_status: RequestComplete }"
        );
    }

    #[test]
    fn a_broken_app_stream_is_an_error() {
        let mut input = AppInput::default();
        input.space()[..8].copy_from_slice(&[9, 6, 0, 1, 0, 0, 0, 0]);
        input.commit(8);
        assert!(input.next_event().is_err());
    }

    #[test]
    fn a_request_is_replayed_only_when_nothing_came_back_and_all_was_kept() {
        let mut replay = Replay::default();
        replay.record(b"head");
        replay.record(&[0; 1000]);
        assert_eq!(replay.bytes().map(<[u8]>::len), Some(1004));
        let ended = Gone {
            said_anything: false,
            replay_complete: replay.bytes().is_some(),
            retried: false,
            served_before: 500,
            exited_cleanly: true,
        };
        assert!(may_retry(ended));
        for (case, why) in [
            (
                Gone {
                    said_anything: true,
                    ..ended
                },
                "the app answered in part",
            ),
            (
                Gone {
                    retried: true,
                    ..ended
                },
                "once only",
            ),
            (
                Gone {
                    served_before: 0,
                    ..ended
                },
                "a fresh app that dies is broken",
            ),
            (
                Gone {
                    exited_cleanly: false,
                    ..ended
                },
                "the request may have crashed it",
            ),
        ] {
            assert!(!may_retry(case), "{why}");
        }
        replay.record(&vec![0; REPLAY_LIMIT]);
        assert!(replay.bytes().is_none());
        assert!(!may_retry(Gone {
            replay_complete: replay.bytes().is_some(),
            ..ended
        }));
    }

    #[test]
    fn only_an_app_that_dies_young_and_unproven_is_a_failed_start() {
        assert!(failed_start(0, Duration::from_millis(10)));
        assert!(!failed_start(1, Duration::from_millis(10)));
        assert!(!failed_start(0, Duration::from_secs(5)));
    }

    #[test]
    fn restarts_back_off_up_to_thirty_seconds() {
        assert_eq!(restart_delay(0), Duration::ZERO);
        assert_eq!(restart_delay(1), Duration::from_millis(250));
        assert_eq!(restart_delay(2), Duration::from_millis(500));
        assert_eq!(restart_delay(8), Duration::from_secs(30));
        assert_eq!(restart_delay(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn a_successor_starts_in_the_last_fifth_of_a_lifetime() {
        assert!(!start_successor(399, 500));
        assert!(start_successor(400, 500));
        assert!(start_successor(499, 500));
        assert!(!start_successor(500, 500), "the app is leaving: too late");
        assert!(!start_successor(0, 3));
        assert!(start_successor(2, 3));
        assert!(start_successor(0, 1));
        assert!(!start_successor(1, 1));
    }

    #[test]
    fn apps_retire_after_max_requests_or_a_dirty_end() {
        assert!(!retire_after(10, 0, true));
        assert!(!retire_after(9, 10, true));
        assert!(retire_after(10, 10, true));
        assert!(retire_after(1, 0, false));
    }
}
