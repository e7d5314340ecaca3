#!/usr/bin/env bash
# The one command that runs every test: starts (installing when missing) the services the
# integration tests need, builds every binary the tests run as real processes, then runs
# the whole workspace's tests with cargo-nextest (one process per test, a hung test is
# killed after 5 minutes: see .config/nextest.toml), the doc tests with cargo test, the
# install commands of README "Install" (scripts/check_install.sh) and a 30-second fuzzing
# smoke run of each fuzz target (scripts/fuzz.sh 30).
# Extra arguments go to `cargo nextest run` (e.g. a test name filter); with any, the doc
# tests, the install check and the fuzzing smoke run are skipped.
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
    bash scripts/check_install.sh
    bash scripts/fuzz.sh 30
fi
