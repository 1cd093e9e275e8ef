#!/usr/bin/env bash
# load-tests/run.sh SCENARIO [options] — a Locust load test of DashStream through the load
# balancer (docs/LOAD-TESTS.md). Scenarios: fanout, resume-storm, connection-ramp,
# slow-consumers, filters. `load-tests/run.sh fanout --help` lists the options;
# `load-tests/run.sh selftest` runs the harness's unit tests.
#
# Installs Locust (and websocket-client, matplotlib) into load-tests/.venv if missing, then
# runs load-tests/runner.py, which brings up the local stack unless --target is given, runs
# Locust headless, writes load-tests/results/<scenario>-<time>/ and exits non-zero when a
# threshold fails.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=../deploy/local/lib.sh
source "$here/../deploy/local/lib.sh"
venv="${DSLOAD_VENV:-$here/.venv}"
stamp="$venv/.requirements"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv" 2>/dev/null || {
    ensure_apt_packages python3-venv
    rm -rf "$venv"
    python3 -m venv "$venv"
  }
fi
if ! cmp -s "$here/requirements.txt" "$stamp"; then
  log "installing Locust into $venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$stamp"
fi
if [[ "${1:-}" == selftest ]]; then
  # The harness's own checks (hole and gap logic, the frame reader) on made-up input.
  exec "$venv/bin/python" -m unittest discover -s "$here" -p 'test_*.py'
fi
exec "$venv/bin/python" "$here/runner.py" "$@"
