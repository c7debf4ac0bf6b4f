"""``fedattn results SESSION``: what a FedSession reached and where its outputs are, from the kubeconfig.

Like CloudNativePG's ``kubectl cnpg status``, it reads the custom resource's status and follows the
names it gives: ``status.progress`` (rounds, accuracy, epsilon, loss), ``status.outputs.model`` and
``metrics`` (in the ``spec.output`` claim, or a checkpoint with the ``kubectl`` line that copies it
out) and ``status.outputs.text`` (the
attention publisher's Secret, decoded and printed). Installed also as ``kubectl-fedattn``, so
``kubectl fedattn results SESSION`` works as a kubectl plugin. It needs ``get`` on fedsessions and,
for the text, on that one Secret: RBAC decides who reads the answer, not this tool.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from typing import Any

from kubernetes import client, config
from kubernetes.client import ApiException

GROUP, VERSION, PLURAL = "fedattn.io", "v1alpha1", "fedsessions"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("session", help="FedSession name")
    parser.add_argument("-n", "--namespace", default=None, help="namespace (default: the kubeconfig context's)")
    parser.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _api(context: str | None) -> tuple[client.ApiClient, str]:
    """A client from the kubeconfig (in-cluster first, as kubectl in a pod) and the default namespace."""
    try:
        config.load_incluster_config()
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return client.ApiClient(), f.read().strip()
    except config.ConfigException:
        pass
    contexts, active = config.list_kube_config_contexts()
    chosen = next((c for c in contexts if c["name"] == context), None) if context else active
    if chosen is None:
        raise LookupError(f"no context {context!r} in the kubeconfig")
    api = config.new_client_from_config(context=context)
    return api, (chosen.get("context") or {}).get("namespace") or "default"


def results(api: client.ApiClient, *, namespace: str, session: str) -> dict[str, Any]:
    """The session's progress and outputs, with the publisher's text read from its Secret.

    Raises LookupError naming what is missing (the session, or the Secret its status names).
    """
    custom = client.CustomObjectsApi(api)
    try:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, session)
    except ApiException as exc:
        if exc.status == 404:
            raise LookupError(f"no FedSession {session!r} in namespace {namespace!r}") from None
        raise
    status = obj.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    out: dict[str, Any] = {
        "session": session,
        "namespace": namespace,
        "phase": status.get("phase", "Pending"),
        "reason": ready.get("reason", ""),
        "message": status.get("message", ""),
        "progress": status.get("progress") or {},
        "outputs": status.get("outputs") or {},
    }
    text = out["outputs"].get("text")
    if text:
        try:
            secret = client.CoreV1Api(api).read_namespaced_secret(text["secretName"], namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise LookupError(f"status names Secret {text['secretName']!r}, which does not exist") from None
            raise
        data = (secret.data or {}).get(text["key"])
        out["text"] = base64.b64decode(data).decode() if data is not None else None
    return out


def render(found: dict[str, Any]) -> str:
    """The human form: one line of state, the progress, then each output."""
    progress, outputs = found["progress"], found["outputs"]
    lines = [f"{found['namespace']}/{found['session']}: {found['phase']} ({found['reason'] or 'no reason yet'})"]
    if found["message"]:
        lines.append(f"  message: {found['message']}")
    labels = {"rounds": "rounds", "accuracy": "accuracy", "loss": "loss", "epsilonSpent": "epsilon spent",
              "lastRoundAt": "last round at"}  # fmt: skip
    lines += [f"  {label}: {progress[key]}" for key, label in labels.items() if key in progress]
    for role in ("model", "metrics"):
        where = outputs.get(role)
        if where and where.get("claimName"):
            lines.append(f"  {role}: {where['path']} in PersistentVolumeClaim {where['claimName']}")
        elif where:
            lines.append(f"  {role}: {where['path']} in deployment/{where['deployment']}; copy it out with")
            lines.append(
                f"    kubectl -n {found['namespace']} exec deploy/{where['deployment']} -- cat {where['path']}"
                f" > {where['path'].rsplit('/', 1)[-1]}"
            )
    if "text" in found:
        lines.append(f"  text (Secret {outputs['text']['secretName']}, key {outputs['text']['key']}):")
        lines.append(found["text"] if found["text"] is not None else "    (the Secret holds no text yet)")
    if not outputs:
        lines.append("  outputs: none yet")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        api, namespace = _api(args.context)
        found = results(api, namespace=args.namespace or namespace, session=args.session)
    except LookupError as exc:
        print(f"fedattn results: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(found, indent=2) if args.json else render(found))
    return 0
