//! cgi-fpm: a FastCGI process manager that runs CGI scripts in any language.

// What the binary and tests/ use is `pub`; what only the crate uses says pub(crate) or
// pub(super), so that a reader knows how far a change to it can reach.
#![warn(unreachable_pub)]

pub mod accesslog;
pub mod cgi;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod endpoint;
pub mod escape;
pub mod exit_code;
pub mod fastcgi;
pub mod fdplan;
pub mod grace;
pub mod handover;
pub mod isolation;
pub mod listen_queue;
pub mod logging;
pub mod master;
pub mod master_signals;
pub mod parking;
pub mod ping;
pub mod preflight;
pub mod proctitle;
pub mod scoreboard;
pub mod shortage;
pub mod status;
pub mod systemd;
pub mod wait_status;
pub(crate) mod worker;
