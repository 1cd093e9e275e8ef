#!/usr/bin/env bash
# tests/browser/run.sh — runs the viewer test (viewer.test.mjs) in headless Chromium against a
# real stack: Kafka + Redis (deploy/local/services.sh), one ingest, three gateways behind the
# nginx load balancer, and a producer. Installs Chromium (Debian) and playwright-core (npm).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=../../deploy/local/lib.sh
source deploy/local/lib.sh

[[ -x /usr/bin/chromium ]] || ensure_apt_packages chromium
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error >&2)
cargo build --locked -p dashstream -p dashstream-ingest -p dashstream-gateway >&2
BIN=target/debug
deploy/local/services.sh up >/dev/null
set -a
# shellcheck disable=SC1091
source "$(deploy/local/services.sh path)"
set +a

run_id="browser-$$-$RANDOM"
export KAFKA_TOPIC="$run_id" KAFKA_GROUP_ID="$run_id" REDIS_KEY_PREFIX="$run_id" RUST_LOG=warn
logdir="$DASHSTREAM_STATE_DIR/$run_id"
mkdir -p "$logdir"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  deploy/local/lb.sh stop >/dev/null 2>&1 || true
  deploy/local/kafka.sh topics --delete --topic "$run_id" >/dev/null 2>&1 || true
  deploy/local/kafka.sh topics --delete --topic "$run_id-dlq" >/dev/null 2>&1 || true
}
trap cleanup EXIT

"$BIN/dashstream" provision --partitions 4 >&2
INGEST_LISTEN="127.0.0.1:$(free_port)" "$BIN/ingest" 2>"$logdir/ingest.log" &
pids+=("$!")
"$BIN/dashstream" produce --rate 100 --threads 20 --duration-secs 300 >"$logdir/producer.log" 2>&1 &
pids+=("$!")
upstreams=()
gateway_pids="{"
for i in 1 2 3; do
  port="$(free_port)"
  GATEWAY_LISTEN="127.0.0.1:$port" GATEWAY_REPLICA_ID="$run_id-g$i" GATEWAY_TRUSTED_PROXIES=127.0.0.1 \
    "$BIN/gateway" 2>"$logdir/gateway-$i.log" &
  pids+=("$!")
  gateway_pids+="\"$run_id-g$i\": $!,"
  upstreams+=("127.0.0.1:$port")
  wait_for "gateway $i ready" 60 curl -sf "http://127.0.0.1:$port/readyz" -o /dev/null
done
gateway_pids="${gateway_pids%,}}"
lb_port="$(free_port)"
deploy/local/lb.sh start "$lb_port" "${upstreams[@]}"

LB_URL="http://127.0.0.1:$lb_port/" GATEWAY_PIDS="$gateway_pids" SCREENSHOT="$logdir/viewer.png" \
  node --test tests/browser/viewer.test.mjs
