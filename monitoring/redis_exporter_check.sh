#!/usr/bin/env bash
# monitoring/redis_exporter_check.sh — checks that every redis_* metric name the alert rules use
# exists in a real scrape of Debian's prometheus-redis-exporter (a misspelt name would make an
# alert silently never fire). Starts a throwaway redis-server (no persistence, temp dir) and the
# exporter on free 127.0.0.1 ports, scrapes /metrics once Redis answers, and stops both on exit.
# Installs prometheus-redis-exporter and redis-server if missing, without letting Debian start
# their services. Run by monitoring/check.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=../deploy/local/lib.sh
source ../deploy/local/lib.sh

RULES=alert_rules.yml

# Installed without letting Debian start a Redis or exporter service (see lib.sh).
ensure_service_packages prometheus-redis-exporter redis-server
command -v curl >/dev/null || ensure_apt_packages curl

# The names the rules use: every redis_[a-z_]+ that starts a name (not the tail of the services'
# own dashstream_*_redis_* metrics) outside YAML comments (they name files such as this script).
mapfile -t names < <(
  grep -v '^[[:space:]]*#' "$RULES" | sed -E 's/[[:space:]]#.*$//' |
    grep -oE '(^|[^A-Za-z0-9_:])redis_[a-z_]+' | sed -E 's/^[^A-Za-z0-9_:]//' | sort -u
)
((${#names[@]} > 0)) || die "no redis_* metric names found in $RULES"

tmp="$(mktemp -d)"
redis_pid=""
exporter_pid=""
cleanup() {
  local pid
  for pid in "$exporter_pid" "$redis_pid"; do
    [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "$exporter_pid" "$redis_pid"; do
    [[ -n "$pid" ]] && wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT

mapfile -t ports < <(free_ports 2)
redis_port="${ports[0]}"
exporter_port="${ports[1]}"

redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$tmp" --save '' --appendonly no \
  --daemonize no --logfile "$tmp/redis.log" &
redis_pid=$!
WAIT_FOR_ABORT="kill -0 $redis_pid" \
  wait_for "redis-server on 127.0.0.1:$redis_port" 20 redis-cli -h 127.0.0.1 -p "$redis_port" ping ||
  die "redis-server did not start; its log: $(cat "$tmp/redis.log" 2>/dev/null)"

prometheus-redis-exporter -redis.addr "redis://127.0.0.1:$redis_port" \
  -web.listen-address "127.0.0.1:$exporter_port" >"$tmp/exporter.log" 2>&1 &
exporter_pid=$!
url="http://127.0.0.1:$exporter_port/metrics"
WAIT_FOR_ABORT="kill -0 $exporter_pid" \
  wait_for "prometheus-redis-exporter on 127.0.0.1:$exporter_port" 20 curl -fsS -o /dev/null "$url" ||
  die "the exporter did not answer; its log: $(cat "$tmp/exporter.log" 2>/dev/null)"

scrape="$(curl -fsS "$url")"
# Without a connection to Redis the exporter serves redis_up 0 and hardly anything else.
grep -qx 'redis_up 1' <<<"$scrape" || die "the exporter does not reach Redis (no 'redis_up 1' in $url)"
# The names of the samples (not the HELP/TYPE lines).
present="$(grep -v '^#' <<<"$scrape" | sed -E 's/[{ ].*$//' | sort -u)"

missing=()
for name in "${names[@]}"; do
  grep -qx "$name" <<<"$present" || missing+=("$name")
done
echo "redis exporter: checked ${#names[@]} names from $RULES: ${names[*]}"
if ((${#missing[@]})); then
  die "not in the scrape of prometheus-redis-exporter: ${missing[*]}"
fi
echo "redis exporter: all present"
