#!/usr/bin/env bash
# deploy/local/redis-cluster.sh — run a private Redis Cluster on 127.0.0.1:
# 3 masters with one replica each (Debian's redis-server, formed by `redis-cli --cluster create`).
#
# Usage: deploy/local/redis-cluster.sh start|stop|status|env|nodes|wait-ok [TIMEOUT_S]
#        deploy/local/redis-cluster.sh kill-node PORT|start-node PORT
#
# Six daemonized redis-server processes, bound to 127.0.0.1 on free ports (each with its
# own cluster bus port, also free, set by cluster-port), each with its state in
# $DASHSTREAM_STATE_DIR/redis-cluster/<port>/:
#   redis.conf   generated config (cluster mode, AOF appendfsync everysec, no RDB snapshots)
#   data/        nodes.conf (the node's cluster view, written by Redis) and the AOF
#   redis.log, redis.pid
# and $DASHSTREAM_STATE_DIR/redis-cluster/cluster.env, the ports: the three nodes created as
# masters first. The default user is open (no password), as on redis.sh's plaintext port; no TLS.
# The two least-privilege users of redis.sh, with the cluster's additions (redis-acl.sh), on
# keys and shard channels under acl:* only, with the passwords tls.sh keeps:
#   dashstream-ingest   ACL_CLUSTER_INGEST      dashstream-gateway   ACL_CLUSTER_GATEWAY
# They are in every node's config, and set again on running nodes at each start.
# start:      idempotent. Reuses running nodes; starts stopped ones on their saved ports
#             with their saved nodes.conf (the cluster comes back without being re-created);
#             if a saved port is now used by another process, throws the old cluster away
#             and creates a new one on new free ports. Forms the cluster if it is not yet
#             (`redis-cli --cluster create ... --cluster-replicas 1`), then waits (up to
#             $REDIS_CLUSTER_START_TIMEOUT s, default 60) until it is healthy (see wait-ok,
#             plus: every master has an online replica) and prints the env lines.
# stop:       SIGTERM to every node, SIGKILL to those still alive after 30 s.
# env:        REDIS_CLUSTER_URL=redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3
#             (the first masters; any reachable node is a good seed) and
#             REDIS_CLUSTER_PORTS=P1,P2,P3,P4,P5,P6.
# kill-node:  SIGKILL the node on PORT (the master-kill tests).
# start-node: start the node on PORT again with its saved config and nodes.conf, and wait
#             until it answers PING and the cluster is healthy again (a killed master whose
#             replica was promoted rejoins as a replica).
# wait-ok:    wait (default 60 s) until every running node reports cluster_state:ok and
#             cluster_slots_ok:16384, all of them agree on which masters serve which slots,
#             and each of those masters is running; with all six nodes running, also until
#             every master has an online replica. After kill-node of a master this is how a
#             test waits for the promotion: cluster_state alone does not tell (see the note on
#             cluster-require-full-coverage in write_conf).
# nodes:      CLUSTER NODES, as seen by the first running node.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=redis-acl.sh
source "$(dirname "${BASH_SOURCE[0]}")/redis-acl.sh"

CLUSTER_DIR="$DASHSTREAM_STATE_DIR/redis-cluster"
CLUSTER_ENVFILE="$CLUSTER_DIR/cluster.env"
REDIS_CLUSTER_START_TIMEOUT="${REDIS_CLUSTER_START_TIMEOUT:-60}"
REDIS_CLUSTER_STOP_TIMEOUT="${REDIS_CLUSTER_STOP_TIMEOUT:-30}"
NODE_COUNT=6
MASTER_COUNT=3

# The client ports, masters (as created) first, and their cluster bus ports, same order.
PORTS=()
BUS_PORTS=()

load_saved_env() {
  PORTS=() BUS_PORTS=()
  [[ -r "$CLUSTER_ENVFILE" ]] || return 0
  local key value
  while IFS='=' read -r key value; do
    case "$key" in
    REDIS_CLUSTER_PORTS) IFS=',' read -r -a PORTS <<<"$value" ;;
    REDIS_CLUSTER_BUS_PORTS) IFS=',' read -r -a BUS_PORTS <<<"$value" ;;
    esac
  done <"$CLUSTER_ENVFILE"
  if ((${#PORTS[@]} != NODE_COUNT || ${#BUS_PORTS[@]} != NODE_COUNT)); then
    log "ignoring malformed $CLUSTER_ENVFILE"
    PORTS=() BUS_PORTS=()
  fi
  return 0
}

save_env() {
  local tmp="$CLUSTER_ENVFILE.tmp.$$"
  local IFS=','
  printf 'REDIS_CLUSTER_PORTS=%s\nREDIS_CLUSTER_BUS_PORTS=%s\n' "${PORTS[*]}" "${BUS_PORTS[*]}" >"$tmp"
  mv -f "$tmp" "$CLUSTER_ENVFILE"
}

print_env() {
  local seeds=() i
  for ((i = 0; i < MASTER_COUNT; i++)); do
    seeds+=("127.0.0.1:${PORTS[i]}")
  done
  local IFS=','
  printf 'REDIS_CLUSTER_URL=redis+cluster://%s\n' "${seeds[*]}"
  printf 'REDIS_CLUSTER_PORTS=%s\n' "${PORTS[*]}"
}

ensure_redis_installed() {
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    log "redis-server/redis-cli not found: installing them from Debian"
    ensure_apt_packages redis-server redis-tools
  fi
  command -v redis-server >/dev/null 2>&1 || die "redis-server still missing after install"
}

node_dir() { printf '%s/%s' "$CLUSTER_DIR" "$1"; }
node_pidfile() { printf '%s/%s/redis.pid' "$CLUSTER_DIR" "$1"; }

# rcli PORT ARGS...: redis-cli against one node, output without the CRs of RESP text replies.
rcli() {
  local port="$1"
  shift
  timeout 3 redis-cli -h 127.0.0.1 -p "$port" "$@" 2>/dev/null | tr -d '\r'
}

node_ping() { [[ "$(rcli "$1" ping)" == "PONG" ]]; }
node_alive() { pid_alive "$(node_pidfile "$1")" redis-server; }
node_up() { node_alive "$1" && node_ping "$1"; }

# is_our_port PORT: PORT is one of the saved client ports.
is_our_port() {
  local p
  for p in "${PORTS[@]}"; do
    [[ "$p" == "$1" ]] && return 0
  done
  return 1
}

bus_port_of() {
  local i
  for ((i = 0; i < ${#PORTS[@]}; i++)); do
    if [[ "${PORTS[i]}" == "$1" ]]; then
      printf '%s' "${BUS_PORTS[i]}"
      return 0
    fi
  done
  return 1
}

# adopt_orphan PORT: a node answering on PORT whose dir is ours is ours (pid file lost).
adopt_orphan() {
  local port="$1" dir pid
  node_ping "$port" || return 1
  dir="$(rcli "$port" config get dir | sed -n 2p)"
  [[ "$dir" == "$(node_dir "$port")/data" ]] || return 1
  pid="$(rcli "$port" info server | sed -n 's/^process_id://p')"
  [[ -n "$pid" ]] || return 1
  log "found our cluster node (pid $pid) on 127.0.0.1:$port without pid file; adopting it"
  printf '%s\n' "$pid" >"$(node_pidfile "$port")"
}

write_conf() {
  local port="$1" bus="$2" dir tls_dir
  dir="$(node_dir "$port")"
  mkdir -p "$dir/data"
  tls_dir="$("$DASHSTREAM_LOCAL_DIR/tls.sh" ensure)"
  (umask 077 && cat >"$dir/redis.conf") <<EOF
# generated by deploy/local/redis-cluster.sh
bind 127.0.0.1
port $port
protected-mode yes
daemonize yes
supervised no
pidfile $dir/redis.pid
logfile $dir/redis.log
loglevel notice
dir $dir/data
tcp-backlog 128
# durability: append-only file fsynced every second, no RDB snapshots; never evict
appendonly yes
appendfsync everysec
save ""
maxmemory-policy noeviction
# cluster mode; the bus port is chosen free too (port+10000 may be beyond 65535 or taken)
cluster-enabled yes
cluster-config-file nodes.conf
cluster-port $bus
# a node unreachable for 2 s is failed: the replica of a killed master takes over in a few seconds
cluster-node-timeout 2000
# cluster-require-full-coverage no: while a killed master's slots wait for its replica's
# promotion, the other two masters keep serving theirs (with 'yes' every node would answer
# CLUSTERDOWN to every key until the failover ends), which is what a deployment wants and
# what the failover tests exercise: only the keys of the dead shard see errors. The price:
# cluster_state stays ok during that window, so "promoted" is told by slot ownership
# (cluster_slots_ok, the owners running), as wait-ok does, not by cluster_state alone.
# (With either setting cluster_state is still ok right after the kill, before the 2 s timeout.)
cluster-require-full-coverage no
# a node of a failed cluster refuses reads as well as writes (the default)
cluster-allow-reads-when-down no
# replicas (re)sync at once: a full sync after a restart otherwise waits 5 s for more replicas
repl-diskless-sync-delay 0
# the default user is open, like redis.sh's plaintext port
user default on nopass ~* &* +@all
user dashstream-ingest on #$(acl_password_hash "$tls_dir" ingest) $ACL_CLUSTER_INGEST
user dashstream-gateway on #$(acl_password_hash "$tls_dir" gateway) $ACL_CLUSTER_GATEWAY
EOF
}

# set_acl_users: the ACL users of write_conf, set again on every running node (a node started
# before a rule changed keeps its old users otherwise). ACL SETUSER ... reset replaces them.
set_acl_users() {
  local tls_dir p tier rules user
  tls_dir="$("$DASHSTREAM_LOCAL_DIR/tls.sh" ensure)"
  for p in "${PORTS[@]}"; do
    node_alive "$p" || continue
    for tier in ingest gateway; do
      user="dashstream-$tier"
      if [[ "$tier" == ingest ]]; then
        read -r -a rules <<<"$ACL_CLUSTER_INGEST"
      else
        read -r -a rules <<<"$ACL_CLUSTER_GATEWAY"
      fi
      [[ "$(rcli "$p" acl setuser "$user" reset on "#$(acl_password_hash "$tls_dir" "$tier")" "${rules[@]}")" == OK ]] ||
        die "ACL SETUSER $user failed on cluster node $p"
    done
  done
}

# start_node_process PORT: launch redis-server with the node's conf (no waiting).
start_node_process() {
  local port="$1" out
  write_conf "$port" "$(bus_port_of "$port")"
  rm -f "$(node_pidfile "$port")"
  log "starting cluster node on 127.0.0.1:$port (bus $(bus_port_of "$port")), log $(node_dir "$port")/redis.log"
  # redis daemonizes itself; fd 9 (our start lock) must not leak into it.
  if ! out="$(redis-server "$(node_dir "$port")/redis.conf" 2>&1 9>&-)"; then
    printf '%s\n' "$out" >&2
    die "redis-server $(node_dir "$port")/redis.conf failed to start"
  fi
}

all_ping() {
  local p
  for p in "$@"; do
    node_ping "$p" || return 1
  done
}

# masters_view PORT: "port:slots" of every master serving slots, as PORT sees them, sorted.
masters_view() {
  rcli "$1" cluster nodes | awk '
    $3 ~ /master/ && $3 !~ /fail/ && NF >= 9 {
      addr = $2; sub(/@.*/, "", addr); sub(/.*:/, "", addr)
      slots = ""
      for (i = 9; i <= NF; i++) slots = slots " " $i
      print addr ":" slots
    }' | sort
}

# master_has_online_replica PORT
master_has_online_replica() {
  local info
  info="$(rcli "$1" info replication)"
  grep -qE '^slave[0-9]+:.*state=online' <<<"$info"
}

# running_ports: the client ports of the nodes that run and answer PING.
running_ports() {
  local p
  for p in "${PORTS[@]}"; do
    if node_up "$p"; then printf '%s\n' "$p"; fi
  done
}

# first_running_port: the first node that runs and answers PING (fails if none).
first_running_port() {
  local p
  for p in "${PORTS[@]}"; do
    if node_up "$p"; then
      printf '%s\n' "$p"
      return 0
    fi
  done
  return 1
}

# cluster_healthy [replicas]: see wait-ok in the header. With "replicas", also every
# master serving slots has an online replica.
cluster_healthy() {
  local want_replicas="${1:-}" live=() p info view first_view="" owners=() o
  mapfile -t live < <(running_ports)
  ((${#live[@]} > 0)) || return 1
  for p in "${live[@]}"; do
    info="$(rcli "$p" cluster info)"
    grep -qx 'cluster_state:ok' <<<"$info" || return 1
    grep -qx 'cluster_slots_assigned:16384' <<<"$info" || return 1
    grep -qx 'cluster_slots_ok:16384' <<<"$info" || return 1
    view="$(masters_view "$p")"
    [[ -n "$view" ]] || return 1
    if [[ -z "$first_view" ]]; then
      first_view="$view"
    elif [[ "$view" != "$first_view" ]]; then
      return 1
    fi
  done
  mapfile -t owners < <(cut -d: -f1 <<<"$first_view")
  for o in "${owners[@]}"; do
    [[ " ${live[*]} " == *" $o "* ]] || return 1
    if [[ -n "$want_replicas" ]]; then
      master_has_online_replica "$o" || return 1
    fi
  done
}

cluster_fully_healthy() {
  (($(running_ports | wc -l) == NODE_COUNT)) && cluster_healthy replicas
}

# cluster_healthy_now: fully healthy if all nodes run, else healthy without replicas.
cluster_healthy_now() {
  if (($(running_ports | wc -l) == NODE_COUNT)); then
    cluster_healthy replicas
  else
    cluster_healthy
  fi
}

# cluster_formed: some node already serves slots (the cluster exists; it only needs to converge).
cluster_formed() {
  local p n
  for p in "${PORTS[@]}"; do
    n="$(rcli "$p" cluster info | sed -n 's/^cluster_slots_assigned://p')"
    [[ -n "$n" && "$n" != 0 ]] && return 0
  done
  return 1
}

# stop_nodes PORT...: SIGTERM them all, SIGKILL those still alive after the timeout.
stop_nodes() {
  local p pid pids=() names=() i
  for p in "$@"; do
    if node_alive "$p"; then
      pid="$(read_pid "$(node_pidfile "$p")")"
      pids+=("$pid")
      names+=("$p")
      kill -TERM "$pid" 2>/dev/null || true
    else
      rm -f "$(node_pidfile "$p")"
    fi
  done
  if ((${#pids[@]} == 0)); then
    log "Redis Cluster is not running"
    return 0
  fi
  log "stopping Redis Cluster nodes ${names[*]} (SIGTERM, up to ${REDIS_CLUSTER_STOP_TIMEOUT}s)..."
  local alive
  for ((i = 0; i < REDIS_CLUSTER_STOP_TIMEOUT * 4; i++)); do
    alive=0
    for pid in "${pids[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    ((alive)) || break
    sleep 0.25
  done
  for ((i = 0; i < ${#pids[@]}; i++)); do
    if kill -0 "${pids[i]}" 2>/dev/null; then
      log "cluster node ${names[i]} (pid ${pids[i]}) did not exit within ${REDIS_CLUSTER_STOP_TIMEOUT}s, sending SIGKILL"
      kill -KILL "${pids[i]}" 2>/dev/null || true
    fi
  done
  for ((i = 0; i < ${#pids[@]}; i++)); do
    local j
    for ((j = 0; j < 40; j++)); do
      kill -0 "${pids[i]}" 2>/dev/null || break
      sleep 0.25
    done
    kill -0 "${pids[i]}" 2>/dev/null && die "could not stop cluster node ${names[i]} (pid ${pids[i]})"
    rm -f "$(node_pidfile "${names[i]}")"
  done
  log "Redis Cluster stopped (data kept in $CLUSTER_DIR)"
}

# new_cluster_ports: pick 2 x NODE_COUNT distinct free ports (client + bus) and fresh dirs.
new_cluster_ports() {
  local all=() i
  mapfile -t all < <(free_ports $((2 * NODE_COUNT)))
  PORTS=("${all[@]:0:NODE_COUNT}")
  BUS_PORTS=("${all[@]:NODE_COUNT:NODE_COUNT}")
  for ((i = 0; i < NODE_COUNT; i++)); do
    rm -rf "$(node_dir "${PORTS[i]}")"
  done
  save_env
}

# discard_cluster: stop our nodes and delete their dirs (a new cluster will be created).
discard_cluster() {
  local p
  stop_nodes "${PORTS[@]}"
  for p in "${PORTS[@]}"; do
    rm -rf "$(node_dir "$p")"
  done
  PORTS=() BUS_PORTS=()
  rm -f "$CLUSTER_ENVFILE"
}

# create_cluster: form the cluster of the six (empty) nodes, masters = the first three.
create_cluster() {
  local p addrs=() known
  for p in "${PORTS[@]}"; do
    known="$(rcli "$p" cluster info | sed -n 's/^cluster_known_nodes://p')"
    if [[ "$known" != 1 ]]; then
      # a create that was interrupted before any slot was assigned: start over
      log "node $p already knows $known nodes but no slots are assigned: resetting it"
      rcli "$p" flushall >/dev/null
      [[ "$(rcli "$p" cluster reset hard)" == "OK" ]] || die "CLUSTER RESET HARD failed on 127.0.0.1:$p"
    fi
    addrs+=("127.0.0.1:$p")
  done
  log "creating the cluster: ${addrs[*]} (3 masters, 1 replica each)"
  # its report goes to stderr: stdout carries only the KEY=value lines
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >&2 ||
    die "redis-cli --cluster create failed (output above)"
  # record the masters first, in the order created (redis-cli makes the first three masters)
  local masters=() replicas=() mbus=() rbus=() i role
  for ((i = 0; i < NODE_COUNT; i++)); do
    role="$(rcli "${PORTS[i]}" info replication | sed -n 's/^role://p')"
    if [[ "$role" == master ]]; then
      masters+=("${PORTS[i]}") mbus+=("${BUS_PORTS[i]}")
    else
      replicas+=("${PORTS[i]}") rbus+=("${BUS_PORTS[i]}")
    fi
  done
  ((${#masters[@]} == MASTER_COUNT)) || die "expected $MASTER_COUNT masters after create, found ${#masters[@]}: ${masters[*]-}"
  PORTS=("${masters[@]}" "${replicas[@]}")
  BUS_PORTS=("${mbus[@]}" "${rbus[@]}")
  save_env
}

do_start() {
  mkdir -p "$CLUSTER_DIR"
  ensure_redis_installed
  load_saved_env
  local p bus i to_start=() conflict=""
  if ((${#PORTS[@]} > 0)); then
    for ((i = 0; i < NODE_COUNT; i++)); do
      p="${PORTS[i]}" bus="${BUS_PORTS[i]}"
      if node_alive "$p"; then continue; fi
      rm -f "$(node_pidfile "$p")"
      if adopt_orphan "$p"; then continue; fi
      if port_open "$p" || port_open "$bus"; then
        conflict="$p/$bus"
        break
      fi
      if [[ ! -s "$(node_dir "$p")/data/nodes.conf" ]]; then
        conflict="$p (no nodes.conf)"
        break
      fi
      to_start+=("$p")
    done
    if [[ -n "$conflict" ]]; then
      log "saved cluster node $conflict cannot be restarted (port used by another process or state lost): creating a new cluster on new ports"
      discard_cluster
      to_start=()
    fi
  fi
  if ((${#PORTS[@]} == 0)); then
    new_cluster_ports
    log "new Redis Cluster on free ports ${PORTS[*]} (bus ${BUS_PORTS[*]})"
    to_start=("${PORTS[@]}")
  fi

  if ((${#to_start[@]} == 0)) && cluster_fully_healthy; then
    log "Redis Cluster already running and healthy on 127.0.0.1:${PORTS[*]}"
    set_acl_users
    print_env
    return 0
  fi

  for p in "${to_start[@]}"; do
    start_node_process "$p"
  done
  if ! wait_for "PING on every cluster node" "$REDIS_CLUSTER_START_TIMEOUT" all_ping "${PORTS[@]}"; then
    for p in "${PORTS[@]}"; do
      node_ping "$p" || tail -n 20 "$(node_dir "$p")/redis.log" >&2 2>/dev/null || true
    done
    die "some cluster nodes did not answer PING within ${REDIS_CLUSTER_START_TIMEOUT}s (logs above)"
  fi
  for p in "${PORTS[@]}"; do
    node_alive "$p" || die "cluster node $p answers but its pid file $(node_pidfile "$p") is missing or stale"
  done

  if ! cluster_formed; then
    create_cluster
  fi
  if ! wait_for "Redis Cluster healthy (state ok, 16384 slots, a replica per master)" \
    "$REDIS_CLUSTER_START_TIMEOUT" cluster_fully_healthy; then
    rcli "${PORTS[0]}" cluster nodes >&2 || true
    die "Redis Cluster not healthy within ${REDIS_CLUSTER_START_TIMEOUT}s (CLUSTER NODES above; logs in $CLUSTER_DIR/*/redis.log)"
  fi
  set_acl_users
  log "Redis Cluster is up: masters ${PORTS[*]:0:MASTER_COUNT} (as created), replicas ${PORTS[*]:MASTER_COUNT}"
  print_env
}

require_saved() {
  load_saved_env
  ((${#PORTS[@]} > 0)) || die "the Redis Cluster was never started here (no $CLUSTER_ENVFILE); run: $0 start"
}

require_node_port() {
  [[ "${1:-}" =~ ^[0-9]+$ ]] || die "usage: $0 kill-node|start-node PORT"
  is_our_port "$1" || die "$1 is not a port of this cluster (${PORTS[*]})"
}

cmd_kill_node() {
  local port="$1" pid i
  node_alive "$port" || die "cluster node $port is not running"
  pid="$(read_pid "$(node_pidfile "$port")")"
  log "killing cluster node $port (pid $pid, $(rcli "$port" info replication | sed -n 's/^role://p'), SIGKILL)"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 40; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  kill -0 "$pid" 2>/dev/null && die "cluster node $port (pid $pid) survived SIGKILL"
  rm -f "$(node_pidfile "$port")"
  log "cluster node $port killed"
}

cmd_start_node() {
  local port="$1"
  if node_alive "$port"; then
    log "cluster node $port already running (pid $(read_pid "$(node_pidfile "$port")"))"
  else
    if port_open "$port" || port_open "$(bus_port_of "$port")"; then
      die "port $port or its bus port $(bus_port_of "$port") is used by another process"
    fi
    [[ -s "$(node_dir "$port")/data/nodes.conf" ]] || die "cluster node $port has no saved nodes.conf; run: $0 start"
    start_node_process "$port"
  fi
  WAIT_FOR_ABORT="node_alive $port" wait_for "PING on cluster node $port" "$REDIS_CLUSTER_START_TIMEOUT" node_ping "$port" ||
    {
      tail -n 20 "$(node_dir "$port")/redis.log" >&2 2>/dev/null || true
      die "cluster node $port did not answer PING (log above)"
    }
  cmd_wait_ok "$REDIS_CLUSTER_START_TIMEOUT"
  log "cluster node $port is up as $(rcli "$port" info replication | sed -n 's/^role://p')"
}

cmd_wait_ok() {
  local timeout_s="${1:-60}"
  [[ "$timeout_s" =~ ^[0-9]+$ ]] || die "usage: $0 wait-ok [TIMEOUT_S]"
  if ! wait_for "Redis Cluster healthy" "$timeout_s" cluster_healthy_now; then
    local live
    if live="$(first_running_port)"; then rcli "$live" cluster nodes >&2; fi
    die "Redis Cluster not healthy within ${timeout_s}s"
  fi
}

cmd_status() {
  load_saved_env
  if ((${#PORTS[@]} == 0)); then
    log "Redis Cluster not running (never started here)"
    return 3
  fi
  local p up=0 role
  for p in "${PORTS[@]}"; do
    if node_up "$p"; then
      up=$((up + 1))
      role="$(rcli "$p" info replication | sed -n 's/^role://p')"
      log "  cluster node 127.0.0.1:$p: running (pid $(read_pid "$(node_pidfile "$p")")), $role"
    elif node_alive "$p"; then
      log "  cluster node 127.0.0.1:$p: process alive but does not answer PING"
    else
      log "  cluster node 127.0.0.1:$p: not running"
    fi
  done
  if ((up == 0)); then
    log "Redis Cluster not running"
    return 3
  fi
  if ((up == NODE_COUNT)) && cluster_healthy replicas; then
    log "Redis Cluster running and healthy ($up nodes), state in $CLUSTER_DIR"
    return 0
  fi
  log "Redis Cluster degraded: $up/$NODE_COUNT nodes running$(cluster_healthy && echo ', slots all served')"
  return 1
}

cmd_env() {
  require_saved
  first_running_port >/dev/null || log "warning: the Redis Cluster is not running (run: $0 start)"
  print_env
}

cmd_nodes() {
  require_saved
  local p
  p="$(first_running_port)" || die "no cluster node is running"
  redis-cli -h 127.0.0.1 -p "$p" cluster nodes
}

usage() {
  echo "usage: $0 start|stop|status|env|nodes|wait-ok [TIMEOUT_S]|kill-node PORT|start-node PORT" >&2
  exit 2
}

main() {
  local cmd="${1:-}"
  shift || true
  ensure_state_dir
  case "$cmd" in
  start) with_lock redis-cluster do_start ;;
  stop)
    load_saved_env
    if ((${#PORTS[@]} == 0)); then
      log "Redis Cluster is not running"
    else
      with_lock redis-cluster stop_nodes "${PORTS[@]}"
    fi
    ;;
  status) cmd_status ;;
  env) cmd_env ;;
  nodes) cmd_nodes ;;
  wait-ok)
    require_saved
    cmd_wait_ok "${1:-60}"
    ;;
  kill-node)
    require_saved
    require_node_port "${1:-}"
    with_lock redis-cluster cmd_kill_node "$1"
    ;;
  start-node)
    require_saved
    require_node_port "${1:-}"
    with_lock redis-cluster cmd_start_node "$1"
    ;;
  *) usage ;;
  esac
}

main "$@"
