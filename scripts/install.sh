#!/usr/bin/env bash
# Builds the engine and every connector binary in release mode and installs them into
# PREFIX/bin (default ~/.local), with `cargo install --path` for each crate: the same
# command a user runs for one connector (`cargo install --path connectors/kafka`).
#
#   scripts/install.sh [--prefix DIR] [--debug] [CRATE_DIR...]
#
# CRATE_DIR defaults to the engine, every connector crate and the Celsius demo.
# --debug builds with the dev profile instead (fast; what the test command uses).
# Needs the C toolchain the Kafka connector builds librdkafka with (gcc, make, cmake is not
# needed) and, for the AWS connectors, nothing more; see README "Install".
set -euo pipefail
cd "$(dirname "$0")/.."

prefix="${HOME}/.local"
profile=()
crates=()
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
    --prefix=*) prefix="${1#--prefix=}"; shift ;;
    --debug) profile=(--debug); shift ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "install: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) crates+=("$1"); shift ;;
  esac
done
if [ ${#crates[@]} -eq 0 ]; then
  crates=(engine connectors/udp connectors/stdio connectors/kafka connectors/redis
          connectors/rabbitmq connectors/aws connectors/postgres examples/celsius)
fi

for crate in "${crates[@]}"; do
  [ -f "$crate/Cargo.toml" ] || { echo "install: $crate has no Cargo.toml" >&2; exit 2; }
  echo "install: $crate -> $prefix/bin" >&2
  cargo install --quiet --locked --force "${profile[@]}" --root "$prefix" --path "$crate"
done
echo "install: done; add $prefix/bin to PATH" >&2
