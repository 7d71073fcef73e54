//! How a process ended, in php-fpm's words, for every log line that says so: workers
//! (the master's "child 123 exited on signal 9 (SIGKILL)") and CGI children alike.

use nix::sys::wait::WaitStatus;

/// `exited with code 3`, `exited on signal 11 (SIGSEGV - core dumped)`.
pub fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with code {code}"),
        WaitStatus::Signaled(_, sig, core) => format!(
            "exited on signal {} ({}{})",
            sig as i32,
            sig.as_str(),
            if core { " - core dumped" } else { "" }
        ),
        other => format!("ended as {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;
    use nix::unistd::Pid;

    #[test]
    fn php_fpm_words() {
        let pid = Pid::from_raw(1);
        assert_eq!(describe(WaitStatus::Exited(pid, 3)), "exited with code 3");
        assert_eq!(
            describe(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            "exited on signal 9 (SIGKILL)"
        );
        assert_eq!(
            describe(WaitStatus::Signaled(pid, Signal::SIGSEGV, true)),
            "exited on signal 11 (SIGSEGV - core dumped)"
        );
    }
}
