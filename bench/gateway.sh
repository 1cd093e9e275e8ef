#!/usr/bin/env bash
# bench/gateway.sh — gateway fan-out figures on this machine, each next to the same figure of a
# trivial reference server (bench/broadcast-ref: one pre-encoded frame per Redis read, the same
# bytes written to every client) measured in the same run, on the same Redis, with the same
# producer, ingest and load client (bench/ws-load, which scans frames instead of parsing them).
# Release builds, one gateway replica, one ingest, real Kafka and Redis, 12 partitions,
# 200-byte payloads. Printed at the end, and kept as JSON lines in $BENCH_OUT:
#   1. per scenario CLIENTSxRATE (clients x producer events/s), for each server: delivered
#      events/s, producer-timestamp-to-client latency p50/p95/p99, server CPU per delivered
#      event (utime+stime from /proc/<pid>/stat over the measured window), bytes per event on
#      the wire (the server's bytes_sent_total / events_sent_total over the window), and the
#      gateway/reference ratios. The load client's own CPU per event is printed too;
#   2. RSS per idle connection at BENCH_IDLE connections, both servers;
#   3. catch-up: events/s of one client resuming BENCH_BEHIND events behind (gateway only: the
#      reference server has no resume).
# Servers are started for each measurement and stopped after it, so only one of them runs at a
# time; the gateway and the reference alternate scenario by scenario. Everything (Kafka, the
# JVM, ingest, producer, client) shares the 2 cores: the figures are lower bounds, compare the
# ratios. A measurement, not a test.
#
# Settings (environment):
#   BENCH_SCENARIOS     CLIENTSxRATE list (default "1000x200 100x1000 100x5000 100x10000 100x20000")
#   BENCH_SERVERS       servers measured per scenario (default "gateway ref")
#   BENCH_PRODUCER_LEAD_SECS  seconds the producer runs before the clients connect (default 2)
#   BENCH_WARMUP_SECS   seconds between the clients' connection and the window (default 3)
#   BENCH_SECS          length of each measured window (default 10)
#   BENCH_FORMAT        json or protobuf (default json)
#   BENCH_IDLE          idle connections for the RSS figure (default 10000; 0 skips it)
#   BENCH_BEHIND        events behind for the catch-up figure (default 100000; 0 skips it)
#   BENCH_GATEWAY_BIN   gateway binary to measure (default target/release/gateway, built here)
#   BENCH_OUT           JSON lines of every figure (default .local/bench-gateway-<time>.jsonl)
#   BENCH_LABEL         a note printed with the figures (e.g. which gateway build)
#   BENCH_REDIS         single (default) or cluster: the local Redis Cluster (bench/redis-target.sh);
#                       the reference server reads with one XREAD over every stream, which a
#                       cluster refuses, so on a cluster only the gateway is measured
#   GATEWAY_*           passed on to the gateway
# The defaults take about 3 minutes after the build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=../deploy/local/lib.sh
source deploy/local/lib.sh

SCENARIOS="${BENCH_SCENARIOS:-1000x200 100x1000 100x5000 100x10000 100x20000}"
if [[ "${BENCH_REDIS:-single}" == cluster ]]; then
  SERVERS="${BENCH_SERVERS:-gateway}"
  [[ " $SERVERS " != *" ref "* ]] || die "BENCH_SERVERS: the reference server cannot read a Redis Cluster (one XREAD over all slots)"
else
  SERVERS="${BENCH_SERVERS:-gateway ref}"
fi
WARMUP="${BENCH_WARMUP_SECS:-3}"
LEAD="${BENCH_PRODUCER_LEAD_SECS:-2}"
SECS="${BENCH_SECS:-10}"
FORMAT="${BENCH_FORMAT:-json}"
IDLE="${BENCH_IDLE:-10000}"
BEHIND="${BENCH_BEHIND:-100000}"
PARTITIONS=12
for s in $SCENARIOS; do
  [[ "$s" =~ ^[1-9][0-9]*x[1-9][0-9]*$ ]] || die "BENCH_SCENARIOS: '$s' is not CLIENTSxRATE"
done
for s in $SERVERS; do
  [[ "$s" == gateway || "$s" == ref ]] || die "BENCH_SERVERS: '$s' is neither gateway nor ref"
done
for v in WARMUP LEAD SECS IDLE BEHIND; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "the $v setting (BENCH_*) must be a whole number, not '${!v}'"
done
((SECS > 0)) || die "BENCH_SECS must be positive"
[[ "$FORMAT" == json || "$FORMAT" == protobuf ]] || die "BENCH_FORMAT must be json or protobuf"

log "building (release)"
pkgs=(-p dashstream -p dashstream-ingest -p dashstream-ws-load -p dashstream-broadcast-ref)
need_gateway=0
[[ " $SERVERS " == *" gateway "* ]] || ((BEHIND > 0)) && need_gateway=1
((need_gateway)) && [[ -z "${BENCH_GATEWAY_BIN:-}" ]] && pkgs+=(-p dashstream-gateway)
cargo build --release --locked "${pkgs[@]}" >&2
BIN=target/release
GATEWAY_BIN="${BENCH_GATEWAY_BIN:-$BIN/gateway}"
((need_gateway == 0)) || [[ -x "$GATEWAY_BIN" ]] || die "BENCH_GATEWAY_BIN: $GATEWAY_BIN is not an executable"
deploy/local/services.sh up >/dev/null
set -a
# shellcheck disable=SC1091
source "$(deploy/local/services.sh path)"
set +a
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
(($(ulimit -n) > IDLE + 1000)) || die "ulimit -n is $(ulimit -n): too low for BENCH_IDLE=$IDLE"
# shellcheck source=redis-target.sh
source bench/redis-target.sh

run_id="bench-gw-$(date +%s)-$$"
OUT="${BENCH_OUT:-$DASHSTREAM_STATE_DIR/bench-gateway-$(date +%Y%m%d-%H%M%S).jsonl}"
mkdir -p "$(dirname "$OUT")"
: >"$OUT"
logs="$DASHSTREAM_STATE_DIR/$run_id"
mkdir -p "$logs"
export KAFKA_TOPIC="$run_id" KAFKA_GROUP_ID="$run_id" REDIS_KEY_PREFIX="$run_id" RUST_LOG=warn
ingest_pid="" srv_pid="" prod_pid="" load_pid=""
cleanup() {
  for p in "$load_pid" "$prod_pid" "$srv_pid" "$ingest_pid"; do
    [[ -n "$p" ]] && kill "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  bench_redis_del "$run_id*" || true
  deploy/local/kafka.sh topics --delete --topic "$run_id" >/dev/null 2>&1 || true
  deploy/local/kafka.sh topics --delete --topic "$run_id-dlq" >/dev/null 2>&1 || true
}
trap cleanup EXIT

metric() { # port name -> summed value
  curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 {s += $2} END {print s + 0}'
}
connected() { # kind port -> connections the server holds
  case "$1" in
  gateway) metric "$2" dashstream_gateway_connected_clients ;;
  ref) metric "$2" broadcast_ref_connected_clients ;;
  esac
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
lag_zero() { (($(metric "$ingest_port" dashstream_ingest_partition_lag) == 0)); }
emit() { printf '%s\n' "$1" >>"$OUT"; }

start_server() { # kind -> srv_pid, srv_port
  srv_port="$(free_port)"
  case "$1" in
  gateway)
    GATEWAY_LISTEN="127.0.0.1:$srv_port" GATEWAY_MAX_CONNECTIONS=30000 GATEWAY_MAX_CONNECTIONS_PER_IP=30000 GATEWAY_MAX_PENDING_PER_IP=30000 GATEWAY_UPGRADE_RATE_PER_IP=0 \
      "$GATEWAY_BIN" 2>>"$logs/gateway.log" &
    srv_pid=$!
    WAIT_FOR_ABORT="kill -0 $srv_pid" wait_for "gateway ready" 60 curl -sf "http://127.0.0.1:$srv_port/readyz" -o /dev/null
    ;;
  ref)
    "$BIN/broadcast-ref" --listen "127.0.0.1:$srv_port" 2>>"$logs/broadcast-ref.log" &
    srv_pid=$!
    WAIT_FOR_ABORT="kill -0 $srv_pid" wait_for "reference server up" 30 curl -sf "http://127.0.0.1:$srv_port/metrics" -o /dev/null
    sleep 0.5 # it has followed the streams from their end by now
    ;;
  esac
}
stop_server() {
  kill -TERM "$srv_pid" 2>/dev/null || true
  wait "$srv_pid" 2>/dev/null || true
  srv_pid=""
}

"$BIN/dashstream" provision --partitions "$PARTITIONS" >&2
ingest_port="$(free_port)"
INGEST_LISTEN="127.0.0.1:$ingest_port" "$BIN/ingest" 2>"$logs/ingest.log" &
ingest_pid=$!

log "warming up: one record per partition at least"
"$BIN/dashstream" produce --count 1200 --rate 0 --threads 1000 >&2
partitions_written() { [[ "$(bench_redis scard "$run_id:{$run_id}:partitions")" == "$PARTITIONS" ]]; }
wait_for "$PARTITIONS partition streams" 60 partitions_written
host="$(uname -n) ($(nproc) cores, $(awk '/^model name/ {sub(/.*: /, ""); print; exit}' /proc/cpuinfo))"
emit "{\"kind\":\"run\",\"date\":\"$(date -u +%FT%TZ)\",\"commit\":\"$(git rev-parse --short HEAD 2>/dev/null || echo ?)\",\"gateway_bin\":\"$GATEWAY_BIN\",\"label\":\"${BENCH_LABEL:-}\",\"format\":\"$FORMAT\",\"redis\":\"$BENCH_REDIS\",\"host\":\"$host\",\"warmup_secs\":$WARMUP,\"secs\":$SECS,\"load_start\":$(cut -d' ' -f1 /proc/loadavg)}"

log "1) live scenarios: $SCENARIOS (servers: $SERVERS; ${WARMUP}s warm-up, ${SECS}s window)"
for sc in $SCENARIOS; do
  clients="${sc%x*}" rate="${sc#*x}"
  for kind in $SERVERS; do
    start_server "$kind"
    wait_for "ingest caught up" 120 lag_zero
    log "   $kind: $clients clients, $rate events/s"
    "$BIN/dashstream" produce --rate "$rate" --duration-secs $((LEAD + WARMUP + SECS + 300)) --payload-bytes 200 --threads 200 \
      >/dev/null 2>>"$logs/produce.log" &
    prod_pid=$!
    sleep "$LEAD" # the producer is connected and at its rate before the clients come
    res="$("$BIN/ws-load" --url "ws://127.0.0.1:$srv_port/ws" --format "$FORMAT" live --clients "$clients" \
      --warmup-secs "$WARMUP" --duration-secs "$SECS" --server-pid "$srv_pid" \
      --metrics-url "http://127.0.0.1:$srv_port/metrics" 2>>"$logs/ws-load.log")" || res='{"error":"ws-load failed"}'
    kill "$prod_pid" 2>/dev/null || true
    wait "$prod_pid" 2>/dev/null || true
    prod_pid=""
    stop_server
    emit "{\"kind\":\"live\",\"server\":\"$kind\",\"scenario\":\"$sc\",\"clients\":$clients,\"rate\":$rate,\"result\":$res}"
  done
done

if ((IDLE > 0)); then
  log "2) $IDLE idle connections (servers: $SERVERS)"
  for kind in $SERVERS; do
    start_server "$kind"
    sleep 2
    rss0="$(rss_kib "$srv_pid")"
    "$BIN/ws-load" --url "ws://127.0.0.1:$srv_port/ws" --format "$FORMAT" --connect-concurrency 100 idle \
      --clients "$IDLE" --hold-secs 600 >"$logs/idle-$kind.json" 2>>"$logs/ws-load.log" &
    load_pid=$!
    WAIT_FOR_ABORT="kill -0 $load_pid" wait_for "$IDLE idle clients on $kind" 300 \
      bash -c "(( \$(curl -s http://127.0.0.1:$srv_port/metrics | awk '/^(dashstream_gateway|broadcast_ref)_connected_clients /{print \$2}') >= $IDLE ))" || true
    sleep 2
    rss1="$(rss_kib "$srv_pid")"
    held="$(connected "$kind" "$srv_port")"
    kill "$load_pid" 2>/dev/null || true
    wait "$load_pid" 2>/dev/null || true
    load_pid=""
    stop_server
    per_conn="$(python3 -c "print(round(($rss1 - $rss0) / max($held, 1), 2))")"
    emit "{\"kind\":\"idle\",\"server\":\"$kind\",\"connections\":$held,\"rss_before_kib\":$rss0,\"rss_after_kib\":$rss1,\"kib_per_connection\":$per_conn}"
  done
fi

if ((BEHIND > 0)); then
  log "3) one client resuming $BEHIND events behind (gateway)"
  start_server gateway
  wait_for "ingest caught up" 120 lag_zero
  sleep 1
  cursor="$("$BIN/ws-load" --url "ws://127.0.0.1:$srv_port/ws" cursor)"
  "$BIN/dashstream" produce --count "$BEHIND" --rate 0 --payload-bytes 200 --threads 1000 >/dev/null 2>>"$logs/produce.log"
  sleep 1
  wait_for "ingest caught up" 300 lag_zero
  sleep 1
  res="$("$BIN/ws-load" --url "ws://127.0.0.1:$srv_port/ws" --format "$FORMAT" catchup --from "$cursor" \
    --expect "$BEHIND" --server-pid "$srv_pid" 2>>"$logs/ws-load.log")" || res='{"error":"ws-load failed"}'
  stop_server
  emit "{\"kind\":\"catchup\",\"server\":\"gateway\",\"behind\":$BEHIND,\"result\":$res}"
fi

emit "{\"kind\":\"end\",\"date\":\"$(date -u +%FT%TZ)\",\"load_end\":$(cut -d' ' -f1 /proc/loadavg)}"
log "figures: $OUT (logs: $logs)"
python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
run = rows[0]
print(f"gateway fan-out, {run['date']}, commit {run['commit']}, {run['host']}, format={run['format']}, "
      f"redis={run.get('redis', 'single')}, "
      f"window {run['secs']}s after {run['warmup_secs']}s warm-up, gateway {run['gateway_bin']}"
      + (f" ({run['label']})" if run.get("label") else ""))
end = next((r for r in rows if r["kind"] == "end"), None)
if end and "load_start" in run:
    print(f"load average (1 min): {run['load_start']} at the start, {end['load_end']} at the end ({end['date']})")
live = {}
for r in rows:
    if r["kind"] == "live":
        live.setdefault(r["scenario"], {})[r["server"]] = r["result"]
def g(d, *ks):
    for k in ks:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d
def f(x, nd=1):
    return "-" if x is None else (f"{x:,.0f}" if nd == 0 else f"{x:,.{nd}f}")
def ratio(a, b):
    return "-" if a is None or b in (None, 0) else f"{a / b:.2f}"
hdr = ("scenario", "server", "events/s", "per client", "ev/frame", "p50 ms", "p95 ms", "p99 ms",
       "srv us/ev", "srv cores", "B/ev", "client us/ev")
print("\n| " + " | ".join(hdr) + " |\n|" + "---|" * len(hdr))
for sc, by in live.items():
    for srv in ("gateway", "ref"):
        r = by.get(srv)
        if r is None:
            continue
        if "error" in r:
            print(f"| {sc} | {srv} | {r['error']} |")
            continue
        print("| " + " | ".join([sc, srv, f(r["events_per_second"], 0), f(r["per_client_events_per_second"], 0),
              f(r["events_per_frame"], 1), f(g(r, "latency_ms", "p50"), 1), f(g(r, "latency_ms", "p95"), 1),
              f(g(r, "latency_ms", "p99"), 1), f(g(r, "server", "cpu_us_per_event"), 2), f(g(r, "server", "cores"), 2),
              f(g(r, "server", "bytes_per_event"), 0), f(g(r, "client", "cpu_us_per_event"), 2)]) + " |")
pairs = [(sc, by["gateway"], by["ref"]) for sc, by in live.items()
         if "error" not in by.get("gateway", {"error": 1}) and "error" not in by.get("ref", {"error": 1})]
if pairs:
    print("\ngateway / reference:\n\n| scenario | events/s | p50 | p95 | p99 | CPU per event | bytes per event |\n|---|---|---|---|---|---|---|")
for sc, a, b in pairs:
    print("| " + " | ".join([sc, ratio(a["events_per_second"], b["events_per_second"]),
          ratio(g(a, "latency_ms", "p50"), g(b, "latency_ms", "p50")), ratio(g(a, "latency_ms", "p95"), g(b, "latency_ms", "p95")),
          ratio(g(a, "latency_ms", "p99"), g(b, "latency_ms", "p99")),
          ratio(g(a, "server", "cpu_us_per_event"), g(b, "server", "cpu_us_per_event")),
          ratio(g(a, "server", "bytes_per_event"), g(b, "server", "bytes_per_event"))]) + " |")
anom = [(sc, s, r) for sc, by in live.items() for s, r in by.items()
        if "error" not in r and (r["out_of_order"] or r["gap_frames"] or r["clients_closed_early"] or r["connect_failures"])]
for sc, s, r in anom:
    print(f"note: {sc} {s}: out_of_order={r['out_of_order']} gap_frames={r['gap_frames']} "
          f"closed_early={r['clients_closed_early']} connect_failures={r['connect_failures']}")
idle = {r["server"]: r for r in rows if r["kind"] == "idle"}
if idle:
    print()
    for s, r in idle.items():
        print(f"idle {s}: {r['connections']} connections, RSS {r['rss_before_kib']} -> {r['rss_after_kib']} KiB, "
              f"{r['kib_per_connection']} KiB per connection")
for r in rows:
    if r["kind"] == "catchup":
        c = r["result"]
        if "error" in c:
            print(f"catch-up: {c['error']}")
        else:
            print(f"catch-up (gateway): {c['events']} events behind in {c['seconds']} s = {c['events_per_second']:,.0f} events/s, "
                  f"{c['events_per_frame']} events/frame, server {c['server_cpu_us_per_event']} us/event, "
                  f"client {c['client_cpu_us_per_event']} us/event, gap frames {c['gap_frames']}")
PY
