//! The reload handover: what one master image hands the next across the exec of a
//! graceful reload (SIGUSR2), as one typed value.
//!
//! The old image writes it as JSON into one environment variable just before it
//! re-executes itself; `main` reads and removes it once, before anything else looks at
//! the environment (so neither workers nor CGI children ever see it), and passes it to the
//! master. Descriptors travel as numbers: the old image clears their close-on-exec flag,
//! and the new one first keeps only those that are what their entry claims
//! ([`Handover::vetted`], asking `master::handed_over::probe`), then owns them (see
//! `master::inherit` and `master::handed_over`).
//!
//! "Handover" is the one word for this in code and docs.

use serde::{Deserialize, Serialize};
use std::os::fd::RawFd;

/// The environment variable that carries the handover across the exec.
pub const VARIABLE: &str = "CGI_FPM_HANDOVER";

/// Fields missing from the text take their defaults, and unknown ones are ignored: a
/// reload may swap the binary, so the image that writes this may be older or newer.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Handover {
    /// Listening sockets, under the key of their address: those the new configuration
    /// uses, and the unix sockets of ours it drops. The new image closes the latter and
    /// removes their files; the old one removes nothing, so a failed exec leaves it whole.
    pub listeners: Vec<Listener>,
    /// The old image's workers, still finishing their requests.
    pub old_workers: Vec<i32>,
    /// The emergency-restart cool-down in progress.
    pub emergency: EmergencyState,
    /// Each pool's parking channels, so that old workers park into the new image.
    pub channels: Vec<PoolChannels>,
    /// Idle kept connections parked with the old image.
    pub parked: Vec<Parked>,
    /// The master's figures for `metrics.listen`, so that a reload does not reset them
    /// (absent from an older image: the new one starts counting).
    pub master: Option<MasterFigures>,
    /// Each pool's scoreboard memfds (its own, then those it showed from before), so the
    /// new image's status page shows the old workers until they exit.
    pub scoreboards: Vec<PoolScoreboard>,
}

/// The master's own figures, as the endpoint shows them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MasterFigures {
    /// When the first image started, in microseconds since the epoch.
    pub started_at_us: u64,
    /// Reloads so far, counting the one this value crosses.
    pub reloads: u64,
    pub emergency_restarts: u64,
}

/// A pool's scoreboard, as a memfd (see `Scoreboard::adopt`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolScoreboard {
    pub pool: String,
    pub fd: RawFd,
}

/// A listening socket: `key` is its path or `ip:port` (see `master::inherit::socket_key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    pub key: String,
    pub fd: RawFd,
}

/// A pool's channel ends, in the order of `master::lot::Channels::raw_fds` (two; an
/// image before the channel became one socket pair named four).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolChannels {
    pub pool: String,
    pub fds: Vec<RawFd>,
}

/// One parked connection and the pool it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parked {
    pub pool: String,
    pub fd: RawFd,
    /// When its request reached cgi-fpm (see [`monotonic_us`]), for one waiting for a
    /// worker: its request_queue_timeout goes on from there, not from the reload. None
    /// for an idle kept connection (and from an image that did not say).
    #[serde(default)]
    pub arrived_monotonic_us: Option<u64>,
}

/// CLOCK_MONOTONIC in microseconds: the clock `Instant` reads, and one that, unlike an
/// `Instant`, means the same in the next image (the exec keeps the boot).
pub fn monotonic_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}

/// `at` as [`monotonic_us`] reads it.
pub fn instant_to_monotonic_us(at: std::time::Instant) -> u64 {
    let ago = at.elapsed().as_micros() as u64;
    monotonic_us().saturating_sub(ago)
}

/// A [`monotonic_us`] reading of this boot as an `Instant` (now, if it is in the future).
pub fn monotonic_us_to_instant(us: u64) -> std::time::Instant {
    let now = std::time::Instant::now();
    let ago = std::time::Duration::from_micros(monotonic_us().saturating_sub(us));
    now.checked_sub(ago).unwrap_or(now)
}

/// Seconds since the epoch, 0 for none.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmergencyState {
    pub held_until: u64,
    pub cooldown_secs: u64,
}

impl Handover {
    pub fn to_json(&self) -> String {
        // A struct of strings and integers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<Handover, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// Every descriptor named, in order.
    pub fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        let listeners = self.listeners.iter().map(|l| l.fd);
        let channels = self.channels.iter().flat_map(|c| c.fds.iter().copied());
        listeners
            .chain(channels)
            .chain(self.parked.iter().map(|p| p.fd))
            .chain(self.scoreboards.iter().map(|s| s.fd))
    }

    /// Read once, in `main`: `None` when this is not the new image of a reload. The
    /// variable is removed. One that does not parse still means a reload (the process
    /// must not daemonize again), but nothing in it is taken.
    pub fn take_from_environment() -> Option<Handover> {
        let text = std::env::var_os(VARIABLE)?;
        // SAFETY: called once at the start of main, before any thread or child exists
        // that could read the environment concurrently.
        unsafe { std::env::remove_var(VARIABLE) };
        match Handover::from_json(&text.to_string_lossy()) {
            Ok(handover) => Some(handover),
            Err(e) => {
                log::error!("the reload handover ({VARIABLE}) does not parse ({e}); ignoring it");
                Some(Handover::default())
            }
        }
    }

    /// Put the value where the next image's `take_from_environment` finds it.
    pub fn put_in_environment(&self) {
        // SAFETY: the master is single-threaded; nothing reads the environment meanwhile.
        unsafe { std::env::set_var(VARIABLE, self.to_json()) };
    }

    /// Undo `put_in_environment` (the exec failed).
    pub fn remove_from_environment() {
        // SAFETY: as in `put_in_environment`.
        unsafe { std::env::remove_var(VARIABLE) };
    }
}

/// What a descriptor number named in the handover turns out to be in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    NotOpen,
    /// Open with close-on-exec set: this image opened it (its error log, say); the old
    /// image cleared the flag on everything it handed over.
    OpenedHere,
    /// A listening socket, with the key of its address when it has one.
    Listening(Option<String>),
    /// A sequenced-packet socket: a parking channel's end.
    SeqPacket,
    /// A connected stream socket: a parked connection.
    Connected,
    /// A memory file: a scoreboard's memfd.
    Memfd,
    /// Anything else (a regular file, a pipe, another kind of socket).
    Other(String),
}

/// What each kind of entry must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role<'a> {
    Listener(&'a str),
    Channel,
    Parked,
    Scoreboard,
}

impl Role<'_> {
    fn accepts(self, found: &Found) -> bool {
        match (self, found) {
            (Role::Listener(key), Found::Listening(Some(k))) => k == key,
            (Role::Channel, Found::SeqPacket)
            | (Role::Parked, Found::Connected)
            | (Role::Scoreboard, Found::Memfd) => true,
            _ => false,
        }
    }

    fn describe(self) -> String {
        match self {
            Role::Listener(key) => format!("listening socket \"{key}\""),
            Role::Channel => "parking channel".to_string(),
            Role::Parked => "parked connection".to_string(),
            Role::Scoreboard => "scoreboard".to_string(),
        }
    }
}

impl Handover {
    /// Keep only the descriptors that are what the handover says they are: above 2,
    /// named once, handed across the exec (not opened by this image), and of the kind
    /// their entry needs. A descriptor owned on a wrong word would be closed under
    /// whatever really holds that number. Returns the kept value and one error line per
    /// refused entry; what is refused is never used (nor closed).
    pub fn vetted(mut self, probe: impl Fn(RawFd) -> Found) -> (Handover, Vec<String>) {
        let mut named = std::collections::HashMap::<RawFd, usize>::new();
        for fd in self.fds() {
            *named.entry(fd).or_default() += 1;
        }
        let mut errors = Vec::new();
        let mut check = |fd: RawFd, role: Role<'_>, pool: Option<&str>| {
            let what = match pool {
                Some(pool) => format!("{} of pool {pool}", role.describe()),
                None => role.describe(),
            };
            let why = if fd <= 2 {
                "a standard descriptor".to_string()
            } else if named.get(&fd).copied().unwrap_or(0) > 1 {
                "named more than once".to_string()
            } else {
                match probe(fd) {
                    found if role.accepts(&found) => return true,
                    Found::NotOpen => "not open".to_string(),
                    Found::OpenedHere => "not handed over (close-on-exec is set)".to_string(),
                    Found::Listening(key) => format!(
                        "a listening socket on {}",
                        key.as_deref().unwrap_or("an unnamed address")
                    ),
                    Found::SeqPacket => "a parking channel".to_string(),
                    Found::Connected => "a connected socket".to_string(),
                    Found::Memfd => "a memory file".to_string(),
                    Found::Other(kind) => kind,
                }
            };
            errors.push(format!(
                "reload handover: fd {fd}, named as the {what}, is {why}; not taken"
            ));
            false
        };
        self.listeners
            .retain(|l| check(l.fd, Role::Listener(&l.key), None));
        self.channels.retain(|c| {
            // Every end checked (each refusal said), the pair taken only whole.
            let verdicts: Vec<bool> = c
                .fds
                .iter()
                .map(|&fd| check(fd, Role::Channel, Some(&c.pool)))
                .collect();
            verdicts.iter().all(|&ok| ok)
        });
        self.parked
            .retain(|p| check(p.fd, Role::Parked, Some(&p.pool)));
        self.scoreboards
            .retain(|s| check(s.fd, Role::Scoreboard, Some(&s.pool)));
        (self, errors)
    }
}

/// Descriptors cross the exec only with close-on-exec cleared; the new image sets it
/// again on those it takes.
pub fn set_cloexec(fd: RawFd, on: bool) {
    // SAFETY: fcntl on a descriptor we hold open; it changes only its close-on-exec flag.
    unsafe {
        nix::libc::fcntl(
            fd,
            nix::libc::F_SETFD,
            if on { nix::libc::FD_CLOEXEC } else { 0 },
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Handover {
        Handover {
            listeners: vec![
                Listener {
                    key: "/run/www.sock".into(),
                    fd: 5,
                },
                Listener {
                    key: "127.0.0.1:9000".into(),
                    fd: 6,
                },
            ],
            old_workers: vec![100, 101],
            emergency: EmergencyState {
                held_until: 1_700_000_000,
                cooldown_secs: 120,
            },
            channels: vec![PoolChannels {
                pool: "two words, \"quoted\"".into(),
                fds: vec![7, 8],
            }],
            parked: vec![Parked {
                pool: "www".into(),
                fd: 11,
                arrived_monotonic_us: Some(42),
            }],
            master: Some(MasterFigures {
                started_at_us: 1_700_000_000_000_000,
                reloads: 3,
                emergency_restarts: 1,
            }),
            scoreboards: vec![PoolScoreboard {
                pool: "www".into(),
                fd: 12,
            }],
        }
    }

    #[test]
    fn the_value_round_trips_through_json() {
        let handover = sample();
        assert_eq!(Handover::from_json(&handover.to_json()), Ok(handover));
    }

    #[test]
    fn every_descriptor_is_listed() {
        let fds: Vec<RawFd> = sample().fds().collect();
        assert_eq!(fds, vec![5, 6, 7, 8, 11, 12]);
    }

    #[test]
    fn an_older_or_newer_image_is_understood() {
        let older = Handover::from_json("{\"old_workers\":[7]}").unwrap();
        assert_eq!(older.old_workers, vec![7]);
        assert!(older.listeners.is_empty());
        let newer = Handover::from_json("{\"old_workers\":[7],\"from_the_future\":[1]}").unwrap();
        assert_eq!(newer, older);
    }

    /// The sample's descriptors, each what its entry says.
    fn as_sample_says(fd: RawFd) -> Found {
        match fd {
            5 => Found::Listening(Some("/run/www.sock".into())),
            6 => Found::Listening(Some("127.0.0.1:9000".into())),
            7 | 8 => Found::SeqPacket,
            11 => Found::Connected,
            12 => Found::Memfd,
            _ => Found::NotOpen,
        }
    }

    #[test]
    fn descriptors_that_are_what_they_say_are_all_kept() {
        let (kept, errors) = sample().vetted(as_sample_says);
        assert_eq!(kept, sample());
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn a_descriptor_of_the_wrong_kind_or_not_handed_over_is_refused_and_said() {
        let probe = |fd| match fd {
            // The listener's number holds a socket on another address.
            5 => Found::Listening(Some("/run/other.sock".into())),
            // One channel end was opened by this image.
            8 => Found::OpenedHere,
            // The parked connection's number is a listening socket.
            11 => Found::Listening(None),
            // The scoreboard's number is a log file.
            12 => Found::Other("the file /var/log/cgi-fpm.log".into()),
            fd => as_sample_says(fd),
        };
        let (kept, errors) = sample().vetted(probe);
        assert_eq!(kept.listeners.iter().map(|l| l.fd).collect::<Vec<_>>(), [6]);
        assert!(
            kept.channels.is_empty(),
            "a pair is taken whole or not at all"
        );
        assert!(kept.parked.is_empty() && kept.scoreboards.is_empty());
        assert_eq!(
            kept.old_workers,
            sample().old_workers,
            "pids are not descriptors"
        );
        assert_eq!(
            errors,
            [
                "reload handover: fd 5, named as the listening socket \"/run/www.sock\", is a listening socket on /run/other.sock; not taken",
                "reload handover: fd 8, named as the parking channel of pool two words, \"quoted\", is not handed over (close-on-exec is set); not taken",
                "reload handover: fd 11, named as the parked connection of pool www, is a listening socket on an unnamed address; not taken",
                "reload handover: fd 12, named as the scoreboard of pool www, is the file /var/log/cgi-fpm.log; not taken",
            ]
        );
    }

    #[test]
    fn a_number_named_twice_or_a_standard_one_is_never_taken() {
        let mut handover = sample();
        // The parked connection's number named again as a scoreboard.
        handover.scoreboards[0].fd = 11;
        handover.listeners[0].fd = 2;
        let probed = std::cell::RefCell::new(Vec::new());
        let (kept, errors) = handover.vetted(|fd| {
            probed.borrow_mut().push(fd);
            as_sample_says(fd)
        });
        assert!(kept.parked.is_empty() && kept.scoreboards.is_empty());
        assert_eq!(kept.listeners.len(), 1);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("fd 2,") && errors[0].contains("a standard descriptor"));
        assert!(
            errors[1..]
                .iter()
                .all(|e| e.contains("fd 11,") && e.contains("named more than once"))
        );
        assert!(
            !probed.borrow().iter().any(|&fd| fd == 2 || fd == 11),
            "refused numbers are not even looked at: {probed:?}"
        );
    }

    #[test]
    fn a_wait_reads_the_same_across_the_exec() {
        let arrived = std::time::Instant::now() - std::time::Duration::from_millis(1500);
        let crossed = monotonic_us_to_instant(instant_to_monotonic_us(arrived));
        let drift = crossed
            .saturating_duration_since(arrived)
            .max(arrived.saturating_duration_since(crossed));
        assert!(drift < std::time::Duration::from_millis(5), "{drift:?}");
        // A parked connection from an image that did not say when: idle.
        let older: Parked = serde_json::from_str("{\"pool\":\"www\",\"fd\":9}").unwrap();
        assert_eq!(older.arrived_monotonic_us, None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Handover::from_json("").is_err());
        assert!(Handover::from_json("{\"listeners\": 3}").is_err());
        assert!(Handover::from_json("www.sock=5").is_err());
    }
}
