#!/usr/bin/env bash
# The one command that runs every test: starts (installing when missing) the services the
# integration tests need, builds every binary the tests run as real processes, then runs
# the whole workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
cargo build --workspace --bins
cargo test --workspace "$@"
