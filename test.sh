#!/usr/bin/env bash
# test.sh — runs every test of the project against real services, on a fresh machine too:
#   1. installs what is missing (build tools and libraries from Debian; Redis and Apache Kafka
#      come with deploy/local/services.sh),
#   2. starts Kafka and Redis on free local ports (or reuses the ones already running),
#   3. checks the monitoring rules (promtool), formatting and lints, then runs the unit and
#      integration tests (with the metrics contract and a real Prometheus scrape), and the live
#      viewer's test in headless Chromium through an nginx load balancer, every fuzz
#      target for a bounded time (fuzz/run.sh), and a short Locust smoke of the fan-out and
#      resume-storm load tests (load-tests/run.sh),
#   4. stops the services again if it started them.
# Each integration test creates its own topic, consumer group and Redis key prefix, and has
# its own deadline.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=deploy/local/lib.sh
source deploy/local/lib.sh

log "checking build prerequisites"
ensure_apt_packages build-essential pkg-config libssl-dev zlib1g-dev cmake python3 curl
command -v cargo >/dev/null || die "cargo is not installed (Rust 1.85+ is required)"
# The load balancers the gateway tests put in front of it (gateway/tests/proxies.rs), installed
# without letting Debian start their services.
ensure_service_packages nginx haproxy

started_here=0
if ! deploy/local/services.sh status >/dev/null 2>&1; then
  started_here=1
fi
deploy/local/services.sh up >/dev/null
if ((started_here)) && [[ "${KEEP_SERVICES:-0}" != 1 ]]; then
  trap 'deploy/local/services.sh down >/dev/null 2>&1 || true' EXIT
fi
set -a
# shellcheck disable=SC1091
source "$(deploy/local/services.sh path)"
set +a
log "Kafka at $KAFKA_BROKERS, Redis at $REDIS_URL"

log "monitoring: promtool checks, alert rule unit tests, dashboard"
monitoring/check.sh
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "cargo test (unit and integration tests against the real Kafka and Redis)"
# Integration test binaries run one after another; each test has its own deadline.
cargo test --workspace --locked -- --test-threads=2
log "cargo test on the Redis Cluster: the ingest's exactly-once, the gateway's fan-out and resume tests, unchanged"
# The same tests with REDIS_URL set to the local cluster (deploy/local/redis-cluster.sh); the
# cluster's own tests (failover, live slot migration, wake-ups) are gateway/tests/cluster.rs.
REDIS_URL="$REDIS_CLUSTER_URL" cargo test --locked -p dashstream-ingest --test exactly_once -- --test-threads=2
REDIS_URL="$REDIS_CLUSTER_URL" cargo test --locked -p dashstream-gateway --test fanout --test resume -- --test-threads=2
log "Kubernetes: helm lint/template, rendered manifests fresh, strict validation, contract (deploy/check.sh)"
deploy/check.sh
log "fuzzing: the record decoder, the cursor, client frames and the /ws query (FUZZ_SECONDS each)"
fuzz/run.sh
log "load-test smoke: fan-out and resume storm through nginx (Locust; docs/LOAD-TESTS.md)"
# Small and short: these check correctness under load (no hole, no duplicate, every user
# resumed after a replica is killed); the latency bound is loose for debug builds on a shared
# machine. Full runs and their figures: docs/LOAD-TESTS.md.
load-tests/run.sh selftest
load-tests/run.sh fanout --profile debug --users 20 --duration 30 --rate 100 --max-p99-ms 5000
load-tests/run.sh resume-storm --profile debug --users 20 --duration 30 --rate 100
log "browser test: the live viewer in headless Chromium, through the load balancer"
tests/browser/run.sh
log "all tests passed"
