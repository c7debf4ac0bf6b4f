"""`helm uninstall`'s pre-delete hook: leave no FedSession or FedParticipant that cannot be deleted.

Both carry the operator's finalizer (fedattn.io/finalizer: FedParticipants for their revocation, FedSessions
for their status daemon); once the operator is gone, deleting them hangs. While the operator still runs:

- FEDATTN_UNINSTALL=orphan (the chart's default): stop the operator, then remove its finalizer from every
  object, so sessions outlive the release like cert-manager's Certificates and CloudNativePG's Clusters do
  (their pods keep running, unmanaged) and can be deleted at any time; a reinstalled operator adopts them.
- FEDATTN_UNINSTALL=delete: delete them all and wait until the operator has revoked and cleaned up each.

FEDATTN_NAMESPACES: comma-separated namespaces, "" for all; FEDATTN_OPERATOR: namespace/name of the
operator Deployment; FEDATTN_TIMEOUT_SECONDS bounds every wait. Runs in the operator image."""

import os
import sys
import time
from collections.abc import Callable

from kubernetes import client, config

try:
    config.load_incluster_config()
except config.ConfigException:  # NB: outside a pod (the chart's own tests): $KUBECONFIG
    config.load_kube_config()

FINALIZER = "fedattn.io/finalizer"
GROUP, VERSION = "fedattn.io", "v1alpha1"
PLURALS = ("fedparticipants", "fedsessions")  # NB: participants first: their revocation reads the session
POLICY = os.environ["FEDATTN_UNINSTALL"]
NAMESPACES = [n for n in os.environ.get("FEDATTN_NAMESPACES", "").split(",") if n]
OPERATOR_NAMESPACE, OPERATOR = os.environ["FEDATTN_OPERATOR"].split("/")
TIMEOUT = float(os.environ.get("FEDATTN_TIMEOUT_SECONDS", "300"))
DEADLINE = time.monotonic() + TIMEOUT
custom = client.CustomObjectsApi()


def objects(plural: str) -> list[dict]:
    if not NAMESPACES:
        return custom.list_cluster_custom_object(GROUP, VERSION, plural)["items"]
    return [o for ns in NAMESPACES for o in custom.list_namespaced_custom_object(GROUP, VERSION, ns, plural)["items"]]


def wait(what: str, done: Callable[[], bool]) -> None:
    while not done():
        if time.monotonic() > DEADLINE:
            sys.exit(f"gave up after {TIMEOUT:.0f} s waiting for {what}")
        time.sleep(2)


def orphan() -> None:
    apps, core = client.AppsV1Api(), client.CoreV1Api()
    scaled = apps.patch_namespaced_deployment(OPERATOR, OPERATOR_NAMESPACE, {"spec": {"replicas": 0}})
    selector = ",".join(f"{k}={v}" for k, v in scaled.spec.selector.match_labels.items())

    def stopped() -> bool:  # NB: a terminating pod still runs kopf, which would put its finalizer back
        return not core.list_namespaced_pod(OPERATOR_NAMESPACE, label_selector=selector).items

    wait("the operator's pods to be gone", stopped)
    for plural in PLURALS:
        for obj in objects(plural):
            meta = obj["metadata"]
            kept = [f for f in meta.get("finalizers") or [] if f != FINALIZER]
            if len(kept) != len(meta.get("finalizers") or []):
                patch = {"metadata": {"finalizers": kept, "resourceVersion": meta["resourceVersion"]}}
                custom.patch_namespaced_custom_object(GROUP, VERSION, meta["namespace"], plural, meta["name"], patch)
                print(f"{plural} {meta['namespace']}/{meta['name']}: finalizer removed, left in place")


def delete() -> None:
    for plural in PLURALS:
        for obj in objects(plural):
            meta = obj["metadata"]
            try:
                custom.delete_namespaced_custom_object(GROUP, VERSION, meta["namespace"], plural, meta["name"])
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
            print(f"{plural} {meta['namespace']}/{meta['name']}: deleted")
    wait("the operator to clean up the deleted FedSessions/FedParticipants", lambda: not any(map(objects, PLURALS)))


{"orphan": orphan, "delete": delete}[POLICY]()
print(f"uninstall policy {POLICY}: done")
