#!/usr/bin/env bash
# The main job: a local federated session on the embedded default (SQLite store, fresh CA, loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/fedattn run "${1:-examples/learning-digits.yaml}" "${@:2}"
