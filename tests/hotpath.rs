//! The CGI request path's cost, seen from outside: what a worker does per request that
//! the web server pays for too, and that saving it changes nothing a script can see.

mod common;

use cgi_fpm::fastcgi::record::RecordType;
use common::{Fpm, examples_dir};
use std::time::{Duration, Instant};

/// A single-threaded process's own write system calls so far: `syscw` of its thread,
/// since the process's figure adds those of the children it reaped (the scripts).
fn write_calls(pid: i32) -> u64 {
    let path = format!("/proc/{pid}/task/{pid}/io");
    let io = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    io.lines()
        .find_map(|l| l.strip_prefix("syscw:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no syscw in {path}:\n{io}"))
}

/// hello.sh writes its response in three pieces. Each write to the web server wakes it,
/// so the worker sends a small response in one write with END_REQUEST, as fcgiwrap does,
/// instead of a write per piece and one for the end (2.2 to 2.7 per request before).
#[test]
fn a_small_response_reaches_the_web_server_in_one_write() {
    let fpm = Fpm::start(1, "");
    let worker = fpm.worker_pids()[0];
    let hello = examples_dir().join("hello.sh");
    // The first request sets up what the worker keeps (buffers, the spawn stack).
    assert_eq!(fpm.get(&hello, &[]).status(), 200);
    const REQUESTS: u64 = 20;
    let before = write_calls(worker);
    for _ in 0..REQUESTS {
        let r = fpm.get(&hello, &[]);
        assert_eq!(r.status(), 200);
        assert!(
            String::from_utf8_lossy(r.body()).contains("Hello from sh"),
            "{:?}",
            r.body()
        );
    }
    let writes = write_calls(worker) - before;
    // One per request; a loaded machine may stall a script between its pieces for longer
    // than the worker waits for more, which costs that request a second write.
    assert!(
        writes <= REQUESTS * 3 / 2,
        "{writes} writes for {REQUESTS} small responses; expected about one each"
    );
}

/// Output still streams: a piece the script writes reaches the web server while the
/// script goes on, long before it ends.
#[test]
fn output_reaches_the_web_server_while_the_script_runs() {
    let fpm = Fpm::start(1, "");
    let script = fpm.script(
        "slow.sh",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\nfirst\\n'\nsleep 2\nprintf 'second\\n'\n",
    );
    let path = script.display().to_string();
    let mut client = fpm.client();
    let started = Instant::now();
    client
        .send_request(
            1,
            &[
                ("REQUEST_METHOD", "GET"),
                ("SCRIPT_FILENAME", path.as_str()),
            ],
            b"",
            false,
        )
        .expect("send the request");
    let (kind, _, content) = client
        .read_record()
        .expect("read")
        .expect("a record before the end");
    let waited = started.elapsed();
    assert_eq!(kind, RecordType::Stdout);
    assert!(
        String::from_utf8_lossy(&content).contains("first"),
        "{content:?}"
    );
    assert!(
        waited < Duration::from_secs(1),
        "the script's first output took {waited:?} to arrive; it sleeps 2 s after writing it"
    );
}
