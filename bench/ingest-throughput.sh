#!/usr/bin/env bash
# bench/ingest-throughput.sh — ingest throughput (events/s, 200-byte payloads, 12 partitions,
# one ingest process, release build) and, in the same run on the same Redis,
# `redis-benchmark -P 32 XADD` with a 200-byte field, plus their ratio and the CPU time per
# event of the ingest process, the Redis server and the Kafka broker.
#
# The topic is preloaded once, then each run starts a fresh ingest (own consumer group and key
# prefix) that drains it from the start; the rate is measured from the first to the last event
# written (read from the ingest's own /metrics), so group join time is not counted. CPU is
# utime+stime from /proc/<pid>/stat, sampled at the same two moments, divided by the events
# written in between. After each ingest run the XADD ceiling is measured on the same Redis, so
# the ingest and the reference alternate. A measurement, not a test: figures vary with the
# machine's load, compare the ratio. The load average at start and end is printed with the
# figures: other work on the machine shows there first.
#
# Settings:
#   BENCH_EVENTS      events preloaded and drained per run (default 300000)
#   BENCH_RUNS        ingest + XADD measurements, alternately (default 1); prints the median
#   BENCH_INGEST_BIN  ingest binary to measure (default target/release/ingest, built here)
#   INGEST_*          passed on to the ingest (e.g. INGEST_WRITE_BATCH_EVENTS)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=../deploy/local/lib.sh
source deploy/local/lib.sh

EVENTS="${BENCH_EVENTS:-300000}"
RUNS="${BENCH_RUNS:-1}"
[[ "$EVENTS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_EVENTS must be a positive integer, not '$EVENTS'"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNS must be a positive integer, not '$RUNS'"
log "building (release)"
cargo build --release --locked -p dashstream -p dashstream-ingest >&2
BIN=target/release
INGEST_BIN="${BENCH_INGEST_BIN:-$BIN/ingest}"
[[ -x "$INGEST_BIN" ]] || die "BENCH_INGEST_BIN: $INGEST_BIN is not an executable"
deploy/local/services.sh up >/dev/null
set -a
# shellcheck disable=SC1091
source "$(deploy/local/services.sh path)"
set +a
# shellcheck source=redis-target.sh
source bench/redis-target.sh

# The broker's pid, from the pid file deploy/local/kafka.sh keeps, checked against the process.
kafka_pidfile="$DASHSTREAM_STATE_DIR/kafka/kafka.pid"
pid_alive "$kafka_pidfile" "$DASHSTREAM_STATE_DIR/kafka/server.properties" ||
  die "no running Kafka broker in $kafka_pidfile"
kafka_pid="$(read_pid "$kafka_pidfile")"
CLK_TCK="$(getconf CLK_TCK)"

load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
run_id="bench-$(date +%s)-$$"
export KAFKA_TOPIC="$run_id"
groups=()
cleanup() {
  if [[ -n "${ingest_pid:-}" ]]; then
    kill "$ingest_pid" 2>/dev/null || true
    wait "$ingest_pid" 2>/dev/null || true
  fi
  bench_redis_del "$run_id*" || true
  deploy/local/kafka.sh topics --delete --topic "$run_id" >/dev/null 2>&1 || true
  deploy/local/kafka.sh topics --delete --topic "$run_id-dlq" >/dev/null 2>&1 || true
  if ((${#groups[@]})); then
    local args=() g
    for g in "${groups[@]}"; do args+=(--group "$g"); done
    deploy/local/kafka.sh tool org.apache.kafka.tools.consumer.group.ConsumerGroupCommand \
      --bootstrap-server "$KAFKA_BROKERS" --delete "${args[@]}" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$BIN/dashstream" provision --partitions 12 >&2
log "preloading $EVENTS events (200-byte payloads)"
"$BIN/dashstream" produce --count "$EVENTS" --rate 0 --payload-bytes 200 --threads 1000 >&2

# measure_window PORT: poll the ingest's /metrics (one kept-alive connection, more often as the
# end nears) until all $EVENTS are written; sample utime+stime of the ingest, Kafka and the
# Redis servers (summed) at the first and at the last poll. Prints: events seconds ingest_ticks
# redis_ticks kafka_ticks.
measure_window() {
  python3 - "$1" "$EVENTS" "$ingest_pid" "$kafka_pid" "${BENCH_REDIS_PIDS[@]}" <<'PY'
import http.client, os, sys, time
port, total, ingest, kafka, *redis = (int(a) for a in sys.argv[1:])
def one(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
def ticks():
    return [one(ingest), sum(one(p) for p in redis), one(kafka)]
pids = [ingest]
conn = None
def written():
    global conn
    try:
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
    except (OSError, http.client.HTTPException):
        conn = None
        return None
    for line in body.splitlines():
        if line.startswith("dashstream_ingest_events_written_total "):
            return int(float(line.split()[1]))
    return 0
deadline = time.monotonic() + 600
start = None
while True:
    n = written()
    now = time.monotonic()
    if n:
        if start is None:
            start = (n, now, ticks())
        if n >= total:
            end = ticks()
            break
    try:
        os.kill(pids[0], 0)
    except ProcessLookupError:
        sys.exit(f"ingest exited before writing all {total} events ({n or 0} written)")
    if now > deadline:
        sys.exit(f"ingest did not finish in time ({n or 0} of {total})")
    if start is None or n == start[0]:
        time.sleep(0.02)
    else:  # sleep about half the expected remaining time: the end is seen within ~5 ms
        rate = (n - start[0]) / (now - start[1])
        time.sleep(min(0.1, max(0.005, (total - n) / rate / 2)))
if n != total:
    sys.exit(f"ingest wrote {n} events, expected {total}")
print(total - start[0], now - start[1], *(e - s for e, s in zip(end, start[2])))
PY
}

# row EVENTS SECONDS INGEST_TICKS REDIS_TICKS KAFKA_TICKS XADD_RATE REDIS_XADD_TICKS: one run's
# figures: events/s XADD/s ratio ingest_us redis_us kafka_us redis_us_per_xadd events seconds.
row() {
  python3 - "$@" "$CLK_TCK" "$EVENTS" <<'PY'
import sys
n, secs, ti, tr, tk, xadd, txr, hz, total = (float(a) for a in sys.argv[1:])
us = lambda t, k: t / hz / k * 1e6
rate = n / secs
print(f"{rate:.0f} {xadd:.0f} {rate / xadd:.3f} {us(ti, n):.2f} {us(tr, n):.2f} {us(tk, n):.2f} {us(txr, total):.2f} {n:.0f} {secs:.3f}")
PY
}

field="$(head -c 200 /dev/zero | tr '\0' x)"
if [[ "$BENCH_REDIS" == cluster ]]; then
  xadd_cmd="redis-benchmark --cluster -p ${BENCH_REDIS_PORTS[0]} -P 32 -n $EVENTS -q XADD $run_id:xadd:{tag} '*' ev <200 bytes>"
else
  xadd_cmd="redis-benchmark -p ${BENCH_REDIS_PORTS[0]} -P 32 -n $EVENTS -q XADD $run_id:xadd '*' ev <200 bytes>"
fi
results=()
: >"$DASHSTREAM_STATE_DIR/bench-ingest.log" # this invocation's ingest logs, all runs
for ((run = 1; run <= RUNS; run++)); do
  KAFKA_GROUP_ID="$run_id-r$run"
  REDIS_KEY_PREFIX="$run_id-r$run"
  export KAFKA_GROUP_ID REDIS_KEY_PREFIX
  groups+=("$KAFKA_GROUP_ID")
  port="$(free_port)"
  bench_redis_quiet
  log "run $run/$RUNS: ingest ($INGEST_BIN) drains $EVENTS events"
  INGEST_LISTEN="127.0.0.1:$port" RUST_LOG=warn "$INGEST_BIN" 2>>"$DASHSTREAM_STATE_DIR/bench-ingest.log" &
  ingest_pid=$!
  window="$(measure_window "$port")" ||
    die "run $run: measurement failed (ingest log: $DASHSTREAM_STATE_DIR/bench-ingest.log)"
  read -r n secs ingest_ticks redis_ticks kafka_ticks <<<"$window"
  kill "$ingest_pid"
  wait "$ingest_pid" 2>/dev/null || true
  ingest_pid=""
  # Free the run's streams now (DEL, not UNLINK), so no freeing runs during the next measurement.
  bench_redis_del "$REDIS_KEY_PREFIX*"

  bench_redis_quiet
  log "run $run/$RUNS: $xadd_cmd"
  r0="$(bench_redis_ticks)"
  xadd_rate="$(bench_xadd_ceiling "$EVENTS" "$field" "$run_id:xadd")"
  r1="$(bench_redis_ticks)"
  [[ "$xadd_rate" =~ ^[0-9.]+$ ]] || die "run $run: redis-benchmark printed no rate"
  bench_redis_del "$run_id:xadd*"

  results+=("$(row "$n" "$secs" "$ingest_ticks" "$redis_ticks" "$kafka_ticks" "$xadd_rate" "$((r1 - r0))")")
  read -r rate xadd ratio cpu_i cpu_r cpu_k cpu_rx nw secs <<<"${results[-1]}"
  cat <<OUT
run $run/$RUNS
  ingest (1 process):          $rate events/s ($nw events in $secs s)
  CPU µs/event:                ingest $cpu_i, redis $cpu_r, kafka $cpu_k
  redis-benchmark -P 32 XADD:  $xadd XADD/s (redis $cpu_rx CPU µs/XADD)
  ratio ingest / raw XADD:     $ratio
OUT
done

settings="$(env | grep -E '^INGEST_' | sort | tr '\n' ' ' || true)"
load="$load_start -> $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"
python3 - "$EVENTS" "$RUNS" "$xadd_cmd" "$INGEST_BIN" "${settings:-defaults}" "$load" "$BENCH_REDIS_DESC" "${results[@]}" <<'PY'
import statistics, sys
events, runs, cmd, binary, settings, load, redis, *rows = sys.argv[1:]
rows = [r.split() for r in rows]
col = lambda i: [float(r[i]) for r in rows]
med = lambda i: statistics.median(col(i))
print(f"""
events:                      {events} per run (12 partitions, 200-byte payloads), {runs} run(s)
ingest:                      {binary} (1 process; {settings.strip()})
Redis:                       {redis}
XADD reference:              {cmd} (same Redis)
CPU per event:               utime+stime over the measured window / events written in it
                             (Redis: every server process, a cluster's replicas too)
load average (1/5/15 min):   {load}

run  events/s  XADD/s  ratio  ingest µs/ev  redis µs/ev  kafka µs/ev  redis µs/XADD""")
for i, r in enumerate(rows, 1):
    print(f"{i:>3}  {r[0]:>8}  {r[1]:>6}  {r[2]:>5}  {r[3]:>12}  {r[4]:>11}  {r[5]:>11}  {r[6]:>13}")
print(f"""
median ingest (1 process):   {med(0):.0f} events/s
median XADD ceiling:         {med(1):.0f} XADD/s
median CPU µs/event:         ingest {med(3):.2f}, redis {med(4):.2f}, kafka {med(5):.2f}
median ratio ingest / XADD:  {med(2):.3f}
Redis CPU per XADD / per event (the ratio if Redis is the limit; steadier under load): {statistics.median(x / e for x, e in zip(col(6), col(4))):.3f}""")
PY
