//! One accepted FastCGI connection: a fixed input buffer that records are decoded from in
//! place, and an output queue. Non-blocking; the caller decides when to wait.

use super::output::Output;
use crate::fastcgi::record::{HEADER_LEN, RecordType, header, parse_record};
use crate::fastcgi::{Event, ProtocolError, Session};
use nix::errno::Errno;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// Room for one maximal record (header, 65535 content bytes, 255 padding) and then some,
/// so a full record always fits once the buffer is compacted.
const INPUT_CAPACITY: usize = 128 * 1024;

/// Stream content read per output record: below the 65535 limit and a multiple of 8, so
/// full records need no padding.
pub(super) const OUTPUT_CHUNK: usize = 65528;

/// Room for one full output record: what the output queue starts with.
const OUTPUT_CAPACITY: usize = HEADER_LEN + OUTPUT_CHUNK + 64;

/// An output buffer larger than this at the end of a connection (it grew holding a
/// response) is let go rather than kept.
const OUTPUT_KEEP_MAX: usize = 4 * OUTPUT_CAPACITY;

const PADDING: [u8; 8] = [0; 8];

/// A connection's buffers, which the worker keeps from one connection to the next:
/// allocating and zeroing them per connection was a measurable part of a small
/// request's cost (see BENCHMARKS.md).
#[derive(Default)]
pub(super) struct ConnBuffers {
    input: Box<[u8]>,
    output: Vec<u8>,
    /// A grown output buffer was let go: its memory is free in the heap, not returned.
    trim_pending: bool,
}

impl ConnBuffers {
    /// The input buffer, as room to look at a connection's first bytes before it is
    /// served (its content is not kept).
    pub(super) fn scratch(&mut self) -> &mut [u8] {
        if self.input.len() != INPUT_CAPACITY {
            self.input = vec![0; INPUT_CAPACITY].into_boxed_slice();
        }
        &mut self.input
    }

    /// Whether memory is waiting to be handed back (see `trim`).
    pub(super) fn trim_pending(&self) -> bool {
        self.trim_pending
    }

    /// Hand freed heap memory back to the kernel: glibc keeps what a large response
    /// left free, and an idle worker would carry it in its RSS. The worker calls this
    /// when it has nothing else to do, so a run of large responses does not pay for it.
    pub(super) fn trim(&mut self) {
        self.trim_pending = false;
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only walks the allocator's own free lists; it has no
        // preconditions, and this process is single-threaded.
        unsafe {
            nix::libc::malloc_trim(0);
        }
    }
}

pub(super) struct Conn {
    fd: OwnedFd,
    input: Box<[u8]>,
    start: usize,
    end: usize,
    /// The peer will send nothing more.
    pub eof: bool,
    output: Output,
    /// Carried over from the buffers: memory still to be handed back.
    trim_pending: bool,
}

/// Outcome of a non-blocking read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Fill {
    Data,
    Eof,
    WouldBlock,
    /// The input buffer holds an unconsumed maximal record; decode before reading more.
    Full,
}

impl Conn {
    /// A connection on `fd` using `buffers` (empty ones are allocated here).
    pub(super) fn new(fd: OwnedFd, buffers: ConnBuffers) -> Conn {
        let input = if buffers.input.len() == INPUT_CAPACITY {
            buffers.input
        } else {
            vec![0; INPUT_CAPACITY].into_boxed_slice()
        };
        let mut output = buffers.output;
        output.reserve(OUTPUT_CAPACITY);
        Conn {
            fd,
            input,
            start: 0,
            end: 0,
            eof: false,
            output: Output::with_buffer(output),
            trim_pending: buffers.trim_pending,
        }
    }

    /// Close the connection and hand its buffers back for the next one.
    pub(super) fn into_buffers(self) -> ConnBuffers {
        let output = self.output.into_buffer();
        let grown = output.capacity() > OUTPUT_KEEP_MAX;
        ConnBuffers {
            input: self.input,
            output: if grown { Vec::new() } else { output },
            trim_pending: self.trim_pending || grown,
        }
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Bytes received but not yet decoded.
    pub(super) fn buffered_input(&self) -> usize {
        self.end - self.start
    }

    /// Read whatever the socket has, into the free end of the input buffer.
    pub(super) fn fill(&mut self) -> Result<Fill, Errno> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.input.len() {
            if self.start == 0 {
                return Ok(Fill::Full);
            }
            self.input.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        loop {
            match nix::unistd::read(&self.fd, &mut self.input[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(Fill::Eof);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(Fill::Data);
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(Fill::WouldBlock),
                Err(e) => return Err(e),
            }
        }
    }

    /// Read and drop whatever the peer sends (when closing on it): `Some(0)` at its end,
    /// `None` when nothing is there yet.
    pub(super) fn discard_input(&mut self) -> Result<Option<usize>, Errno> {
        self.start = 0;
        self.end = 0;
        loop {
            match nix::unistd::read(&self.fd, &mut self.input) {
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(None),
                Err(e) => return Err(e),
                Ok(n) => return Ok(Some(n)),
            }
        }
    }

    /// Decode buffered records until one means something to the caller, or the buffer
    /// holds no whole record. Protocol replies the session makes are queued for output.
    pub(super) fn next_event(
        &mut self,
        session: &mut Session,
    ) -> Result<Option<Event<'_>>, ProtocolError> {
        loop {
            let Some((record, used)) = parse_record(&self.input[self.start..self.end])? else {
                return Ok(None);
            };
            self.start += used;
            match session.on_record(record, self.output.buffer())? {
                Event::None => continue,
                event => return Ok(Some(event)),
            }
        }
    }

    pub(super) fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// Queued bytes not yet written.
    pub(super) fn pending_output(&self) -> usize {
        self.output.pending()
    }

    /// Drop queued output: the peer is gone.
    pub(super) fn discard_output(&mut self) {
        self.output.discard();
    }

    /// Hold the response back until the request body is complete (see `output`).
    pub(super) fn hold_output(&mut self) {
        self.output.hold();
    }

    pub(super) fn release_output(&mut self) {
        self.output.release();
    }

    /// Bytes written to the peer over the connection's life.
    pub(super) fn bytes_written(&self) -> u64 {
        self.output.total_written()
    }

    pub(super) fn output_held(&self) -> bool {
        self.output.is_held()
    }

    /// Output is held and `limit` bytes of it (non-zero) are waiting: take no more.
    pub(super) fn held_output_full(&self, limit: u64) -> bool {
        limit > 0 && self.output.is_held() && self.output.pending() as u64 >= limit
    }

    /// Move a large held tail to disk; on error the hold is dropped.
    pub(super) fn spill_output(&mut self) -> std::io::Result<()> {
        self.output.spill_if_needed()
    }

    /// Append `data` as stream records.
    pub(super) fn queue_stream(&mut self, record_type: RecordType, request_id: u16, data: &[u8]) {
        crate::fastcgi::record::write_stream(self.output.buffer(), record_type, request_id, data);
    }

    pub(super) fn queue_record(
        &mut self,
        record_type: RecordType,
        request_id: u16,
        content: &[u8],
    ) {
        crate::fastcgi::record::write_record(
            self.output.buffer(),
            record_type,
            request_id,
            content,
        );
    }

    /// The queue itself, for encoders that write into it directly.
    pub(super) fn output_mut(&mut self) -> &mut Vec<u8> {
        self.output.buffer()
    }

    /// Read from `source` straight into a new output record of `record_type`, sparing a
    /// copy; `observe` sees the bytes read. Returns their count: 0 at end of stream.
    pub(super) fn queue_read_from(
        &mut self,
        source: BorrowedFd<'_>,
        record_type: RecordType,
        request_id: u16,
        observe: impl FnOnce(&[u8]),
    ) -> Result<usize, Errno> {
        let output = self.output.buffer();
        let at = output.len();
        // The header's place; it is written once the content length is known.
        output.extend_from_slice(&[0; HEADER_LEN]);
        let result = loop {
            match read_append(source, output, OUTPUT_CHUNK) {
                Err(Errno::EINTR) => continue,
                other => break other,
            }
        };
        match result {
            Ok(n) if n > 0 => {
                observe(&output[at + HEADER_LEN..at + HEADER_LEN + n]);
                let (head, padding) = header(record_type, request_id, n);
                output[at..at + HEADER_LEN].copy_from_slice(&head);
                output.extend_from_slice(&PADDING[..padding]);
                Ok(n)
            }
            other => {
                output.truncate(at);
                other
            }
        }
    }

    /// Write as much queued output as the socket takes. `Ok(true)` once all is written.
    pub(super) fn flush(&mut self) -> Result<bool, Errno> {
        self.output.flush(self.fd.as_fd())
    }
}

/// Read up to `max` bytes from `fd` onto the end of `buf`, into its spare capacity: a
/// small response then costs a small read, not the zeroing of a whole record's room.
fn read_append(fd: BorrowedFd<'_>, buf: &mut Vec<u8>, max: usize) -> Result<usize, Errno> {
    buf.reserve(max);
    let spare = &mut buf.spare_capacity_mut()[..max];
    // SAFETY: `spare` is `max` bytes of memory this Vec owns (reserved above); read(2)
    // writes at most `max` bytes into it and touches nothing else.
    let n = unsafe { nix::libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), max) };
    let n = Errno::result(n)? as usize;
    // SAFETY: read(2) initialised the first `n` (≤ `max`) bytes after the current length.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn read_append_appends_what_was_read_and_nothing_more() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"hello").unwrap();
        let mut buf = b"ab".to_vec();
        assert_eq!(read_append(b.as_fd(), &mut buf, 100), Ok(5));
        assert_eq!(buf, b"abhello");
        a.write_all(b"0123456789").unwrap();
        assert_eq!(read_append(b.as_fd(), &mut buf, 4), Ok(4));
        assert_eq!(buf, b"abhello0123");
        drop(a);
        assert_eq!(read_append(b.as_fd(), &mut buf, 100), Ok(6));
        assert_eq!(read_append(b.as_fd(), &mut buf, 100), Ok(0));
        assert_eq!(buf, b"abhello0123456789");
    }

    #[test]
    fn buffers_come_back_empty_and_are_reused() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut conn = Conn::new(OwnedFd::from(a), ConnBuffers::default());
        conn.queue_record(RecordType::Stdout, 1, b"data");
        let input_ptr = conn.input.as_ptr();
        let buffers = conn.into_buffers();
        let (c, _d) = UnixStream::pair().unwrap();
        let conn = Conn::new(OwnedFd::from(c), buffers);
        assert_eq!(conn.input.as_ptr(), input_ptr, "the input buffer is reused");
        assert!(
            !conn.has_output(),
            "no output carries over to the next connection"
        );
    }

    #[test]
    fn a_grown_output_buffer_is_let_go() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut conn = Conn::new(OwnedFd::from(a), ConnBuffers::default());
        conn.hold_output();
        conn.queue_stream(RecordType::Stdout, 1, &vec![0; 2 * OUTPUT_KEEP_MAX]);
        let buffers = conn.into_buffers();
        assert_eq!(buffers.output.capacity(), 0);
        assert!(buffers.trim_pending());
        // A pending trim outlives the next connection, however small its output.
        let (c, _d) = UnixStream::pair().unwrap();
        let mut buffers = Conn::new(OwnedFd::from(c), buffers).into_buffers();
        assert!(buffers.trim_pending());
        buffers.trim();
        assert!(!buffers.trim_pending());
    }
}
