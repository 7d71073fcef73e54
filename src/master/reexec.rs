//! How the master starts itself again for a reload: the command line it recorded at start,
//! and the exec that replaces the process with it.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// How to start this program again, taken when it started.
#[derive(Debug, Clone)]
pub struct Reexec {
    /// Its path, so that a binary replaced on disk since is the one that runs.
    pub exe: PathBuf,
    pub args: Vec<OsString>,
    pub config_path: PathBuf,
    pub prefix: Option<PathBuf>,
    pub allow_root: bool,
    /// `-g`, which wins over the configuration's `pid`.
    pub pid_override: Option<PathBuf>,
    /// `-O`: the error log stays on stderr.
    pub force_stderr: bool,
}

/// Replace this process with `reexec`; returns only on failure.
pub(super) fn exec(reexec: &Reexec) -> nix::Error {
    let to_c = |s: &std::ffi::OsStr| CString::new(s.as_bytes());
    let Ok(path) = to_c(reexec.exe.as_os_str()) else {
        return nix::Error::EINVAL;
    };
    let mut argv = vec![path.clone()];
    for a in &reexec.args {
        match to_c(a) {
            Ok(c) => argv.push(c),
            Err(_) => return nix::Error::EINVAL,
        }
    }
    match nix::unistd::execv(&path, &argv) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}
