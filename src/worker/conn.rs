//! One accepted FastCGI connection: a fixed input buffer that records are decoded from in
//! place, and an output queue. Non-blocking; the caller decides when to wait.

use super::output::Output;
use crate::fastcgi::record::{HEADER_LEN, RecordType, header, parse_record};
use crate::fastcgi::{Event, ProtocolError, Session};
use nix::errno::Errno;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Room for one maximal record (header, 65535 content bytes, 255 padding) and then some,
/// so a full record always fits once the buffer is compacted.
const INPUT_CAPACITY: usize = 128 * 1024;

/// Stream content read per output record: below the 65535 limit and a multiple of 8, so
/// full records need no padding.
pub const OUTPUT_CHUNK: usize = 65528;

const PADDING: [u8; 8] = [0; 8];

pub struct Conn {
    fd: OwnedFd,
    input: Box<[u8]>,
    start: usize,
    end: usize,
    /// The peer will send nothing more.
    pub eof: bool,
    output: Output,
}

/// Outcome of a non-blocking read.
#[derive(Debug, PartialEq, Eq)]
pub enum Fill {
    Data,
    Eof,
    WouldBlock,
    /// The input buffer holds an unconsumed maximal record; decode before reading more.
    Full,
}

impl Conn {
    pub fn new(fd: OwnedFd) -> Conn {
        Conn {
            fd,
            input: vec![0; INPUT_CAPACITY].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            output: Output::with_capacity(HEADER_LEN + OUTPUT_CHUNK + 64),
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Bytes received but not yet decoded.
    pub fn buffered_input(&self) -> usize {
        self.end - self.start
    }

    /// Read whatever the socket has, into the free end of the input buffer.
    pub fn fill(&mut self) -> Result<Fill, Errno> {
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
    pub fn discard_input(&mut self) -> Result<Option<usize>, Errno> {
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
    pub fn next_event(
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

    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// Queued bytes not yet written.
    pub fn pending_output(&self) -> usize {
        self.output.pending()
    }

    /// Drop queued output: the peer is gone.
    pub fn discard_output(&mut self) {
        self.output.discard();
    }

    /// Hold the response back until the request body is complete (see `output`).
    pub fn hold_output(&mut self) {
        self.output.hold();
    }

    pub fn release_output(&mut self) {
        self.output.release();
    }

    /// Bytes written to the peer over the connection's life.
    pub fn bytes_written(&self) -> u64 {
        self.output.total_written()
    }

    pub fn output_held(&self) -> bool {
        self.output.is_held()
    }

    /// Move a large held tail to disk; on error the hold is dropped.
    pub fn spill_output(&mut self) -> std::io::Result<()> {
        self.output.spill_if_needed()
    }

    /// Append `data` as stream records.
    pub fn queue_stream(&mut self, record_type: RecordType, request_id: u16, data: &[u8]) {
        crate::fastcgi::record::write_stream(self.output.buffer(), record_type, request_id, data);
    }

    pub fn queue_record(&mut self, record_type: RecordType, request_id: u16, content: &[u8]) {
        crate::fastcgi::record::write_record(
            self.output.buffer(),
            record_type,
            request_id,
            content,
        );
    }

    /// The queue itself, for encoders that write into it directly.
    pub fn output_mut(&mut self) -> &mut Vec<u8> {
        self.output.buffer()
    }

    /// Read from `source` straight into a new output record of `record_type`, sparing a
    /// copy; `observe` sees the bytes read. Returns their count: 0 at end of stream.
    pub fn queue_read_from(
        &mut self,
        source: BorrowedFd<'_>,
        record_type: RecordType,
        request_id: u16,
        observe: impl FnOnce(&[u8]),
    ) -> Result<usize, Errno> {
        let output = self.output.buffer();
        let at = output.len();
        output.resize(at + HEADER_LEN + OUTPUT_CHUNK, 0);
        let result = loop {
            match nix::unistd::read(source, &mut output[at + HEADER_LEN..]) {
                Err(Errno::EINTR) => continue,
                other => break other,
            }
        };
        match result {
            Ok(n) if n > 0 => {
                observe(&output[at + HEADER_LEN..at + HEADER_LEN + n]);
                let (head, padding) = header(record_type, request_id, n);
                output[at..at + HEADER_LEN].copy_from_slice(&head);
                output.truncate(at + HEADER_LEN + n);
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
    pub fn flush(&mut self) -> Result<bool, Errno> {
        self.output.flush(self.fd.as_fd())
    }
}
