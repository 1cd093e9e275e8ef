#!/usr/bin/env bash
# deploy/check-dockerfile.sh — a static check of the Dockerfile (no container engine here):
# multi-stage; every FROM pinned to an exact version or a digest (no `latest`, no bare
# major); the final stage's USER numeric and not root, and the one the chart runs as; the
# binaries it copies are exactly the workspace's bin targets the chart's containers run
# (ingest, gateway, dashstream), each built by the cargo command; a .dockerignore that keeps
# target/ and .git out.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
f=Dockerfile
fail=0
bad() { echo "FAIL: Dockerfile: $*" >&2; fail=1; }

mapfile -t froms < <(grep -E '^FROM ' "$f" | awk '{print $2}')
((${#froms[@]} >= 2)) || bad "not multi-stage"
for img in "${froms[@]}"; do
  [[ "$img" == *@sha256:* ]] && continue
  tag="${img##*:}"
  [[ "$img" == *:* && "$tag" =~ [0-9]+\.[0-9]+|[0-9]{8} && "$tag" != *latest* ]] || bad "FROM $img is not pinned to an exact version"
done

user="$(awk '/^FROM /{u=""} /^USER /{u=$2} END{print u}' "$f")"
[[ "$user" =~ ^[0-9]+(:[0-9]+)?$ ]] || bad "the final stage's USER ($user) is not numeric"
[[ "${user%%:*}" != 0 && -n "$user" ]] || bad "the final stage runs as root"
chart_user="$(awk '/^podSecurity:/{p=1} p && /runAsUser:/{print $2; exit}' deploy/helm/dashstream/values.yaml)"
[[ "${user%%:*}" == "$chart_user" ]] || bad "USER $user is not the chart's podSecurity.runAsUser ($chart_user)"

bins="$(cargo metadata --no-deps --format-version 1 --locked |
  python3 -c 'import json,sys; print(" ".join(sorted(t["name"] for p in json.load(sys.stdin)["packages"] for t in p["targets"] if "bin" in t["kind"])))')"
copied="$(grep -E '^COPY --from=build ' "$f" | tr ' ' '\n' | grep '^/out/' | sed 's#^/out/##' | sort | tr '\n' ' ')"
for b in ingest gateway dashstream; do
  [[ " $bins " == *" $b "* ]] || bad "$b is not a cargo bin target"
  [[ " $copied " == *" $b "* ]] || bad "the final stage does not copy $b"
  grep -q "target/release/$b" "$f" || bad "the build stage does not produce target/release/$b"
done
for b in $copied; do
  [[ " $bins " == *" $b "* ]] || bad "it copies $b, which is no cargo bin target"
done
# The chart runs only binaries the image has (and `sleep` in the gateway's preStop, from the
# Debian base).
mapfile -t cmds < <(grep -ho 'command: \[[a-z]*' deploy/helm/dashstream/templates/{ingest,gateway,provision-job}.yaml | sed 's/command: \[//')
for cmd in "${cmds[@]}"; do
  [[ "$cmd" == sleep || " $copied " == *" $cmd "* ]] || bad "the chart runs $cmd, which the image does not have"
done
for p in target .git; do
  grep -qx "$p" .dockerignore || bad ".dockerignore does not exclude $p"
done
((fail == 0)) && echo "Dockerfile: multi-stage, pinned bases, USER $user, binaries: $copied"
exit "$fail"
