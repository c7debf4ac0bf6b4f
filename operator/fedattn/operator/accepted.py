"""Immutable fields where the API server has no CEL (Kubernetes < 1.25, the legacy CRDs): the operator
refuses their edits with the CRD's very rules, checked against the spec it accepted.

Why not kopf's ``old``: kopf's diff base is the last spec it *handled*, refused or not, so a refused
edit would become the base and its revert would look like an edit of its own. The run-defining fields
(:data:`fedattn.api.schema.SESSION_IMMUTABLE` / ``PARTICIPANT_IMMUTABLE``) as first accepted are kept
in the annotation :data:`ANNOTATION`; every later spec is validated with ``old`` = that spec
(:func:`fedattn.api.apply_defaults_and_validate`, the CRD's transition rules, ``oldSelf`` included).
A refused edit leaves the object running on what it was accepted with (:func:`effective`); the
handlers report it (``Stalled``, reason :data:`REASON`) until the edit is reverted. Pure functions.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from fedattn.api import ManifestError, apply_defaults_and_validate, schema

ANNOTATION = f"{schema.GROUP}/accepted-spec"
REASON = "ImmutableFieldChanged"
IMMUTABLE = {"FedSession": schema.SESSION_IMMUTABLE, "FedParticipant": schema.PARTICIPANT_IMMUTABLE}


def record(kind: str, spec: dict[str, Any]) -> str:
    """The annotation value for an accepted ``spec``: its immutable fields (those set), as JSON."""
    return json.dumps({k: spec[k] for k in IMMUTABLE[kind] if k in spec}, sort_keys=True)


def baseline(body: dict[str, Any]) -> dict[str, Any] | None:
    """The immutable fields the object was accepted with; None before it was (or if the value is unreadable)."""
    value = ((body.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION)
    try:
        found = json.loads(value) if value else None
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def effective(kind: str, body: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """``(body to act on, refusal)``: the body with its immutable fields as accepted, and
    ``(reason, message)`` if its spec changes any of them (None if not, or not accepted yet)."""
    accepted = baseline(body)
    spec = body.get("spec") or {}
    if accepted is None:
        return body, None
    problems = _problems(kind, json.dumps(spec, sort_keys=True), json.dumps(accepted, sort_keys=True))
    if not problems:
        return body, None
    kept = {k: v for k, v in spec.items() if k not in IMMUTABLE[kind]} | accepted
    return {**body, "spec": kept}, (REASON, "; ".join(problems))


@functools.lru_cache(maxsize=1024)
def _problems(kind: str, spec_json: str, accepted_json: str) -> tuple[str, ...]:
    """The CRD's transition-rule verdicts on ``spec`` against the accepted one, memoised (a CEL pass is
    ~10 ms and the status poller asks on every pass)."""
    spec, accepted = json.loads(spec_json), json.loads(accepted_json)
    old = {k: v for k, v in spec.items() if k not in IMMUTABLE[kind]} | accepted
    envelope = {"apiVersion": f"{schema.GROUP}/{schema.VERSION}", "kind": kind, "metadata": {"name": "x"}}
    try:
        apply_defaults_and_validate(kind, {**envelope, "spec": spec}, old={**envelope, "spec": old})
    except ManifestError as exc:
        return tuple(exc.problems)
    return ()
