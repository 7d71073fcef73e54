//! More than one host: two cgi-fpm instances behind one nginx `upstream`, the pattern the
//! README documents (`max_fails`, `fastcgi_next_upstream`, kept connections). Draining one
//! host with QUIT under a bounded load of GETs and POSTs loses no request, and the request
//! it had in hand ends normally. nginx passes a failed GET on to the other server, but a
//! POST only if it was never sent: so the drained master must refuse new connections at
//! once and close the kept ones it holds, not leave them to be reset when it exits.

mod common;

use common::nginx::Nginx;
use common::{BIN, Fpm, http, wait_until};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn write_script(path: &Path, body: &str) {
    fs::write(path, body).expect("write script");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// One "host": a cgi-fpm on its own loopback port, serving the shared site, saying who it
/// is through `env[HOST_NAME]`.
fn host(name: &str, site: &Path) -> Fpm {
    let dir = tempfile::tempdir().expect("tempdir");
    let address = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "[global]\nprocess_control_timeout = 20s\n\
         [www]\nlisten = {address}\npm = static\npm.max_children = 3\n\
         cgi.allowed_roots = {site}\nenv[HOST_NAME] = {name}\n\
         env[PATH] = /usr/local/bin:/usr/bin:/bin\n",
        site = site.display(),
    );
    Fpm::start_with(dir, &config, &address)
}

#[test]
fn draining_one_of_two_hosts_with_quit_loses_no_request() {
    let site = tempfile::tempdir().expect("tempdir");
    let www = site.path();
    write_script(
        &www.join("who.sh"),
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\n\
         printf 'host=%s query=%s\\n' \"$HOST_NAME\" \"$QUERY_STRING\"\n",
    );
    write_script(
        &www.join("slow.sh"),
        "#!/bin/sh\nsleep 3\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\n\
         printf 'slow request done on %s\\n' \"$HOST_NAME\"\n",
    );
    let mut a = host("a", www);
    let b = host("b", www);
    let upstream = format!(
        "upstream cgi_fpm {{
        server {a} max_fails=1 fail_timeout=30s;
        server {b} max_fails=1 fail_timeout=30s;
        keepalive 4;
    }}",
        a = a.address,
        b = b.address
    );
    let location = "location / {
            include fastcgi_params;
            fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
            fastcgi_keep_conn on;
            fastcgi_next_upstream error timeout;
            fastcgi_connect_timeout 2s;
            fastcgi_pass cgi_fpm;
        }";
    let Some(nginx) = Nginx::start_site(&upstream, location, www) else {
        return;
    };

    // The load: 4 clients, two sending GETs and two POSTs, one after another, each
    // checked, each noting which host answered and when it was sent.
    let stop = Arc::new(AtomicBool::new(false));
    // (sent, host, how long it took) for each answered request; (POST?, what) for others.
    let served: Arc<Mutex<Vec<(Instant, String, Duration)>>> = Arc::default();
    let errors: Arc<Mutex<Vec<(bool, String)>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|t| {
            let (stop, served, errors, count) =
                (stop.clone(), served.clone(), errors.clone(), count.clone());
            let socket = nginx.socket.clone();
            std::thread::spawn(move || {
                // Bounded whatever happens to the flag.
                for i in 0..5000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let marker = format!("t={t}&i={i}");
                    let sent = Instant::now();
                    // Odd clients POST: nginx does not pass on a POST it had sent.
                    let post = t % 2 == 1;
                    let result = if post {
                        http::request(&socket, "POST", &format!("/who.sh?{marker}"), &[], b"body")
                    } else {
                        http::get(&socket, &format!("/who.sh?{marker}"))
                    };
                    match result {
                        Ok(r) if r.status == 200 && r.text().contains(&marker) => {
                            let host = r
                                .text()
                                .split_whitespace()
                                .find_map(|w| w.strip_prefix("host="))
                                .unwrap_or("?")
                                .to_string();
                            served.lock().unwrap().push((sent, host, sent.elapsed()));
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => errors.lock().unwrap().push((
                            post,
                            format!(
                                "{marker}: {} after {:?}: {}",
                                r.status,
                                sent.elapsed(),
                                r.text()
                            ),
                        )),
                        Err(e) => errors
                            .lock()
                            .unwrap()
                            .push((post, format!("{marker}: {e}"))),
                    }
                }
            })
        })
        .collect();
    let by = |host: &str| {
        served
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, h, _)| h == host)
            .count()
    };
    wait_until("both hosts serve the load", Duration::from_secs(20), || {
        by("a") >= 20 && by("b") >= 20
    });

    // A request in hand on host a when it is told to drain: it must end normally.
    let slow = {
        let address = a.address.clone();
        let script = www.join("slow.sh").display().to_string();
        std::thread::spawn(move || {
            let mut client =
                common::Client::connect(&address, Duration::from_secs(30)).expect("connect to a");
            client.request(
                &[("REQUEST_METHOD", "GET"), ("SCRIPT_FILENAME", &script)],
                b"",
                false,
            )
        })
    };
    // Only slow.sh's child counts: the load's who.sh children run on a's workers too, and
    // taking one of them for the slow request sent QUIT before the slow one connected.
    wait_until(
        "host a runs the slow request",
        Duration::from_secs(10),
        || {
            a.worker_pids().iter().any(|w| {
                common::children_of(*w).iter().any(|c| {
                    fs::read(format!("/proc/{c}/cmdline"))
                        .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains("slow.sh"))
                })
            })
        },
    );
    a.signal(nix::sys::signal::Signal::SIGQUIT);
    let code = a.wait_exit(Duration::from_secs(20));
    let a_gone = Instant::now();
    assert_eq!(
        code,
        Some(0),
        "host a did not drain and exit:\n{}",
        a.log_text()
    );
    let slow = slow
        .join()
        .expect("slow thread")
        .expect("the slow request on a");
    assert_eq!(slow.status(), 200);
    assert!(
        String::from_utf8_lossy(slow.body()).contains("slow request done on a"),
        "{:?}",
        slow
    );

    // The load goes on against b alone.
    let before = count.load(Ordering::Relaxed);
    wait_until("b serves the load alone", Duration::from_secs(20), || {
        count.load(Ordering::Relaxed) >= before + 100
    });
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("client thread");
    }

    let errors = errors.lock().unwrap();
    let served = served.lock().unwrap();
    let after: Vec<&String> = served
        .iter()
        .filter(|(sent, _, _)| *sent > a_gone)
        .map(|(_, host, _)| host)
        .collect();
    let slowest = served
        .iter()
        .map(|(_, _, took)| *took)
        .max()
        .unwrap_or_default();
    let failed_gets: Vec<&String> = errors
        .iter()
        .filter(|(post, _)| !post)
        .map(|(_, e)| e)
        .collect();
    let failed_posts: Vec<&String> = errors
        .iter()
        .filter(|(post, _)| *post)
        .map(|(_, e)| e)
        .collect();
    // What nginx saw of a's going: each line is a request it passed on to b.
    let nginx_log = nginx.error_log();
    let retried: Vec<&str> = nginx_log
        .lines()
        .filter(|l| l.contains("[error]") && l.contains("upstream"))
        .collect();
    println!("nginx errors:\n{}", retried.join("\n"));
    println!(
        "two hosts behind nginx, a drained with QUIT: {} requests answered ({} by a, {} by b; {} \
         after a exited), {} GETs and {} POSTs failed, {} passed on to b by nginx, slowest \
         {slowest:?}",
        served.len(),
        by_host(&served, "a"),
        by_host(&served, "b"),
        after.len(),
        failed_gets.len(),
        failed_posts.len(),
        retried.len()
    );
    assert!(
        failed_gets.is_empty(),
        "GETs failed: {failed_gets:?}\nnginx:\n{nginx_log}"
    );
    // Nothing waited in the draining host's listen queue for its exit (the slow request
    // keeps it draining for 3 s): it refused new connections, which nginx passed on at once.
    assert!(
        slowest < Duration::from_secs(2),
        "a request took {slowest:?}: it waited for the draining host\nnginx:\n{nginx_log}"
    );
    // A POST that nginx writes onto a kept connection in the instant the worker closes it
    // after its last request is reset, and nginx never resends a POST: that race belongs
    // to keep-alive itself. More than one lost means the drain itself loses them.
    assert!(
        failed_posts.len() <= 1,
        "POSTs failed: {failed_posts:?}\nnginx:\n{nginx_log}"
    );
    assert!(after.iter().all(|host| *host == "b"), "{after:?}");

    // The probe the README recommends for taking a host out of rotation agrees.
    let ping = |address: &str| {
        std::process::Command::new(BIN)
            .args(["--ping", address, "--ping-timeout", "2"])
            .output()
            .expect("run --ping")
            .status
            .code()
    };
    assert_eq!(ping(&a.address), Some(1));
    assert_eq!(ping(&b.address), Some(0));
}

fn by_host(served: &[(Instant, String, Duration)], host: &str) -> usize {
    served.iter().filter(|(_, h, _)| h == host).count()
}
