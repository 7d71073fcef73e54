//! Bytes queued for the web server, with a hold.
//!
//! nginx stops sending a request's body once it has passed the response header on to its
//! client (ngx_http_upstream_send_request_handler), so a script that answers before it has
//! read all its input — `cat`, an upload echo — would wait forever for the rest. While the
//! request body is still arriving the response is therefore held back; the child keeps
//! running, and what it writes beyond `SPILL_AT` goes to an unlinked temporary file so
//! memory stays bounded. Once the body is complete the hold is released and everything is
//! sent in order.

use nix::errno::Errno;
use std::fs::File;
use std::io::Write;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::FileExt;

/// Held output kept in memory before it spills to a file.
const SPILL_AT: usize = 256 * 1024;
/// How much of the spool is read back per write.
const STAGE: usize = 64 * 1024;

struct Spool {
    file: File,
    len: u64,
    sent: u64,
    stage: Vec<u8>,
    stage_written: usize,
}

#[derive(Default)]
pub(super) struct Output {
    mem: Vec<u8>,
    written: usize,
    /// Older bytes than `mem`, when a held response outgrew memory.
    spool: Option<Spool>,
    held: bool,
    /// Every byte ever written to the socket.
    total_written: u64,
}

impl Output {
    /// An output queue appending to `mem` (emptied first), so a worker can reuse one
    /// allocation for all its connections.
    pub(super) fn with_buffer(mut mem: Vec<u8>) -> Output {
        mem.clear();
        Output {
            mem,
            ..Output::default()
        }
    }

    /// The in-memory buffer back, for the next connection. Any spool is dropped.
    pub(super) fn into_buffer(self) -> Vec<u8> {
        self.mem
    }

    /// The in-memory tail, for encoders that append to it.
    pub(super) fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.mem
    }

    pub(super) fn pending(&self) -> usize {
        let spooled = self.spool.as_ref().map_or(0, |s| {
            (s.len - s.sent) as usize + s.stage.len() - s.stage_written
        });
        spooled + self.mem.len() - self.written
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pending() == 0
    }

    pub(super) fn total_written(&self) -> u64 {
        self.total_written
    }

    pub(super) fn is_held(&self) -> bool {
        self.held
    }

    pub(super) fn hold(&mut self) {
        self.held = true;
    }

    pub(super) fn release(&mut self) {
        self.held = false;
    }

    /// After appending: while held, move a large in-memory tail to the spool file.
    /// On failure to spool, the hold is dropped (memory stays bounded; the caller logs).
    pub(super) fn spill_if_needed(&mut self) -> std::io::Result<()> {
        if !self.held || self.mem.len() - self.written < SPILL_AT {
            return Ok(());
        }
        let spool = match &mut self.spool {
            Some(s) => s,
            None => match tempfile::tempfile() {
                Ok(file) => self.spool.insert(Spool {
                    file,
                    len: 0,
                    sent: 0,
                    stage: Vec::new(),
                    stage_written: 0,
                }),
                Err(e) => {
                    self.held = false;
                    return Err(e);
                }
            },
        };
        if let Err(e) = spool.file.write_all(&self.mem[self.written..]) {
            self.held = false;
            return Err(e);
        }
        spool.len += (self.mem.len() - self.written) as u64;
        self.mem.clear();
        self.written = 0;
        Ok(())
    }

    /// Write what the socket takes, spool first. `Ok(true)` once all is out; while held,
    /// nothing is written.
    pub(super) fn flush(&mut self, fd: BorrowedFd<'_>) -> Result<bool, Errno> {
        if self.held {
            return Ok(self.is_empty());
        }
        if let Some(spool) = &mut self.spool {
            loop {
                if spool.stage_written == spool.stage.len() {
                    if spool.sent == spool.len {
                        break;
                    }
                    let n = (spool.len - spool.sent).min(STAGE as u64) as usize;
                    spool.stage.resize(n, 0);
                    spool
                        .file
                        .read_exact_at(&mut spool.stage, spool.sent)
                        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO)))?;
                    spool.sent += n as u64;
                    spool.stage_written = 0;
                }
                let before = spool.stage_written;
                let done = write_some(fd, &spool.stage, &mut spool.stage_written)?;
                self.total_written += (spool.stage_written - before) as u64;
                if !done {
                    return Ok(false);
                }
            }
            self.spool = None;
        }
        let before = self.written;
        let done = write_some(fd, &self.mem, &mut self.written)?;
        self.total_written += (self.written - before) as u64;
        if !done {
            return Ok(false);
        }
        self.mem.clear();
        self.written = 0;
        Ok(true)
    }

    pub(super) fn discard(&mut self) {
        self.mem.clear();
        self.written = 0;
        self.spool = None;
    }
}

/// Write `buf[*written..]` until done (true) or the socket is full (false).
fn write_some(fd: BorrowedFd<'_>, buf: &[u8], written: &mut usize) -> Result<bool, Errno> {
    while *written < buf.len() {
        match nix::unistd::write(fd, &buf[*written..]) {
            Ok(n) => *written += n,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn held_output_spills_and_comes_out_in_order() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut out = Output::default();
        out.hold();
        let mut expected = Vec::new();
        for i in 0..40u32 {
            let chunk = vec![(i % 251) as u8; 20_000];
            out.buffer().extend_from_slice(&chunk);
            out.spill_if_needed().unwrap();
            expected.extend_from_slice(&chunk);
        }
        assert!(out.spool.is_some(), "800 KB held must spill");
        assert!(out.mem.len() < SPILL_AT);
        assert_eq!(out.pending(), expected.len());
        assert_eq!(out.flush(a.as_fd()), Ok(false), "held: nothing written");
        out.release();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            got
        });
        // The socket is blocking here, so each flush writes everything.
        assert_eq!(out.flush(a.as_fd()), Ok(true));
        assert!(out.is_empty());
        drop(a);
        assert!(reader.join().unwrap() == expected);
    }

    #[test]
    fn unheld_output_never_spills() {
        let mut out = Output::default();
        out.buffer().extend_from_slice(&vec![1u8; SPILL_AT * 2]);
        out.spill_if_needed().unwrap();
        assert!(out.spool.is_none());
    }
}
