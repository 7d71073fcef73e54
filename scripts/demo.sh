#!/bin/sh
# Start cgi-fpm on the bundled example config, send it a few requests, and stop it.
# Run from anywhere: scripts/demo.sh
set -eu
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin cgi-fpm --example fcgi-request
target/release/cgi-fpm -F -y etc/cgi-fpm.conf &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true' EXIT INT TERM
# Wait (at most 5 s) until the pool answers.
i=0
until target/release/examples/fcgi-request 127.0.0.1:9000 examples/cgi-bin/hello.sh >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -gt 50 ] || ! kill -0 "$pid" 2>/dev/null; then
        echo "cgi-fpm did not answer on 127.0.0.1:9000" >&2
        exit 1
    fi
    sleep 0.1
done
for script in hello.sh hello.py hello.pl; do
    echo "=== GET examples/cgi-bin/$script?name=demo"
    target/release/examples/fcgi-request 127.0.0.1:9000 "examples/cgi-bin/$script" 'name=demo'
done
echo "=== POST to examples/cgi-bin/echo.sh"
echo 'this body came back through cgi-fpm' |
    target/release/examples/fcgi-request 127.0.0.1:9000 examples/cgi-bin/echo.sh '' POST
echo
echo "=== a missing script"
target/release/examples/fcgi-request 127.0.0.1:9000 examples/cgi-bin/missing.sh || true
