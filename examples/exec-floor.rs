//! The exec floor for `scripts/bench.sh`: what running a CGI script costs with no server
//! in the way. It starts `--procs` processes, each of which spawns the script, drains its
//! stdout and waits for it, over and over, for `--duration` seconds; then it prints one
//! line: `req/s p50_ms p99_ms errors`.
//!
//!     exec-floor --procs 4 --duration 5 [--stdin FILE] [--env NAME=VALUE]... -- PROGRAM [ARGS]
//!
//! Each spawn gets what a CGI child gets from cgi-fpm: a cleared environment plus the given
//! variables, the script's directory as its working directory, stdin from `--stdin` (or
//! /dev/null), stdout on a pipe, stderr to /dev/null.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

struct Options {
    procs: usize,
    duration: Duration,
    stdin: Option<PathBuf>,
    env: Vec<(String, String)>,
    program: Vec<String>,
    /// Internal: run the spawn loop in this process and print its latencies.
    looper: bool,
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: exec-floor [--procs N] [--duration SECS] [--stdin FILE] [--env NAME=VALUE]... -- PROGRAM [ARGS]"
    );
    ExitCode::from(64)
}

fn parse(args: &[String]) -> Option<Options> {
    let mut o = Options {
        procs: 1,
        duration: Duration::from_secs(5),
        stdin: None,
        env: Vec::new(),
        program: Vec::new(),
        looper: false,
    };
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1);
        match args[i].as_str() {
            "--procs" => o.procs = value?.parse().ok().filter(|&n| n > 0)?,
            "--duration" => o.duration = Duration::from_secs_f64(value?.parse().ok()?),
            "--stdin" => o.stdin = Some(PathBuf::from(value?)),
            "--env" => {
                let (name, val) = value?.split_once('=')?;
                o.env.push((name.to_string(), val.to_string()));
            }
            "--loop" => {
                o.looper = true;
                i += 1;
                continue;
            }
            "--" => {
                o.program = args[i + 1..].to_vec();
                break;
            }
            _ => return None,
        }
        i += 2;
    }
    (!o.program.is_empty()).then_some(o)
}

/// One spawn, drain and wait. The latency, or why it failed.
fn run_once(o: &Options, dir: &Path, buf: &mut Vec<u8>) -> Result<Duration, String> {
    let started = Instant::now();
    let stdin = match &o.stdin {
        Some(path) => Stdio::from(std::fs::File::open(path).map_err(|e| e.to_string())?),
        None => Stdio::null(),
    };
    let mut child = Command::new(&o.program[0])
        .args(&o.program[1..])
        .env_clear()
        .envs(o.env.iter().map(|(n, v)| (n, v)))
        .current_dir(dir)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", o.program[0]))?;
    buf.clear();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_end(buf).map_err(|e| e.to_string())?;
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() || buf.is_empty() {
        return Err(format!("{}: {status}, {} bytes", o.program[0], buf.len()));
    }
    Ok(started.elapsed())
}

/// The loop a worker process runs: prints `errors` then one latency in µs per line.
fn spawn_loop(o: &Options) -> ExitCode {
    let dir = Path::new(&o.program[0])
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let deadline = Instant::now() + o.duration;
    let mut latencies = Vec::new();
    let mut errors = 0u64;
    let mut first_error = None;
    let mut buf = Vec::with_capacity(64 * 1024);
    while Instant::now() < deadline {
        match run_once(o, &dir, &mut buf) {
            Ok(t) => latencies.push(t.as_micros() as u64),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("exec-floor: {errors} failed runs; first: {e}");
    }
    let mut out = format!("{errors}\n");
    for l in latencies {
        out.push_str(&l.to_string());
        out.push('\n');
    }
    print!("{out}");
    ExitCode::SUCCESS
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(o) = parse(&args) else {
        return usage();
    };
    if o.looper {
        return spawn_loop(&o);
    }
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("exec-floor: cannot find my own executable: {e}");
            return ExitCode::from(71);
        }
    };
    let started = Instant::now();
    let mut children = Vec::new();
    for _ in 0..o.procs {
        let mut loop_args = args.clone();
        loop_args.insert(0, "--loop".to_string());
        match Command::new(&exe)
            .args(&loop_args)
            .stdout(Stdio::piped())
            .spawn()
        {
            Ok(c) => children.push(c),
            Err(e) => {
                eprintln!("exec-floor: cannot start a loop process: {e}");
                return ExitCode::from(71);
            }
        }
    }
    let mut latencies = Vec::new();
    let mut errors = 0u64;
    for child in children {
        let output = match child.wait_with_output() {
            Ok(o) => o,
            Err(e) => {
                eprintln!("exec-floor: a loop process failed: {e}");
                return ExitCode::from(71);
            }
        };
        let text = String::from_utf8_lossy(&output.stdout);
        let mut lines = text.lines();
        errors += lines.next().and_then(|l| l.parse().ok()).unwrap_or(1);
        latencies.extend(lines.filter_map(|l| l.parse::<u64>().ok()));
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    println!(
        "{:.1} {:.2} {:.2} {}",
        latencies.len() as f64 / elapsed,
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        errors
    );
    ExitCode::SUCCESS
}
