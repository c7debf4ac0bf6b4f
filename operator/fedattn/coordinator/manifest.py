"""Turn a ``POST /v1/sessions`` body into a validated session definition; pure, no I/O.

Defaults and validation are the CRD schema's own (:func:`fedattn.api.apply_defaults_and_validate`),
then the cross-object rules only the coordinator can check: participants point at this session,
names are unique, there are enough of them for the quorum, the publisher is one of them.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from fedattn.api import ManifestError, apply_defaults_and_validate
from fedattn.api.spec import ParticipantSpec, SessionSpec
from fedattn.coordinator.rounds import Settings


class InvalidSession(ValueError):
    """Valid JSON that does not describe a runnable session (HTTP 422); the text says what to fix."""


@dataclass(frozen=True)
class SessionDefinition:
    name: str
    mode: str
    #: the defaulted spec as JSON: what is stored and sent on (read fields through :attr:`typed`)
    spec: dict[str, Any]
    #: participant name -> aggregation weight, in the order given (a participant's ``index``)
    weights: dict[str, float]

    @functools.cached_property
    def typed(self) -> SessionSpec:
        """The spec parsed once (typed, schema defaults); NB: cached_property writes the instance
        ``__dict__`` directly, so it works on a frozen dataclass."""
        return SessionSpec.from_manifest(self.spec)

    @property
    def fingerprint(self) -> str:
        """Same fingerprint = same session (a retried create is idempotent, another one conflicts)."""
        doc = json.dumps({"spec": self.spec, "weights": self.weights}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(doc.encode()).hexdigest()


def _validated(kind: str, obj: Any, *, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise InvalidSession(f"{where} must be a {kind} object")
    try:
        return apply_defaults_and_validate(kind, obj)
    except ManifestError as exc:
        raise InvalidSession(str(exc)) from None


def parse_create(body: dict[str, Any]) -> SessionDefinition:
    """The session a ``{manifest, participants}`` body describes; raises :class:`InvalidSession`."""
    manifest = _validated("FedSession", body.get("manifest"), where="manifest")
    name = manifest["metadata"]["name"]
    spec = SessionSpec.from_manifest(manifest)
    raw = body.get("participants")
    if not isinstance(raw, list) or not raw:
        raise InvalidSession("participants must be a non-empty list of FedParticipant objects")
    weights: dict[str, float] = {}
    for i, obj in enumerate(raw):
        p = _validated("FedParticipant", obj, where=f"participants[{i}]")
        pname = p["metadata"]["name"]
        pspec = ParticipantSpec.from_manifest(p)
        if pspec.session_ref != name:
            raise InvalidSession(f"participants[{i}] ({pname}): sessionRef is {pspec.session_ref!r}, not {name!r}")
        if pname in weights:
            raise InvalidSession(f"participants[{i}]: {pname} is listed twice")
        weights[pname] = pspec.weight
    quorum = spec.min_participants
    if quorum > len(weights):
        raise InvalidSession(f"spec.minParticipants is {quorum} but only {len(weights)} participants are listed")
    if spec.mode == "attention" and spec.publisher not in weights:
        raise InvalidSession(f"spec.publisher {spec.publisher!r} must be one of {sorted(weights)}")
    return SessionDefinition(name=name, mode=spec.mode, spec=manifest["spec"], weights=weights)


def settings_for(definition: SessionDefinition) -> Settings:
    """The state machine's settings from the typed spec (attention sessions have no rounds)."""
    spec = definition.typed
    deadline = spec.active_deadline_seconds
    return Settings(
        mode=spec.mode,
        participants=tuple(definition.weights),
        min_participants=spec.min_participants,
        rounds=spec.rounds if spec.mode == "learning" else 0,
        round_timeout=float(spec.round_timeout_seconds),
        wait_after_min=float(spec.wait_after_min_seconds),
        heartbeat_timeout=float(spec.resilience.timeout_seconds),
        start_timeout=float(spec.start_timeout_seconds),
        active_deadline=None if deadline is None else float(deadline),
    )
