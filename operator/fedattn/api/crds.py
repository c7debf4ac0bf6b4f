"""CustomResourceDefinitions built from :mod:`fedattn.api.schema` (pure functions, dicts out).

Two flavours: the default one carries CEL ``x-kubernetes-validations``; the ``legacy`` one strips
them for API servers older than 1.25. NB: a v1.20 API server decodes CRDs leniently and silently
drops the unknown ``x-kubernetes-validations`` key, but ``kubectl apply`` validates client-side
against the server's OpenAPI and rejects it ("unknown field x-kubernetes-validations in
...JSONSchemaProps"), so old clusters get the legacy files; the operator's own checks and
:func:`fedattn.api.apply_defaults_and_validate` still enforce the same rules there.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import yaml

from fedattn.api import schema
from fedattn.api.fields import Schema

CEL_KEY = "x-kubernetes-validations"


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    short: str
    description: str
    spec: Schema
    status: Schema
    columns: list[dict[str, Any]]
    rules: tuple[tuple[str, str], ...] = ()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{schema.GROUP}"

    @property
    def openapi(self) -> Schema:
        return schema.root(self.description, spec=self.spec, status=self.status, rules=list(self.rules))


def kinds() -> dict[str, Kind]:
    """Both kinds by ``kind`` name."""
    age = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    return {
        "FedSession": Kind(
            kind="FedSession",
            plural="fedsessions",
            short="fs",
            description="A federated attention or federated learning session.",
            spec=schema.session_spec(),
            status=schema.session_status(),
            columns=[
                {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
                {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                {"name": "Rounds", "type": "string", "jsonPath": ".status.progress.rounds"},
                {"name": "Participants", "type": "integer", "jsonPath": ".status.participants.ready"},
                {"name": "Accuracy", "type": "number", "jsonPath": ".status.progress.accuracy"},
                {"name": "Epsilon", "type": "number", "jsonPath": ".status.progress.epsilonSpent"},
                # NB: the Ready condition's reason says why a session is where it is (RoundInProgress,
                # QuorumLost, Suspended, Succeeded ...); `kubectl get fs -o wide` shows it
                {
                    "name": "Reason",
                    "type": "string",
                    "priority": 1,
                    "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
                },
                age,
            ],
        ),
        "FedParticipant": Kind(
            kind="FedParticipant",
            plural="fedparticipants",
            short="fp",
            description="One participant of a FedSession: credentials and, in-cluster, a Job.",
            spec=schema.participant_spec(),
            status=schema.participant_status(),
            rules=(schema.reserved_name_rule(),),
            columns=[
                {"name": "Session", "type": "string", "jsonPath": ".spec.sessionRef"},
                {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                {"name": "Contributions", "type": "integer", "jsonPath": ".status.contributions"},
                {"name": "Last heartbeat", "type": "date", "jsonPath": ".status.lastHeartbeat"},
                age,
            ],
        ),
    }


def strip_cel(node: Any) -> Any:
    """A copy of a schema without CEL rules (for API servers that predate them)."""
    if isinstance(node, dict):
        return {k: strip_cel(v) for k, v in node.items() if k != CEL_KEY}
    if isinstance(node, list):
        return [strip_cel(v) for v in node]
    return copy.deepcopy(node)


def build_crd(kind: Kind, *, legacy: bool = False) -> dict[str, Any]:
    openapi = kind.openapi
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.crd_name, "labels": {"app.kubernetes.io/part-of": "fedattn"}},
        "spec": {
            "group": schema.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "shortNames": [kind.short],
                "categories": ["fed"],
            },
            "versions": [
                {
                    "name": schema.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": kind.columns,
                    "schema": {"openAPIV3Schema": strip_cel(openapi) if legacy else openapi},
                }
            ],
        },
    }


def crd_files(*, legacy: bool = False) -> dict[str, str]:
    """File name -> YAML text, exactly what ``crds/`` (or ``crds/legacy/``) holds."""
    header = "# Generated by `fedattn crds`{}; do not edit: change fedattn/api/schema.py.\n"
    flag = " --legacy" if legacy else ""
    return {
        f"{k.plural}.yaml": header.format(flag)
        + yaml.safe_dump(build_crd(k, legacy=legacy), sort_keys=False, width=110)
        for k in kinds().values()
    }
