"""A model as a list of named arrays: what the user's client hands over and what travels on the wire.

Users think in tensors (``fc1.weight``, ``coef_``), strategies in one flat vector. :class:`Layout`
is the session's contract between the two: the names, shapes and dtypes every update must match
(checked with a message naming the array and the mismatch), and the one mapping to and from the
float32 vector the aggregator folds. Names ride in the message meta (``names``), the arrays are the
message's frames in that order, so a wire frame's own header already carries shape and dtype.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: dtypes a model array may have: floating point, aggregated as float32 (sklearn's float64 too).
DTYPES = frozenset({"float16", "float32", "float64"})
#: the name of a model that is one flat vector (the built-in models, a configure without names)
FLAT = "params"
MAX_NAME = 200
_NAME = re.compile(r"^[A-Za-z0-9_.:/\-\[\]]+$")


class LayoutError(ValueError):
    """An array list that does not fit the session's model; the message names the array."""


@dataclass(frozen=True)
class Layout:
    """Names, shapes and dtypes of a model's arrays, in order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.names or not len(self.names) == len(self.shapes) == len(self.dtypes):
            raise LayoutError("a model needs at least one array, with as many shapes and dtypes as names")
        if len(set(self.names)) != len(self.names):
            raise LayoutError(f"array names repeat: {sorted(n for n in self.names if self.names.count(n) > 1)}")
        for name, dtype in zip(self.names, self.dtypes, strict=True):
            if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or not _NAME.match(name):
                raise LayoutError(f"array name {name!r} must be 1..{MAX_NAME} characters of [A-Za-z0-9_.:/-[]]")
            if dtype not in DTYPES:
                raise LayoutError(f"array {name!r} has dtype {dtype}; model arrays must be one of {sorted(DTYPES)}")
        if self.size == 0:
            raise LayoutError("the model has no parameters")

    @classmethod
    def of(cls, arrays: Sequence[np.ndarray], names: Sequence[str] | None = None) -> Layout:
        """The layout of ``arrays``; unnamed arrays are called ``0``, ``1``, ... (Flower's lists)."""
        names = [str(i) for i in range(len(arrays))] if names is None else [str(n) for n in names]
        if len(names) != len(arrays):
            raise LayoutError(f"{len(names)} names for {len(arrays)} arrays")
        return cls(tuple(names), tuple(tuple(int(d) for d in a.shape) for a in arrays),
                   tuple(np.asarray(a).dtype.name for a in arrays))

    @classmethod
    def flat(cls, size: int) -> Layout:
        """One float32 vector of ``size`` parameters (the built-in models)."""
        return cls((FLAT,), ((int(size),),), ("float32",))

    @property
    def size(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def check(self, arrays: Sequence[np.ndarray], names: Sequence[Any] | None = None) -> None:
        """Raise :class:`LayoutError` unless ``arrays`` (named ``names``, if given) match this layout."""
        if names is not None and list(names) != list(self.names):
            missing = [n for n in self.names if n not in names]
            extra = [n for n in names if n not in self.names]
            raise LayoutError(f"array names differ from the session's model: missing {missing}, unexpected "
                              f"{extra}" + ("" if missing or extra else " (same names, another order)"))
        if len(arrays) != len(self.names):
            raise LayoutError(f"the session's model has {len(self.names)} arrays, got {len(arrays)}")
        for name, shape, dtype, array in zip(self.names, self.shapes, self.dtypes, arrays, strict=True):
            if tuple(array.shape) != shape:
                raise LayoutError(
                    f"array {name!r} has shape {list(array.shape)}, the session's model has {list(shape)}"
                )
            if array.dtype.name != dtype:
                raise LayoutError(f"array {name!r} has dtype {array.dtype.name}, the session's model has {dtype}")
            if not np.isfinite(array).all():
                raise LayoutError(f"array {name!r} contains NaN or Inf")

    def flatten(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """One float32 vector, arrays in layout order (the caller checked them)."""
        if len(arrays) == 1 and arrays[0].dtype == np.float32:
            return arrays[0].reshape(-1)  # NB: the common flat case stays a view of the received frame
        return np.concatenate([np.asarray(a, dtype=np.float32).reshape(-1) for a in arrays])

    def unflatten(self, flat: np.ndarray) -> list[np.ndarray]:
        """The model's arrays from a flat vector, each in its own shape and dtype."""
        if flat.shape != (self.size,):
            raise LayoutError(f"a flat model of this layout has {self.size} values, got shape {list(flat.shape)}")
        out, offset = [], 0
        for shape, dtype in zip(self.shapes, self.dtypes, strict=True):
            n = math.prod(shape)
            out.append(flat[offset : offset + n].reshape(shape).astype(dtype, copy=dtype != flat.dtype.name))
            offset += n
        return out

    def to_meta(self) -> dict[str, Any]:
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes], "dtypes": list(self.dtypes)}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Layout:
        try:
            return cls(tuple(meta["names"]), tuple(tuple(s) for s in meta["shapes"]), tuple(meta["dtypes"]))
        except (KeyError, TypeError) as exc:
            raise LayoutError(f"not a model layout: {exc}") from None


def names_of(meta: Mapping[str, Any]) -> list[str] | None:
    """The ``names`` a message's meta gives its arrays (None: positional)."""
    names = meta.get("names")
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise LayoutError(f"meta.names must be a list of strings, got {type(names).__name__}")
    return names
