//! A resident app's descriptor 2. A CGI child's stderr is a pipe the worker reads and
//! sends where `cgi.stderr` says; an app's is too, so that what it writes there during a
//! request goes to the same places as that request's FCGI_STDERR records. What it writes
//! between requests (start-up warnings, its last words) belongs to no request and goes to
//! the error log, unless `cgi.stderr = discard`.

use nix::errno::Errno;
use std::os::fd::OwnedFd;

/// Bytes read from the pipe per call, and the most one drain takes before it lets the
/// caller go on: an app that writes to stderr without pause must not hold the worker.
pub(super) const CHUNK: usize = 16 * 1024;
pub(super) const DRAIN_LIMIT: usize = 256 * 1024;

/// What one read of the pipe gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    Data(usize),
    /// Nothing now.
    Empty,
    /// Every writer has closed it (or it failed): the pipe is dropped.
    Closed,
}

/// Read once from the app's stderr pipe (non-blocking) into `buf`.
pub(super) fn read(pipe: &mut Option<OwnedFd>, buf: &mut [u8]) -> Read {
    let Some(fd) = pipe else {
        return Read::Closed;
    };
    loop {
        return match nix::unistd::read(&*fd, buf) {
            Ok(0) => {
                *pipe = None;
                Read::Closed
            }
            Ok(n) => Read::Data(n),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => Read::Empty,
            Err(_) => {
                *pipe = None;
                Read::Closed
            }
        };
    }
}

/// Read what the pipe holds now, up to [`DRAIN_LIMIT`], handing each piece to `take`.
pub(super) fn drain(pipe: &mut Option<OwnedFd>, mut take: impl FnMut(&[u8])) {
    let mut buf = [0u8; CHUNK];
    let mut taken = 0;
    while taken < DRAIN_LIMIT {
        match read(pipe, &mut buf) {
            Read::Data(n) => {
                taken += n;
                take(&buf[..n]);
            }
            Read::Empty | Read::Closed => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pipe() -> (Option<OwnedFd>, std::fs::File) {
        let (read_end, write_end) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .expect("pipe");
        (Some(read_end), std::fs::File::from(write_end))
    }

    #[test]
    fn a_drain_takes_what_is_there_and_keeps_the_pipe_while_a_writer_lives() {
        let (mut pipe, mut writer) = pipe();
        writer.write_all(b"one\ntwo").expect("write");
        let mut got = Vec::new();
        drain(&mut pipe, |b| got.extend_from_slice(b));
        assert_eq!(got, b"one\ntwo");
        assert!(pipe.is_some());
        drop(writer);
        drain(&mut pipe, |_| panic!("nothing is left"));
        assert!(pipe.is_none(), "the closed pipe is dropped");
        assert_eq!(read(&mut pipe, &mut [0u8; 4]), Read::Closed);
    }

    #[test]
    fn a_drain_stops_at_its_limit() {
        let (mut pipe, mut writer) = pipe();
        let size = nix::fcntl::fcntl(&writer, nix::fcntl::FcntlArg::F_GETPIPE_SZ).expect("size");
        // Fill the pipe past the limit when it can hold that much; else the limit is
        // not reached and the drain ends at Empty.
        let _ = nix::fcntl::fcntl(
            &writer,
            nix::fcntl::FcntlArg::F_SETPIPE_SZ(2 * DRAIN_LIMIT as i32),
        );
        let size =
            nix::fcntl::fcntl(&writer, nix::fcntl::FcntlArg::F_GETPIPE_SZ).unwrap_or(size) as usize;
        let total = size.min(2 * DRAIN_LIMIT);
        let mut written = 0;
        while written < total {
            match writer.write(&vec![b'x'; total - written]) {
                Ok(n) => written += n,
                Err(_) => break,
            }
        }
        let mut got = 0;
        drain(&mut pipe, |b| got += b.len());
        assert_eq!(got, written.min(DRAIN_LIMIT));
    }
}
