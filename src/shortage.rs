//! Running out of descriptors (EMFILE, ENFILE) at accept, spawn or pipe creation: an
//! episode that is logged once when it starts and once when it ends, with a growing pause
//! between attempts. Logging every failure would flood the log exactly when the system is
//! short, and retrying at once would spin a CPU doing nothing useful.

use nix::errno::Errno;
use std::time::Duration;

/// The first pause after a failure; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Whether this error means the process or the system is out of descriptors (or of
/// the memory behind them): something that passes, unlike a bad request.
pub fn is_shortage(errno: Errno) -> bool {
    matches!(
        errno,
        Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM
    )
}

/// [`is_shortage`] for an `io::Error`.
pub fn is_io_shortage(error: &std::io::Error) -> bool {
    error
        .raw_os_error()
        .is_some_and(|code| is_shortage(Errno::from_raw(code)))
}

/// One kind of failure's episode.
#[derive(Debug, Default)]
pub struct Episode {
    failures: u32,
}

/// What to do after a failure.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    /// The episode starts with this failure: log it.
    pub first: bool,
    /// Wait this long before trying again.
    pub backoff: Duration,
}

impl Episode {
    pub fn failed(&mut self) -> Failure {
        self.failures = self.failures.saturating_add(1);
        let doublings = (self.failures - 1).min(7);
        Failure {
            first: self.failures == 1,
            backoff: (FIRST_BACKOFF * (1 << doublings)).min(MAX_BACKOFF),
        }
    }

    /// An attempt worked. Returns how many failed before it when that ends an episode
    /// (log that the trouble is over).
    pub fn succeeded(&mut self) -> Option<u32> {
        let failures = std::mem::take(&mut self.failures);
        (failures > 0).then_some(failures)
    }

    pub fn ongoing(&self) -> bool {
        self.failures > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_episode_is_logged_once_and_backs_off_to_a_second() {
        let mut e = Episode::default();
        let first = e.failed();
        assert!(first.first);
        assert_eq!(first.backoff, Duration::from_millis(10));
        let pauses: Vec<_> = (0..10).map(|_| e.failed()).collect();
        assert!(pauses.iter().all(|f| !f.first));
        assert_eq!(pauses[0].backoff, Duration::from_millis(20));
        assert_eq!(pauses[5].backoff, Duration::from_millis(640));
        assert_eq!(pauses[9].backoff, MAX_BACKOFF);
        assert!(e.ongoing());
        assert_eq!(e.succeeded(), Some(11));
        assert!(!e.ongoing());
        assert_eq!(e.succeeded(), None);
        assert!(e.failed().first, "a new episode is logged again");
    }

    #[test]
    fn only_running_out_counts_as_a_shortage() {
        assert!(is_shortage(Errno::EMFILE));
        assert!(is_shortage(Errno::ENFILE));
        assert!(!is_shortage(Errno::EACCES));
        assert!(is_io_shortage(&std::io::Error::from_raw_os_error(24)));
        assert!(!is_io_shortage(&std::io::Error::other("x")));
    }
}
