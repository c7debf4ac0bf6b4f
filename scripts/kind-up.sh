#!/usr/bin/env bash
# A local two-site cluster with fedattn running in it:
#   1. `kind create cluster` from kind-config.yaml (control plane + workers labelled fedattn.io/site=a|b);
#   2. scripts/build-images.sh, then `kind load docker-image` of every component image;
#   3. `helm upgrade --install` of charts/fedattn into namespace fedattn (operator watching it);
#   4. `kubectl apply` of an example session, and waits until the operator reports it.
# Needs kind, kubectl, helm and docker on PATH. Idempotent: re-running reuses the cluster and release.
# Usage: scripts/kind-up.sh [EXAMPLE.yaml]   (default examples/learning-digits.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=fedattn
NAMESPACE=fedattn
EXAMPLE=${1:-examples/learning-digits.yaml}
bash scripts/bootstrap.sh  # .venv: build-images.sh makes its wheelhouse from it
TAG=$(.venv/bin/python -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')
for tool in kind kubectl helm docker; do
    command -v "$tool" >/dev/null || { echo "kind-up: $tool is not on PATH" >&2; exit 1; }
done

if ! kind get clusters | grep -qx "$CLUSTER"; then
    kind create cluster --name "$CLUSTER" --config kind-config.yaml --wait 120s
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

bash scripts/build-images.sh "$TAG"
for c in operator coordinator aggregator participant; do
    kind load docker-image --name "$CLUSTER" "fedattn-$c:$TAG"
done
# NB: fedattn:TAG (tagged by build-images.sh) is the operator's default image for the children.
kind load docker-image --name "$CLUSTER" "fedattn:$TAG"

bash scripts/sync-chart.sh --check
helm upgrade --install fedattn charts/fedattn --namespace "$NAMESPACE" --create-namespace \
    --set image.tag="$TAG" --wait --timeout 5m
helm test fedattn --namespace "$NAMESPACE" --timeout 2m

kubectl apply --namespace "$NAMESPACE" -f "$EXAMPLE"
session=$(.venv/bin/python - "$EXAMPLE" <<'PY'
import sys, yaml
print(next(d["metadata"]["name"] for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "FedSession"))
PY
)
echo "waiting for FedSession/$session to be Running..."
kubectl wait --namespace "$NAMESPACE" --for=jsonpath='{.status.phase}'=Running "fedsession/$session" --timeout=5m \
    2>/dev/null || kubectl get --namespace "$NAMESPACE" "fedsession/$session" -o yaml
kubectl get --namespace "$NAMESPACE" fedsessions,fedparticipants,deployments,jobs,pods -o wide
