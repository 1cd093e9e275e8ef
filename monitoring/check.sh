#!/usr/bin/env bash
# monitoring/check.sh — checks of monitoring/: `promtool check rules` and `check config`, the
# rule unit tests (`promtool test rules`), and a parse of the Grafana dashboard. Installs
# Debian's prometheus package (promtool, and the server the scrape test uses) if missing,
# without letting the package start a Prometheus service.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=../deploy/local/lib.sh
source ../deploy/local/lib.sh

if ! command -v promtool >/dev/null || [[ ! -x /usr/bin/prometheus ]]; then
  # Installed without letting Debian start a Prometheus service (see lib.sh).
  ensure_service_packages prometheus
fi
promtool check rules alert_rules.yml
promtool check config prometheus.yml
promtool test rules tests/alert_rules_test.yml
promtool test rules tests/retention_test.yml
promtool test rules tests/redis_rules_test.yml
# The redis_* names the rules use, against Debian's prometheus-redis-exporter on a throwaway Redis.
bash redis_exporter_check.sh
# The operability review's appendix, ported to assert the fixed behaviour.
promtool test rules tests/ops_review_test.yml tests/ops_review_dlq_test.yml
# The runbook quotes every rule as the rules file has it.
python3 check_runbook.py
python3 -c "import json; d = json.load(open('grafana/dashstream.json')); print('dashboard:', len(d['panels']), 'panels')"
