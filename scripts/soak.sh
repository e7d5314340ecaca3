#!/usr/bin/env bash
# The soak test: every connector in one pipeline graph under one engine, random SIGKILLs
# of the connectors and the engine, restarts of Redis and PostgreSQL (private instances the
# soak starts itself), then a drain and a check that nothing was lost.
#
#   bash scripts/soak.sh MINUTES
#
# Builds the engine, every connector and the soak driver (debug profile; SOAK_PROFILE=release
# for release binaries), starts the shared services (scripts/services.sh: Kafka, RabbitMQ,
# S3/Kinesis) and runs soak/ (see soak/src/main.rs). Prints one line at the end:
#   SOAK RESULT: minutes=.. messages_in=.. kills=.. restarts=.. lost=0 duplicates=..
# and exits non-zero if anything was lost. Knobs (environment): SOAK_RATE (records/s per
# source, 10), SOAK_KILL_SECS (10), SOAK_RESTART_SECS (120), SOAK_DRAIN_SECS (300),
# SOAK_DIR (logs; default /tmp/soak<pid>_<n>).
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=${1:?usage: scripts/soak.sh MINUTES}
PROFILE=${SOAK_PROFILE:-debug}
flag=()
[ "$PROFILE" = release ] && flag=(--release)

. scripts/services.sh

cargo build "${flag[@]}" -p soak -p engine -p udp-connectors -p stdio-connectors \
  -p kafka-connectors -p redis-connectors -p rabbitmq-connectors -p aws-connectors \
  -p postgres-connectors --bins

TARGET=${CARGO_TARGET_DIR:-target}
SOAK_BIN_DIR="$TARGET/$PROFILE" exec "$TARGET/$PROFILE/soak" "$MINUTES"
