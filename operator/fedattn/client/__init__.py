"""The participant SDK for user code: a client with Flower's NumPyClient shape, built by a factory.

A user writes ``make_client(context) -> client`` in their own module and names it
(``fedattn participant --client mypkg.mymodule:make_client``, or ``FedParticipant.spec.client.module``).
The client is duck-typed (:class:`Client`): an unmodified Flower ``NumPyClient`` subclass runs as is,
and fedattn never imports flwr. docs/byom.md is the user's guide.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np

#: keys a client's metrics may have; values must be finite numbers (they are aggregated and stored)
MAX_METRICS = 32
MAX_METRIC_NAME = 64


@dataclass(frozen=True)
class Context:
    """What a client factory knows about where it runs; private to this participant.

    ``data_file`` is the ``dataRef`` key as a file (None without one), ``volumes`` maps each volume
    mount's name to the directory it is mounted at (the local runner maps the same names to local
    directories), ``node_config`` is ``FedParticipant.spec.node`` plus ``participant``, ``index``
    and ``parts`` (this participant's position among the session's), ``spec`` the session's
    defaulted spec.
    """

    participant: str
    session: str
    index: int
    parts: int
    data_file: Path | None = None
    volumes: Mapping[str, Path] = field(default_factory=dict)
    node_config: Mapping[str, Any] = field(default_factory=dict)
    spec: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # NB: frozen all the way down: a factory cannot change what the next factory call sees
        object.__setattr__(self, "volumes", MappingProxyType(dict(self.volumes)))
        object.__setattr__(self, "node_config", MappingProxyType(dict(self.node_config)))

    def volume(self, name: str) -> Path:
        """The directory of volume mount ``name``; KeyError naming the mounts there are."""
        if name not in self.volumes:
            raise KeyError(f"{self.participant} has no volume mount {name!r}; it has {sorted(self.volumes)}")
        return self.volumes[name]


#: what ``get_parameters``/``fit`` return: Flower's list, or a dict whose keys name the arrays
Parameters = list[np.ndarray] | dict[str, np.ndarray]


class Client(Protocol):
    """Flower's NumPyClient shape; ``evaluate`` is needed only when the session evaluates.

    ``parameters`` handed in are always a list in the session's order; a client may return a dict
    instead of a list to name its arrays (those names then appear in the output files).
    """

    def get_parameters(self, config: dict[str, Any]) -> Parameters: ...

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[Parameters, int, dict[str, Any]]: ...

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Any]]: ...


Factory = Callable[[Context], Client]


class ClientError(ValueError):
    """User code that cannot be used: a bad reference, or a result of the wrong shape."""


def load_factory(reference: str) -> Factory:
    """``mypkg.mymodule:make_client`` -> the callable; ClientError saying what is missing."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ClientError(f"client {reference!r} must be MODULE:FACTORY, e.g. mypkg.mymodule:make_client")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ClientError(f"client module {module_name!r} cannot be imported: {exc}") from exc
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ClientError(f"module {module_name!r} has no callable {attribute!r}")
    return factory


def module_hook(reference: str, name: str) -> Callable[..., Any] | None:
    """Another callable from the factory's module (e.g. ``centralized_baseline``), or None."""
    hook = getattr(importlib.import_module(reference.partition(":")[0]), name, None)
    return hook if callable(hook) else None


def as_arrays(parameters: Sequence[Any] | Mapping[str, Any], *, what: str) -> tuple[list[str] | None, list[np.ndarray]]:
    """A client's parameters as (names, numpy arrays): a list (Flower's shape: positional, names None)
    or a dict of name -> array (e.g. a torch ``state_dict`` as numpy), whose keys name the arrays."""
    if isinstance(parameters, Mapping):
        return [str(k) for k in parameters], [np.asarray(p) for p in parameters.values()]
    if not isinstance(parameters, list | tuple):
        raise ClientError(f"{what} must return a list or dict of numpy arrays, got {type(parameters).__name__}")
    return None, [np.asarray(p) for p in parameters]


def clean_metrics(metrics: Any, *, what: str) -> dict[str, float]:
    """A client's metrics dict: at most MAX_METRICS finite numbers under short string keys."""
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise ClientError(f"{what} metrics must be a dict, got {type(metrics).__name__}")
    out = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_METRIC_NAME:
            raise ClientError(f"{what} metric name {key!r} must be a string of 1..{MAX_METRIC_NAME} characters")
        if isinstance(value, bool) or not isinstance(value, int | float | np.number) or not math.isfinite(value):
            raise ClientError(f"{what} metric {key!r} must be a finite number, got {value!r}")
        out[key] = float(value)
    if len(out) > MAX_METRICS:
        raise ClientError(f"{what} returned {len(out)} metrics, at most {MAX_METRICS}")
    return out


def count(value: Any, *, what: str) -> int:
    """A client's ``num_examples``: an integer > 0."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ClientError(f"{what} num_examples must be an integer > 0, got {value!r}")
    return int(value)
