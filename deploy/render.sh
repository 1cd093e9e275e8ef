#!/usr/bin/env bash
# deploy/render.sh — the chart is the source; this makes everything derived from it:
#   1. copies monitoring/alert_rules.yml and monitoring/grafana/dashstream.json into the chart's
#      files/ (Helm cannot read outside the chart; deploy/check.sh checks the copies),
#   2. renders the chart with its default values into deploy/kubernetes/ (one file per
#      template, and kustomization.yaml), for `kubectl apply -k` users.
# Run it after changing the chart or those two monitoring files; deploy/check.sh fails while
# deploy/kubernetes/ or the copies are stale.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=deploy/k8s-tools.sh
source deploy/k8s-tools.sh
ensure_helm
cp monitoring/alert_rules.yml "$CHART/files/alert_rules.yml"
cp monitoring/grafana/dashstream.json "$CHART/files/dashstream.json"
rm -rf deploy/kubernetes
render_chart deploy/kubernetes
k8s_log "rendered $(find deploy/kubernetes -name '*.yaml' | wc -l) files into deploy/kubernetes/"
