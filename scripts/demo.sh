#!/bin/sh
# Start cgi-fpm on the bundled example config, send it a few requests, and stop it.
# Run from anywhere: scripts/demo.sh
set -eu
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin cgi-fpm --example fcgi-request
# The example pool runs its scripts as `nobody`, who may not reach a checkout under a
# private home (/root is 0700): serve a copy of the config and scripts from a scratch
# directory everyone can read.
demo=$(mktemp -d "${TMPDIR:-/tmp}/cgi-fpm-demo.XXXXXX")
chmod 755 "$demo"
cp -R etc examples "$demo/"
chmod -R a+rX "$demo"
target/release/cgi-fpm -F -y "$demo/etc/cgi-fpm.conf" &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; rm -rf "$demo"' EXIT
trap 'exit 130' INT TERM
request() { target/release/examples/fcgi-request 127.0.0.1:9000 "$demo/examples/cgi-bin/$1" "$2" ${3:+"$3"}; }
# Wait (at most 5 s) until the pool answers.
i=0
until request hello.sh '' >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -gt 50 ] || ! kill -0 "$pid" 2>/dev/null; then
        echo "cgi-fpm did not answer on 127.0.0.1:9000 (is another server using that port?)" >&2
        exit 1
    fi
    sleep 0.1
done
for script in hello.sh hello.py hello.pl; do
    echo "=== GET examples/cgi-bin/$script?name=demo"
    request "$script" 'name=demo'
done
echo "=== POST to examples/cgi-bin/echo.sh"
echo 'this body came back through cgi-fpm' | request echo.sh '' POST
echo
echo "=== a missing script"
request missing.sh '' || true
