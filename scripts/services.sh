#!/usr/bin/env bash
# Starts (installing when missing) every external service the integration tests use, on
# loopback, and waits until each answers. Safe to run again: a running service is left alone.
#
#   Redis       127.0.0.1:6379                      REDIS_URL
#   RabbitMQ    127.0.0.1:5672 guest/guest          AMQP_URL
#   PostgreSQL  127.0.0.1:5432 trust, db test       PG_URL
#   Kafka API   127.0.0.1:9092 (Tansu)              KAFKA_BROKERS (set it to use your own Kafka)
#   S3+Kinesis  127.0.0.1:5000 (moto server)        AWS_ENDPOINT_URL
#
# Source it (`. scripts/services.sh`) to get the variables exported, or run it.
set -euo pipefail

LOG_DIR=${SERVICES_LOG_DIR:-/tmp/connector-services}
mkdir -p "$LOG_DIR"
say() { echo "services: $*" >&2; }
die() { echo "services: ERROR: $*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds name
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    port_open "$1" && return 0
    sleep 0.1
  done
  die "$3 did not open port $1 within $2 s (log: $LOG_DIR)"
}

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null || die "cannot install $* (no apt-get); install it yourself"
  if [ "$APT_UPDATED" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || true
    APT_UPDATED=1
  fi
  say "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

start_redis() {
  export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
  if port_open 6379; then return; fi
  command -v redis-server >/dev/null || apt_install redis-server
  redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --logfile "$LOG_DIR/redis.log"
  wait_port 6379 10 redis
}

start_rabbitmq() {
  export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
  if port_open 5672; then return; fi
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  rabbitmq-server -detached >"$LOG_DIR/rabbitmq.log" 2>&1 || true
  timeout 60 rabbitmqctl await_startup >/dev/null 2>&1 || die "RabbitMQ did not start (see $LOG_DIR/rabbitmq.log)"
  wait_port 5672 30 rabbitmq
}

start_postgres() {
  export PG_URL=${PG_URL:-host=127.0.0.1 port=5432 user=postgres dbname=test}
  if ! port_open 5432; then
    if ls /etc/postgresql/*/main >/dev/null 2>&1 && command -v pg_ctlcluster >/dev/null; then
      pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    fi
  fi
  if ! port_open 5432; then
    command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install postgresql
    local bin
    bin=$(dirname "$(command -v initdb 2>/dev/null || ls /usr/lib/postgresql/*/bin/initdb | head -1)")
    local data=/tmp/connector-pgdata
    if [ ! -d "$data" ]; then
      mkdir -p "$data" && chown postgres "$data" 2>/dev/null || true
      su postgres -c "$bin/initdb -D $data --auth=trust -U postgres" >"$LOG_DIR/initdb.log" 2>&1 ||
        die "initdb failed (see $LOG_DIR/initdb.log)"
    fi
    su postgres -c "$bin/pg_ctl -D $data -l $LOG_DIR/postgres.log -o '-p 5432 -k /tmp -c listen_addresses=127.0.0.1' -w start" >/dev/null ||
      die "PostgreSQL did not start (see $LOG_DIR/postgres.log)"
  fi
  wait_port 5432 30 postgres
  psql "host=127.0.0.1 port=5432 user=postgres dbname=postgres" -qAtc "select 1 from pg_database where datname='test'" 2>/dev/null | grep -q 1 ||
    psql "host=127.0.0.1 port=5432 user=postgres dbname=postgres" -qc "create database test" >/dev/null
}

start_kafka() {
  if [ -n "${KAFKA_BROKERS:-}" ]; then return; fi
  export KAFKA_BROKERS=127.0.0.1:9092
  if port_open 9092; then return; fi
  if ! command -v tansu >/dev/null; then
    say "installing the Tansu Kafka-compatible broker with cargo (about 9 minutes, once)"
    cargo install tansu --locked --features dynostore,postgres >"$LOG_DIR/tansu-install.log" 2>&1 ||
      die "cargo install tansu failed (see $LOG_DIR/tansu-install.log)"
  fi
  nohup tansu broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/ >"$LOG_DIR/tansu.log" 2>&1 &
  wait_port 9092 30 tansu
}

start_moto() {
  export AWS_ENDPOINT_URL=${AWS_ENDPOINT_URL:-http://127.0.0.1:5000}
  export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-testing}
  export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-testing}
  export AWS_REGION=${AWS_REGION:-us-east-1}
  if port_open 5000; then return; fi
  local moto=moto_server
  if ! command -v moto_server >/dev/null; then
    local venv=${MOTO_VENV:-/opt/connector-moto}
    if [ ! -x "$venv/bin/moto_server" ]; then
      say "installing moto (S3 and Kinesis server) into $venv"
      python3 -m venv "$venv" || { apt_install python3-venv && python3 -m venv "$venv"; }
      "$venv/bin/pip" install -q 'moto[server]' >"$LOG_DIR/moto-install.log" 2>&1 ||
        die "pip install moto[server] failed (see $LOG_DIR/moto-install.log)"
    fi
    moto="$venv/bin/moto_server"
  fi
  nohup "$moto" -H 127.0.0.1 -p 5000 >"$LOG_DIR/moto.log" 2>&1 &
  wait_port 5000 30 moto
}

start_redis
start_rabbitmq
start_postgres
start_kafka
start_moto
say "ready: redis, rabbitmq, postgres, kafka ($KAFKA_BROKERS), s3/kinesis ($AWS_ENDPOINT_URL)"
