#!/usr/bin/env bash
# bench/gateway.sh — gateway figures on this machine (release builds, one gateway replica,
# one ingest, real Kafka and Redis), printed at the end:
#   1. delivered events/s and producer-to-client latency p50/p95/p99 with BENCH_CLIENTS (1000)
#      clients, while a producer writes BENCH_RATE (200) events/s of 200-byte payloads;
#   2. gateway RSS per idle connection at BENCH_IDLE (10000) connections;
#   3. catch-up rate of one client reading BENCH_BEHIND (100000) events from history.
# The load client (bench/ws-load) runs on the same 2 cores: figures are lower bounds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=../deploy/local/lib.sh
source deploy/local/lib.sh

CLIENTS="${BENCH_CLIENTS:-1000}"
RATE="${BENCH_RATE:-200}"
SECS="${BENCH_SECS:-30}"
IDLE="${BENCH_IDLE:-10000}"
BEHIND="${BENCH_BEHIND:-100000}"

log "building (release)"
cargo build --release --locked -p dashstream -p dashstream-ingest -p dashstream-gateway -p dashstream-ws-load >&2
BIN=target/release
deploy/local/services.sh up >/dev/null
set -a
# shellcheck disable=SC1091
source "$(deploy/local/services.sh path)"
set +a
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
redis_port="${REDIS_URL##*:}"
redis_port="${redis_port%%/*}"

run_id="bench-gw-$(date +%s)-$$"
export KAFKA_TOPIC="$run_id" KAFKA_GROUP_ID="$run_id" REDIS_KEY_PREFIX="$run_id" RUST_LOG=warn
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  redis-cli -p "$redis_port" --scan --pattern "$run_id*" | xargs -r redis-cli -p "$redis_port" del >/dev/null || true
  deploy/local/kafka.sh topics --delete --topic "$run_id" >/dev/null 2>&1 || true
  deploy/local/kafka.sh topics --delete --topic "$run_id-dlq" >/dev/null 2>&1 || true
}
trap cleanup EXIT

"$BIN/dashstream" provision --partitions 12 >&2
ingest_port="$(free_port)"
INGEST_LISTEN="127.0.0.1:$ingest_port" "$BIN/ingest" 2>"$DASHSTREAM_STATE_DIR/bench-gw-ingest.log" &
pids+=("$!")
gw_port="$(free_port)"
GATEWAY_LISTEN="127.0.0.1:$gw_port" GATEWAY_MAX_CONNECTIONS=30000 GATEWAY_MAX_CONNECTIONS_PER_IP=30000 \
  "$BIN/gateway" 2>"$DASHSTREAM_STATE_DIR/bench-gw-gateway.log" &
gw_pid=$!
pids+=("$gw_pid")
WS="ws://127.0.0.1:$gw_port/ws"

metric() { # name -> summed value on the given port
  curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 {s += $2} END {print s + 0}'
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$gw_pid/status"; }

log "warming up: one record per partition at least, and the gateway following every stream"
"$BIN/dashstream" produce --count 1200 --rate 0 --threads 1000 >&2
wait_for "12 partition streams" 60 bash -c "[[ \$(redis-cli -p $redis_port scard $run_id:$run_id:partitions) == 12 ]]"
wait_for "gateway ready" 30 curl -sf "http://127.0.0.1:$gw_port/readyz" -o /dev/null
sleep 3 # the gateway discovers new streams every 2 s

log "1) $CLIENTS live clients, producer at $RATE events/s for ${SECS}s"
"$BIN/ws-load" --url "$WS" live --clients "$CLIENTS" --duration-secs "$SECS" >"$DASHSTREAM_STATE_DIR/bench-live.json" &
load=$!
wait_for "$CLIENTS clients connected" 120 bash -c "(( \$(curl -s http://127.0.0.1:$gw_port/metrics | awk '/^dashstream_gateway_connected_clients /{print \$2}') >= $CLIENTS ))"
"$BIN/dashstream" produce --rate "$RATE" --duration-secs "$((SECS - 2))" --payload-bytes 200 --threads 200 >&2
wait "$load"
live="$(cat "$DASHSTREAM_STATE_DIR/bench-live.json")"

log "2) $IDLE idle connections"
wait_for "clients gone" 60 bash -c "(( \$(curl -s http://127.0.0.1:$gw_port/metrics | awk '/^dashstream_gateway_connected_clients /{print \$2}') == 0 ))"
rss0="$(rss_kib)"
"$BIN/ws-load" --url "$WS" idle --clients "$IDLE" --hold-secs 600 >/dev/null &
load=$!
pids+=("$load")
wait_for "$IDLE idle clients" 300 bash -c "(( \$(curl -s http://127.0.0.1:$gw_port/metrics | awk '/^dashstream_gateway_connected_clients /{print \$2}') >= $IDLE ))"
sleep 2
rss1="$(rss_kib)"
kill "$load" 2>/dev/null || true
per_conn="$(python3 -c "print(round(($rss1 - $rss0) / $IDLE, 1))")"

log "3) one client catching up $BEHIND events"
"$BIN/dashstream" produce --count "$BEHIND" --rate 0 --payload-bytes 200 --threads 1000 >&2
wait_for "ingest caught up" 300 bash -c "(( \$(curl -s http://127.0.0.1:$ingest_port/metrics | awk '/^dashstream_ingest_partition_lag/ {s += \$2} END {print s + 0}') == 0 ))"
total=0
for p in $(seq 0 11); do total=$((total + $(redis-cli -p "$redis_port" xlen "$run_id:$run_id:$p"))); done
catchup="$("$BIN/ws-load" --url "$WS" catchup --expect "$total")"

cat <<OUT
live:      $live
idle:      {"connections": $IDLE, "rss_before_kib": $rss0, "rss_after_kib": $rss1, "kib_per_connection": $per_conn}
catch-up:  $catchup
OUT
