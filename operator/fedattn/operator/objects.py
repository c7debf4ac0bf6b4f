"""The objects the operator works on: a FedSession or FedParticipant as stored, with its spec typed.

The handlers parse a body once (``handlers._session`` / ``handlers._participant``); builders, status,
credentials and the status source then read spec fields through the typed view
(:class:`fedattn.api.spec.SessionSpec`), and metadata and status as the API server stored them.
"""

from __future__ import annotations

from typing import Any, TypedDict

from fedattn.api.spec import ParticipantSpec, SessionSpec


class Session(TypedDict):
    apiVersion: str
    kind: str
    metadata: dict[str, Any]
    spec: SessionSpec
    status: dict[str, Any]


class Participant(TypedDict):
    apiVersion: str
    kind: str
    metadata: dict[str, Any]
    spec: ParticipantSpec
    status: dict[str, Any]


def manifest(obj: Session | Participant) -> dict[str, Any]:
    """The object as plain JSON (the spec back to its defaulted camelCase dict), e.g. to send on."""
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "metadata": obj["metadata"],
        "spec": obj["spec"].to_manifest(),
    }
