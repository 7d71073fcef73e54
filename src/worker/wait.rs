//! The worker's one way to wait while it holds a connection: the caller's descriptors
//! and the signalfd together, until a deadline. The signal is taken here, so a TERM or
//! QUIT is noticed, and a QUIT acted on, the same way wherever the worker waits.

use super::WorkerCtx;
use super::poll::{self, PollSet};
use super::signals::Request as SignalRequest;
use nix::errno::Errno;
use std::time::Instant;

impl WorkerCtx<'_> {
    /// Wait until one of `set`'s descriptors or a signal is ready, or `deadline` passes
    /// (`None`: no limit); `set`'s readiness is then in its `revents`. EINTR is a wake-up
    /// with nothing ready. A QUIT is acted on here (see `on_quit`); the signal taken, if
    /// any, is returned for the caller to stop on a TERM, or to end what a QUIT ends.
    pub(crate) fn wait(
        &mut self,
        set: &mut PollSet,
        deadline: Option<Instant>,
    ) -> Result<Option<SignalRequest>, Errno> {
        let own = set.count();
        let signal_index = set.add(self.signals.fd(), poll::IN);
        let waited = set.wait_until(deadline);
        let signalled = set.revents(signal_index) != 0;
        // The caller's set stays the caller's: its indices, and nothing of ours.
        set.truncate(own);
        waited?;
        Ok(if signalled { self.take_signal() } else { None })
    }

    /// Take the pending signals (the signalfd is readable): a QUIT is acted on here (see
    /// `on_quit`); what arrived is returned.
    pub(crate) fn take_signal(&mut self) -> Option<SignalRequest> {
        let request = self.signals.take();
        if request == Some(SignalRequest::Quit) {
            self.on_quit();
        }
        request
    }
}
