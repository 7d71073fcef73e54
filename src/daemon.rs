//! Going to the background (`daemonize = yes`, `-D`) with php-fpm's promise: the command
//! that started cgi-fpm returns only once the master is ready — sockets listening, workers
//! up — with status 0, or with the master's error and a non-zero status. Scripts and init
//! systems can then rely on the exit status.

use nix::unistd::{ForkResult, fork, setsid};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;

/// The master's side of the handshake. Dropping it without a report (the master died)
/// tells the waiting parent that start-up failed.
#[derive(Debug, Default)]
pub struct StartupReport {
    pipe: Option<std::fs::File>,
}

const READY: u8 = b'R';
const FAILED: u8 = b'F';

impl StartupReport {
    /// Running in the foreground: nobody is waiting.
    pub fn foreground() -> StartupReport {
        StartupReport { pipe: None }
    }

    pub fn ready(&mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(&[READY]);
        }
    }

    pub fn failed(&mut self, message: &str) {
        if let Some(mut pipe) = self.pipe.take() {
            let mut bytes = vec![FAILED];
            bytes.extend_from_slice(message.as_bytes());
            let _ = pipe.write_all(&bytes);
        }
    }
}

/// Fork into the background. In the parent this never returns: it waits for the master's
/// report and exits with it. In the child (the master to be) it returns the report handle.
pub fn daemonize() -> Result<StartupReport, String> {
    let (read_end, write_end): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe(): {e}"))?;
    // SAFETY: the process is still single-threaded here (no worker, no signal thread), so
    // the child inherits no lock held by another thread.
    match unsafe { fork() }.map_err(|e| format!("fork(): {e}"))? {
        ForkResult::Parent { .. } => {
            drop(write_end);
            wait_for_report(std::fs::File::from(read_end))
        }
        ForkResult::Child => {
            drop(read_end);
            setsid().map_err(|e| format!("setsid(): {e}"))?;
            detach_stdio();
            Ok(StartupReport {
                pipe: Some(std::fs::File::from(write_end)),
            })
        }
    }
}

/// A daemon reads nothing from the terminal and writes nothing to it but the error log
/// (standard error stays as it was, since an unset error_log means stderr).
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
    }
}

fn wait_for_report(mut pipe: std::fs::File) -> ! {
    let mut report = Vec::new();
    let _ = pipe.read_to_end(&mut report);
    match report.split_first() {
        Some((&READY, _)) => std::process::exit(0),
        Some((&FAILED, message)) => {
            // The master logged the details already; say why here too, for whoever ran us.
            eprintln!(
                "cgi-fpm: start-up failed: {}",
                String::from_utf8_lossy(message)
            );
            std::process::exit(crate::exit_code::CONFIG)
        }
        _ => {
            eprintln!("cgi-fpm: the master exited during start-up (see the error log)");
            std::process::exit(crate::exit_code::SOFTWARE)
        }
    }
}
