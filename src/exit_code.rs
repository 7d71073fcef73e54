//! The exit codes of cgi-fpm's processes: sysexits(3) values, as php-fpm uses them, so
//! that scripts and init systems can tell a bad configuration from a broken system.

/// Bad command line (EX_USAGE).
pub const USAGE: i32 = 64;
/// An internal error: something that should not happen did (EX_SOFTWARE).
pub const SOFTWARE: i32 = 70;
/// The operating system refused something the process cannot do without: epoll, signal
/// handlers, fork for -D (EX_OSERR).
pub const OS_ERROR: i32 = 71;
/// The configuration is wrong, or cannot be applied: a socket, a user, a log file
/// (EX_CONFIG).
pub const CONFIG: i32 = 78;
