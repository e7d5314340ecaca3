#!/usr/bin/env bash
# Tests README "Install": installs every binary with scripts/install.sh --debug (cargo
# install --path per crate) into a temporary prefix, then runs each installed binary from
# outside the repository: `--help` must succeed and name the binary. Exits non-zero with the
# binary's name when one is missing or fails.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
bash scripts/install.sh --debug --prefix "$prefix"
expected=(engine celsius udp_source udp_sink stdin_source stdout_sink kafka_source kafka_sink
          redis_subscriber_source redis_stream_source redis_hash_sink redis_stream_sink
          rabbitmq_source rabbitmq_sink kinesis_source kinesis_sink s3_source s3_sink
          postgres_source postgres_sink)
cd /
for b in "${expected[@]}"; do
  [ -x "$prefix/bin/$b" ] || { echo "check_install: $b was not installed into $prefix/bin" >&2; exit 1; }
  out=$("$prefix/bin/$b" --help 2>&1) || { echo "check_install: $b --help failed: $out" >&2; exit 1; }
  case "$out" in
    *"$b"*|*Usage*|*usage*) ;;
    *) echo "check_install: $b --help printed no usage: $out" >&2; exit 1 ;;
  esac
done
echo "check_install: ${#expected[@]} binaries installed and answering --help" >&2
