#!/usr/bin/env bash
# The Celsius demo: builds, starts udp_sink, the celsius engine and udp_source on loopback,
# sends 0..99 Celsius over UDP, prints the 100 Fahrenheit values that come back (32, 33.8, ...)
# and stops everything it started. No external service needed.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -q -p celsius -p udp-connectors --bins
BIN=${CARGO_TARGET_DIR:-target}/debug
APP=examples/celsius/celsius.toml
LOGS=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$LOGS"; }
trap cleanup EXIT

"$BIN/udp_print" 127.0.0.1:6790 100 20 >"$LOGS/out" &
printer=$!
"$BIN/udp_sink" --application-module "$APP" --connector fahrenheit_conversion --stats-interval 0 2>"$LOGS/udp_sink.log" &
pids+=($!)
"$BIN/celsius" --application-module "$APP" --stats-interval 0 2>"$LOGS/celsius.log" &
pids+=($!)
RUST_LOG=info "$BIN/udp_source" --application-module "$APP" --connector celsius_feed --stats-interval 0 2>"$LOGS/udp_source.log" &
pids+=($!)
for _ in $(seq 100); do
  grep -q "connected to engine" "$LOGS/udp_source.log" 2>/dev/null && break
  sleep 0.1
done
grep -q "connected to engine" "$LOGS/udp_source.log" || { cat "$LOGS"/*.log >&2; echo "udp_source did not connect" >&2; exit 1; }
"$BIN/celsius_send" 127.0.0.1:6789 0 100
if wait "$printer"; then
  cat "$LOGS/out"
else
  cat "$LOGS/out"; cat "$LOGS"/*.log >&2
  echo "demo failed: not all 100 values came back" >&2
  exit 1
fi
