"""Apply the CRD schema's defaults and rules to a manifest, the way the API server would.

The local runner has no API server, so it calls :func:`apply_defaults_and_validate` on every manifest
it reads; the operator tests call it on every example. Three passes, each reporting field paths:

1. structural defaulting (a missing field with a ``default`` gets it, then its own children's),
   with ``type: number`` values normalised to float as the API server stores them;
2. OpenAPI validation with ``jsonschema`` (unknown fields are errors here, where the API server
   would prune them silently: a typo in a local manifest should not pass unnoticed);
3. the CEL ``x-kubernetes-validations`` evaluated with ``cel-python`` (the very rules the CRD
   carries); transition rules (those using ``oldSelf``) only when ``old`` is given.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Iterator
from typing import Any

import celpy
import jsonschema

from fedattn.api import crds, schema
from fedattn.api.fields import Schema

PRESERVE = "x-kubernetes-preserve-unknown-fields"


class ManifestError(ValueError):
    """A manifest that cannot be used; ``problems`` are ``"path: what is wrong"`` lines.

    ``kind`` is the object's kind when the schema rejects it, or e.g. ``"manifest file"`` when the
    local runner finds the file itself at fault (``name`` then is its path).
    """

    def __init__(self, kind: str, name: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"invalid {kind} {name!r}:\n  " + "\n  ".join(problems))


def _path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def default(node: Schema, value: Any) -> Any:
    """``value`` with the schema's defaults applied (a new object; numbers as floats)."""
    kind = node.get("type")
    if kind == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind == "array" and isinstance(value, list) and "items" in node:
        return [default(node["items"], item) for item in value]
    if kind != "object" or not isinstance(value, dict):
        return value
    out = dict(value)
    for key, child in node.get("properties", {}).items():
        if key not in out and "default" in child:
            out[key] = copy.deepcopy(child["default"])
        if key in out:
            out[key] = default(child, out[key])
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        for key in out.keys() - node.get("properties", {}).keys():
            out[key] = default(extra, out[key])
    return out


def _closed(node: Any) -> Any:
    """The schema with unknown fields forbidden wherever the CRD would prune them."""
    if isinstance(node, list):
        return [_closed(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _closed(v) for k, v in node.items()}
    if node.get("type") == "object" and "properties" in node and not node.get(PRESERVE):
        out.setdefault("additionalProperties", False)
    return out


@functools.cache
def _validator(kind: str) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(_closed(crds.kinds()[kind].openapi))


@functools.cache
def _program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _rules(node: Schema, value: Any, old: Any, path: list[Any]) -> Iterator[tuple[list[Any], dict, Any, Any]]:
    """Every (path, rule, self, oldSelf) the CEL pass must check, outermost first."""
    for rule in node.get(crds.CEL_KEY, []):
        yield path, rule, value, old
    if node.get("type") == "object" and isinstance(value, dict):
        for key, child in node.get("properties", {}).items():
            if key in value:
                sub_old = old.get(key) if isinstance(old, dict) else None
                yield from _rules(child, value[key], sub_old, [*path, key])
    elif node.get("type") == "array" and isinstance(value, list):
        for i, item in enumerate(value):
            yield from _rules(node.get("items", {}), item, None, [*path, i])


def _cel_problems(node: Schema, value: Any, old: Any) -> list[str]:
    problems = []
    for path, rule, this, before in _rules(node, value, old, []):
        uses_old = "oldSelf" in rule["rule"]
        if uses_old and before is None:
            continue  # a transition rule: only on update, as in the API server
        activation = {"self": celpy.json_to_cel(this)}
        if uses_old:
            activation["oldSelf"] = celpy.json_to_cel(before)
        try:
            ok = _program(rule["rule"]).evaluate(activation)
        except celpy.CELEvalError as exc:
            problems.append(f"{_path(path)}: {rule['message']} (rule failed to evaluate: {exc})")
            continue
        if not (isinstance(ok, celpy.celtypes.BoolType) and bool(ok)):
            problems.append(f"{_path(path)}: {rule['message']}")
    return problems


def _non_finite(value: Any, path: list[Any]) -> Iterator[str]:
    """YAML can spell .nan and .inf, JSON cannot: the API server never sees them, so we refuse them."""
    if isinstance(value, float) and not math.isfinite(value):
        yield f"{_path(path)}: {value} is not a finite number"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite(item, [*path, key])
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _non_finite(item, [*path, i])


def name_problems(kind: str, name: Any) -> list[str]:
    """What is wrong with ``metadata.name`` of a ``kind``: a DNS label (it names Secrets, certificate
    CNs and Curve keys), and for a participant none of :data:`~fedattn.api.schema.RESERVED_NAMES`.

    The API server checks names itself but allows dots; this runs wherever a manifest enters without
    one (local runner, coordinator) and in the operator, so a reserved name never gets credentials.
    """
    if not isinstance(name, str) or not name:
        return ["metadata.name: required"]
    if len(name) > 63 or not re.match(schema.NAME_PATTERN, name):
        return [f"metadata.name: {name!r} must be a DNS label (lower-case letters, digits, '-'; at most 63)"]
    if kind == "FedParticipant" and name in schema.RESERVED_NAMES:
        return [f"metadata.name: {name!r} is reserved for the session's own components {list(schema.RESERVED_NAMES)}"]
    return []


def apply_defaults_and_validate(kind: str, obj: dict, *, old: dict | None = None) -> dict:
    """A defaulted copy of the ``kind`` manifest ``obj``; raises :class:`ManifestError` if invalid.

    ``old`` (the previous version) turns on the transition rules, e.g. ``mode`` immutability.
    """
    known = crds.kinds()
    if kind not in known:
        raise ValueError(f"unknown kind {kind!r}: expected one of {sorted(known)}")
    name = str((obj.get("metadata") or {}).get("name", "<unnamed>"))
    problems = []
    api_version = f"{schema.GROUP}/{schema.VERSION}"
    if obj.get("apiVersion", api_version) != api_version:
        problems.append(f"apiVersion: {obj['apiVersion']!r} is not {api_version!r}")
    if obj.get("kind", kind) != kind:
        problems.append(f"kind: {obj['kind']!r} is not {kind!r}")
    problems.extend(name_problems(kind, (obj.get("metadata") or {}).get("name")))
    problems.extend(_non_finite(obj, []))
    openapi = known[kind].openapi
    out = default(openapi, obj)
    for error in sorted(_validator(kind).iter_errors(out), key=lambda e: list(map(str, e.absolute_path))):
        problems.append(f"{_path(error.absolute_path)}: {error.message}")
    if not problems:  # CEL rules assume a structurally valid object, as in the API server
        old_out = default(openapi, old) if old is not None else None
        problems.extend(_cel_problems(openapi, out, old_out))
    if problems:
        raise ManifestError(kind, name, problems)
    return out
