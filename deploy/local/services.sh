#!/usr/bin/env bash
# deploy/local/services.sh — bring the local Redis, Redis Cluster and Kafka up or down together.
#
# Usage: deploy/local/services.sh up|down|restart|status|env
#
# up:     tls.sh ensure (the local CA, certificates and users' passwords), redis.sh start,
#         redis-cluster.sh start (3 masters + 3 replicas), then kafka.sh start (all
#         idempotent: running services are reused), then writes
#         $DASHSTREAM_STATE_DIR/services.env with
#           KAFKA_BROKERS=127.0.0.1:PORT               plaintext listener
#           KAFKA_SASL_SSL_BROKERS=127.0.0.1:PORT      SASL_SSL, SCRAM-SHA-512
#           KAFKA_MTLS_BROKERS=127.0.0.1:PORT          SSL with client certificates required
#           REDIS_URL=redis://127.0.0.1:PORT           plaintext, default user
#           REDIS_TLS_URL=rediss://127.0.0.1:PORT      TLS, ACL users only
#           REDIS_CLUSTER_URL=redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3
#                                                      the cluster's first masters (seeds)
#           REDIS_CLUSTER_PORTS=P1,...,P6              every node (redis-cluster.sh kill-node)
#           DASHSTREAM_TLS_DIR=...                     CA, certificates, passwords (tls.sh)
#         and prints those lines on stdout. Load them with:
#           set -a; . "$(deploy/local/services.sh path)"; set +a
#         or:  eval "$(deploy/local/services.sh up | sed 's/^/export /')"
# down:   stops Kafka, the Redis Cluster and Redis (data is kept for the next 'up');
#         removes services.env.
# status: exit 0 only if all three run (the cluster healthy, all six nodes).
# env:    prints services.env (fails if the services are not up).
# path:   prints the path of services.env.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SERVICES_ENV="$DASHSTREAM_STATE_DIR/services.env"

cmd_up() {
  local start redis_env cluster_env kafka_env tls_dir
  start="$(date +%s)"
  tls_dir="$("$DASHSTREAM_LOCAL_DIR/tls.sh" ensure)" || die "could not create the local certificates (see above)"
  redis_env="$("$DASHSTREAM_LOCAL_DIR/redis.sh" start)" || die "could not start Redis (see above)"
  cluster_env="$("$DASHSTREAM_LOCAL_DIR/redis-cluster.sh" start)" || die "could not start the Redis Cluster (see above)"
  kafka_env="$("$DASHSTREAM_LOCAL_DIR/kafka.sh" start)" || die "could not start Kafka (see above)"
  grep -q '^REDIS_URL=' <<<"$redis_env" || die "redis.sh start printed no REDIS_URL: $redis_env"
  grep -q '^REDIS_CLUSTER_URL=' <<<"$cluster_env" || die "redis-cluster.sh start printed no REDIS_CLUSTER_URL: $cluster_env"
  grep -q '^KAFKA_BROKERS=' <<<"$kafka_env" || die "kafka.sh start printed no KAFKA_BROKERS: $kafka_env"
  local tmp="$SERVICES_ENV.tmp.$$"
  {
    printf '%s\n%s\n%s\n' "$kafka_env" "$redis_env" "$cluster_env"
    printf 'DASHSTREAM_TLS_DIR=%s\n' "$tls_dir"
  } >"$tmp"
  mv -f "$tmp" "$SERVICES_ENV"
  log "services up in $(($(date +%s) - start))s; environment in $SERVICES_ENV"
  cat "$SERVICES_ENV"
}

cmd_down() {
  local rc=0
  rm -f "$SERVICES_ENV"
  "$DASHSTREAM_LOCAL_DIR/kafka.sh" stop || rc=1
  "$DASHSTREAM_LOCAL_DIR/redis-cluster.sh" stop || rc=1
  "$DASHSTREAM_LOCAL_DIR/redis.sh" stop || rc=1
  ((rc == 0)) || die "could not stop every service"
  log "services down (data kept in $DASHSTREAM_STATE_DIR)"
}

cmd_status() {
  local rc=0
  "$DASHSTREAM_LOCAL_DIR/redis.sh" status || rc=1
  "$DASHSTREAM_LOCAL_DIR/redis-cluster.sh" status || rc=1
  "$DASHSTREAM_LOCAL_DIR/kafka.sh" status || rc=1
  return "$rc"
}

cmd_env() {
  [[ -r "$SERVICES_ENV" ]] || die "services are not up (no $SERVICES_ENV); run: $0 up"
  cat "$SERVICES_ENV"
}

main() {
  ensure_state_dir
  case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  restart) cmd_down && cmd_up ;;
  status) cmd_status ;;
  env) cmd_env ;;
  path) printf '%s\n' "$SERVICES_ENV" ;;
  *)
    echo "usage: $0 up|down|restart|status|env|path" >&2
    exit 2
    ;;
  esac
}

main "$@"
