#!/usr/bin/env bash
# bench/cluster.sh — the Redis Cluster next to a single Redis, in one run on this machine:
#   1. ingest throughput (bench/ingest-throughput.sh) with BENCH_REDIS=single, then =cluster,
#      BENCH_CLUSTER_RUNS times alternately: events/s, each target's own XADD ceiling
#      (redis-benchmark; --cluster on the cluster) and Redis CPU per event (every server
#      process: on the cluster all six nodes, replication included);
#   2. gateway fan-out (bench/gateway.sh, gateway only) on each: delivered events/s, latency
#      p50/p99 and gateway CPU per event per scenario, and the catch-up rate of one client
#      BENCH_BEHIND events behind (history pages, then the tail up to the live top);
# then the cluster / single ratios. The local cluster is 3 masters + 3 replicas on the same two
# cores as everything else, so it cannot show the cluster's scaling (more cores per shard):
# it shows what the cluster costs per event, and that nothing stalls on it. A measurement, not
# a test.
#
# Settings: BENCH_CLUSTER_RUNS (default 1), BENCH_EVENTS (ingest, default 300000),
# BENCH_SCENARIOS (gateway, default "1000x200 100x5000 100x20000"), BENCH_BEHIND (default
# 100000), BENCH_SECS (default 10). The defaults take about 8 minutes after the build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=../deploy/local/lib.sh
source deploy/local/lib.sh

RUNS="${BENCH_CLUSTER_RUNS:-1}"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_CLUSTER_RUNS must be a positive integer, not '$RUNS'"
export BENCH_SCENARIOS="${BENCH_SCENARIOS:-1000x200 100x5000 100x20000}"
export BENCH_IDLE=0 BENCH_SERVERS=gateway
deploy/local/services.sh up >/dev/null
out="$DASHSTREAM_STATE_DIR/bench-cluster-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
load_start="$(cut -d' ' -f1-3 /proc/loadavg)"

for ((run = 1; run <= RUNS; run++)); do
  for target in single cluster; do
    log "run $run/$RUNS: ingest throughput on the $target Redis"
    BENCH_REDIS="$target" bench/ingest-throughput.sh >"$out/ingest-$target-$run.txt"
  done
done
for target in single cluster; do
  log "gateway fan-out on the $target Redis"
  BENCH_REDIS="$target" BENCH_OUT="$out/gateway-$target.jsonl" bench/gateway.sh >"$out/gateway-$target.txt"
done

python3 - "$out" "$RUNS" "$load_start -> $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)" <<'PY'
import json, re, statistics, sys
out, runs, load = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def ingest(target):
    rows = []
    for r in range(1, runs + 1):
        text = open(f"{out}/ingest-{target}-{r}.txt").read()
        m = lambda pat: float(re.search(pat, text).group(1))
        rows.append((m(r"median ingest \(1 process\):\s+([0-9.]+)"),
                     m(r"median XADD ceiling:\s+([0-9.]+)"),
                     m(r"median CPU µs/event:\s+ingest [0-9.]+, redis ([0-9.]+)"),
                     m(r"median CPU µs/event:\s+ingest ([0-9.]+)")))
    return [statistics.median(c) for c in zip(*rows)]

def gateway(target):
    rows = [json.loads(l) for l in open(f"{out}/gateway-{target}.jsonl")]
    live = {r["scenario"]: r["result"] for r in rows if r["kind"] == "live"}
    catch = next((r["result"] for r in rows if r["kind"] == "catchup"), None)
    return live, catch

ratio = lambda a, b: f"{a / b:.2f}" if a and b else "-"
s, c = ingest("single"), ingest("cluster")
print(f"Redis Cluster vs single Redis, same machine, one run; load {load}; figures in {out}\n")
print("ingest (1 process, 12 partitions, 200-byte events):\n")
print("| | single | cluster | cluster / single |\n|---|---|---|---|")
for i, name in enumerate(["events/s", "XADD ceiling (redis-benchmark -P 32)", "Redis CPU µs/event", "ingest CPU µs/event"]):
    print(f"| {name} | {s[i]:.2f} | {c[i]:.2f} | {ratio(c[i], s[i])} |" if i >= 2 else
          f"| {name} | {s[i]:.0f} | {c[i]:.0f} | {ratio(c[i], s[i])} |")
print(f"| ingest / own XADD ceiling | {s[0] / s[1]:.3f} | {c[0] / c[1]:.3f} | |")

(ls, cs), (lc, cc) = gateway("single"), gateway("cluster")
g = lambda r, *k: (lambda v: v)(r.get(k[0], {}).get(k[1]) if len(k) == 2 else r.get(k[0]))
print("\ngateway (1 replica, 12 partitions):\n")
print("| scenario | events/s single | events/s cluster | ratio | p50 ms single / cluster | p99 ms single / cluster | CPU µs/event single / cluster |")
print("|---|---|---|---|---|---|---|")
for sc in ls:
    a, b = ls[sc], lc.get(sc, {})
    if "error" in a or "error" in b:
        print(f"| {sc} | {a.get('error', '')} | {b.get('error', '')} | | | | |")
        continue
    print(f"| {sc} | {a['events_per_second']:.0f} | {b['events_per_second']:.0f} | {ratio(b['events_per_second'], a['events_per_second'])} "
          f"| {g(a, 'latency_ms', 'p50'):.1f} / {g(b, 'latency_ms', 'p50'):.1f} "
          f"| {g(a, 'latency_ms', 'p99'):.1f} / {g(b, 'latency_ms', 'p99'):.1f} "
          f"| {g(a, 'server', 'cpu_us_per_event'):.2f} / {g(b, 'server', 'cpu_us_per_event'):.2f} |")
if cs and cc and "error" not in cs and "error" not in cc:
    print(f"\ncatch-up of one client {cs['events']} events behind: single {cs['events_per_second']:,.0f} events/s, "
          f"cluster {cc['events_per_second']:,.0f} events/s (ratio {ratio(cc['events_per_second'], cs['events_per_second'])})")
PY
