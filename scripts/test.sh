#!/bin/sh
# Run every test: install missing test dependencies, then lint and the whole suite.
set -eu
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
