#!/usr/bin/env bash
# deploy/local/redis.sh — run one private redis-server on 127.0.0.1.
#
# Usage: deploy/local/redis.sh start|stop|restart|status|env|logs|cli [ARGS...]
#
# Installs redis-server + redis-tools from Debian if missing, then runs a
# daemonized redis-server bound to 127.0.0.1 on a free port, with its own
# state in $DASHSTREAM_STATE_DIR/redis/:
#   redis.conf           generated config (AOF appendfsync everysec, no RDB snapshots)
#   data/                the append-only files
#   redis.log, redis.pid, redis.env (the chosen ports)
# Two listeners: a plaintext port (the default user, no password: the tests' own prefixes),
# and a TLS port with the certificates of tls.sh (client certificates verified when given)
# for the two least-privilege ACL users, whose passwords tls.sh keeps in
# $DASHSTREAM_STATE_DIR/tls/passwords/redis-{ingest,gateway}.password:
#   dashstream-ingest   what the ingest runs, on keys under acl:* only
#   dashstream-gateway  reads only (read-only key permission, EVALSHA_RO), on acl:* only
# (docs/SECURITY.md; the rules are ACL_INGEST and ACL_GATEWAY below). Redis users are not
# tied to a port: the default user answers on the TLS port too. In production it is disabled.
# start: idempotent. Reuses a running server; otherwise restarts on the saved
#        port (a new free port if someone else took it; the data is kept) and
#        waits until `redis-cli ping` answers PONG. Prints REDIS_URL=...
# stop:  SIGTERM (Redis flushes and fsyncs the AOF before exiting), SIGKILL after 30 s.
# env:   prints REDIS_URL=redis://127.0.0.1:PORT and REDIS_TLS_URL=rediss://127.0.0.1:TLS_PORT.
# cli:   redis-cli connected to this server.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REDIS_DIR="$DASHSTREAM_STATE_DIR/redis"
REDIS_DATA="$REDIS_DIR/data"
REDIS_CONF="$REDIS_DIR/redis.conf"
REDIS_LOGFILE="$REDIS_DIR/redis.log"
REDIS_PIDFILE="$REDIS_DIR/redis.pid"
REDIS_ENVFILE="$REDIS_DIR/redis.env"
REDIS_START_TIMEOUT="${REDIS_START_TIMEOUT:-30}"

REDIS_PORT=""
REDIS_TLS_PORT=""

# The key pattern of the local ACL users: a deployment's prefix, `<prefix>:*` (docs/SECURITY.md).
ACL_KEYS="acl:*"
# Connection set-up, as redis-rs sends it.
ACL_CONNECT="+ping +hello +auth +client|setname +select +info"
# The ingest: its scripts (ingest/src/store.rs), every command they run, the retention sampler.
ACL_INGEST="resetkeys ~$ACL_KEYS resetchannels -@all $ACL_CONNECT +evalsha +eval +script|load +multi +exec +discard +xadd +xtrim +xrange +xrevrange +xlen +xinfo|stream +hget +hmget +hset +sadd +smembers +exists +unlink"
# The gateway: reads only, keys readable but never writable (%R), its script by EVALSHA_RO.
ACL_GATEWAY="resetkeys %R~$ACL_KEYS resetchannels -@all $ACL_CONNECT +config|get +evalsha_ro +eval_ro +multi +exec +discard +xread +xrange +xrevrange +xlen +xinfo|stream +hget +smembers +exists"

load_saved_env() {
  REDIS_PORT="" REDIS_TLS_PORT=""
  [[ -r "$REDIS_ENVFILE" ]] || return 0
  local key value
  while IFS='=' read -r key value; do
    case "$key" in
    REDIS_PORT) REDIS_PORT="$value" ;;
    REDIS_TLS_PORT) REDIS_TLS_PORT="$value" ;;
    esac
  done <"$REDIS_ENVFILE"
  return 0
}

print_env() {
  printf 'REDIS_URL=redis://127.0.0.1:%s\n' "$REDIS_PORT"
  if [[ -n "$REDIS_TLS_PORT" ]]; then
    printf 'REDIS_TLS_URL=rediss://127.0.0.1:%s\n' "$REDIS_TLS_PORT"
  fi
}

# acl_password_hash USER: the SHA-256 of the user's password, as an ACL `#` rule takes it.
acl_password_hash() {
  printf '%s' "$(tr -d '\n' <"$1/passwords/redis-$2.password")" | sha256sum | cut -d' ' -f1
}

ensure_redis_installed() {
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    log "redis-server/redis-cli not found: installing them from Debian"
    ensure_apt_packages redis-server redis-tools
  fi
  command -v redis-server >/dev/null 2>&1 || die "redis-server still missing after install"
}

# ping_ok: the server on $REDIS_PORT answers PONG.
ping_ok() {
  [[ -n "$REDIS_PORT" ]] || return 1
  [[ "$(timeout 3 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == "PONG" ]]
}

server_alive() {
  pid_alive "$REDIS_PIDFILE" redis-server
}

is_running() {
  server_alive && ping_ok
}

# adopt_orphan: a server answering on the saved port whose dir is ours is ours.
adopt_orphan() {
  if [[ -z "$REDIS_PORT" ]] || ! ping_ok; then return 1; fi
  local dir pid
  dir="$(timeout 3 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" config get dir 2>/dev/null | sed -n 2p)"
  [[ "$dir" == "$REDIS_DATA" ]] || return 1
  pid="$(timeout 3 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" info server 2>/dev/null | tr -d '\r' | sed -n 's/^process_id://p')"
  [[ -n "$pid" ]] || return 1
  log "found our Redis (pid $pid) on 127.0.0.1:$REDIS_PORT without pid file; adopting it"
  printf '%s\n' "$pid" >"$REDIS_PIDFILE"
}

write_conf() {
  local tls_dir
  tls_dir="$("$DASHSTREAM_LOCAL_DIR/tls.sh" ensure)"
  (umask 077 && cat >"$REDIS_CONF") <<EOF
# generated by deploy/local/redis.sh
bind 127.0.0.1
port $REDIS_PORT
protected-mode yes
daemonize yes
supervised no
pidfile $REDIS_PIDFILE
logfile $REDIS_LOGFILE
loglevel notice
dir $REDIS_DATA
tcp-backlog 128
# durability: append-only file fsynced every second, no RDB snapshots
appendonly yes
appendfsync everysec
save ""
# TLS listener (certificates from deploy/local/tls.sh)
tls-port $REDIS_TLS_PORT
tls-cert-file $tls_dir/server.pem
tls-key-file $tls_dir/server.key
tls-ca-cert-file $tls_dir/ca.pem
tls-auth-clients optional
# ACL users: the default user stays open for the plaintext tests
user default on nopass ~* &* +@all
user dashstream-ingest on #$(acl_password_hash "$tls_dir" ingest) $ACL_INGEST
user dashstream-gateway on #$(acl_password_hash "$tls_dir" gateway) $ACL_GATEWAY
EOF
}

do_start() {
  mkdir -p "$REDIS_DIR"
  load_saved_env
  if ! server_alive; then
    rm -f "$REDIS_PIDFILE"
    if command -v redis-cli >/dev/null 2>&1; then adopt_orphan || true; fi
  fi
  if server_alive; then
    if ! ping_ok; then
      WAIT_FOR_ABORT=server_alive wait_for "running Redis (pid $(read_pid "$REDIS_PIDFILE")) to answer PING on 127.0.0.1:$REDIS_PORT" \
        "$REDIS_START_TIMEOUT" ping_ok || die "Redis (pid $(read_pid "$REDIS_PIDFILE")) runs but does not answer; see $REDIS_LOGFILE"
    fi
    log "Redis already running (pid $(read_pid "$REDIS_PIDFILE")) on 127.0.0.1:$REDIS_PORT"
    print_env
    return 0
  fi

  ensure_redis_installed
  if [[ -z "$REDIS_TLS_PORT" ]] || port_open "$REDIS_TLS_PORT"; then
    REDIS_TLS_PORT="$(free_port)"
  fi
  if [[ -z "$REDIS_PORT" ]]; then
    REDIS_PORT="$(free_port)"
    log "no previous Redis state: using free port $REDIS_PORT"
  elif port_open "$REDIS_PORT"; then
    local old="$REDIS_PORT"
    REDIS_PORT="$(free_port)"
    log "saved Redis port $old is used by another process: moving to $REDIS_PORT (data kept)"
  else
    log "restarting Redis on saved port $REDIS_PORT with existing data"
  fi
  mkdir -p "$REDIS_DATA"
  write_conf
  printf 'REDIS_PORT=%s\nREDIS_TLS_PORT=%s\n' "$REDIS_PORT" "$REDIS_TLS_PORT" >"$REDIS_ENVFILE"

  log "starting redis-server $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p') on 127.0.0.1:$REDIS_PORT (TLS $REDIS_TLS_PORT), log $REDIS_LOGFILE"
  local out
  # redis daemonizes itself; fd 9 (our start lock) must not leak into it.
  if ! out="$(redis-server "$REDIS_CONF" 2>&1 9>&-)"; then
    printf '%s\n' "$out" >&2
    die "redis-server $REDIS_CONF failed to start"
  fi
  if ! wait_for "Redis PING on 127.0.0.1:$REDIS_PORT" "$REDIS_START_TIMEOUT" ping_ok; then
    tail -n 30 "$REDIS_LOGFILE" >&2 2>/dev/null || true
    die "Redis did not answer PING within ${REDIS_START_TIMEOUT}s (log above)"
  fi
  server_alive || die "Redis answers but its pid file $REDIS_PIDFILE is missing or stale"
  log "Redis is up (pid $(read_pid "$REDIS_PIDFILE"))"
  print_env
}

cmd_status() {
  load_saved_env
  if is_running; then
    log "Redis running (pid $(read_pid "$REDIS_PIDFILE")) on 127.0.0.1:$REDIS_PORT, data $REDIS_DATA"
    return 0
  elif server_alive; then
    log "Redis process alive (pid $(read_pid "$REDIS_PIDFILE")) but 127.0.0.1:${REDIS_PORT:-?} does not answer PING"
    return 1
  fi
  log "Redis not running"
  return 3
}

cmd_env() {
  load_saved_env
  [[ -n "$REDIS_PORT" ]] || die "Redis was never started here (no $REDIS_ENVFILE); run: $0 start"
  is_running || log "warning: Redis is not running (run: $0 start)"
  print_env
}

cmd_cli() {
  load_saved_env
  [[ -n "$REDIS_PORT" ]] || die "Redis was never started here; run: $0 start"
  exec redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"
}

usage() {
  echo "usage: $0 start|stop|restart|status|env|logs|cli [ARGS...]" >&2
  exit 2
}

main() {
  local cmd="${1:-}"
  shift || true
  ensure_state_dir
  case "$cmd" in
  start) with_lock redis do_start ;;
  stop) with_lock redis stop_pid "$REDIS_PIDFILE" redis 30 redis-server ;;
  restart) with_lock redis stop_pid "$REDIS_PIDFILE" redis 30 redis-server && with_lock redis do_start ;;
  status) cmd_status ;;
  env) cmd_env ;;
  logs) tail -n "${LINES:-100}" "$REDIS_LOGFILE" ;;
  cli) cmd_cli "$@" ;;
  *) usage ;;
  esac
}

main "$@"
