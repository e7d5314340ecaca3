#!/usr/bin/env bash
# Fuzzes the wire-protocol decoders and the application-file loader with libFuzzer, on the
# stable toolchain (no nightly, no cargo-fuzz): the targets of framing/fuzz are built with
# LLVM's sanitizer-coverage instrumentation passed in RUSTFLAGS (what cargo-fuzz passes,
# minus its nightly-only -Zsanitizer), linked against libFuzzer from the libfuzzer-sys crate
# (fetched from crates.io by cargo on the first build), into their own target directory
# target/fuzz (different flags, so the workspace's builds are left alone).
#
#   scripts/fuzz.sh SECONDS [TARGET...]
#
# runs each TARGET (default: all of protocol, plain, application) for SECONDS, one after the
# other, and prints per target the executions, executions per second and coverage. Each
# target starts from its seed corpus (framing/fuzz/corpus/TARGET, committed: the spec's
# worked example and the repo's example application files) plus what earlier runs found
# (target/fuzz/corpus/TARGET, where new inputs are written). A crash, panic, failed
# invariant, timeout (10 s for one input) or out-of-memory stops that target: its input is
# saved under framing/fuzz/artifacts/TARGET/, the end of its log is printed, and the script
# exits non-zero after running the remaining targets. Replay a saved input with
#   target/fuzz/x86_64-unknown-linux-gnu/release/TARGET framing/fuzz/artifacts/TARGET/crash-...
# Full logs: target/fuzz/logs/TARGET.log. scripts/test.sh runs `scripts/fuzz.sh 30`.
set -euo pipefail
cd "$(dirname "$0")/.."

usage="usage: scripts/fuzz.sh SECONDS [TARGET...]  (targets: protocol plain application)"
if [ $# -lt 1 ]; then
    echo "$usage" >&2
    exit 2
fi
secs=$1
shift
case $secs in
    '' | *[!0-9]*) echo "$usage" >&2; exit 2 ;;
esac
all=(protocol plain application)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=("${all[@]}")
fi
for t in "${targets[@]}"; do
    case " ${all[*]} " in
        *" $t "*) ;;
        *) echo "fuzz: unknown target '$t'; $usage" >&2; exit 2 ;;
    esac
done

host=$(rustc -vV | sed -n 's/^host: //p')
out=target/fuzz
fuzz=framing/fuzz

# --target keeps the instrumentation off build scripts and proc macros (serde_derive).
unset CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares"
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
echo "fuzz: building ${targets[*]} (release, sanitizer-coverage) into $out" >&2
cargo build --quiet --release --manifest-path "$fuzz/Cargo.toml" --target "$host" \
    --target-dir "$out" "${bins[@]}"

mkdir -p "$out/logs"
failed=()
printf '%-12s %14s %10s %8s %8s  %s\n' target executions exec/s cov corpus result
for t in "${targets[@]}"; do
    corpus="$out/corpus/$t"
    artifacts="$fuzz/artifacts/$t"
    log="$out/logs/$t.log"
    mkdir -p "$corpus" "$artifacts"
    extra=()
    if [ -f "$fuzz/$t.dict" ]; then
        extra+=("-dict=$fuzz/$t.dict")
    fi
    rc=0
    "$out/$host/release/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" "${extra[@]}" \
        "$corpus" "$fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
    # The last progress line ("#N ... cov: C ft: F corp: K/...") when the run ended early.
    last=$(grep -E '^#[0-9]+' "$log" | tail -n1 || true)
    [ -n "$execs" ] || execs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$last")
    [ -n "$rate" ] || rate=$(sed -nE 's/.*exec\/s: ([0-9]+).*/\1/p' <<<"$last")
    cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
    corp=$(sed -nE 's/.* corp: ([0-9]+).*/\1/p' <<<"$last")
    if [ "$rc" -eq 0 ]; then
        result=ok
    else
        result="FAILED (exit $rc)"
        failed+=("$t")
    fi
    printf '%-12s %14s %10s %8s %8s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" \
        "${corp:-?}" "$result"
    if [ "$rc" -ne 0 ]; then
        echo "---- $t: end of $log" >&2
        tail -n 40 "$log" >&2
        echo "---- $t: saved inputs in $artifacts/:" >&2
        ls -l "$artifacts" >&2
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]} (inputs in $fuzz/artifacts/)" >&2
    exit 1
fi
