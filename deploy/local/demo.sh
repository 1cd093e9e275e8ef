#!/usr/bin/env bash
# deploy/local/demo.sh — brings the system up on this machine with a synthetic producer:
# installs what is missing, builds, starts Kafka and Redis, provisions the topics, starts two
# ingest processes in one consumer group, three gateways behind an nginx load balancer and a
# producer, and prints where to look (the live viewer, the WebSocket URL, the metrics).
# Ctrl-C stops everything it started.
#
# Settings (environment): DEMO_RATE (events/s, default 200), DEMO_PARTITIONS (default 12),
# KAFKA_TOPIC (default dashstream-events).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=lib.sh
source deploy/local/lib.sh

RATE="${DEMO_RATE:-200}"
PARTITIONS="${DEMO_PARTITIONS:-12}"
TOPIC="${KAFKA_TOPIC:-dashstream-events}"

ensure_apt_packages build-essential pkg-config libssl-dev zlib1g-dev cmake python3 curl
command -v cargo >/dev/null || die "cargo is not installed (Rust 1.85+ is required)"
log "building (release; the first build compiles librdkafka and takes a few minutes)"
cargo build --release --locked -p dashstream -p dashstream-ingest -p dashstream-gateway
BIN=target/release

started_services=0
deploy/local/services.sh status >/dev/null 2>&1 || started_services=1
deploy/local/services.sh up >/dev/null
set -a
# shellcheck disable=SC1091
source "$(deploy/local/services.sh path)"
set +a
export KAFKA_TOPIC="$TOPIC"

pids=()
cleanup() {
  trap - INT TERM EXIT
  log "stopping the demo"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if ((${started_lb:-0})); then deploy/local/lb.sh stop || true; fi
  if ((started_services)); then deploy/local/services.sh down >/dev/null 2>&1 || true; fi
  log "stopped"
}
trap cleanup INT TERM EXIT

"$BIN/dashstream" provision --partitions "$PARTITIONS"
logdir="$DASHSTREAM_STATE_DIR/demo"
mkdir -p "$logdir"
ports=()
for i in 1 2; do
  port="$(free_port)"
  ports+=("$port")
  INGEST_LISTEN="127.0.0.1:$port" INGEST_INSTANCE_ID="ingest-$i" \
    "$BIN/ingest" >"$logdir/ingest-$i.log" 2>&1 &
  pids+=("$!")
done
gw_ports=()
for i in 1 2 3; do
  port="$(free_port)"
  gw_ports+=("$port")
  GATEWAY_LISTEN="127.0.0.1:$port" GATEWAY_REPLICA_ID="gateway-$i" GATEWAY_TRUSTED_PROXIES=127.0.0.1 \
    "$BIN/gateway" >"$logdir/gateway-$i.log" 2>&1 &
  pids+=("$!")
done
lb_port="$(free_port)"
deploy/local/lb.sh start "$lb_port" "${gw_ports[@]/#/127.0.0.1:}"
started_lb=1
"$BIN/dashstream" produce --rate "$RATE" --threads 50 >"$logdir/producer.log" 2>&1 &
pids+=("$!")

cat <<INFO

DashStream demo is running (topic $TOPIC, $PARTITIONS partitions, $RATE events/s).
  Kafka:            $KAFKA_BROKERS
  Redis:            $REDIS_URL   (streams dashstream:$TOPIC:<partition>)
  ingest metrics:   http://127.0.0.1:${ports[0]}/metrics   http://127.0.0.1:${ports[1]}/metrics
  ingest readiness: http://127.0.0.1:${ports[0]}/readyz    http://127.0.0.1:${ports[1]}/readyz
  live viewer:      http://127.0.0.1:$lb_port/            (through the load balancer)
  WebSocket:        ws://127.0.0.1:$lb_port/ws?from=latest   (format=protobuf, tenant=, thread=, type= filters)
  gateway metrics:  $(for p in "${gw_ports[@]}"; do printf 'http://127.0.0.1:%s/metrics  ' "$p"; done)
  watch a stream:   redis-cli -u $REDIS_URL XREVRANGE dashstream:$TOPIC:0 + - COUNT 3
  logs:             $logdir
Press Ctrl-C to stop.
INFO
wait -n "${pids[@]}" || true
log "a demo process exited; see $logdir"
