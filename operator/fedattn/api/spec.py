"""Typed, frozen views of a FedSession's and a FedParticipant's ``spec``: the one reader of the spec.

A manifest enters a component (operator reconcile, coordinator create, aggregator configure,
participant start, local runner) as a dict; it is parsed here once, with
:meth:`SessionSpec.from_manifest` / :meth:`ParticipantSpec.from_manifest`, and the typed view is
passed on. Defaults come from the CRD schema alone (:mod:`fedattn.api.schema`), applied by the
same structural defaulting the API server does (:func:`fedattn.api.validation.default`), so the
dataclasses below declare types, never defaults: CloudNativePG's ``setDefaults()`` + accessors is
the model. A field the schema gives no default is ``None`` when unset; an optional sub-object
without a default (``privacy``, ``compression``, ``eviction``, ...) is ``None`` when unset, which
is how "off unless set" reads.

Python names are the schema's camelCase keys in snake_case (``minParticipants`` ->
``min_participants``); a test walks the schema and checks every field and default has its typed
twin here, so a new schema field without one fails.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union

from fedattn.api import schema
from fedattn.api.validation import ManifestError, default

T = TypeVar("T")

Mode = Literal["attention", "learning"]


# --- sub-objects -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IssuerRef:
    name: str
    kind: str
    group: str


@dataclasses.dataclass(frozen=True)
class SelfSigned:
    validity_days: int
    renew_before_days: int


@dataclasses.dataclass(frozen=True)
class TLSSpec:
    """``spec.tls``: exactly one of the two is set (a CEL rule says so)."""

    issuer_ref: IssuerRef | None
    self_signed: SelfSigned | None


@dataclasses.dataclass(frozen=True)
class SecretKey:
    name: str
    key: str


@dataclasses.dataclass(frozen=True)
class DatabaseSpec:
    secret_ref: SecretKey


@dataclasses.dataclass(frozen=True)
class StorageSpec:
    type: str
    size: str
    storage_class_name: str | None

    @property
    def durable(self) -> bool:
        """True when state outlives the pod (a PersistentVolumeClaim)."""
        return self.type == "PersistentVolumeClaim"


@dataclasses.dataclass(frozen=True)
class CircuitBreakerSpec:
    failures: int
    open_seconds: int


@dataclasses.dataclass(frozen=True)
class ResilienceSpec:
    timeout_seconds: int
    retries: int
    backoff_seconds: float
    circuit_breaker: CircuitBreakerSpec


@dataclasses.dataclass(frozen=True)
class ExposeSpec:
    """``spec.expose``: how participants outside the cluster reach the coordinator and aggregator."""

    type: str
    addresses: tuple[str, ...] | None
    coordinator_node_port: int | None
    aggregator_node_port: int | None


@dataclasses.dataclass(frozen=True)
class PodTemplate:
    """``spec.coordinator`` / ``spec.aggregator``; ``resources`` and ``tolerations`` are Pod-spec
    passthrough (kept as the plain dicts the API server stores)."""

    image: str
    resources: dict[str, Any] | None
    node_selector: dict[str, str] | None
    tolerations: tuple[dict[str, Any], ...] | None


@dataclasses.dataclass(frozen=True)
class InitialModelSpec:
    path: str


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str | None
    hidden_units: int
    initial: InitialModelSpec | None


@dataclasses.dataclass(frozen=True)
class EvaluationSpec:
    """``spec.evaluation``: federated evaluation, off when unset."""

    every_rounds: int
    timeout_seconds: int


@dataclasses.dataclass(frozen=True)
class BestSpec:
    metric: str
    mode: str


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    """``spec.output``: where the aggregator writes models and metrics (fedattn.aggregator.output)."""

    claim_name: str | None
    sub_path: str | None
    keep_every_round: bool
    best: BestSpec | None


@dataclasses.dataclass(frozen=True)
class ClientSpec:
    module: str


@dataclasses.dataclass(frozen=True)
class VolumeMount:
    name: str
    mount_path: str
    sub_path: str | None
    read_only: bool


@dataclasses.dataclass(frozen=True)
class StrategySpec:
    name: str
    params: dict[str, float]


@dataclasses.dataclass(frozen=True)
class TrainingSpec:
    dataset: str
    test_fraction: float
    dirichlet_alpha: float
    seed: int
    local_epochs: int
    batch_size: int
    learning_rate: float
    evaluate: bool


@dataclasses.dataclass(frozen=True)
class DPSpec:
    mechanism: str
    noise_multiplier: float
    clip_norm: float
    target_epsilon: float
    delta: float


@dataclasses.dataclass(frozen=True)
class SecureAggregationSpec:
    enabled: bool
    threshold: int


@dataclasses.dataclass(frozen=True)
class PrivacySpec:
    dp: DPSpec | None
    secure_aggregation: SecureAggregationSpec | None


@dataclasses.dataclass(frozen=True)
class CompressionSpec:
    quantize_bits: int
    top_k: float


@dataclasses.dataclass(frozen=True)
class UpdateLimitsSpec:
    max_examples: int
    clip_norm: float | None


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
    every_rounds: int


@dataclasses.dataclass(frozen=True)
class EvictionSpec:
    min_score: float
    after_rounds: int


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    boundaries: tuple[int, ...] | None


@dataclasses.dataclass(frozen=True)
class KeyRef:
    name: str
    key: str


@dataclasses.dataclass(frozen=True)
class DataRef:
    """Exactly one of the two is set (a CEL rule says so)."""

    config_map_key_ref: KeyRef | None
    secret_key_ref: KeyRef | None


@dataclasses.dataclass(frozen=True)
class SimulationSpec:
    byzantine: str | None
    scale: float


# --- the two specs ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SessionSpec:
    """A FedSession's ``spec``, defaulted by the schema; learning fields are set in attention mode too
    (their defaults), as the API server stores them."""

    mode: Mode
    min_participants: int
    round_timeout_seconds: int
    wait_after_min_seconds: int
    start_timeout_seconds: int
    suspend: bool
    storage: StorageSpec
    cleanup_policy: str
    active_deadline_seconds: int | None
    ttl_seconds_after_finished: int | None
    tls: TLSSpec
    database: DatabaseSpec | None
    resilience: ResilienceSpec
    expose: ExposeSpec
    coordinator: PodTemplate
    aggregator: PodTemplate
    model: ModelSpec | None
    # learning
    rounds: int
    strategy: StrategySpec
    training: TrainingSpec
    evaluation: EvaluationSpec | None
    output: OutputSpec | None
    privacy: PrivacySpec | None
    compression: CompressionSpec | None
    update_limits: UpdateLimitsSpec
    checkpoint: CheckpointSpec
    eviction: EvictionSpec | None
    # attention
    sync_interval: int
    sync_layers: tuple[int, ...] | None
    sync_policy: str | None
    kv_codec: str
    holder_sync: str
    kv_keep_ratio: float
    shared_prefix: str
    max_new_tokens: int
    publisher: str | None
    split: SplitSpec | None

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> SessionSpec:
        """The typed spec of a FedSession object (``{"spec": {...}}``) or of a bare ``spec``, with the
        schema's defaults applied; :class:`ManifestError` names the field if a value has the wrong type."""
        return _from_manifest(cls, manifest, kind="FedSession", node=schema.session_spec())

    def to_manifest(self) -> dict[str, Any]:
        """The defaulted ``spec`` dict (camelCase, unset fields left out), e.g. to store or send on."""
        return _to_manifest(self)

    @property
    def dp(self) -> DPSpec | None:
        """``privacy.dp``, or None when differential privacy is off."""
        return self.privacy.dp if self.privacy else None

    @property
    def secure_aggregation(self) -> SecureAggregationSpec | None:
        """``privacy.secureAggregation``, or None when it is not set."""
        return self.privacy.secure_aggregation if self.privacy else None


@dataclasses.dataclass(frozen=True)
class ParticipantSpec:
    """A FedParticipant's ``spec``, defaulted by the schema."""

    session_ref: str
    external: bool
    node: dict[str, str] | None
    weight: float
    data_ref: DataRef | None
    prompt_ref: DataRef | None
    image: str
    resources: dict[str, Any] | None
    client: ClientSpec | None
    volumes: tuple[dict[str, Any], ...] | None
    volume_mounts: tuple[VolumeMount, ...] | None
    simulation: SimulationSpec | None

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> ParticipantSpec:
        """The typed spec of a FedParticipant object or of a bare ``spec`` (see SessionSpec)."""
        return _from_manifest(cls, manifest, kind="FedParticipant", node=schema.participant_spec())

    def to_manifest(self) -> dict[str, Any]:
        """The defaulted ``spec`` dict (camelCase, unset fields left out)."""
        return _to_manifest(self)


# --- the one generic reader ------------------------------------------------------------------------


def camel(name: str) -> str:
    """``min_participants`` -> ``minParticipants``: the schema key of a typed field."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def snake(key: str) -> str:
    """``minParticipants`` -> ``min_participants``: the typed field of a schema key."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (hint, False)."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def _from_manifest(cls: type[T], manifest: Mapping[str, Any], *, kind: str, node: dict) -> T:
    if not isinstance(manifest, Mapping):
        raise ManifestError(kind, "<unnamed>", [f"<root>: expected an object, got {type(manifest).__name__}"])
    name = str((manifest.get("metadata") or {}).get("name", "<unnamed>"))
    spec = manifest["spec"] if "spec" in manifest and isinstance(manifest.get("spec"), Mapping) else manifest
    problems: list[str] = []
    out = _build(cls, default(node, copy.deepcopy(dict(spec))), "spec", problems)
    if problems:
        raise ManifestError(kind, name, problems)
    return out


def _build(hint: Any, value: Any, path: str, problems: list[str]) -> Any:
    """``value`` as ``hint``; type problems are appended to ``problems`` (and None returned)."""
    hint, optional = _optional(hint)
    if value is None:
        if not optional:
            problems.append(f"{path}: required")
        return None
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            problems.append(f"{path}: expected an object, got {type(value).__name__}")
            return None
        hints = _hints(hint)
        known = [camel(f.name) for f in dataclasses.fields(hint)]
        for key in sorted(set(value) - set(known)):
            problems.append(f"{path}.{key}: unknown field; {path} takes {', '.join(known)}")
        args = {f.name: _build(hints[f.name], value.get(camel(f.name)), f"{path}.{camel(f.name)}", problems)
                for f in dataclasses.fields(hint)}
        return hint(**args)
    if origin is Literal:
        if value not in typing.get_args(hint):
            problems.append(f"{path}: {value!r} is not one of {list(typing.get_args(hint))}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            problems.append(f"{path}: expected a list, got {type(value).__name__}")
            return None
        item = typing.get_args(hint)[0]
        return tuple(_build(item, v, f"{path}[{i}]", problems) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            problems.append(f"{path}: expected an object, got {type(value).__name__}")
            return None
        item = typing.get_args(hint)[1]
        return {k: _build(item, v, f"{path}.{k}", problems) for k, v in value.items()}
    return _scalar(hint, value, path, problems)


def _scalar(hint: Any, value: Any, path: str, problems: list[str]) -> Any:
    if hint is Any:
        return value
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok else _wrong(value, "a number", path, problems)
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return value if ok else _wrong(value, "an integer", path, problems)
    if hint is bool or hint is str:
        return value if isinstance(value, hint) else _wrong(value, f"a {hint.__name__}", path, problems)
    raise TypeError(f"{path}: no reader for type {hint!r}")  # NB: a new field type; teach _build it


def _wrong(value: Any, expected: str, path: str, problems: list[str]) -> None:
    problems.append(f"{path}: expected {expected}, got {value!r}")
    return None


def _to_manifest(view: Any) -> Any:
    if dataclasses.is_dataclass(view):
        return {camel(f.name): _to_manifest(getattr(view, f.name))
                for f in dataclasses.fields(view) if getattr(view, f.name) is not None}
    if isinstance(view, tuple):
        return [_to_manifest(v) for v in view]
    if isinstance(view, dict):
        return {k: _to_manifest(v) for k, v in view.items()}
    return view
