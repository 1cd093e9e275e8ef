#!/usr/bin/env bash
# deploy/check.sh — the Kubernetes deployment, checked: run by ./test.sh after cargo test.
#   1. Helm (pinned, installed from its Go module into .local/bin) and the validator
#      (deploy/validate, a Go module pinning k8s.io/api and prometheus-operator's types);
#   2. the chart's copies of monitoring/alert_rules.yml and the Grafana dashboard equal their
#      sources byte for byte, and deploy/kubernetes/ equals a fresh render (else: run
#      deploy/render.sh);
#   3. for the default, dev and production values: helm lint, helm template, strict decoding of
#      every object into the Kubernetes API types (unknown fields are errors) with structural
#      checks, and the contract (deploy/validate/contract.go): each container of ours runs
#      `--check-config` with exactly its rendered environment and generated secret files, in a
#      private mount namespace (unshare -m, as root) where /run holds them at the rendered
#      paths; probes, ports, grace periods, alert rules and dashboard against their sources;
#   4. the Dockerfile's static check (deploy/check-dockerfile.sh).
# The binaries: target/debug/{ingest,gateway,dashstream}, built here (a no-op after cargo test),
# or those in DASHSTREAM_BIN_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=deploy/k8s-tools.sh
source deploy/k8s-tools.sh
BIN_DIR="${DASHSTREAM_BIN_DIR:-target/debug}"
if [[ -z "${DASHSTREAM_BIN_DIR:-}" ]]; then
  # A no-op after cargo test (the same dev profile), seconds otherwise.
  cargo build --locked -q -p dashstream-ingest -p dashstream-gateway -p dashstream
fi
for b in ingest gateway dashstream; do
  [[ -x "$BIN_DIR/$b" ]] || { k8s_log "$BIN_DIR/$b is missing: cargo build --locked -p dashstream-ingest -p dashstream-gateway -p dashstream"; exit 1; }
done
ensure_helm
ensure_validator

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
failed=0

k8s_log "the chart's copies of the monitoring files"
for pair in "monitoring/alert_rules.yml:files/alert_rules.yml" "monitoring/grafana/dashstream.json:files/dashstream.json"; do
  if ! cmp -s "${pair%%:*}" "$CHART/${pair#*:}"; then
    k8s_log "FAIL: $CHART/${pair#*:} is not a copy of ${pair%%:*}: run deploy/render.sh"
    failed=1
  fi
done

k8s_log "deploy/kubernetes/ against a fresh render"
render_chart "$tmp/kubernetes"
if ! diff -ru deploy/kubernetes "$tmp/kubernetes" >"$tmp/stale.diff"; then
  k8s_log "FAIL: deploy/kubernetes/ is stale: run deploy/render.sh"
  head -40 "$tmp/stale.diff" >&2
  failed=1
fi

for values in default dev production; do
  flags=()
  [[ "$values" == default ]] || flags=(-f "$CHART/values-$values.yaml")
  k8s_log "values: $values — helm lint, helm template, strict validation, contract"
  "$HELM" lint --strict "$CHART" "${flags[@]}" >"$tmp/lint.log" 2>&1 || {
    cat "$tmp/lint.log" >&2
    failed=1
  }
  out="$tmp/render-$values"
  if ! render_chart "$out" "${flags[@]}" 2>"$tmp/template.log"; then
    cat "$tmp/template.log" >&2
    failed=1
    continue
  fi
  rm "$out/kustomization.yaml"
  "$VALIDATE" validate "$out"/*.yaml || failed=1
  "$VALIDATE" contract -bin "$BIN_DIR" -sources . "$out"/*.yaml || failed=1
done

k8s_log "Dockerfile"
deploy/check-dockerfile.sh || failed=1

if ((failed)); then
  k8s_log "deployment checks FAILED"
  exit 1
fi
k8s_log "deployment checks passed"
