#!/usr/bin/env bash
# Benchmark cgi-fpm against its peers, in one run, behind the same nginx with the same
# scripts and the same load:
#   nginx + cgi-fpm      (static pool of W workers, unix socket)
#   nginx + fcgiwrap     (-c W, unix socket)
#   exec floor           (W processes spawning the script and draining its stdout; no server)
#   nginx + php-fpm      (static W, hello.php) next to cgi-fpm running php-cgi, if php-fpm is there,
#                        as CGI and as a resident app (cgi.fastcgi_app), and spawn-fcgi + php-cgi
# on hello.sh, a compiled hello (examples/cgi-bin/hello.c), hello.py and a 1 MiB POST echoed
# back by echo.sh. Each is measured RUNS times (interleaved) and the medians are printed as a
# Markdown table with the ratios cgi-fpm/fcgiwrap and cgi-fpm/floor; then idle memory and
# wake-ups at rest, and p99 with nginx `keepalive 8` against the W workers.
#
# usage: scripts/bench.sh [-n RUNS] [-d SECONDS] [-w WORKERS] [-c CONNECTIONS] [-t THREADS]
#                         [-o CASES] [-q SECONDS]
#   defaults: -n 3 -d 5 -w 4 -c 16 -t 2   (wrk's -d is capped at 10 s)
#   -o: a comma-separated subset of hello.sh,hello,hello.py,echo,php,keepalive,rest
#       (default all; rest: the master's wake-ups at rest per pool manager)
#   -q: request_queue_timeout for cgi-fpm's pool (default 0, off): compare the cost of the
#       queue deadline, with -c below -w (a worker idle) and above it (the pool full)
# It installs what is missing (nginx, fcgiwrap, wrk, curl, a C compiler, python3; php-fpm and
# php-cgi if they can be had), builds cgi-fpm --release, and starts everything it uses on
# loopback and unix sockets in a temporary directory; it stops only what it started, by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

RUNS=3 DURATION=5 WORKERS=4 CONNS=16 THREADS=2 ONLY=hello.sh,hello,hello.py,echo,php,keepalive,rest
QUEUE_TIMEOUT=0
while getopts "n:d:w:c:t:o:q:h" opt; do
    case $opt in
    n) RUNS=$OPTARG ;;
    d) DURATION=$OPTARG ;;
    w) WORKERS=$OPTARG ;;
    c) CONNS=$OPTARG ;;
    t) THREADS=$OPTARG ;;
    o) ONLY=$OPTARG ;;
    q) QUEUE_TIMEOUT=$OPTARG ;;
    *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 64 ;;
    esac
done
for v in "$RUNS" "$DURATION" "$WORKERS" "$CONNS" "$THREADS"; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: options take positive integers" >&2; exit 64; }
done
[[ $QUEUE_TIMEOUT =~ ^[0-9]+$ ]] || { echo "bench.sh: -q takes whole seconds" >&2; exit 64; }
((DURATION <= 10)) || DURATION=10
((CONNS <= 256)) || CONNS=256
wanted() { [[ ,$ONLY, == *,$1,* ]]; }

say() { printf '%s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------------
# Dependencies: install only what is missing (Debian/Ubuntu apt-get).
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
php_fpm_bin() { compgen -G '/usr/sbin/php-fpm*' | sort -V | tail -n 1 || true; }
install_missing() {
    local need="" optional=""
    have nginx || need="$need nginx"
    have fcgiwrap || need="$need fcgiwrap"
    have wrk || need="$need wrk"
    have curl || need="$need curl"
    have cc || need="$need gcc libc6-dev"
    [ -x /usr/bin/python3 ] || need="$need python3"
    [ -n "$(php_fpm_bin)" ] || optional="$optional php-fpm"
    have php-cgi || optional="$optional php-cgi"
    have spawn-fcgi || optional="$optional spawn-fcgi"
    [ -z "$need$optional" ] && return 0
    if ! have apt-get; then
        [ -z "$need" ] && { say "not installed (optional):$optional"; return 0; }
        say "missing:$need; this script installs with apt-get only (Debian/Ubuntu)"
        exit 1
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        have sudo || { say "need root or sudo to install:$need$optional"; exit 1; }
        sudo=sudo
    fi
    # Keep package scripts from starting system services on public ports.
    local policy=/usr/sbin/policy-rc.d created=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod 755 "$policy"
        created=yes
    fi
    say "installing:$need$optional"
    $sudo apt-get update -qq || true
    if [ -n "$need" ]; then
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $need >/dev/null
    fi
    if [ -n "$optional" ]; then
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $optional >/dev/null ||
            say "could not install$optional; the PHP rows are skipped"
    fi
    [ -n "$created" ] && $sudo rm -f "$policy"
    return 0
}
install_missing

cargo build --release --quiet --bin cgi-fpm --example exec-floor
FPM_BIN=$ROOT/target/release/cgi-fpm
FLOOR_BIN=$ROOT/target/release/examples/exec-floor
NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
FCGIWRAP_BIN=$(command -v fcgiwrap || echo /usr/sbin/fcgiwrap)
PHP_FPM_BIN=$(php_fpm_bin)
PHP_CGI_BIN=$(command -v php-cgi || true)
SPAWN_FCGI_BIN=$(command -v spawn-fcgi || echo /usr/bin/spawn-fcgi)
[ -x "$SPAWN_FCGI_BIN" ] || SPAWN_FCGI_BIN=""
[ -n "$PHP_FPM_BIN" ] && [ -n "$PHP_CGI_BIN" ] && WITH_PHP=1 || WITH_PHP=""
wanted php || WITH_PHP=""

# ---------------------------------------------------------------------------------------
# Processes we start, stopped by pid (or by the process group we created) on exit.
TMP=$(mktemp -d "${TMPDIR:-/tmp}/cgi-fpm-bench.XXXXXX")
PIDS=()
stop_pid() {
    local pid=$1 sig=${2:-TERM} i
    kill -"$sig" "$pid" 2>/dev/null || return 0
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        # Negative: a process group led by a process we started with setsid.
        stop_pid "${PIDS[i]}" TERM
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

WWW=$TMP/www
mkdir -p "$WWW" "$TMP/results"
cp examples/cgi-bin/hello.sh examples/cgi-bin/hello.py examples/cgi-bin/echo.sh examples/cgi-bin/hello.php "$WWW/"
cc -O2 -o "$WWW/hello" examples/cgi-bin/hello.c
head -c 1048576 /dev/zero | tr '\0' 'x' >"$TMP/body"
CGI_PATH=/usr/local/bin:/usr/bin:/bin

wait_for() { # what, command...: poll for up to 10 s
    local what=$1 i
    shift
    for i in $(seq 200); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    say "bench.sh: $what did not happen within 10 s"
    exit 1
}
port_free() { ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
pick_port() {
    local p
    for p in $(seq "$1" $(($1 + 200))); do
        port_free "$p" && { echo "$p"; return; }
    done
    say "bench.sh: no free loopback port near $1"
    exit 1
}

# --- cgi-fpm -------------------------------------------------------------------------
cat >"$TMP/cgi-fpm.conf" <<EOF
[global]
error_log = $TMP/cgi-fpm.log

[bench]
listen = $TMP/cgi-fpm.sock
pm = static
pm.max_children = $WORKERS
request_queue_timeout = $QUEUE_TIMEOUT
cgi.allowed_roots = $WWW
env[PATH] = $CGI_PATH
${PHP_CGI_BIN:+cgi.interpreter[.php] = $PHP_CGI_BIN}
EOF
FPM_ARGS=(-F -y "$TMP/cgi-fpm.conf")
[ "$(id -u)" -eq 0 ] && FPM_ARGS+=(-R)
"$FPM_BIN" "${FPM_ARGS[@]}" </dev/null >>"$TMP/cgi-fpm.log" 2>&1 &
FPM_PID=$!
PIDS+=("$FPM_PID")

# --- fcgiwrap: its own process group so a wedged one can be stopped with its children -----
start_fcgiwrap() {
    rm -f "$TMP/fcgiwrap.sock"
    setsid env -i PATH="$CGI_PATH" "$FCGIWRAP_BIN" -f -c "$WORKERS" -s "unix:$TMP/fcgiwrap.sock" \
        </dev/null >>"$TMP/fcgiwrap.log" 2>&1 &
    FCGIWRAP_PID=$!
    # Out of the job table: its deliberate KILL after the echo case is not news.
    disown "$FCGIWRAP_PID" 2>/dev/null || true
    PIDS+=("-$FCGIWRAP_PID")
    wait_for "fcgiwrap listening" test -S "$TMP/fcgiwrap.sock"
}
restart_fcgiwrap() {
    local i
    stop_pid "-$FCGIWRAP_PID" KILL
    for i in "${!PIDS[@]}"; do
        [ "${PIDS[i]}" = "-$FCGIWRAP_PID" ] && unset 'PIDS[i]'
    done
    PIDS=("${PIDS[@]}")
    start_fcgiwrap
}
start_fcgiwrap

# --- php-fpm -------------------------------------------------------------------------
if [ -n "$WITH_PHP" ]; then
    cat >"$TMP/php-fpm.conf" <<EOF
[global]
pid = $TMP/php-fpm.pid
error_log = $TMP/php-fpm.log
daemonize = no

[www]
listen = $TMP/php-fpm.sock
pm = static
pm.max_children = $WORKERS
EOF
    PHP_ARGS=(-F -y "$TMP/php-fpm.conf")
    [ "$(id -u)" -eq 0 ] && PHP_ARGS+=(-R)
    "$PHP_FPM_BIN" "${PHP_ARGS[@]}" </dev/null >>"$TMP/php-fpm.log" 2>&1 &
    PHP_FPM_PID=$!
    PIDS+=("$PHP_FPM_PID")
fi

# --- PHP as resident FastCGI apps: cgi-fpm (one php-cgi per worker), spawn-fcgi ---------
if [ -n "$WITH_PHP" ]; then
    cat >"$TMP/resident.conf" <<EOF
[global]
error_log = $TMP/resident.log

[resident]
listen = $TMP/resident.sock
pm = static
pm.max_children = $WORKERS
cgi.allowed_roots = $WWW
cgi.fastcgi_app[.php] = $PHP_CGI_BIN
EOF
    RES_ARGS=(-F -y "$TMP/resident.conf")
    [ "$(id -u)" -eq 0 ] && RES_ARGS+=(-R)
    "$FPM_BIN" "${RES_ARGS[@]}" </dev/null >>"$TMP/resident.log" 2>&1 &
    RESIDENT_PID=$!
    PIDS+=("$RESIDENT_PID")
    if [ -n "$SPAWN_FCGI_BIN" ]; then
        # The classic set-up: one php-cgi that forks W children (PHP_FCGI_CHILDREN), all
        # accepting on one socket; -n keeps it in the foreground with our pid.
        setsid "$SPAWN_FCGI_BIN" -n -s "$TMP/spawn.sock" -C "$WORKERS" -- "$PHP_CGI_BIN" \
            </dev/null >>"$TMP/spawn-fcgi.log" 2>&1 &
        SPAWN_PID=$!
        PIDS+=("-$SPAWN_PID")
    fi
fi

# --- nginx: one server block per upstream, HTTP on loopback ---------------------------
PORT_FPM=$(pick_port 18080)
PORT_WRAP=$(pick_port $((PORT_FPM + 1)))
PORT_PHP=$(pick_port $((PORT_WRAP + 1)))
PORT_FPM_KA=$(pick_port $((PORT_PHP + 1)))
PORT_PHP_KA=$(pick_port $((PORT_FPM_KA + 1)))
PORT_FPM_KA2=$(pick_port $((PORT_PHP_KA + 1)))
PORT_RES=$(pick_port $((PORT_FPM_KA2 + 1)))
PORT_RES_KA=$(pick_port $((PORT_RES + 1)))
PORT_SPAWN=$(pick_port $((PORT_RES_KA + 1)))
server_block() { # port upstream keep_conn
    cat <<EOF
    server {
        listen 127.0.0.1:$1;
        root $WWW;
        location / {
            include $TMP/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME \$document_root\$fastcgi_script_name;
            fastcgi_keep_conn $3;
            fastcgi_pass $2;
        }
    }
EOF
}
if [ -f /etc/nginx/fastcgi_params ]; then
    cp /etc/nginx/fastcgi_params "$TMP/fastcgi_params"
else
    for p in "QUERY_STRING \$query_string" "REQUEST_METHOD \$request_method" \
        "CONTENT_TYPE \$content_type" "CONTENT_LENGTH \$content_length" \
        "SCRIPT_NAME \$fastcgi_script_name" "REQUEST_URI \$request_uri" \
        "DOCUMENT_URI \$document_uri" "DOCUMENT_ROOT \$document_root" \
        "SERVER_PROTOCOL \$server_protocol" "REQUEST_SCHEME \$scheme" \
        "GATEWAY_INTERFACE CGI/1.1" "SERVER_SOFTWARE nginx/\$nginx_version" \
        "REMOTE_ADDR \$remote_addr" "REMOTE_PORT \$remote_port" \
        "SERVER_ADDR \$server_addr" "SERVER_PORT \$server_port" \
        "SERVER_NAME \$server_name" "REDIRECT_STATUS 200"; do
        echo "fastcgi_param $p;"
    done >"$TMP/fastcgi_params"
fi
{
    [ "$(id -u)" -eq 0 ] && echo "user root;"
    cat <<EOF
daemon off;
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx-body;
    fastcgi_temp_path $TMP/nginx-fastcgi;
    proxy_temp_path $TMP/nginx-proxy;
    uwsgi_temp_path $TMP/nginx-uwsgi;
    scgi_temp_path $TMP/nginx-scgi;
    client_max_body_size 0;
    client_body_buffer_size 2m;
    fastcgi_buffers 64 16k;
    fastcgi_read_timeout 10s;
    fastcgi_send_timeout 10s;
    upstream cgi_fpm { server unix:$TMP/cgi-fpm.sock; }
    upstream fcgiwrap { server unix:$TMP/fcgiwrap.sock; }
    upstream php_fpm { server unix:$TMP/php-fpm.sock; }
    # Kept connections expire after 1 s idle, so that they stop pinning workers (see the
    # keepalive section) before the next measurement.
    upstream cgi_fpm_ka { server unix:$TMP/cgi-fpm.sock; keepalive 8; keepalive_timeout 1s; }
    upstream cgi_fpm_ka2 { server unix:$TMP/cgi-fpm.sock; keepalive 2; keepalive_timeout 1s; }
    upstream php_fpm_ka { server unix:$TMP/php-fpm.sock; keepalive 8; keepalive_timeout 1s; }
    upstream resident { server unix:$TMP/resident.sock; }
    upstream resident_ka { server unix:$TMP/resident.sock; keepalive 8; keepalive_timeout 1s; }
    upstream spawn_fcgi { server unix:$TMP/spawn.sock; }
EOF
    server_block "$PORT_FPM" cgi_fpm off
    server_block "$PORT_WRAP" fcgiwrap off
    server_block "$PORT_PHP" php_fpm off
    server_block "$PORT_FPM_KA" cgi_fpm_ka on
    server_block "$PORT_PHP_KA" php_fpm_ka on
    server_block "$PORT_FPM_KA2" cgi_fpm_ka2 on
    server_block "$PORT_RES" resident off
    server_block "$PORT_RES_KA" resident_ka on
    server_block "$PORT_SPAWN" spawn_fcgi off
    echo "}"
} >"$TMP/nginx.conf"
"$NGINX_BIN" -p "$TMP" -c "$TMP/nginx.conf" </dev/null >>"$TMP/nginx-stderr.log" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")

check_hello() { curl -fsS --max-time 5 "http://127.0.0.1:$1/$2" | grep -q Hello; }
wait_for "nginx + cgi-fpm answering" check_hello "$PORT_FPM" hello.sh
wait_for "nginx + fcgiwrap answering" check_hello "$PORT_WRAP" hello.sh
[ -n "$WITH_PHP" ] && wait_for "nginx + php-fpm answering" check_hello "$PORT_PHP" hello.php
for s in hello hello.py; do
    check_hello "$PORT_FPM" "$s" || { say "bench.sh: cgi-fpm cannot serve $s"; exit 1; }
done
[ -n "$WITH_PHP" ] && { check_hello "$PORT_FPM" hello.php || { say "bench.sh: cgi-fpm cannot serve hello.php"; exit 1; }; }
[ -n "$WITH_PHP" ] && wait_for "nginx + cgi-fpm with resident php-cgi answering" check_hello "$PORT_RES" hello.php
[ -n "$WITH_PHP" ] && [ -n "$SPAWN_FCGI_BIN" ] && wait_for "nginx + spawn-fcgi answering" check_hello "$PORT_SPAWN" hello.php

# ---------------------------------------------------------------------------------------
# Measurements. Each result file holds one line: req/s p50_ms p99_ms errors.
cat >"$TMP/post.lua" <<EOF
local f = assert(io.open("$TMP/body", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
EOF
parse_wrk() {
    awk '
    function ms(v) {
        if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
        if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
        if (v ~ /m$/)  { sub(/m$/, "", v);  return v * 60000 }
        if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000 }
        return v + 0
    }
    /Requests\/sec:/ { rps = $2 }
    /^ +50%/ { p50 = ms($2) }
    /^ +99%/ { p99 = ms($2) }
    /Socket errors:/ { for (i = 3; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) { gsub(",", "", $i); err += $i } }
    /Non-2xx or 3xx responses:/ { err += $NF }
    END { printf "%.1f %.2f %.2f %d\n", rps + 0, p50 + 0, p99 + 0, err }'
}
run_wrk() { # port path [post] -> result line
    local args=(-t "$THREADS" -c "$CONNS" -d "${DURATION}s" --timeout 5s --latency)
    [ "${3:-}" = post ] && args+=(-s "$TMP/post.lua")
    timeout $((DURATION + 20)) wrk "${args[@]}" "http://127.0.0.1:$1/$2" 2>&1 | parse_wrk
}
run_floor() { # script [post]
    local args=(--procs "$WORKERS" --duration "$DURATION" --env "PATH=$CGI_PATH"
        --env REQUEST_METHOD=GET --env QUERY_STRING= --env GATEWAY_INTERFACE=CGI/1.1
        --env "SCRIPT_FILENAME=$WWW/$1" --env REDIRECT_STATUS=200)
    [ "${2:-}" = post ] && args+=(--stdin "$TMP/body" --env CONTENT_LENGTH=1048576)
    timeout $((DURATION + 20)) "$FLOOR_BIN" "${args[@]}" -- "$WWW/$1"
}

# name|path|post?
CASES=()
wanted hello.sh && CASES+=("hello.sh|hello.sh|")
wanted hello && CASES+=("hello (C)|hello|")
wanted hello.py && CASES+=("hello.py|hello.py|")
wanted echo && CASES+=("echo 1 MiB|echo.sh|post")
say "cgi-fpm bench: $WORKERS workers, wrk -t$THREADS -c$CONNS -d${DURATION}s, $RUNS runs, $(nproc) CPUs"
for ((run = 1; run <= RUNS; run++)); do
    for c in "${CASES[@]}"; do
        IFS='|' read -r name path post <<<"$c"
        key=${path//./_}
        say "run $run/$RUNS: $name"
        run_wrk "$PORT_FPM" "$path" "$post" >"$TMP/results/$key.fpm.$run"
        run_wrk "$PORT_WRAP" "$path" "$post" >"$TMP/results/$key.wrap.$run"
        # fcgiwrap copies the whole body to the script before it reads any output, so a
        # large echo wedges its workers for good: start it afresh after that case.
        [ "$post" = post ] && restart_fcgiwrap
        run_floor "$path" "$post" >"$TMP/results/$key.floor.$run"
    done
    if [ -n "$WITH_PHP" ]; then
        say "run $run/$RUNS: hello.php"
        run_wrk "$PORT_FPM" hello.php >"$TMP/results/hello_php.fpm.$run"
        run_wrk "$PORT_PHP" hello.php >"$TMP/results/hello_php.phpfpm.$run"
        run_wrk "$PORT_RES" hello.php >"$TMP/results/hello_php.resident.$run"
        [ -n "$SPAWN_FCGI_BIN" ] && run_wrk "$PORT_SPAWN" hello.php >"$TMP/results/hello_php.spawn.$run"
    fi
    if wanted keepalive; then
        # An idle kept connection holds a worker (as in php-fpm): let nginx's cached
        # connections expire between these runs and before anything else runs.
        say "run $run/$RUNS: hello.sh with nginx keepalive 8 and 2"
        run_wrk "$PORT_FPM_KA" hello.sh >"$TMP/results/hello_sh.fpm_ka.$run"
        sleep 2
        run_wrk "$PORT_FPM_KA2" hello.sh >"$TMP/results/hello_sh.fpm_ka2.$run"
        sleep 2
        if [ -n "$WITH_PHP" ]; then
            run_wrk "$PORT_PHP_KA" hello.php >"$TMP/results/hello_php.phpfpm_ka.$run"
            sleep 2
            run_wrk "$PORT_RES_KA" hello.php >"$TMP/results/hello_php.resident_ka.$run"
            sleep 2
        fi
    fi
done

# Median of column $2 over the result files for key $1; errors are summed instead.
median() {
    local col=$1 f
    shift
    for f in "$@"; do cut -d' ' -f"$col" "$f"; done | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "-"; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
errors_sum() { local f; for f in "$@"; do cut -d' ' -f4 "$f"; done | awk '{ s += $1 } END { print s + 0 }'; }
stats() { # key target -> "rps p50 p99 errors"
    local files=("$TMP/results/$1.$2".*)
    echo "$(median 1 "${files[@]}") $(median 2 "${files[@]}") $(median 3 "${files[@]}") $(errors_sum "${files[@]}")"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0) printf "%.2f", a / b; else print "-" }'; }
fmt_rps() { awk -v v="$1" 'BEGIN { printf "%.0f", v }'; }
# The error cell: the count, or "stalled" when not one request completed in any run.
fmt_err() { if awk -v v="$1" 'BEGIN { exit !(v + 0 == 0) }'; then echo "stalled"; else echo "$2"; fi; }

# ---------------------------------------------------------------------------------------
# Resources at rest, after the load: RSS of the master and of an idle worker, and how
# often the whole process tree wakes up (context switches) over 5 idle seconds.
children_of() {
    local d ppid
    for d in /proc/[0-9]*; do
        ppid=$(sed 's/.*) [A-Za-z] \([0-9]*\).*/\1/' "$d/stat" 2>/dev/null) || continue
        [ "$ppid" = "$1" ] && echo "${d#/proc/}"
    done
}
status_kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
switches() { # pids... -> total context switches
    local p t=0 v n
    for p in "$@"; do
        v=$(status_kib "$p" voluntary_ctxt_switches)
        n=$(status_kib "$p" nonvoluntary_ctxt_switches)
        t=$((t + ${v:-0} + ${n:-0}))
    done
    echo "$t"
}
rest_figures() { # label master_pid -> table row
    local label=$1 master=$2 workers worker_rss=0 w r before after
    mapfile -t workers < <(children_of "$master")
    for w in "${workers[@]}"; do
        r=$(status_kib "$w" VmRSS)
        ((r > worker_rss)) && worker_rss=$r
    done
    before=$(switches "$master" "${workers[@]}")
    sleep 5
    after=$(switches "$master" "${workers[@]}")
    awk -v l="$label" -v m="$(status_kib "$master" VmRSS)" -v w="$worker_rss" -v n="${#workers[@]}" \
        -v s=$((after - before)) 'BEGIN {
        printf "| %s | %.1f | %.1f | %d | %.1f |\n", l, m / 1024, w / 1024, n, s / 5 }'
}

# ---------------------------------------------------------------------------------------
echo
echo "### Throughput and latency (medians of $RUNS runs)"
echo
echo "$WORKERS workers each; wrk -t$THREADS -c$CONNS -d${DURATION}s through nginx (1 worker) on"
echo "loopback, upstreams on unix sockets. The floor is $WORKERS processes spawning the script"
echo "back to back with no server, so its latency is one exec, without queueing."
echo "Errors are summed over all runs; \"stalled\" means no request completed at all."
echo
echo "| script | cgi-fpm req/s | p50 ms | p99 ms | err | fcgiwrap req/s | p50 ms | p99 ms | err | floor req/s | p50 ms | p99 ms | cgi-fpm/fcgiwrap | cgi-fpm/floor |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for c in "${CASES[@]}"; do
    IFS='|' read -r name path post <<<"$c"
    key=${path//./_}
    read -r f_rps f_p50 f_p99 f_err <<<"$(stats "$key" fpm)"
    read -r w_rps w_p50 w_p99 w_err <<<"$(stats "$key" wrap)"
    read -r x_rps x_p50 x_p99 x_err <<<"$(stats "$key" floor)"
    echo "| $name | $(fmt_rps "$f_rps") | $f_p50 | $f_p99 | $(fmt_err "$f_rps" "$f_err") | $(fmt_rps "$w_rps") | $w_p50 | $w_p99 | $(fmt_err "$w_rps" "$w_err") | $(fmt_rps "$x_rps") | $x_p50 | $x_p99 | $(ratio "$f_rps" "$w_rps") | $(ratio "$f_rps" "$x_rps") |"
done

verdict() { if awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 >= b + 0) }'; then echo "met"; else echo "NOT met"; fi; }
if wanted hello.sh; then
    read -r f_rps f_p50 f_p99 f_err <<<"$(stats hello_sh fpm)"
    read -r w_rps w_p50 w_p99 w_err <<<"$(stats hello_sh wrap)"
    read -r x_rps x_p50 x_p99 x_err <<<"$(stats hello_sh floor)"
    echo
    echo "Targets on hello.sh:"
    echo "- req/s >= 1.2 x fcgiwrap: $(ratio "$f_rps" "$w_rps") x, $(verdict "$(ratio "$f_rps" "$w_rps")" 1.2)"
    echo "- p99 no worse than fcgiwrap: $f_p99 ms vs $w_p99 ms, $(verdict "$w_p99" "$f_p99")"
    echo "- req/s >= 85 % of the exec floor: $(awk -v a="$f_rps" -v b="$x_rps" 'BEGIN { printf "%.0f", 100 * a / b }') %, $(verdict "$(ratio "$f_rps" "$x_rps")" 0.85)"
fi

if [ -n "$WITH_PHP" ]; then
    read -r f_rps f_p50 f_p99 f_err <<<"$(stats hello_php fpm)"
    read -r p_rps p_p50 p_p99 p_err <<<"$(stats hello_php phpfpm)"
    echo
    echo "### PHP, for the record (hello.php)"
    echo
    echo "| server | req/s | p50 ms | p99 ms | err |"
    echo "|---|---:|---:|---:|---:|"
    echo "| cgi-fpm running php-cgi as CGI | $(fmt_rps "$f_rps") | $f_p50 | $f_p99 | $f_err |"
    echo "| php-fpm (PHP in the worker) | $(fmt_rps "$p_rps") | $p_p50 | $p_p99 | $p_err |"
    read -r r_rps r_p50 r_p99 r_err <<<"$(stats hello_php resident)"
    echo "| cgi-fpm, resident php-cgi (cgi.fastcgi_app) | $(fmt_rps "$r_rps") | $r_p50 | $r_p99 | $r_err |"
    s_rps=""
    if [ -n "$SPAWN_FCGI_BIN" ]; then
        read -r s_rps s_p50 s_p99 s_err <<<"$(stats hello_php spawn)"
        echo "| spawn-fcgi + php-cgi (PHP_FCGI_CHILDREN=$WORKERS) | $(fmt_rps "$s_rps") | $s_p50 | $s_p99 | $s_err |"
    fi
    echo
    echo "Targets for the resident php-cgi:"
    echo "- req/s >= 0.8 x php-fpm: $(ratio "$r_rps" "$p_rps") x, $(verdict "$(ratio "$r_rps" "$p_rps")" 0.8)"
    [ -n "$s_rps" ] && echo "- req/s >= 1.0 x spawn-fcgi + php-cgi: $(ratio "$r_rps" "$s_rps") x, $(verdict "$(ratio "$r_rps" "$s_rps")" 1.0)"
fi

if wanted keepalive; then
    echo
    echo "### nginx keepalive + fastcgi_keep_conn on, against $WORKERS workers"
    echo
    echo "| server | script | upstream keepalive | req/s | p50 ms | p99 ms | err |"
    echo "|---|---|---:|---:|---:|---:|---:|"
    read -r a b c d <<<"$(stats hello_sh fpm_ka)"
    echo "| cgi-fpm | hello.sh | 8 | $(fmt_rps "$a") | $b | $c | $d |"
    read -r a b c d <<<"$(stats hello_sh fpm_ka2)"
    echo "| cgi-fpm | hello.sh | 2 | $(fmt_rps "$a") | $b | $c | $d |"
    if [ -n "$WITH_PHP" ]; then
        read -r a b c d <<<"$(stats hello_php phpfpm_ka)"
        echo "| php-fpm | hello.php | 8 | $(fmt_rps "$a") | $b | $c | $d |"
        read -r a b c d <<<"$(stats hello_php resident_ka)"
        echo "| cgi-fpm, resident php-cgi | hello.php | 8 | $(fmt_rps "$a") | $b | $c | $d |"
    fi
fi

echo
echo "### At rest, after the load"
echo
echo "Wake-ups: context switches per second of the master and all its workers, over 5 idle s."
echo "Targets for cgi-fpm: master < 4 MiB, idle worker < 3 MiB, no wake-up at rest (static pool)."
echo
echo "| server | master RSS MiB | largest worker RSS MiB | workers | wake-ups/s |"
echo "|---|---:|---:|---:|---:|"
rest_figures cgi-fpm "$FPM_PID"
rest_figures fcgiwrap "$FCGIWRAP_PID"
[ -n "$WITH_PHP" ] && rest_figures php-fpm "$PHP_FPM_PID"
if [ -n "$WITH_PHP" ]; then
    rest_figures "cgi-fpm, resident php-cgi (workers)" "$RESIDENT_PID"
    # The apps themselves: each worker's php-cgi.
    app_rss=0 apps=0
    for w in $(children_of "$RESIDENT_PID"); do
        for a in $(children_of "$w"); do
            r=$(status_kib "$a" VmRSS)
            ((r > app_rss)) && app_rss=$r
            apps=$((apps + 1))
        done
    done
    awk -v w="$app_rss" -v n="$apps" 'BEGIN { printf "| resident php-cgi apps | - | %.1f | %d | - |\n", w / 1024, n }'
    [ -n "$SPAWN_FCGI_BIN" ] && rest_figures "spawn-fcgi + php-cgi" "$SPAWN_PID"
fi
if wanted rest; then
    # One master per pool manager, each with one pool and nothing to do: after a 3 s
    # settle (the first maintenance round, ondemand reaping its idle timeout of 1 s), how
    # often its master and the whole tree wake up over 5 s. The master has no periodic
    # tick: it sleeps until a signal, an event or a deadline that is really due.
    rest_pm() { # pm extra-lines -> table row
        local pm=$1 extra=$2 conf=$TMP/rest-$1.conf pid workers before after tree_before tree_after
        printf '[global]\nerror_log = %s\n\n[rest]\nlisten = %s\npm = %s\npm.max_children = %s\ncgi.allowed_roots = %s\n%b\n' \
            "$TMP/rest-$pm.log" "$TMP/rest-$pm.sock" "$pm" "$WORKERS" "$WWW" "$extra" >"$conf"
        local as_root=()
        [ "$(id -u)" -eq 0 ] && as_root=(-R)
        "$FPM_BIN" -F -y "$conf" "${as_root[@]}" </dev/null >>"$TMP/rest-$pm.log" 2>&1 &
        pid=$!
        PIDS+=("$pid")
        wait_for "cgi-fpm ($pm) ready" grep -q "ready to handle connections" "$TMP/rest-$pm.log"
        sleep 3
        mapfile -t workers < <(children_of "$pid")
        before=$(switches "$pid")
        tree_before=$(switches "$pid" "${workers[@]}")
        sleep 5
        after=$(switches "$pid")
        tree_after=$(switches "$pid" "${workers[@]}")
        stop_pid "$pid" TERM
        awk -v pm="$pm" -v n="${#workers[@]}" -v m=$((after - before)) -v t=$((tree_after - tree_before)) \
            'BEGIN { printf "| %s | %d | %.1f | %.1f |\n", pm, n, m / 5, t / 5 }'
    }
    echo
    echo "### Master wake-ups at rest, per pool manager"
    echo
    echo "Context switches per second over 5 idle s, 3 s after start; target 0 for static."
    echo
    echo "| pm | workers | master wake-ups/s | master + workers wake-ups/s |"
    echo "|---|---:|---:|---:|"
    rest_pm static ""
    rest_pm dynamic "pm.start_servers = 2\npm.min_spare_servers = 1\npm.max_spare_servers = 3"
    rest_pm ondemand "pm.process_idle_timeout = 1s"
fi

echo
echo "Machine: $(nproc) CPUs, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), Linux $(uname -r);"
echo "$("$NGINX_BIN" -v 2>&1 | sed 's/.*: //'), fcgiwrap $("$FCGIWRAP_BIN" -h 2>&1 | awk '/version/ { print $3 }'), $(wrk -v 2>&1 | awk 'NR == 1 { print $1, $2 }')${PHP_FPM_BIN:+, $("$PHP_FPM_BIN" -v 2>/dev/null | awk 'NR == 1 { print $1, $2 }')}."
