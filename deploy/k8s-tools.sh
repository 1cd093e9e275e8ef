#!/usr/bin/env bash
# deploy/k8s-tools.sh — sourced by deploy/render.sh and deploy/check.sh: installs Helm (from its
# Go module, into .local/bin) if it is missing or not the pinned version, and builds the
# validator (deploy/validate) into .local/bin. Both are idempotent; Go's module and build caches
# (~/go/pkg/mod, ~/.cache/go-build) make a second machine-local run take seconds.
HELM_VERSION=v4.3.2
K8S_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
K8S_BIN="$K8S_ROOT/.local/bin"
HELM="$K8S_BIN/helm"
VALIDATE="$K8S_BIN/dashstream-k8s-validate"
CHART="$K8S_ROOT/deploy/helm/dashstream"

k8s_log() { printf '[deploy] %s\n' "$*" >&2; }

ensure_helm() {
  command -v go >/dev/null || { k8s_log "go is required (Go 1.26) to install Helm"; return 1; }
  if [[ -x "$HELM" && "$(cat "$HELM.version" 2>/dev/null)" == "$HELM_VERSION" ]]; then
    return 0
  fi
  k8s_log "installing helm $HELM_VERSION into .local/bin (go install; minutes on a fresh machine)"
  mkdir -p "$K8S_BIN"
  GOBIN="$K8S_BIN" GOFLAGS=-buildvcs=false go install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
  echo "$HELM_VERSION" >"$HELM.version"
}

ensure_validator() {
  command -v go >/dev/null || { k8s_log "go is required (Go 1.26) for the validator"; return 1; }
  # go build is incremental: a no-op when deploy/validate did not change.
  mkdir -p "$K8S_BIN"
  (cd "$K8S_ROOT/deploy/validate" && GOFLAGS=-buildvcs=false go build -mod=readonly -o "$VALIDATE" .)
}

# render_chart OUTDIR [helm template flags...]: the chart rendered as one file per template.
render_chart() {
  local out="$1"
  shift
  local tmp
  tmp="$(mktemp -d)"
  "$HELM" template dashstream "$CHART" --output-dir "$tmp" "$@" >/dev/null
  mkdir -p "$out"
  local f
  for f in "$tmp"/dashstream/templates/*.yaml; do
    {
      echo "# Rendered by deploy/render.sh from deploy/helm/dashstream/templates/$(basename "$f")"
      echo "# (default values). Do not edit: change the chart and run deploy/render.sh."
      cat "$f"
    } >"$out/$(basename "$f")"
  done
  rm -rf "$tmp"
  {
    echo "# Rendered by deploy/render.sh from deploy/helm/dashstream (default values). Do not edit."
    echo "# Apply with: kubectl apply -k deploy/kubernetes (set the namespace and patch values here"
    echo "# or in an overlay of your own; docs/DEPLOY.md)."
    echo "apiVersion: kustomize.config.k8s.io/v1beta1"
    echo "kind: Kustomization"
    echo "resources:"
    (cd "$out" && for f in *.yaml; do [[ "$f" == kustomization.yaml ]] || echo "  - $f"; done)
  } >"$out/kustomization.yaml"
}
