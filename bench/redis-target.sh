#!/usr/bin/env bash
# bench/redis-target.sh — the Redis a benchmark measures against, sourced by
# bench/ingest-throughput.sh and bench/gateway.sh after services.env is loaded:
#   BENCH_REDIS=single   the local single Redis (deploy/local/redis.sh), the default
#   BENCH_REDIS=cluster  the local Redis Cluster (deploy/local/redis-cluster.sh: 3 masters and
#                        3 replicas on the same cores)
# Sets REDIS_URL (exported, for the processes measured), BENCH_REDIS_DESC (printed with the
# figures), BENCH_REDIS_PORTS and BENCH_REDIS_PIDS (every server process: on a cluster all six
# nodes, replicas too, since replication is part of a write's cost), and defines:
#   bench_redis ARGS...           redis-cli on the target (-c on a cluster: follows MOVED)
#   bench_redis_del PATTERN       delete every key matching PATTERN (one DEL per key on a
#                                 cluster, where keys of different slots cannot share one)
#   bench_redis_ticks             utime+stime of all the server processes, in clock ticks
#   bench_redis_quiet             wait (up to 5 min) until no server runs an AOF rewrite or an
#                                 RDB save, whose fork and CPU would fall into a measurement
#   bench_xadd_ceiling N FIELD KEY  redis-benchmark -P 32 -n N XADD KEY * ev FIELD on the
#                                 target, prints the requests per second; on a cluster with
#                                 --cluster and the key KEY:{tag}, which redis-benchmark makes
#                                 one key per master (delete them with bench_redis_del 'KEY*')
# shellcheck shell=bash disable=SC2034

BENCH_REDIS="${BENCH_REDIS:-single}"
BENCH_REDIS_PORTS=()
BENCH_REDIS_PIDS=()
case "$BENCH_REDIS" in
single)
  _port="${REDIS_URL##*:}"
  BENCH_REDIS_PORTS=("${_port%%/*}")
  _pidfile="$DASHSTREAM_STATE_DIR/redis/redis.pid"
  pid_alive "$_pidfile" redis-server || die "no running Redis in $_pidfile"
  BENCH_REDIS_PIDS=("$(read_pid "$_pidfile")")
  BENCH_REDIS_DESC="single Redis (127.0.0.1:${BENCH_REDIS_PORTS[0]})"
  ;;
cluster)
  [[ -n "${REDIS_CLUSTER_URL:-}" && -n "${REDIS_CLUSTER_PORTS:-}" ]] ||
    die "BENCH_REDIS=cluster: no REDIS_CLUSTER_URL in services.env (deploy/local/services.sh up)"
  deploy/local/redis-cluster.sh wait-ok 60 >/dev/null
  REDIS_URL="$REDIS_CLUSTER_URL"
  IFS=',' read -r -a BENCH_REDIS_PORTS <<<"$REDIS_CLUSTER_PORTS"
  for _port in "${BENCH_REDIS_PORTS[@]}"; do
    _pidfile="$DASHSTREAM_STATE_DIR/redis-cluster/$_port/redis.pid"
    pid_alive "$_pidfile" redis-server || die "no running cluster node in $_pidfile"
    BENCH_REDIS_PIDS+=("$(read_pid "$_pidfile")")
  done
  BENCH_REDIS_DESC="Redis Cluster, 3 masters + 3 replicas (127.0.0.1:${REDIS_CLUSTER_PORTS//,/,127.0.0.1:})"
  ;;
*) die "BENCH_REDIS must be single or cluster, not '$BENCH_REDIS'" ;;
esac
export REDIS_URL
# Each pid must be the server answering on its port.
for _i in "${!BENCH_REDIS_PORTS[@]}"; do
  _served_by="$(redis-cli -p "${BENCH_REDIS_PORTS[_i]}" info server | tr -d '\r' | sed -n 's/^process_id://p')"
  [[ "$_served_by" == "${BENCH_REDIS_PIDS[_i]}" ]] ||
    die "Redis on port ${BENCH_REDIS_PORTS[_i]} is pid ${_served_by:-?}, not ${BENCH_REDIS_PIDS[_i]} (its pid file)"
done
unset _port _pidfile _served_by _i

bench_redis() {
  if [[ "$BENCH_REDIS" == cluster ]]; then
    redis-cli -c -p "${BENCH_REDIS_PORTS[0]}" "$@"
  else
    redis-cli -p "${BENCH_REDIS_PORTS[0]}" "$@"
  fi
}

bench_redis_del() {
  local p
  if [[ "$BENCH_REDIS" == single ]]; then
    redis-cli -p "${BENCH_REDIS_PORTS[0]}" --scan --pattern "$1" | xargs -r redis-cli -p "${BENCH_REDIS_PORTS[0]}" del >/dev/null
    return
  fi
  # Every node holds (or replicates) some of the keys: -c sends each DEL to its master.
  for p in "${BENCH_REDIS_PORTS[@]}"; do
    redis-cli -p "$p" --scan --pattern "$1" | xargs -r -n 1 redis-cli -c -p "$p" del >/dev/null
  done
}

bench_redis_ticks() {
  local pid stat f sum=0
  for pid in "${BENCH_REDIS_PIDS[@]}"; do
    stat="$(<"/proc/$pid/stat")"
    read -r -a f <<<"${stat##*) }"
    sum=$((sum + f[11] + f[12]))
  done
  printf '%s\n' "$sum"
}

bench_redis_quiet() {
  local i p busy
  for ((i = 0; i < 300; i++)); do
    busy=0
    for p in "${BENCH_REDIS_PORTS[@]}"; do
      busy=$((busy + $(redis-cli -p "$p" info persistence | tr -d '\r' |
        grep -cE '^(aof_rewrite|rdb_bgsave)_in_progress:1$' || true)))
    done
    ((busy == 0)) && return 0
    ((i % 15 == 0)) && log "waiting for Redis to finish an AOF rewrite / RDB save"
    sleep 1
  done
  log "Redis is still rewriting its AOF; measuring anyway"
}

bench_xadd_ceiling() {
  local n="$1" field="$2" key="$3" mode=() out
  if [[ "$BENCH_REDIS" == cluster ]]; then
    mode=(--cluster)
    key="$key:{tag}"
  fi
  out="$(redis-benchmark "${mode[@]}" -p "${BENCH_REDIS_PORTS[0]}" -P 32 -n "$n" -q XADD "$key" '*' ev "$field" 2>/dev/null |
    tr '\r' '\n' | grep -E 'requests per second' | tail -1)"
  sed -nE 's/.*: ([0-9.]+) requests per second.*/\1/p' <<<"$out"
}
