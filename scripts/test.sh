#!/usr/bin/env bash
# The whole test suite: installs what it needs (idempotent), lints, then runs pytest.
# FEDATTN_PODS=1 also runs the pod suite afterwards (sessions in real pods on a local single-node
# cluster, tests/k8s/node.py; about 20 min warm, more with a cold node/image build), in a run of its own
# because its node, images and chart are set up once for all of it. Alone: pytest -m pods tests/k8s
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --test
.venv/bin/ruff check operator tests benchmarks
if [ "${FEDATTN_PODS:-0}" != 1 ] || [ "$#" -gt 0 ]; then
    exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
fi
.venv/bin/python -m pytest -q -p no:cacheprovider
exec .venv/bin/python -m pytest -q -p no:cacheprovider -m pods tests/k8s
