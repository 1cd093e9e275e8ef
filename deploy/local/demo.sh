#!/usr/bin/env bash
# deploy/local/demo.sh — brings the system up on this machine with a synthetic producer:
# installs what is missing, builds, starts Kafka and Redis, provisions the topics, starts two
# ingest processes in one consumer group, three gateways behind an nginx load balancer and a
# producer, and prints where to look (the live viewer, the WebSocket URL, the metrics).
# Ctrl-C stops everything it started.
#
# Also starts Prometheus (with the alert rules, scraping the ports chosen here), Alertmanager
# and prometheus-redis-exporter (on the demo's Redis), all Debian's packages, unless
# DEMO_MONITORING=0.
#
# Settings (environment): DEMO_RATE (events/s, default 200), DEMO_PARTITIONS (default 12),
# KAFKA_TOPIC (default dashstream-events), DEMO_MONITORING (1 or 0, default 1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=lib.sh
source deploy/local/lib.sh

RATE="${DEMO_RATE:-200}"
PARTITIONS="${DEMO_PARTITIONS:-12}"
TOPIC="${KAFKA_TOPIC:-dashstream-events}"
MONITORING="${DEMO_MONITORING:-1}"

ensure_apt_packages build-essential pkg-config libssl-dev zlib1g-dev cmake python3 curl
if ((MONITORING)); then ensure_service_packages prometheus prometheus-alertmanager prometheus-redis-exporter; fi
command -v cargo >/dev/null || die "cargo is not installed (Rust 1.85+ is required)"
log "building (release; the first build compiles librdkafka and takes a few minutes)"
cargo build --release --locked -p dashstream -p dashstream-ingest -p dashstream-gateway
BIN=target/release

started_services=0
deploy/local/services.sh status >/dev/null 2>&1 || started_services=1
deploy/local/services.sh up >/dev/null
set -a
# shellcheck disable=SC1091
source "$(deploy/local/services.sh path)"
set +a
export KAFKA_TOPIC="$TOPIC"

pids=()
cleanup() {
  # A second Ctrl-C (or the terminal's INT to the whole group) must not cut the cleanup short.
  trap "" INT TERM
  trap - EXIT
  log "stopping the demo"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if ((${started_lb:-0})); then deploy/local/lb.sh stop || true; fi
  if ((started_services)); then deploy/local/services.sh down >/dev/null 2>&1 || true; fi
  log "stopped"
}
trap cleanup INT TERM EXIT

"$BIN/dashstream" provision --partitions "$PARTITIONS"
logdir="$DASHSTREAM_STATE_DIR/demo"
mkdir -p "$logdir"
ports=()
for i in 1 2; do
  port="$(free_port)"
  ports+=("$port")
  INGEST_LISTEN="127.0.0.1:$port" INGEST_INSTANCE_ID="ingest-$i" \
    "$BIN/ingest" >"$logdir/ingest-$i.log" 2>&1 &
  pids+=("$!")
done
# The gateways require a token (GATEWAY_AUTH=jwt), signed with a secret made for this demo;
# `dashstream token` mints one for every tenant, which the viewer URL below carries.
secret="$logdir/jwt-secret"
[[ -s "$secret" ]] || (umask 077 && head -c 48 /dev/urandom | base64 | tr -d '\n' >"$secret")
token="$("$BIN/dashstream" token --secret-file "$secret" --tenants '*' --audience dashstream-demo --ttl-secs 86400)"
printf '%s\n' "$token" >"$logdir/token"
gw_ports=()
for i in 1 2 3; do
  port="$(free_port)"
  gw_ports+=("$port")
  GATEWAY_LISTEN="127.0.0.1:$port" GATEWAY_REPLICA_ID="gateway-$i" GATEWAY_TRUSTED_PROXIES=127.0.0.1 \
    GATEWAY_AUTH=jwt GATEWAY_JWT_HS256_SECRET_FILE="$secret" GATEWAY_JWT_AUDIENCE=dashstream-demo \
    "$BIN/gateway" >"$logdir/gateway-$i.log" 2>&1 &
  pids+=("$!")
done
lb_port="$(free_port)"
deploy/local/lb.sh start "$lb_port" "${gw_ports[@]/#/127.0.0.1:}"
started_lb=1
"$BIN/dashstream" produce --rate "$RATE" --threads 50 >"$logdir/producer.log" 2>&1 &
pids+=("$!")

monitoring_info="  monitoring:       off (DEMO_MONITORING=0)"
if ((MONITORING)); then
  # Prometheus scrapes the ports chosen above (the shipped monitoring/prometheus.yml has the
  # defaults), loads the alert rules and sends alerts to a local Alertmanager.
  am_port="$(free_port)"
  cat >"$logdir/alertmanager.yml" <<AM
route: {receiver: log}
receivers: [{name: log}]
AM
  /usr/bin/prometheus-alertmanager --config.file="$logdir/alertmanager.yml" \
    --storage.path="$logdir/alertmanager" --web.listen-address="127.0.0.1:$am_port" \
    --cluster.listen-address="" >"$logdir/alertmanager.log" 2>&1 &
  pids+=("$!")
  # Redis's own metrics (the dashstream-redis alerts), from the Redis the services use.
  redis_exporter_port="$(free_port)"
  /usr/bin/prometheus-redis-exporter -redis.addr "$REDIS_URL" \
    -web.listen-address "127.0.0.1:$redis_exporter_port" >"$logdir/redis-exporter.log" 2>&1 &
  pids+=("$!")
  prom_port="$(free_port)"
  {
    printf 'global: {scrape_interval: 15s, evaluation_interval: 15s}\n'
    printf 'rule_files: ["%s"]\n' "$PWD/monitoring/alert_rules.yml"
    printf 'alerting: {alertmanagers: [{static_configs: [{targets: ["127.0.0.1:%s"]}]}]}\n' "$am_port"
    printf 'scrape_configs:\n'
    printf '  - job_name: dashstream-ingest\n    static_configs: [{targets: [%s], labels: {deployment: demo}}]\n' \
      "$(printf '"127.0.0.1:%s",' "${ports[@]}" | sed 's/,$//')"
    printf '  - job_name: dashstream-gateway\n    static_configs: [{targets: [%s], labels: {deployment: demo}}]\n' \
      "$(printf '"127.0.0.1:%s",' "${gw_ports[@]}" | sed 's/,$//')"
    printf '  - job_name: redis\n    static_configs: [{targets: ["127.0.0.1:%s"], labels: {deployment: demo}}]\n' \
      "$redis_exporter_port"
  } >"$logdir/prometheus.yml"
  /usr/bin/prometheus --config.file="$logdir/prometheus.yml" --storage.tsdb.path="$logdir/prometheus" \
    --web.listen-address="127.0.0.1:$prom_port" >"$logdir/prometheus.log" 2>&1 &
  pids+=("$!")
  monitoring_info="  Prometheus:       http://127.0.0.1:$prom_port/alerts   (targets: /targets; config $logdir/prometheus.yml)
  Alertmanager:     http://127.0.0.1:$am_port/
  Redis metrics:    http://127.0.0.1:$redis_exporter_port/metrics   (prometheus-redis-exporter)"
fi

cat <<INFO

DashStream demo is running (topic $TOPIC, $PARTITIONS partitions, $RATE events/s).
  Kafka:            $KAFKA_BROKERS
  Redis:            $REDIS_URL   (streams dashstream:$TOPIC:<partition>)
  ingest metrics:   http://127.0.0.1:${ports[0]}/metrics   http://127.0.0.1:${ports[1]}/metrics
  ingest readiness: http://127.0.0.1:${ports[0]}/readyz    http://127.0.0.1:${ports[1]}/readyz
  live viewer:      http://127.0.0.1:$lb_port/#token=$token
                    (through the load balancer; the token, valid 24 h, grants every tenant)
  WebSocket:        ws://127.0.0.1:$lb_port/ws?from=latest   (format=protobuf, tenant=, thread=, type= filters)
                    with the header "Authorization: Bearer <token>", e.g.
                    $BIN/dashstream tail ws --url ws://127.0.0.1:$lb_port/ws --token "\$(cat $logdir/token)"
  a token for one tenant: $BIN/dashstream token --secret-file $secret --audience dashstream-demo --tenants tenant-0
  gateway metrics:  $(for p in "${gw_ports[@]}"; do printf 'http://127.0.0.1:%s/metrics  ' "$p"; done)
  watch a stream:   redis-cli -u $REDIS_URL XREVRANGE 'dashstream:{$TOPIC:0}' + - COUNT 3
$monitoring_info
  logs:             $logdir
Press Ctrl-C to stop.
INFO
wait -n "${pids[@]}" || true
log "a demo process exited; see $logdir"
