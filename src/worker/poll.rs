//! poll(2) over a small, reusable set of descriptors.
//!
//! nix's PollFd drops the whole revents value when the kernel sets a bit nix does not
//! name (POLLRDHUP, on a peer's shutdown), which would make a closed connection look idle;
//! this keeps the raw bits.

use nix::errno::Errno;
use nix::libc;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

pub(crate) const IN: i16 = libc::POLLIN;
pub(crate) const OUT: i16 = libc::POLLOUT;
pub(crate) const HUP: i16 = libc::POLLHUP;
pub(crate) const ERR: i16 = libc::POLLERR;
/// The peer shut down its writing side.
pub(crate) const RDHUP: i16 = libc::POLLRDHUP;
/// Readable, or nothing more will ever be: a read will not block.
pub(crate) const READABLE: i16 = IN | HUP | ERR | RDHUP;

#[derive(Default)]
pub(crate) struct PollSet {
    fds: Vec<libc::pollfd>,
}

impl PollSet {
    pub(crate) fn clear(&mut self) {
        self.fds.clear();
    }

    /// Add a descriptor; returns its index for [`PollSet::revents`].
    pub(crate) fn add(&mut self, fd: BorrowedFd<'_>, events: i16) -> usize {
        self.fds.push(libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        });
        self.fds.len() - 1
    }

    /// Wait until a descriptor is ready or `timeout` passes (`None`: no limit). EINTR
    /// counts as a wake-up with nothing ready.
    pub(crate) fn wait(&mut self, timeout: Option<Duration>) -> Result<(), Errno> {
        let ms = poll_millis(timeout);
        for fd in &mut self.fds {
            fd.revents = 0;
        }
        // SAFETY: the pointer and length describe our own initialised array of pollfd,
        // which poll only writes revents into; the descriptors are borrowed by the caller
        // for the duration of the call.
        let rc = unsafe { libc::poll(self.fds.as_mut_ptr(), self.fds.len() as libc::nfds_t, ms) };
        match Errno::result(rc) {
            Ok(_) | Err(Errno::EINTR) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// [`PollSet::wait`] until `deadline` (`None`: no limit); a deadline already passed
    /// polls without waiting.
    pub(crate) fn wait_until(&mut self, deadline: Option<Instant>) -> Result<(), Errno> {
        self.wait(deadline.map(|d| d.saturating_duration_since(Instant::now())))
    }

    pub(crate) fn revents(&self, index: usize) -> i16 {
        self.fds.get(index).map_or(0, |f| f.revents)
    }

    /// How many descriptors the set holds.
    pub(crate) fn count(&self) -> usize {
        self.fds.len()
    }

    /// Forget the descriptors added after the first `len`.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.fds.truncate(len);
    }
}

/// Wait until `fd` has one of `events` or `deadline` passes; what it has (0: nothing).
pub(crate) fn wait_one(fd: BorrowedFd<'_>, events: i16, deadline: Instant) -> Result<i16, Errno> {
    let mut set = PollSet::default();
    let index = set.add(fd, events);
    set.wait_until(Some(deadline))?;
    Ok(set.revents(index))
}

/// poll's timeout for `timeout`: whole milliseconds rounded up, so that a deadline is
/// never polled short of its time, and zero kept zero: a check that must not wait (is
/// the resident app's connection still fit?) once waited 1 ms on every request.
fn poll_millis(timeout: Option<Duration>) -> i32 {
    match timeout {
        None => -1,
        Some(t) => i32::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX),
    }
}

/// Without a pidfd, how often to look for a CGI child's exit.
pub(super) const EXIT_POLL: Duration = Duration::from_millis(20);

/// Sleep until `fd` is readable or `deadline` passes, and in any case no longer than
/// 100 ms with a descriptor (the caller looks again) or EXIT_POLL without one. A
/// descriptor without a deadline waits until it is readable.
pub(super) fn wait_for(fd: Option<std::os::fd::BorrowedFd<'_>>, deadline: Option<Instant>) {
    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    match fd {
        Some(fd) => {
            let mut set = PollSet::default();
            set.add(fd, IN);
            let _ = set.wait(left.map(|l| l.min(Duration::from_millis(100))));
        }
        None => std::thread::sleep(left.unwrap_or(EXIT_POLL).min(EXIT_POLL)),
    }
}

#[cfg(test)]
mod tests {
    use super::{IN, PollSet, poll_millis, wait_one};
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    #[test]
    fn timeouts_round_up_to_whole_milliseconds_and_zero_stays_zero() {
        assert_eq!(poll_millis(None), -1);
        assert_eq!(poll_millis(Some(Duration::ZERO)), 0);
        assert_eq!(poll_millis(Some(Duration::from_micros(1))), 1);
        assert_eq!(poll_millis(Some(Duration::from_millis(5))), 5);
        assert_eq!(poll_millis(Some(Duration::from_micros(5_001))), 6);
        assert_eq!(poll_millis(Some(Duration::from_secs(10_000_000))), i32::MAX);
    }

    #[test]
    fn a_wait_ends_at_its_deadline_or_when_a_descriptor_is_ready() {
        let (read, write) = nix::unistd::pipe().unwrap();
        let deadline = Instant::now() + Duration::from_millis(30);
        assert_eq!(wait_one(read.as_fd(), IN, deadline), Ok(0));
        assert!(Instant::now() >= deadline, "woke before the deadline");
        nix::unistd::write(&write, b"x").unwrap();
        let far = Instant::now() + Duration::from_secs(10);
        assert_eq!(wait_one(read.as_fd(), IN, far), Ok(IN));
        assert!(Instant::now() < far);
    }

    #[test]
    fn a_set_cut_back_keeps_its_first_descriptors() {
        let (read, write) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&write, b"x").unwrap();
        let mut set = PollSet::default();
        let index = set.add(read.as_fd(), IN);
        set.add(write.as_fd(), IN);
        set.truncate(1);
        assert_eq!(set.count(), 1);
        set.wait_until(Some(Instant::now())).unwrap();
        assert_eq!(set.revents(index), IN);
    }
}
