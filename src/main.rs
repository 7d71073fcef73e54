use cgi_fpm::config::{self, ErrorLog};
use cgi_fpm::{cli, isolation, logging, master};
use std::os::fd::AsRawFd;
use std::process::ExitCode;

/// php-fpm's exit code for configuration errors (sysexits EX_CONFIG).
const EXIT_CONFIG: u8 = 78;
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    logging::init(config::LogLevel::Notice);
    let options = match cli::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("cgi-fpm: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if options.help {
        print!("{}", cli::USAGE);
        return ExitCode::SUCCESS;
    }
    if options.version {
        println!("cgi-fpm {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }

    let path = options.config_path();
    let config = match config::load(&path, options.prefix.as_deref()) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                log::error!("{e}");
            }
            log::error!("failed to load configuration file '{}'", path.display());
            log::error!("FPM initialization failed");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for warning in &config.warnings {
        log::warn!("{warning}");
    }
    // Users, groups and the root rule: checked under -t as well as at start.
    let prepared = match isolation::prepare(&config, options.allow_root) {
        Ok(prepared) => prepared,
        Err(errors) => {
            for e in &errors {
                log::error!("{e}");
            }
            log::error!("FPM initialization failed");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for notice in &prepared.notices {
        log::info!("{notice}");
    }
    if options.test > 0 {
        if options.test > 1 {
            for line in config::dump(&config).lines() {
                log::info!("{line}");
            }
        }
        log::info!("configuration file {} test is successful", path.display());
        return ExitCode::SUCCESS;
    }

    logging::set_level(config.global.log_level);
    if !options.force_stderr
        && let Err(e) = open_error_log(&config.global.error_log)
    {
        log::error!("{e}");
        log::error!("FPM initialization failed");
        return ExitCode::from(EXIT_CONFIG);
    }
    match isolation::apply_master_limits(&config.global) {
        Ok(notices) => notices.iter().for_each(|notice| log::info!("{notice}")),
        Err(e) => {
            log::error!("{e}");
            log::error!("FPM initialization failed");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    let code = master::run(
        config,
        master::RunOptions {
            pid_file: options.pid.clone(),
            privileges: prepared.pools,
        },
    );
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// Point standard error at the configured log, so the master, its workers and anything
/// else writing to fd 2 end up in one file.
fn open_error_log(target: &ErrorLog) -> Result<(), String> {
    match target {
        ErrorLog::Stderr => Ok(()),
        ErrorLog::Syslog => {
            log::warn!("error_log = syslog is not implemented yet; logging to stderr");
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
            debug_assert!(file.as_raw_fd() > 2);
            Ok(())
        }
    }
}
