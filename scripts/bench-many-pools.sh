#!/usr/bin/env bash
# The "many pools" case: N ondemand pools (one per site, as shared hosting runs them) under
# one master, cgi-fpm next to php-fpm with the same N pools, both under `ulimit -n` soft
# 1024 and a higher hard limit. For each it prints:
#   start    time from launch to the master's "ready" line, with every pool socket there
#   rss/fds  the master's resident memory and open descriptors at rest
#   wakeups  the master's voluntary context switches per second over W seconds at rest
#   reload   time from SIGUSR2 to the new "ready" line (at rest, no workers yet)
#   cold     the first request to each pool (no worker yet): median, p99 and max across
#            pools, timed from connect to END_REQUEST by one client process
#            (scripts/fcgi-cold.py); cgi-fpm runs hello.sh, php-fpm hello.php.
#   warm     the same requests again, every pool's worker started: the cold figure
#            minus this is what starting a worker costs.
#
# usage: scripts/bench-many-pools.sh [-p POOLS] [-w REST_SECONDS] [-s SOFT] [-H HARD]
#   defaults: -p 500 -w 10 -s 1024 -H the current hard limit (ulimit -Hn)
# It builds cgi-fpm --release and starts everything in a temporary directory; it stops only
# what it started, by pid. php-fpm is skipped (with a note) when it is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

POOLS=500 REST=10 SOFT=1024 HARD=$(ulimit -Hn)
while getopts "p:w:s:H:h" opt; do
    case $opt in
    p) POOLS=$OPTARG ;;
    w) REST=$OPTARG ;;
    s) SOFT=$OPTARG ;;
    H) HARD=$OPTARG ;;
    *) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 64 ;;
    esac
done
for v in "$POOLS" "$REST" "$SOFT" "$HARD"; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "bench-many-pools.sh: options take positive integers" >&2; exit 64; }
done

say() { printf '%s\n' "$*" >&2; }
cargo build --release --quiet --bin cgi-fpm
FPM_BIN=$ROOT/target/release/cgi-fpm
PHP_FPM_BIN=$(compgen -G '/usr/sbin/php-fpm*' | sort -V | tail -n 1 || true)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/cgi-fpm-many.XXXXXX")
PIDS=()
stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 200); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    [ -n "${KEEP_TMP:-}" ] || rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

WWW=$TMP/www
mkdir -p "$WWW"
cp examples/cgi-bin/hello.sh examples/cgi-bin/hello.php "$WWW/"

now_ms() { echo $(($(date +%s%N) / 1000000)); }
# wait_count FILE PATTERN N: until FILE has N lines matching PATTERN (30 s at most).
wait_count() {
    local i
    for i in $(seq 3000); do
        [ "$(grep -c -- "$2" "$1" 2>/dev/null || true)" -ge "$3" ] && return 0
        sleep 0.01
    done
    say "timed out waiting for $3 x '$2' in $1"; tail -5 "$1" "$(dirname "$1")/master.out" >&2; return 1
}
# Voluntary switches: each is the master going to sleep, so one per wake-up; involuntary
# ones count preemption by other load, not wake-ups.
ctxt() { awk '/^voluntary_ctxt_switches/ {print $2}' "/proc/$1/status"; }

# write_config KIND DIR: N ondemand pools on unix sockets in DIR.
write_config() {
    local kind=$1 dir=$2 i
    mkdir -p "$dir"
    {
        echo "[global]"
        echo "pid = $dir/master.pid"
        echo "error_log = $dir/master.log"
        echo "daemonize = no"
        for ((i = 1; i <= POOLS; i++)); do
            echo "[p$i]"
            echo "listen = $dir/p$i.sock"
            echo "pm = ondemand"
            echo "pm.max_children = 2"
            echo "pm.process_idle_timeout = 60s"
            if [ "$kind" = cgi-fpm ]; then echo "cgi.allowed_roots = $WWW"; fi
        done
    } >"$dir/master.conf"
}

# measure KIND BIN SCRIPT: start, rest, reload, cold requests; prints one table row.
measure() {
    local kind=$1 bin=$2 script=$3 dir=$TMP/$1 args started ready pid rss fds c0 c1 t0 t1 cold
    write_config "$kind" "$dir"
    args=(-F -y "$dir/master.conf")
    [ "$(id -u)" -eq 0 ] && args+=(-R)
    : >"$dir/master.log"
    started=$(now_ms)
    prlimit --nofile="$SOFT:$HARD" "$bin" "${args[@]}" </dev/null >>"$dir/master.out" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_count "$dir/master.log" "ready to handle connections" 1
    ready=$(now_ms)
    [ -S "$dir/p$POOLS.sock" ] || { say "$kind: p$POOLS.sock missing"; return 1; }
    sleep 1
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    fds=$(ls "/proc/$pid/fd" | wc -l)
    c0=$(ctxt "$pid")
    sleep "$REST"
    c1=$(ctxt "$pid")
    t0=$(now_ms)
    kill -USR2 "$pid"
    wait_count "$dir/master.log" "ready to handle connections" 2
    t1=$(now_ms)
    sleep 1
    local sockets=()
    for ((i = 1; i <= POOLS; i++)); do sockets+=("$dir/p$i.sock"); done
    cold=$(python3 "$ROOT/scripts/fcgi-cold.py" "$WWW/$script" "${sockets[@]}")
    read -r median p99 max failures <<<"$cold"
    # The same requests again, each pool's worker started now: what is left is the
    # script and the machine's noise, which tells how much of the cold figure the start is.
    warm=$(python3 "$ROOT/scripts/fcgi-cold.py" "$WWW/$script" "${sockets[@]}")
    read -r warm_median warm_p99 _ warm_failures <<<"$warm"
    printf '| %s | %d | %d | %s | %d | %s | %d | %s | %s | %s | %s | %s | %s |\n' \
        "$kind" "$POOLS" "$((ready - started))" \
        "$(awk -v k="$rss" 'BEGIN {printf "%.1f", k / 1024}')" "$fds" \
        "$(awk -v a="$c0" -v b="$c1" -v s="$REST" 'BEGIN {printf "%.1f", (b - a) / s}')" \
        "$((t1 - t0))" "$median" "$p99" "$max" "$warm_median" "$warm_p99" "$((failures + warm_failures))"
    stop_pid "$pid"
}

say "$POOLS ondemand pools, ulimit -n $SOFT (hard $HARD), $REST s at rest"
echo "| server | pools | start ms | master RSS MiB | master fds | wake-ups/s at rest | reload ms | cold median ms | cold p99 ms | cold max ms | warm median ms | warm p99 ms | failed |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
measure cgi-fpm "$FPM_BIN" hello.sh
if [ -n "$PHP_FPM_BIN" ]; then
    measure php-fpm "$PHP_FPM_BIN" hello.php
else
    say "php-fpm is not installed: its row is skipped"
fi
