"""The attention publisher's answer, written by its own pod to the Secret its FedParticipant owns.

The text never crosses the coordinator or the operator (they see only the shareable summary): the
operator creates the empty Secret ``P-output`` and a ServiceAccount allowed to ``get``/``patch`` that
one Secret; this pod patches the text in. ``status.outputs.text`` names the Secret once the publisher
is done, and ``fedattn results`` reads it back for whoever RBAC lets read it.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from kubernetes import client, config

from fedattn.api.schema import OUTPUT_TEXT_KEY

#: where a pod finds its namespace (the ServiceAccount token's directory)
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def in_cluster_namespace() -> str:
    """The pod's namespace: ``$POD_NAMESPACE`` if set (downward API), else the ServiceAccount's file."""
    return os.environ.get("POD_NAMESPACE") or NAMESPACE_FILE.read_text().strip()


def publish_text(text: str, *, secret: str, namespace: str, api: client.ApiClient | None = None) -> None:
    """Patch ``text`` into ``secret`` (key ``text``); ``api`` defaults to the pod's in-cluster identity."""
    if api is None:
        config.load_incluster_config()
        api = client.ApiClient()
    body = {"data": {OUTPUT_TEXT_KEY: base64.b64encode(text.encode()).decode()}}
    client.CoreV1Api(api).patch_namespaced_secret(secret, namespace, body)
