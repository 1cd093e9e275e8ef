#!/usr/bin/env bash
# bench/ingest-throughput.sh — ingest throughput (events/s, 200-byte payloads, 12 partitions,
# one ingest process, release build) and, in the same run on the same Redis,
# `redis-benchmark -P 32 XADD` with a 200-byte field, plus their ratio.
#
# The topic is preloaded first, then one ingest drains it; the rate is measured from the
# first to the last event written (read from the ingest's own /metrics), so group join time
# is not counted. A measurement, not a test: figures vary with the machine's load, compare
# the ratio.
#
# Settings: BENCH_EVENTS (default 300000).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=../deploy/local/lib.sh
source deploy/local/lib.sh

EVENTS="${BENCH_EVENTS:-300000}"
log "building (release)"
cargo build --release --locked -p dashstream -p dashstream-ingest >&2
BIN=target/release
deploy/local/services.sh up >/dev/null
set -a
# shellcheck disable=SC1091
source "$(deploy/local/services.sh path)"
set +a
redis_port="${REDIS_URL##*:}"
redis_port="${redis_port%%/*}"

run_id="bench-$(date +%s)-$$"
export KAFKA_TOPIC="$run_id" KAFKA_GROUP_ID="$run_id" REDIS_KEY_PREFIX="$run_id"
cleanup() {
  [[ -n "${ingest_pid:-}" ]] && kill "$ingest_pid" 2>/dev/null || true
  redis-cli -p "$redis_port" --scan --pattern "$run_id*" | xargs -r redis-cli -p "$redis_port" del >/dev/null || true
  deploy/local/kafka.sh topics --delete --topic "$run_id" >/dev/null 2>&1 || true
  deploy/local/kafka.sh topics --delete --topic "$run_id-dlq" >/dev/null 2>&1 || true
}
trap cleanup EXIT

"$BIN/dashstream" provision --partitions 12 >&2
log "preloading $EVENTS events (200-byte payloads)"
"$BIN/dashstream" produce --count "$EVENTS" --rate 0 --payload-bytes 200 --threads 1000 >&2

port="$(free_port)"
INGEST_LISTEN="127.0.0.1:$port" RUST_LOG=warn "$BIN/ingest" 2>"$DASHSTREAM_STATE_DIR/bench-ingest.log" &
ingest_pid=$!
written() {
  curl -s "http://127.0.0.1:$port/metrics" 2>/dev/null |
    awk '/^dashstream_ingest_events_written_total /{print $2}'
}
now() { date +%s.%N; }
t0="" n0=0
deadline=$(($(date +%s) + 600))
while :; do
  n="$(written)"
  n="${n:-0}"
  if [[ -z "$t0" && "$n" != 0 ]]; then t0="$(now)" n0="$n"; fi
  if [[ "$n" == "$EVENTS" ]]; then t1="$(now)"; break; fi
  (($(date +%s) < deadline)) || die "ingest did not finish in time ($n of $EVENTS)"
  sleep 0.05
done
kill "$ingest_pid"
wait "$ingest_pid" 2>/dev/null || true
ingest_pid=""
ingest_rate="$(python3 -c "print(round(($EVENTS - $n0) / ($t1 - $t0)))")"

log "redis-benchmark -P 32 XADD (same Redis, 200-byte field)"
field="$(head -c 200 /dev/zero | tr '\0' x)"
rb="$(redis-benchmark -p "$redis_port" -P 32 -n "$EVENTS" -q XADD "$run_id:xadd" '*' ev "$field" 2>/dev/null | tr '\r' '\n' | grep -E 'requests per second' | tail -1)"
xadd_rate="$(sed -E 's/.*: ([0-9.]+) requests per second.*/\1/' <<<"$rb")"
ratio="$(python3 -c "print(f'{$ingest_rate / $xadd_rate:.3f}')")"

cat <<OUT
events:                      $EVENTS (12 partitions, 200-byte payloads)
ingest (1 process):          $ingest_rate events/s
redis-benchmark -P 32 XADD:  $xadd_rate XADD/s
ratio ingest / raw XADD:     $ratio
OUT
