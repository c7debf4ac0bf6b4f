"""`helm test`: the API server accepts a valid FedSession and rejects an invalid one, both as a server-side
dry run (nothing is stored, no session starts). Proves the CRDs are installed, served and validating, and
that this namespace's users can create sessions. Runs in the operator image (Python, kubernetes client);
the namespace comes from FEDATTN_TEST_NAMESPACE."""

import os
import sys

from kubernetes import client, config

try:
    config.load_incluster_config()
except config.ConfigException:  # NB: outside a pod (the chart's own tests): $KUBECONFIG
    config.load_kube_config()

NAMESPACE = os.environ["FEDATTN_TEST_NAMESPACE"]
api = client.CustomObjectsApi()


def dry_run_create(name: str, **spec: object) -> dict:
    body = {
        "apiVersion": "fedattn.io/v1alpha1",
        "kind": "FedSession",
        "metadata": {"name": name},
        "spec": {"mode": "learning", "minParticipants": 2, "rounds": 1, **spec},
    }
    return api.create_namespaced_custom_object("fedattn.io", "v1alpha1", NAMESPACE, "fedsessions", body, dry_run="All")


accepted = dry_run_create("helm-test-dry-run")
print(f"dry-run create of FedSession {NAMESPACE}/helm-test-dry-run accepted; defaulted roundTimeoutSeconds="
      f"{accepted['spec'].get('roundTimeoutSeconds')}")  # fmt: skip
if "roundTimeoutSeconds" not in accepted["spec"]:
    sys.exit("the API server applied no schema defaults: is the FedSession CRD the chart's?")
try:
    dry_run_create("helm-test-invalid", minParticipants=0)
except client.ApiException as exc:
    if exc.status != 422:
        raise
    print("an invalid FedSession (minParticipants: 0) was rejected:", exc.reason)
else:
    sys.exit("an invalid FedSession (minParticipants: 0) was accepted: the CRD does not validate")
