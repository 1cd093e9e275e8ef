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
  guard=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    # Debian runs invoke-rc.d after installing a service; exit 101 means "do not start it".
    # The trap removes it however the install ends (ensure_apt_packages exits on failure):
    # left behind, it would stop every later service start on the machine.
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && guard=1
  fi
  ensure_apt_packages prometheus
  if ((guard)); then
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
fi
promtool check rules alert_rules.yml
promtool check config prometheus.yml
promtool test rules tests/alert_rules_test.yml
python3 -c "import json; d = json.load(open('grafana/dashstream.json')); print('dashboard:', len(d['panels']), 'panels')"
