#!/usr/bin/env bash
# The stateful Alerts example scaled out: N pairs (default 3) of
#   kafka_source -> alerts_stateful run -> kafka_sink
# in one Kafka consumer group, on this machine. Keyed state is scoped per partition
# (`state_scope = "stream"`) and checkpointed in S3 (`--checkpoint-store s3://...`), so a
# partition's running totals move with it when the group rebalances.
#
# Feeds COUNT transactions of USERS users (Kafka key = user) into topic `transactions`
# (8 partitions); half-way, stops the last pair cleanly (its partitions and their state move
# to the others); then prints how many alerts reached topic `alerts`, each pair's counts and
# the slices in the bucket, and stops everything it started.
#
#   bash examples/alerts_stateful/scale_out.sh [N]        # COUNT=100000 USERS=1000 KEEP=1
#
# Services (started, and installed the first time, by scripts/services.sh): the Kafka API on
# 127.0.0.1:9092 (Tansu; its `tansu topic` command creates the topics) and S3 on
# 127.0.0.1:5000 (moto). Topics are recreated, and the consumer group and the checkpoint
# prefix are new, on every run.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-3}
COUNT=${COUNT:-100000}
USERS=${USERS:-1000}
. scripts/services.sh # exports KAFKA_BROKERS, AWS_ENDPOINT_URL, AWS_* credentials
cargo build --release -q -p alerts_stateful -p kafka-connectors
BIN=${CARGO_TARGET_DIR:-target}/release
RUN=$(date +%s)
GROUP=alerts-$RUN
BUCKET=alerts-scale-out
STORE="s3://$BUCKET/run-$RUN?endpoint_url=$AWS_ENDPOINT_URL&region=$AWS_REGION"
WORK=$(mktemp -d)
declare -A PIDS=() # pair -> "source engine sink"

cleanup() {
    for i in "${!PIDS[@]}"; do kill ${PIDS[$i]} 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "logs in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# Topics and bucket. moto takes unsigned requests; on AWS, create the bucket with
# `aws s3 mb` (the engine never creates it).
for t in transactions alerts; do
    tansu topic delete --broker "tcp://$KAFKA_BROKERS" "$t" >/dev/null 2>&1 || true
    tansu topic create --broker "tcp://$KAFKA_BROKERS" --partitions 8 "$t" >/dev/null
done
curl -s -o /dev/null -X PUT "$AWS_ENDPOINT_URL/$BUCKET"

# Pair i: the template app.toml on ports 7300+10i / 7301+10i, with per-partition state;
# metrics on 9300+10i (sink), +1 (engine), +2 (source).
start_pair() {
    local i=$1 app=$WORK/app-$1.toml m=$((9300 + 10 * $1))
    { echo 'state_scope = "stream"'; sed -e "s/= 7300/= $((7300 + 10 * i))/" \
        -e "s/= 7301/= $((7301 + 10 * i))/" examples/alerts_stateful/app.toml; } >"$app"
    "$BIN/kafka_sink" --application-module "$app" --connector alerts --alerts-topic alerts \
        --alerts-bootstrap_brokers "$KAFKA_BROKERS" --metrics-addr "127.0.0.1:$m" 2>"$WORK/sink-$i.log" &
    local sink=$!
    "$BIN/alerts_stateful" run --application-module "$app" --checkpoint-store "$STORE" \
        --metrics-addr "127.0.0.1:$((m + 1))" 2>"$WORK/engine-$i.log" &
    local engine=$!
    "$BIN/kafka_source" --application-module "$app" --connector transactions \
        --transactions-topics transactions --transactions-consumer_group "$GROUP" \
        --transactions-bootstrap_brokers "$KAFKA_BROKERS" --metrics-addr "127.0.0.1:$((m + 2))" \
        2>"$WORK/source-$i.log" &
    PIDS[$i]="$! $engine $sink"
}

# engine_messages_total{direction="in"|"out"} of pair i's engine.
count() { curl -s "127.0.0.1:$((9301 + 10 * $1))/metrics" |
    awk -v d="$2" '$1 == "engine_messages_total{direction=\"" d "\"}" { n = $2 } END { print n + 0 }'; }

# Transactions FROM..TO-1 (the same ones on every run), written with the user as Kafka key.
# One record per batch: Tansu skips the rest of a batch when a new owner resumes inside it.
feed() {
    awk -v from="$1" -v to="$2" -v users="$USERS" 'BEGIN { srand(7); for (i = 0; i < to; i++) {
        u = "user" int(rand() * users); a = int(rand() * 2001) - 1000; if (i >= from) print u "\t" u "," a } }' |
        "$BIN/kafka_sink" --connector feed --from stdin --format kv --feed-topic transactions \
            --feed-bootstrap_brokers "$KAFKA_BROKERS" --feed-linger_ms 0 --feed-idempotence false \
            --feed-option batch.num.messages=1 --feed-option max.in.flight.requests.per.connection=100 \
            --stats-interval 0 2>>"$WORK/feed.log"
}

for i in $(seq 1 "$N"); do start_pair "$i"; done
echo "started $N pairs in consumer group $GROUP, checkpoints in ${STORE%%\?*}"
for _ in $(seq 300); do # until the group has settled: partitions assigned to every pair
    [ "$(grep -l 'assigned: starting' "$WORK"/source-*.log | wc -l)" -ge $((N < 8 ? N : 8)) ] && break
    sleep 0.1
done

feed 0 $((COUNT / 2))
STOPPED_IN=0 STOPPED_OUT=0
if [ "$N" -gt 1 ]; then # the last pair leaves: SIGTERM to its source (drain, EOS, final slices)
    read -r src engine sink <<<"${PIDS[$N]}"
    kill "$src" && wait "$src" || true
    STOPPED_IN=$(count "$N" in) STOPPED_OUT=$(count "$N" out)
    echo "pair $N stopped after $STOPPED_IN transactions: its partitions move to the others, with their state"
    kill "$engine" "$sink"; wait "$engine" "$sink" 2>/dev/null || true
    unset "PIDS[$N]"
fi
feed $((COUNT / 2)) "$COUNT"

# Done when the pairs have taken in every transaction and nothing more arrives for 3 s.
last=-1 same=0
while [ "$same" -lt 6 ]; do
    sleep 0.5
    total=$STOPPED_IN
    for i in "${!PIDS[@]}"; do total=$((total + $(count "$i" in))); done
    if [ "$total" -ge "$COUNT" ] && [ "$total" -eq "$last" ]; then same=$((same + 1)); else same=0; fi
    last=$total
done

echo "per pair (engine messages):"
emitted=$STOPPED_OUT
for i in $(seq 1 "$N"); do
    if [ -n "${PIDS[$i]:-}" ]; then
        echo "  pair $i: $(count "$i" in) transactions in, $(count "$i" out) alerts out"
        emitted=$((emitted + $(count "$i" out)))
    else
        echo "  pair $i: $STOPPED_IN transactions in, $STOPPED_OUT alerts out (stopped half-way)"
    fi
done
alerts=$(timeout 30 "$BIN/kafka_source" --connector peek --to stdout --peek-topics alerts \
    --peek-consumer_group "peek-$RUN" --peek-bootstrap_brokers "$KAFKA_BROKERS" --stats-interval 0 \
    2>/dev/null | grep -c -m "$emitted" Alert || true)
echo "$alerts alerts in topic alerts for $COUNT transactions of $USERS users (the engines emitted $emitted)"
echo "slices in s3://$BUCKET/run-$RUN/:"
curl -s "$AWS_ENDPOINT_URL/$BUCKET?list-type=2&prefix=run-$RUN/" | grep -o '<Key>[^<]*</Key>' |
    sed -e 's/<[^>]*>//g' -e 's/^/  /'
