#!/usr/bin/env bash
# The whole test suite: installs what it needs (idempotent), lints, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --test
.venv/bin/ruff check operator tests benchmarks
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
