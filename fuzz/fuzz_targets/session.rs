//! The FastCGI record decoder and the application-side session, fed arbitrary bytes as
//! a worker feeds them: in pieces, keeping the undecoded tail.
//!
//! Checked besides "never panics": the decoder never claims more bytes than it has nor a
//! record it cannot hold; a request's params stay within the limits; every reply the
//! session writes is itself well-formed FastCGI; and the events do not depend on how the
//! stream was cut into reads.
#![no_main]

use cgi_fpm::fastcgi::record::{HEADER_LEN, parse_record};
use cgi_fpm::fastcgi::{Event, Limits, ServerValues, Session};
use libfuzzer_sys::fuzz_target;

/// Small limits, so that inputs reach them.
const LIMITS: Limits = Limits {
    max_params: 16,
    max_params_bytes: 512,
};

fn session() -> Session {
    Session::new(
        ServerValues {
            max_conns: 4,
            max_reqs: 4,
        },
        LIMITS,
    )
}

/// Decode `stream` delivered in reads of the given sizes (cycled); the events as text,
/// and everything the session wrote back.
fn run(stream: &[u8], reads: &[usize]) -> (Vec<String>, Vec<u8>) {
    let mut s = session();
    let mut buffer: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    let mut replies = Vec::new();
    let mut fed = 0;
    let mut step = 0;
    'feed: while fed < stream.len() {
        let n = reads[step % reads.len()].clamp(1, stream.len() - fed);
        step += 1;
        buffer.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        let mut consumed = 0;
        loop {
            let parsed = match parse_record(&buffer[consumed..]) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    events.push(format!("decode error: {e}"));
                    break 'feed;
                }
            };
            let (record, used) = parsed;
            assert!(used >= HEADER_LEN && used <= buffer.len() - consumed);
            assert!(record.content.len() <= u16::MAX as usize);
            consumed += used;
            match s.on_record(record, &mut replies) {
                Ok(event) => {
                    if let Event::Request(r) = &event {
                        assert!(r.params.len() <= LIMITS.max_params);
                        assert!(r.params.encoded().len() <= LIMITS.max_params_bytes);
                        assert_eq!(s.active_id(), Some(r.id));
                        assert!(!s.stdin_done());
                    }
                    if let Event::StdinEnd = event {
                        assert!(s.stdin_done());
                    }
                    events.push(describe(&event));
                    if matches!(event, Event::Request(_)) && stream.len().is_multiple_of(2) {
                        // Half the time, act as a worker that answers at once.
                        s.finish();
                    }
                }
                Err(e) => {
                    events.push(format!("session error: {e}"));
                    break 'feed;
                }
            }
        }
        buffer.drain(..consumed);
    }
    (events, replies)
}

fn describe(event: &Event<'_>) -> String {
    match event {
        Event::None => "none".into(),
        Event::Request(r) => format!("request {} keep={} {:?}", r.id, r.keep_conn, r.params),
        Event::Stdin(d) => format!("stdin {d:?}"),
        Event::StdinEnd => "stdin end".into(),
        Event::Abort => "abort".into(),
        Event::Rejected { keep_conn } => format!("rejected keep={keep_conn}"),
    }
}

fuzz_target!(|data: &[u8]| {
    // The first bytes choose how the rest is cut into reads.
    let (cuts, stream) = data.split_at(data.len().min(4));
    let reads: Vec<usize> = cuts.iter().map(|&c| c as usize + 1).collect();
    let whole = run(stream, &[stream.len().max(1)]);
    if !reads.is_empty() {
        assert_eq!(
            run(stream, &reads),
            whole,
            "events depend on how reads cut the stream"
        );
    }
    // What the session wrote back is well-formed and whole.
    let mut rest = &whole.1[..];
    while !rest.is_empty() {
        match parse_record(rest) {
            Ok(Some((_, used))) => rest = &rest[used..],
            other => panic!("malformed reply: {other:?}"),
        }
    }
});
