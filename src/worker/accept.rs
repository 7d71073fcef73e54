//! The accept loop: a worker's life between connections. It waits on its pool's
//! listening socket, the hand-off channel of parked connections and its signals, takes a
//! connection (new, or handed back by the master), and serves it; a connection whose
//! request head is slow to come is parked with the master instead.

use super::WorkerCtx;
use super::connection::{ConnEnd, serve_connection};
use super::park::{HEAD_PATIENCE, head_arrives_within, park, take_handoff};
use super::signals::Request as SignalRequest;
use crate::isolation;
use crate::scoreboard::WorkerState;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{SockFlag, accept4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Instant;

const LISTENER: u64 = 1;
const SIGNALS: u64 = 2;
const HANDOFF: u64 = 3;

/// Accept and serve connections until told to stop. Returns the exit code.
pub(super) fn accept_loop(ctx: &mut WorkerCtx<'_>, listener: BorrowedFd<'_>) -> i32 {
    let mut acceptor = match Acceptor::new(ctx, listener) {
        Ok(a) => a,
        Err(code) => return code,
    };
    loop {
        ctx.slot().set_state(WorkerState::Idle);
        if ctx.quit {
            return 0;
        }
        ctx.offer_idle();
        if let Some(code) = acceptor.resume_if_due(ctx) {
            return code;
        }
        let ready = match acceptor.wait(ctx) {
            Ok(Some(ready)) => ready,
            Ok(None) => continue,
            Err(code) => return code,
        };
        if ready.terminate {
            return 0;
        }
        // An orphan takes nothing new: its listening sockets are closed already.
        if ctx.orphaned() {
            return 0;
        }
        if acceptor.handoff_first(ready)
            && let Some(fd) = take_handoff(ctx, &acceptor.epoll)
        {
            // A request is already waiting on it: serve it as a new connection's.
            ctx.go_busy();
            if serve_connection(fd, ctx) == ConnEnd::Exit {
                return 0;
            }
            continue;
        }
        // A quitting worker still takes the connection it was woken for: with
        // EPOLLEXCLUSIVE no other worker was woken for it.
        if !ready.listener {
            if ctx.quit {
                return 0;
            }
            continue;
        }
        let fd = match acceptor.accept(ctx) {
            Accepted::Conn(fd) => fd,
            Accepted::Nothing => continue,
            Accepted::Stop => return 0,
        };
        if !isolation::clients::admit(ctx.pool, &fd) {
            continue;
        }
        // A head that is not there at once waits with the master, not with a worker: a
        // client that trickles it then costs a descriptor in the master, never a worker.
        // While the master holds connections for the pool (request_queue_timeout), every
        // new one joins them, behind those waiting longer.
        if ctx.parking.is_some()
            && (ctx.queue_timed() && ctx.scoreboard.master_holds()
                || !head_arrives_within(fd.as_fd(), HEAD_PATIENCE, ctx.buffers.scratch()))
            && park(ctx, fd.as_fd(), crate::parking::Kind::AwaitingHead)
        {
            continue;
        }
        ctx.go_busy();
        if serve_connection(fd, ctx) == ConnEnd::Exit {
            return 0;
        }
    }
}

/// What one wake-up of the accept loop found.
#[derive(Clone, Copy)]
struct Ready {
    listener: bool,
    handoff: bool,
    /// A TERM arrived.
    terminate: bool,
}

/// The result of one accept.
enum Accepted {
    Conn(OwnedFd),
    /// Nothing to take (another worker took it, or it failed for the moment).
    Nothing,
    /// The socket no longer listens.
    Stop,
}

/// The accept loop's epoll and what it remembers between wake-ups.
struct Acceptor<'l> {
    epoll: Epoll,
    listener: BorrowedFd<'l>,
    events: [EpollEvent; 3],
    /// With both kinds waiting, whether a handed-out connection goes first this time.
    handoff_turn: bool,
    /// Out of descriptors at accept: the listener is out of the epoll set until then, so
    /// that the waiting connection does not wake us in a loop.
    paused_until: Option<Instant>,
}

impl<'l> Acceptor<'l> {
    /// The epoll set over the listener, the signalfd and the hand-off channel; an exit
    /// code if the system refuses it.
    fn new(ctx: &WorkerCtx<'_>, listener: BorrowedFd<'l>) -> Result<Acceptor<'l>, i32> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| {
            log::error!("[pool {}] epoll_create failed: {e}", ctx.pool.name);
            crate::exit_code::OS_ERROR
        })?;
        // EPOLLEXCLUSIVE wakes one idle worker per connection instead of all of them;
        // the same for the hand-off channel: one idle worker per handed-out connection.
        let exclusive = EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE;
        let registered = epoll
            .add(listener, EpollEvent::new(exclusive, LISTENER))
            .and_then(|()| {
                epoll.add(
                    ctx.signals.fd(),
                    EpollEvent::new(EpollFlags::EPOLLIN, SIGNALS),
                )
            })
            .and_then(|()| match ctx.parking {
                Some(p) => epoll.add(p.handoff, EpollEvent::new(exclusive, HANDOFF)),
                None => Ok(()),
            });
        if let Err(e) = registered {
            log::error!("[pool {}] epoll_ctl failed: {e}", ctx.pool.name);
            return Err(crate::exit_code::OS_ERROR);
        }
        Ok(Acceptor {
            epoll,
            listener,
            events: [EpollEvent::empty(); 3],
            handoff_turn: true,
            paused_until: None,
        })
    }

    /// Watch the listener again once an accept backoff is over; an exit code if the
    /// worker is done.
    fn resume_if_due(&mut self, ctx: &WorkerCtx<'_>) -> Option<i32> {
        let until = self.paused_until?;
        if Instant::now() < until {
            return None;
        }
        self.paused_until = None;
        // An orphan's listening sockets are closed: nothing to watch again.
        if ctx.orphaned() {
            return Some(0);
        }
        let event = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE, LISTENER);
        if let Err(e) = self.epoll.add(self.listener, event) {
            log::error!("[pool {}] epoll_ctl failed: {e}", ctx.pool.name);
            return Some(crate::exit_code::OS_ERROR);
        }
        None
    }

    /// Sleep until something is ready, taking any signal; None when the wake-up brought
    /// nothing, an exit code if epoll fails.
    fn wait(&mut self, ctx: &mut WorkerCtx<'_>) -> Result<Option<Ready>, i32> {
        // After a large response, look before sleeping: memory is handed back only once
        // there is nothing else to do.
        let timeout = if ctx.buffers.trim_pending() {
            EpollTimeout::ZERO
        } else if let Some(until) = self.paused_until {
            let left = until.saturating_duration_since(Instant::now());
            // Rounded up: waking a millisecond early would only loop once more.
            let millis = u16::try_from(left.as_millis() + 1).unwrap_or(u16::MAX);
            EpollTimeout::from(millis)
        } else {
            EpollTimeout::NONE
        };
        let n = match self.epoll.wait(&mut self.events, timeout) {
            Ok(0) if timeout == EpollTimeout::ZERO => {
                ctx.buffers.trim();
                return Ok(None);
            }
            Ok(0) | Err(Errno::EINTR) => return Ok(None),
            Ok(n) => n,
            Err(e) => {
                log::error!("[pool {}] epoll_wait failed: {e}", ctx.pool.name);
                return Err(crate::exit_code::OS_ERROR);
            }
        };
        let events = &self.events[..n];
        let signalled = events.iter().any(|e| e.data() == SIGNALS);
        let ready = Ready {
            listener: events.iter().any(|e| e.data() == LISTENER),
            handoff: events.iter().any(|e| e.data() == HANDOFF),
            terminate: signalled && ctx.take_signal() == Some(SignalRequest::Terminate),
        };
        Ok(Some(ready))
    }

    /// Whether to take a handed-out connection now. With both one of those and a new
    /// one waiting, take turns: either kind always first would starve the other under
    /// steady load.
    fn handoff_first(&mut self, ready: Ready) -> bool {
        let first = ready.handoff && (!ready.listener || self.handoff_turn);
        if ready.listener && ready.handoff {
            self.handoff_turn = !self.handoff_turn;
        }
        first
    }

    fn accept(&mut self, ctx: &mut WorkerCtx<'_>) -> Accepted {
        let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
        let fd = match accept4(self.listener.as_raw_fd(), flags) {
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            // Another worker took it, or the client gave up before we got to it.
            Err(Errno::EAGAIN | Errno::EINTR | Errno::ECONNABORTED) => return Accepted::Nothing,
            Err(e) if crate::shortage::is_shortage(e) => {
                let failure = ctx.accept_shortage.failed();
                if failure.first {
                    log::error!(
                        "{} accept() failed: {e}; out of descriptors, the connection waits in the queue and accept is retried with backoff",
                        ctx.log_prefix()
                    );
                }
                let _ = self.epoll.delete(self.listener);
                self.paused_until = Some(Instant::now() + failure.backoff);
                return Accepted::Nothing;
            }
            // The socket no longer listens: the master shut it down on a graceful stop
            // (its QUIT may not have reached this worker yet). Nothing more to take.
            Err(Errno::EINVAL) => return Accepted::Stop,
            Err(e) => {
                log::warn!("[pool {}] accept() failed: {e}", ctx.pool.name);
                return Accepted::Nothing;
            }
        };
        if let Some(failures) = ctx.accept_shortage.succeeded() {
            log::info!(
                "{} accept() works again after {failures} failure(s)",
                ctx.log_prefix()
            );
        }
        Accepted::Conn(fd)
    }
}
