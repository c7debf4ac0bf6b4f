"""Tiny constructors for structural OpenAPI v3 schema nodes.

Every node carries a description (it is what ``kubectl explain`` shows) and, where one makes sense,
its default right next to it, so the schema reads like the field table in docs/resources.md.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def _node(kind: str, description: str, **extra: Any) -> Schema:
    node: Schema = {"type": kind, "description": description}
    node.update({k: v for k, v in extra.items() if v is not None})
    return node


def integer(
    description: str, *, default: int | None = None, minimum: int | None = None, maximum: int | None = None
) -> Schema:
    return _node("integer", description, default=default, minimum=minimum, maximum=maximum)


def number(
    description: str,
    *,
    default: float | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool | None = None,
) -> Schema:
    return _node(
        "number",
        description,
        default=default,
        minimum=minimum,
        maximum=maximum,
        exclusiveMinimum=exclusive_minimum,
    )


def string(
    description: str,
    *,
    default: str | None = None,
    enum: list[str] | None = None,
    pattern: str | None = None,
    max_length: int | None = 253,
    min_length: int | None = None,
) -> Schema:
    return _node(
        "string",
        description,
        default=default,
        enum=enum,
        pattern=pattern,
        maxLength=None if enum else max_length,
        minLength=min_length,
    )


def boolean(description: str, *, default: bool | None = None) -> Schema:
    return _node("boolean", description, default=default)


def obj(
    description: str,
    properties: dict[str, Schema],
    *,
    required: list[str] | None = None,
    default: dict | None = None,
    rules: list[tuple[str, str]] | None = None,
) -> Schema:
    """An object node; ``rules`` are CEL ``(rule, message)`` pairs checked by the API server."""
    return _node(
        "object",
        description,
        properties=properties,
        required=required or None,
        default=default,
        **({"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]} if rules else {}),
    )


def array(description: str, items: Schema, *, max_items: int = 256, default: list | None = None) -> Schema:
    return _node("array", description, items=items, maxItems=max_items, default=default)


def string_map(description: str, *, max_properties: int = 64) -> Schema:
    return _node(
        "object",
        description,
        additionalProperties={"type": "string", "maxLength": 1024},
        maxProperties=max_properties,
    )


def number_map(description: str, *, max_properties: int = 16, default: dict | None = None) -> Schema:
    return _node(
        "object",
        description,
        additionalProperties={"type": "number"},
        maxProperties=max_properties,
        default=default,
    )


def free_form(description: str) -> Schema:
    """A subtree the API server keeps as is (Kubernetes types we pass through, e.g. tolerations)."""
    return _node("object", description, **{"x-kubernetes-preserve-unknown-fields": True})
