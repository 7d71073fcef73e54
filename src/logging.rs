//! The error log in php-fpm's format: `[22-Nov-2026 10:00:00] NOTICE: message`.
//!
//! A `log` backend that writes each entry with a single write(2) to one descriptor (fd 2
//! unless told otherwise), so lines from the master and every worker sharing an O_APPEND
//! file never interleave. The process is single-threaded, so plain atomics are enough.

use crate::config::{DEFAULT_LOG_LIMIT, ErrorLog, LogLevel};
pub use crate::escape::{Keep, escape_control, push_escaped};
use std::ffi::CString;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicUsize, Ordering};

/// `log::error!(target: ALERT, ...)` logs at php-fpm's ALERT level.
pub const ALERT: &str = "alert";

struct Logger {
    fd: AtomicI32,
    level: AtomicU8,
    limit: AtomicUsize,
    /// Entries go to syslog(3) instead of the descriptor.
    syslog: AtomicBool,
    facility: AtomicI32,
}

static LOGGER: Logger = Logger {
    fd: AtomicI32::new(2),
    level: AtomicU8::new(LogLevel::Notice as u8),
    limit: AtomicUsize::new(DEFAULT_LOG_LIMIT),
    syslog: AtomicBool::new(false),
    facility: AtomicI32::new(nix::libc::LOG_DAEMON),
};

fn level_from_u8(v: u8) -> LogLevel {
    match v {
        0 => LogLevel::Debug,
        1 => LogLevel::Notice,
        2 => LogLevel::Warning,
        3 => LogLevel::Error,
        _ => LogLevel::Alert,
    }
}

fn level_of(record_level: log::Level, target: &str) -> LogLevel {
    match record_level {
        log::Level::Error if target == ALERT => LogLevel::Alert,
        log::Level::Error => LogLevel::Error,
        log::Level::Warn => LogLevel::Warning,
        log::Level::Info => LogLevel::Notice,
        log::Level::Debug | log::Level::Trace => LogLevel::Debug,
    }
}

fn label(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Debug => "DEBUG",
        LogLevel::Notice => "NOTICE",
        LogLevel::Warning => "WARNING",
        LogLevel::Error => "ERROR",
        LogLevel::Alert => "ALERT",
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        // Only our own records: libraries' debug chatter (mio's registrations) is not
        // something an operator can act on.
        let ours = metadata.target().starts_with("cgi_fpm") || metadata.target() == ALERT;
        ours && level_of(metadata.level(), metadata.target()) as u8
            >= self.level.load(Ordering::Relaxed)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = level_of(record.level(), record.target());
        let mut message = String::with_capacity(128);
        let _ = write!(message, "{}", record.args());
        self.write_entry(level, message, 0);
    }

    fn flush(&self) {}
}

impl Logger {
    /// One entry, cut to `log_limit`; `hidden` bytes of it were already left out upstream
    /// (by a [`LineSplitter`]) and count in the note.
    fn write_entry(&self, level: LogLevel, message: String, hidden: usize) {
        // Values from requests and scripts (a SCRIPT_FILENAME, a URI) end up in messages:
        // escaped here, once for every entry, they cannot forge a line of their own.
        let mut message = escape_control(&message, Keep::Tab).into_owned();
        cut_to_limit(&mut message, self.limit.load(Ordering::Relaxed), hidden);
        if self.syslog.load(Ordering::Relaxed) {
            send_to_syslog(self.facility.load(Ordering::Relaxed), level, &message);
            return;
        }
        let line = format!(
            "[{}] {}: {message}\n",
            crate::clock::timestamp(),
            label(level)
        );
        write_to_log(line.as_bytes());
    }
}

/// A WARNING entry for a line a [`LineSplitter`] cut: `hidden` bytes of the line were
/// dropped before `message` was built, so the note counts them too.
pub fn warn_cut(message: String, hidden: usize) {
    if LogLevel::Warning as u8 >= LOGGER.level.load(Ordering::Relaxed) {
        LOGGER.write_entry(LogLevel::Warning, message, hidden);
    }
}

/// Keep an entry on one line and within `limit` bytes: a longer one is cut (at a character
/// boundary) with a note of how much was left out, never split into several entries.
/// `hidden` bytes were cut before the message reached here and count in the note.
fn cut_to_limit(message: &mut String, limit: usize, hidden: usize) {
    if message.len() <= limit && hidden == 0 {
        return;
    }
    let mut end = limit.min(message.len());
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let dropped = message.len() - end + hidden;
    message.truncate(end);
    let _ = write!(message, "... [{dropped} more bytes cut at log_limit]");
}

fn send_to_syslog(facility: i32, level: LogLevel, message: &str) {
    let priority = match level {
        LogLevel::Debug => nix::libc::LOG_DEBUG,
        LogLevel::Notice => nix::libc::LOG_NOTICE,
        LogLevel::Warning => nix::libc::LOG_WARNING,
        LogLevel::Error => nix::libc::LOG_ERR,
        LogLevel::Alert => nix::libc::LOG_ALERT,
    };
    let label = label(level);
    let Ok(text) = CString::new(format!("{label}: {message}").replace('\0', " ")) else {
        return;
    };
    // SAFETY: both strings are NUL-terminated and live across the call; the format
    // string takes exactly one string argument.
    unsafe { nix::libc::syslog(facility | priority, c"%s".as_ptr(), text.as_ptr()) };
}

fn facility_code(name: &str) -> i32 {
    use nix::libc::*;
    match name {
        "auth" => LOG_AUTH,
        "authpriv" => LOG_AUTHPRIV,
        "cron" => LOG_CRON,
        "ftp" => LOG_FTP,
        "kern" => LOG_KERN,
        "lpr" => LOG_LPR,
        "mail" => LOG_MAIL,
        "news" => LOG_NEWS,
        "syslog" => LOG_SYSLOG,
        "user" => LOG_USER,
        "uucp" => LOG_UUCP,
        "local0" => LOG_LOCAL0,
        "local1" => LOG_LOCAL1,
        "local2" => LOG_LOCAL2,
        "local3" => LOG_LOCAL3,
        "local4" => LOG_LOCAL4,
        "local5" => LOG_LOCAL5,
        "local6" => LOG_LOCAL6,
        "local7" => LOG_LOCAL7,
        _ => LOG_DAEMON,
    }
}

/// Send entries to the error log the configuration names: a file is opened (appending)
/// and placed on standard error, so workers and anything else writing to fd 2 share it;
/// calling this again reopens it (after logrotate moved the old file away).
pub fn open_error_log(target: &ErrorLog, ident: &str, facility: &str) -> Result<(), String> {
    match target {
        ErrorLog::Stderr => Ok(()),
        ErrorLog::Syslog => {
            // openlog keeps the pointer: the ident must live as long as the process.
            let ident = CString::new(ident).map_err(|_| "syslog.ident contains a NUL byte")?;
            let ident: &'static std::ffi::CStr = Box::leak(ident.into_boxed_c_str());
            let code = facility_code(facility);
            // SAFETY: `ident` is 'static; openlog only stores it.
            unsafe { nix::libc::openlog(ident.as_ptr(), nix::libc::LOG_PID, code) };
            LOGGER.facility.store(code, Ordering::Relaxed);
            LOGGER.syslog.store(true, Ordering::Relaxed);
            Ok(())
        }
        ErrorLog::File(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("failed to open error_log ({}): {e}", path.display()))?;
            nix::unistd::dup2_stderr(&file)
                .map_err(|e| format!("failed to redirect stderr to '{}': {e}", path.display()))?;
            Ok(())
        }
    }
}

/// A line exactly as given, with no timestamp or level (php-fpm's undecorated worker
/// output), to wherever the error log goes. `log_limit` holds here too: a longer line is
/// cut like any entry, `hidden` counting what a [`LineSplitter`] already left out.
pub fn write_raw(line: &str, hidden: usize) {
    // As written, except what could end the line early or drive a terminal.
    let mut line = escape_control(line, Keep::Tab).into_owned();
    cut_to_limit(&mut line, limit(), hidden);
    if LOGGER.syslog.load(Ordering::Relaxed) {
        send_to_syslog(
            LOGGER.facility.load(Ordering::Relaxed),
            LogLevel::Notice,
            &line,
        );
    } else {
        line.push('\n');
        write_to_log(line.as_bytes());
    }
}

/// Splits a byte stream (a script's stderr, a worker's output) into log entries, one per
/// line. Of a line longer than `log_limit` only the first `log_limit` bytes are kept (the
/// logger cuts the entry there anyway) and the rest is counted, so the entry's note says
/// how much of the *line* was left out: never several entries for one line, never more
/// than `log_limit` bytes held.
#[derive(Debug)]
pub struct LineSplitter {
    pending: Vec<u8>,
    /// Bytes of the current line dropped past the limit.
    hidden: usize,
    limit: usize,
}

impl Default for LineSplitter {
    /// Split at the logger's current `log_limit`.
    fn default() -> Self {
        LineSplitter::with_limit(limit())
    }
}

impl LineSplitter {
    pub fn with_limit(limit: usize) -> Self {
        LineSplitter {
            pending: Vec::new(),
            hidden: 0,
            limit,
        }
    }

    /// Feed bytes; `emit(line, hidden)` gets each complete line (without its newline) and
    /// how many bytes of it were dropped.
    pub fn push(&mut self, mut bytes: &[u8], mut emit: impl FnMut(&[u8], usize)) {
        loop {
            let newline = bytes.iter().position(|&b| b == b'\n');
            let part = &bytes[..newline.unwrap_or(bytes.len())];
            let room = self.limit.saturating_sub(self.pending.len());
            let kept = part.len().min(room);
            self.pending.extend_from_slice(&part[..kept]);
            self.hidden += part.len() - kept;
            let Some(pos) = newline else {
                return;
            };
            emit(&self.pending, self.hidden);
            self.pending.clear();
            self.hidden = 0;
            bytes = &bytes[pos + 1..];
        }
    }

    /// The stream ended: log an unterminated last line.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8], usize)) {
        if !self.pending.is_empty() || self.hidden > 0 {
            emit(&self.pending, self.hidden);
        }
        self.pending.clear();
        self.hidden = 0;
    }
}

pub fn set_limit(limit: usize) {
    LOGGER.limit.store(limit, Ordering::Relaxed);
}

pub fn limit() -> usize {
    LOGGER.limit.load(Ordering::Relaxed)
}

/// Write to the error log's descriptor.
fn write_to_log(bytes: &[u8]) {
    // SAFETY: the descriptor is the log's, kept open for the process's lifetime.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(LOGGER.fd.load(Ordering::Relaxed)) };
    write_all_fd(fd, bytes);
}

/// Write everything, retrying short writes; a log that cannot be written is dropped, since
/// there is nowhere left to report that.
pub fn write_all_fd(fd: std::os::fd::BorrowedFd<'_>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n..],
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
    }
}

/// Install the logger. Safe to call more than once (later calls only change the level).
pub fn init(level: LogLevel) {
    set_level(level);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}

pub fn set_level(level: LogLevel) {
    LOGGER.level.store(level as u8, Ordering::Relaxed);
}

pub fn level() -> LogLevel {
    level_from_u8(LOGGER.level.load(Ordering::Relaxed))
}

/// Send log lines to another descriptor (which must stay open).
pub fn set_fd(fd: i32) {
    LOGGER.fd.store(fd, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_as_nginx_does() {
        assert!(matches!(
            escape_control("plain /a b\tc", Keep::Tab),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(
            escape_control("/nope\n[01-Jan-2030] ALERT\r\x1b[2J\x7f\té", Keep::Tab),
            "/nope\\x0A[01-Jan-2030] ALERT\\x0D\\x1B[2J\\x7F\té"
        );
        assert_eq!(escape_control("a\tb", Keep::Nothing), "a\\x09b");
        let mut out = Vec::new();
        push_escaped(&mut out, "x\n\t\u{1}é\\".as_bytes());
        assert_eq!(out, "x\\x0A\\x09\\x01é\\".as_bytes());
    }

    #[test]
    fn levels_map_to_php_fpm_labels() {
        assert_eq!(label(level_of(log::Level::Error, ALERT)), "ALERT");
        assert_eq!(label(level_of(log::Level::Error, "x")), "ERROR");
        assert_eq!(label(level_of(log::Level::Warn, "x")), "WARNING");
        assert_eq!(label(level_of(log::Level::Info, "x")), "NOTICE");
        assert_eq!(label(level_of(log::Level::Debug, "x")), "DEBUG");
    }

    #[test]
    fn level_round_trips_through_u8() {
        for l in [
            LogLevel::Debug,
            LogLevel::Notice,
            LogLevel::Warning,
            LogLevel::Error,
            LogLevel::Alert,
        ] {
            assert_eq!(level_from_u8(l as u8), l);
        }
    }

    #[test]
    fn long_entries_are_cut_on_one_line() {
        let mut m = "é".repeat(10);
        cut_to_limit(&mut m, 5, 0);
        assert_eq!(m, "éé... [16 more bytes cut at log_limit]");
        let mut short = "short".to_string();
        cut_to_limit(&mut short, 5, 0);
        assert_eq!(short, "short");
    }

    #[test]
    fn bytes_cut_upstream_count_in_the_note() {
        let mut m = "0123456789".to_string();
        cut_to_limit(&mut m, 4, 1000);
        assert_eq!(m, "0123... [1006 more bytes cut at log_limit]");
        // Within the limit, but the splitter already dropped some: still noted.
        let mut m = "0123".to_string();
        cut_to_limit(&mut m, 8, 7);
        assert_eq!(m, "0123... [7 more bytes cut at log_limit]");
    }

    #[test]
    fn lines_split_once_each_and_long_ones_only_once() {
        let mut got: Vec<(String, usize)> = Vec::new();
        let mut s = LineSplitter::with_limit(8);
        for chunk in [&b"ab"[..], b"c\nde", b"f\n0123456789abcdef", b"ghij\nlast"] {
            s.push(chunk, |l, h| {
                got.push((String::from_utf8_lossy(l).into_owned(), h))
            });
        }
        s.finish(|l, h| got.push((String::from_utf8_lossy(l).into_owned(), h)));
        let want = [("abc", 0), ("def", 0), ("01234567", 12), ("last", 0)];
        let want: Vec<(String, usize)> = want.iter().map(|(l, h)| (l.to_string(), *h)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_line_far_past_the_limit_counts_every_byte_it_dropped() {
        // The figures the issue reported wrong: 2 MiB and 10 MiB lines, read in pipe-sized
        // chunks, against the default 1 MiB limit.
        for total in [2 << 20, 10 << 20] {
            let mut s = LineSplitter::with_limit(DEFAULT_LOG_LIMIT);
            let mut got = Vec::new();
            let chunk = vec![b'x'; 65536];
            let mut left: usize = total;
            while left > 0 {
                let n = left.min(chunk.len());
                s.push(&chunk[..n], |l, h| got.push((l.len(), h)));
                left -= n;
            }
            s.push(b"\n", |l, h| got.push((l.len(), h)));
            assert_eq!(got, vec![(DEFAULT_LOG_LIMIT, total - DEFAULT_LOG_LIMIT)]);
        }
    }
}
