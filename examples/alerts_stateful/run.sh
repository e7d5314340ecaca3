#!/usr/bin/env bash
# Builds and runs the stateful Alerts example on loopback: a sink that prints the alerts,
# the engine with checkpoints in a temporary resilience directory, and the generator
# source (USERS users, COUNT transactions). Prints the first alerts, then stops everything
# it started.
set -euo pipefail
cd "$(dirname "$0")/../.."
USERS=${USERS:-100}
COUNT=${COUNT:-20000}
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p alerts_stateful
BIN="$TARGET/release/alerts_stateful"
APP=examples/alerts_stateful/app.toml
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN" print-sink --application-module "$APP" > "$WORK/alerts.txt" &
PIDS+=($!)
"$BIN" run --application-module "$APP" --resilience-dir "$WORK/resilience" --stats-interval 0 &
PIDS+=($!)
"$BIN" generate --application-module "$APP" --users "$USERS" --count "$COUNT"
sleep 0.2
echo "first alerts:"
head -n 10 "$WORK/alerts.txt"
echo "... $(wc -l < "$WORK/alerts.txt") alerts for $COUNT transactions of $USERS users"
