#!/usr/bin/env bash
# The one command that runs every test: starts (installing when missing) the services the
# integration tests need, builds every binary the tests run as real processes, then runs
# the whole workspace's tests with cargo-nextest (one process per test, a hung test is
# killed after 5 minutes: see .config/nextest.toml) and the doc tests with cargo test.
# Extra arguments go to `cargo nextest run` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "test: installing cargo-nextest (once)" >&2
    cargo install cargo-nextest --locked
fi
cargo build --workspace --bins
cargo nextest run --workspace "$@"
if [ $# -eq 0 ]; then
    cargo test --workspace --doc
fi
