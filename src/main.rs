use cgi_fpm::config;
use cgi_fpm::{cli, exit_code, handover, isolation, logging, master};
use std::process::ExitCode;

/// How to start again for a reload: the same binary path (a replaced binary is picked up)
/// and the same arguments, as saved when the process started (the process title is later
/// written over the memory std reads them from).
fn reexec(
    options: &cli::Options,
    config_path: &std::path::Path,
    args: Vec<std::ffi::OsString>,
) -> Option<master::Reexec> {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            log::warn!("cannot find my own executable ({e}); reload (SIGUSR2) will not work");
            return None;
        }
    };
    Some(master::Reexec {
        exe,
        args,
        config_path: config_path.to_path_buf(),
        prefix: options.prefix.clone(),
        allow_root: options.allow_root,
        pid_override: options.pid.clone(),
        force_stderr: options.force_stderr,
    })
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// `--ping`: one line per target on stdout; exit 0 only if every one answered, else 1
/// with the ones that did not named on stderr.
fn ping(targets: &[cgi_fpm::ping::Target], options: &cli::Options) -> ExitCode {
    use cgi_fpm::ping::{DEFAULT_TIMEOUT, Outcome, check_all, report_line};
    if targets.is_empty() {
        eprintln!("cgi-fpm: --ping: the configuration has no pool to ask");
        return ExitCode::from(1);
    }
    let outcomes = check_all(targets, options.ping_timeout.unwrap_or(DEFAULT_TIMEOUT));
    let mut failed = Vec::new();
    for (target, outcome) in targets.iter().zip(&outcomes) {
        println!("{}", report_line(target, outcome));
        if matches!(outcome, Outcome::Failed(_)) {
            failed.push(target.name.as_str());
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("cgi-fpm: --ping: no good answer from {}", failed.join(", "));
        ExitCode::from(1)
    }
}

fn main() -> ExitCode {
    logging::init(config::LogLevel::Notice);
    // Saved before anything can set the process title over them.
    let original_args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    // Read once, first: what a previous image of this master handed over across a
    // reload's exec. Taken out of the environment before anything could pass it on.
    let handover = handover::Handover::take_from_environment();
    let options = match cli::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("cgi-fpm: {e}\n\n{}", cli::USAGE);
            return exit(exit_code::USAGE);
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
    if let Some(cli::Ping::Address(address)) = &options.ping {
        return ping(&[cgi_fpm::ping::target_for_address(address)], &options);
    }
    let (loaded, warnings) = config::load_reporting(&path, options.prefix.as_deref());
    if options.ping.is_some() {
        // A health check reads the configuration only to find the pools: its warnings
        // belong to -t and the master's log, not to every probe's output.
        return match loaded {
            Ok(config) => ping(&cgi_fpm::ping::targets(&config), &options),
            Err(errors) => {
                for e in &errors {
                    log::error!("{e}");
                }
                log::error!("failed to load configuration file '{}'", path.display());
                exit(exit_code::CONFIG)
            }
        };
    }
    // Warnings first, errors or not: one may explain an error, and `-t` promises both.
    for warning in &warnings {
        log::warn!("{warning}");
    }
    let config = match loaded {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                log::error!("{e}");
            }
            log::error!("failed to load configuration file '{}'", path.display());
            log::error!("FPM initialization failed");
            return exit(exit_code::CONFIG);
        }
    };
    // Users, groups and the root rule: checked under -t as well as at start.
    let prepared = match isolation::prepare(&config, options.allow_root) {
        Ok(prepared) => prepared,
        Err(errors) => {
            for e in &errors {
                log::error!("{e}");
            }
            log::error!("FPM initialization failed");
            return exit(exit_code::CONFIG);
        }
    };
    for notice in &prepared.notices {
        log::info!("{notice}");
    }
    if options.test > 0 {
        // The master's own files and limits, as a start would open and set them.
        let refusals =
            cgi_fpm::preflight::check(&config, options.pid.as_deref(), options.force_stderr);
        if !refusals.is_empty() {
            refusals.iter().for_each(|e| log::error!("{e}"));
            log::error!("configuration file {} test failed", path.display());
            return exit(exit_code::CONFIG);
        }
        // The same descriptor plan a start makes: a configuration that could not start
        // under these limits fails the test too.
        match cgi_fpm::fdplan::check(&config) {
            Ok(notice) => notice.iter().for_each(|n| log::info!("{n}")),
            Err(e) => {
                log::error!("{e}");
                log::error!("configuration file {} test failed", path.display());
                return exit(exit_code::CONFIG);
            }
        }
        if options.test > 1 {
            for line in config::dump(&config).lines() {
                log::info!("{line}");
            }
        }
        log::info!("configuration file {} test is successful", path.display());
        return ExitCode::SUCCESS;
    }

    // Go to the background first, so the master (the child) is the one that logs and
    // reports readiness; the command returns once the master is ready, or with its error.
    // The new image of a reload is the daemon already: it must not fork again.
    let daemonize = handover.is_none() && options.daemonize.unwrap_or(config.global.daemonize);
    let mut report = if daemonize {
        match cgi_fpm::daemon::daemonize() {
            Ok(r) => r,
            Err(e) => {
                log::error!("failed to daemonize: {e}");
                return exit(exit_code::OS_ERROR);
            }
        }
    } else {
        cgi_fpm::daemon::StartupReport::foreground()
    };
    logging::set_level(config.global.log_level);
    logging::set_limit(config.global.log_limit);
    let global = &config.global;
    if !options.force_stderr
        && let Err(e) = logging::open_error_log(
            &global.error_log,
            &global.syslog_ident,
            &global.syslog_facility,
        )
    {
        log::error!("{e}");
        log::error!("FPM initialization failed");
        report.failed(&e);
        return exit(exit_code::CONFIG);
    }
    match isolation::apply_master_limits(&config.global) {
        Ok(notices) => notices.iter().for_each(|notice| log::info!("{notice}")),
        Err(e) => {
            log::error!("{e}");
            log::error!("FPM initialization failed");
            report.failed(&e);
            return exit(exit_code::CONFIG);
        }
    }
    // Before the first pool opens anything: a master that runs out half-way through its
    // pools serves none of them well.
    match cgi_fpm::fdplan::apply(&config) {
        Ok(notice) => notice.iter().for_each(|n| log::info!("{n}")),
        Err(e) => {
            log::error!("{e}");
            log::error!("FPM initialization failed");
            report.failed(&e);
            return exit(exit_code::CONFIG);
        }
    }
    let reexec = reexec(&options, &path, original_args);
    // The master (after daemonizing) takes its title; its workers inherit the prepared
    // room and set their own.
    cgi_fpm::proctitle::init();
    cgi_fpm::proctitle::set(&cgi_fpm::proctitle::master(
        config.global.proctitle_prefix.as_deref(),
        &path,
    ));
    let code = master::run(
        config,
        master::RunOptions {
            pid_file: options.pid.clone(),
            force_stderr: options.force_stderr,
            privileges: prepared.pools,
            reexec,
            handover,
        },
        &mut report,
    );
    exit(code)
}
