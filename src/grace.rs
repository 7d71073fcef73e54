//! How long each kind of process gets between TERM and KILL. One figure, the CGI
//! child's, and the others derived from it: a worker stopping a child needs the child's
//! grace and a moment more, and whoever waits for a worker must wait at least that long.

use std::time::Duration;

/// A CGI child (or resident application) stopped by its worker gets this between TERM
/// and KILL.
pub const CGI_CHILD: Duration = Duration::from_secs(2);

/// A worker told to stop gets this between TERM and KILL: its child's grace, and a
/// moment to reap the child and exit.
pub const WORKER: Duration = Duration::from_secs(CGI_CHILD.as_secs() + 1);

/// Past request_terminate_timeout, how long the master leaves a worker to stop its own
/// request (a worker's grace, and the time to notice the deadline and answer) before it
/// steps in itself.
pub const STUCK_WORKER: Duration = Duration::from_secs(WORKER.as_secs() + 2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_grace_covers_the_one_it_waits_for() {
        assert_eq!(CGI_CHILD, Duration::from_secs(2));
        assert_eq!(WORKER, Duration::from_secs(3));
        assert_eq!(STUCK_WORKER, Duration::from_secs(5));
    }
}
