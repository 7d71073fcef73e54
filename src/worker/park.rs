//! The worker's side of parking (see `crate::parking`): a connection without a request
//! in hand goes to the master, and comes back through the hand-off channel once a
//! request waits on it.

use super::WorkerCtx;
use super::poll;
use nix::errno::Errno;
use nix::sys::epoll::Epoll;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A parked connection the master handed out, if this worker got it.
pub(super) fn take_handoff(ctx: &mut WorkerCtx<'_>, epoll: &Epoll) -> Option<OwnedFd> {
    let parking = ctx.parking?;
    let channel = parking.handoff;
    match crate::parking::receive(channel) {
        Ok(crate::parking::Received::Fd(fd)) => {
            ctx.scoreboard
                .counters()
                .handoffs_taken
                .fetch_add(1, Ordering::Relaxed);
            Some(fd)
        }
        Ok(crate::parking::Received::Empty) => None,
        Ok(crate::parking::Received::Closed) => {
            forget_parking(ctx, epoll, channel);
            None
        }
        Err(e) if channel_is_broken(e) => {
            log::warn!(
                "{} the hand-off channel failed ({e}); parking no more",
                ctx.log_prefix()
            );
            forget_parking(ctx, epoll, channel);
            None
        }
        // Out of descriptors or memory for the moment (the message may be lost, the
        // channel is not): later hand-offs still work.
        Err(e) => {
            log::warn!("{} cannot take a kept connection: {e}", ctx.log_prefix());
            None
        }
    }
}

/// The channel is gone for good: the master that made it has exited (a stop), or it is
/// not what it should be.
fn forget_parking(ctx: &mut WorkerCtx<'_>, epoll: &Epoll, channel: BorrowedFd<'_>) {
    let _ = epoll.delete(channel);
    ctx.parking = None;
}

/// Whether a receive error means the channel will never work again. Only those do: one
/// error of the moment (ENOBUFS when the descriptor did not fit, EMFILE, ENOMEM) used to
/// cost the worker its channel for the rest of its life.
fn channel_is_broken(error: Errno) -> bool {
    matches!(
        error,
        Errno::EBADF | Errno::ENOTSOCK | Errno::EINVAL | Errno::ENOTCONN | Errno::ECONNRESET
    )
}

/// How long a worker waits for the request head of a connection it accepted before it
/// hands the connection to the master to wait for it. A web server writes the head right
/// after connecting, so it is nearly always there at once; this only absorbs the gap.
pub(super) const HEAD_PATIENCE: Duration = Duration::from_millis(5);

/// Whether `fd`'s request head is complete (or the peer closed, or sent something else a
/// worker must answer) within `patience`, judged by peeking into `scratch`: nothing is
/// read.
pub(super) fn head_arrives_within(
    fd: BorrowedFd<'_>,
    patience: Duration,
    scratch: &mut [u8],
) -> bool {
    use crate::parking::{Peeked, peek_head_into};
    let deadline = Instant::now() + patience;
    loop {
        if !matches!(peek_head_into(fd, scratch), Peeked::Partial(_)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        if poll::wait_one(fd, poll::IN, deadline).is_err() {
            return true;
        }
    }
}

/// Hand a connection without a request in hand to the master (an idle kept one, or one
/// whose head has not arrived); false if that is not possible (the caller keeps it).
pub(super) fn park(ctx: &WorkerCtx<'_>, fd: BorrowedFd<'_>, kind: crate::parking::Kind) -> bool {
    let Some(parking) = ctx.parking else {
        return false;
    };
    let channel = parking.park;
    match crate::parking::send_as(channel, fd, kind) {
        Ok(()) => true,
        Err(e) => {
            log::debug!("{} cannot park a kept connection: {e}", ctx.log_prefix());
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::channel_is_broken;
    use nix::errno::Errno;

    #[test]
    fn only_a_broken_hand_off_channel_is_given_up() {
        for passing in [Errno::ENOBUFS, Errno::EMFILE, Errno::ENFILE, Errno::ENOMEM] {
            assert!(!channel_is_broken(passing), "{passing}");
        }
        for broken in [Errno::EBADF, Errno::ENOTSOCK, Errno::ENOTCONN] {
            assert!(channel_is_broken(broken), "{broken}");
        }
    }
}
