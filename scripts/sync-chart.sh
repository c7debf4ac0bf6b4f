#!/usr/bin/env bash
# Copies the generated CRDs (crds/*.yaml) and the operator's RBAC rules into the Helm chart, so the
# chart never carries a hand-edited copy. `--check` only reports drift (a test runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
exec "$PY" scripts/k8s/sync_chart.py "$@"
