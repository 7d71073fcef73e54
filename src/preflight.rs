//! What a start refuses that loading the configuration does not see: the master's own
//! files (error log, pid file) and limits. `-t` checks them, and so does the old image of
//! a reload before it re-executes: a new image that refused to start there took the
//! whole service down (the master exited; its workers finished and exited too), where a
//! refused reload keeps the old configuration serving.
//!
//! Nothing is changed here: files are not created, limits not set.

use crate::config::{Config, ErrorLog};
use nix::unistd::{AccessFlags, access};
use std::path::Path;

/// Every reason the master would refuse to start with `config`, one line each.
/// `pid_override` is `-g`, which wins over `pid`; with `force_stderr` (`-O`) the error
/// log is not opened.
pub fn check(config: &Config, pid_override: Option<&Path>, force_stderr: bool) -> Vec<String> {
    let mut errors = Vec::new();
    if let (ErrorLog::File(path), false) = (&config.global.error_log, force_stderr)
        && let Err(why) = writable(path)
    {
        errors.push(format!(
            "failed to open error_log ({}): {why}",
            path.display()
        ));
    }
    if let Some(path) = pid_override.or(config.global.pid.as_deref())
        && let Err(why) = writable(path)
    {
        errors.push(format!(
            "failed to write the pid file '{}': {why}",
            path.display()
        ));
    }
    if let Err(e) = crate::isolation::check_master_limits(&config.global) {
        errors.push(e);
    }
    errors
}

/// Whether `path` can be opened for writing, created if missing, without doing either.
fn writable(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Err("it is a directory".to_string());
    }
    if path.exists() {
        return access(path, AccessFlags::W_OK).map_err(|e| e.desc().to_string());
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!("the directory '{}' does not exist", dir.display()));
    }
    access(dir, AccessFlags::W_OK | AccessFlags::X_OK)
        .map_err(|e| format!("cannot create a file in '{}': {}", dir.display(), e.desc()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GlobalConfig;

    fn config(global: GlobalConfig) -> Config {
        Config {
            path: "cgi-fpm.conf".into(),
            prefix: None,
            global,
            pools: Vec::new(),
            warnings: Vec::new(),
        }
    }

    #[test]
    fn files_in_missing_directories_and_limits_out_of_reach_are_each_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut global = GlobalConfig {
            error_log: ErrorLog::File(dir.path().join("no/such/dir/error.log")),
            pid: Some(dir.path().join("gone/cgi-fpm.pid")),
            rlimit_files: Some(u64::MAX - 1),
            ..GlobalConfig::default()
        };
        let errors = check(&config(global.clone()), None, false);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].starts_with("failed to open error_log ("),
            "{errors:?}"
        );
        assert!(
            errors[0].ends_with("/no/such/dir' does not exist"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("failed to write the pid file"),
            "{errors:?}"
        );
        assert!(
            errors[2].starts_with("failed to set rlimit_files"),
            "{errors:?}"
        );
        // A directory where the file should be is refused too.
        let taken = GlobalConfig {
            pid: Some(dir.path().to_path_buf()),
            ..GlobalConfig::default()
        };
        assert_eq!(
            check(&config(taken), None, false),
            [format!(
                "failed to write the pid file '{}': it is a directory",
                dir.path().display()
            )]
        );
        // -O keeps the error log on stderr; -g names another pid file.
        global.rlimit_files = None;
        let pid = dir.path().join("cgi-fpm.pid");
        assert!(check(&config(global), Some(&pid), true).is_empty());
    }

    #[test]
    fn files_that_can_be_written_pass_and_nothing_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let global = GlobalConfig {
            error_log: ErrorLog::File(dir.path().join("error.log")),
            pid: Some(dir.path().join("cgi-fpm.pid")),
            ..GlobalConfig::default()
        };
        assert!(check(&config(global), None, false).is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
