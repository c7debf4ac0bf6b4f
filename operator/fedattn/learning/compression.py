"""Update compression: int8 quantization, top-k sparsification (with error feedback), both combined.

What is compressed is a participant's *delta* (local model - the round's global model), the only
thing that is small and sparse-friendly; the aggregator adds the decoded delta back to the global
model it sent. :func:`encode` returns arrays that :mod:`fedattn.wire` sends as they are plus a
``meta`` entry (``compression``) that describes them; :func:`decode` checks that description and
the arrays against each other before reading a value, raising :class:`fedattn.wire.WireError`
(code ``bad_encoding``) so the server's usual error reply and rejection metric apply.

- int8: symmetric per-chunk scales ``max|x| / 127`` (float32), ``q = rint(x / scale)``; the error is
  at most ``scale / 2`` per coordinate.
- top-k: the ``k`` largest magnitudes as sorted indices (int32, int64 past 2^31 values) + float32
  values; with int8 too, the values are quantized. :class:`ErrorFeedback` keeps what was not sent
  and adds it to the next delta (Stich et al. 2018), so nothing is lost, only delayed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedattn.api import spec as api_spec
from fedattn.wire import WireError

QMAX = 127
DEFAULT_CHUNK = 1024
MAX_CHUNK = 1 << 24


@dataclass(frozen=True)
class CompressionSpec:
    """``spec.compression``: ``quantizeBits`` 8 or 0 (off), ``topK`` share of values kept (0 = off)."""

    quantize_bits: int = 0
    top_k: float = 0.0
    chunk: int = DEFAULT_CHUNK

    def __post_init__(self) -> None:
        if self.quantize_bits not in (0, 8):
            raise ValueError(f"quantizeBits must be 8 or 0 (off), got {self.quantize_bits!r}")
        if not (isinstance(self.top_k, int | float) and 0.0 <= self.top_k <= 1.0):
            raise ValueError(f"topK must be a share in [0, 1] (0 = off), got {self.top_k!r}")
        if not 1 <= self.chunk <= MAX_CHUNK:
            raise ValueError(f"chunk must be in [1, {MAX_CHUNK}], got {self.chunk!r}")

    @classmethod
    def from_manifest(cls, compression: api_spec.CompressionSpec | None) -> CompressionSpec:
        """The codec of a session's typed ``spec.compression`` (its defaults are the schema's); a
        session without it sends dense updates (this class's own defaults: the codec turned off)."""
        if compression is None:
            return cls()
        return cls(quantize_bits=compression.quantize_bits, top_k=compression.top_k)

    @property
    def codec(self) -> str:
        sparse = 0.0 < self.top_k < 1.0
        return {(False, 0): "dense", (False, 8): "int8", (True, 0): "topk", (True, 8): "topk+int8"}[
            (sparse, self.quantize_bits)
        ]

    def k_for(self, size: int) -> int:
        """How many values top-k keeps of ``size`` (at least one)."""
        return max(1, math.ceil(self.top_k * size))


# --- pure codecs ------------------------------------------------------------------------------------


def _chunk_starts(size: int, chunk: int) -> np.ndarray:
    return np.arange(0, size, chunk)


def quantize_int8(x: np.ndarray, *, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes and one float32 scale per ``chunk`` values (the last chunk may be short)."""
    x = np.asarray(x, dtype=np.float32)
    if x.size == 0:
        return np.zeros(0, np.int8), np.zeros(0, np.float32)
    scales = (np.maximum.reduceat(np.abs(x), _chunk_starts(x.size, chunk)) / QMAX).astype(np.float32)
    per_value = np.repeat(scales, chunk)[: x.size]
    q = np.divide(x, per_value, out=np.zeros_like(x), where=per_value > 0)
    return np.clip(np.rint(q), -QMAX, QMAX).astype(np.int8), scales


def dequantize_int8(q: np.ndarray, scales: np.ndarray, *, chunk: int) -> np.ndarray:
    """Float32 values back from int8 codes and per-chunk scales."""
    return q.astype(np.float32) * np.repeat(scales, chunk)[: q.size]


def top_k(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (sorted ascending) and values of the ``k`` largest-magnitude entries of ``x``."""
    if not 1 <= k <= x.size:
        raise ValueError(f"k must be in [1, {x.size}], got {k}")
    index_dtype = np.int32 if x.size < 2**31 else np.int64
    idx = np.sort(np.argpartition(np.abs(x), x.size - k)[x.size - k :]).astype(index_dtype)
    return idx, np.asarray(x[idx], dtype=np.float32)


def densify(indices: np.ndarray, values: np.ndarray, *, size: int) -> np.ndarray:
    """A float32 vector of ``size`` zeros with ``values`` at ``indices``."""
    out = np.zeros(size, dtype=np.float32)
    out[indices] = values
    return out


# --- wire form ----------------------------------------------------------------------------------------


def encode(delta: np.ndarray, *, spec: CompressionSpec) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Arrays for the wire and the ``compression`` meta that describes them."""
    delta = np.asarray(delta, dtype=np.float32)
    codec = spec.codec
    meta: dict[str, Any] = {"codec": codec, "size": int(delta.size)}
    if codec == "dense":
        return [delta], meta
    if codec == "int8":
        meta["chunk"] = spec.chunk
        return [*quantize_int8(delta, chunk=spec.chunk)], meta
    idx, vals = top_k(delta, spec.k_for(delta.size))
    meta["k"] = int(idx.size)
    if codec == "topk":
        return [idx, vals], meta
    meta["chunk"] = spec.chunk
    return [idx, *quantize_int8(vals, chunk=spec.chunk)], meta


def wire_bytes(arrays: Sequence[np.ndarray]) -> int:
    """Payload bytes the arrays take on the wire (headers excluded)."""
    return int(sum(a.nbytes for a in arrays))


def _bad(message: str) -> WireError:
    return WireError("bad_encoding", message)


def _expect(arrays: Sequence[np.ndarray], layout: Sequence[tuple[Sequence[str], int]]) -> None:
    if len(arrays) != len(layout):
        raise _bad(f"expected {len(layout)} arrays, got {len(arrays)}")
    for i, (array, (dtypes, length)) in enumerate(zip(arrays, layout, strict=True)):
        if array.dtype.name not in dtypes or array.shape != (length,):
            raise _bad(f"arrays[{i}] is {array.dtype.name}{list(array.shape)}, expected {'|'.join(dtypes)}[{length}]")


def _meta_int(meta: Mapping[str, Any], key: str, *, low: int, high: int) -> int:
    value = meta.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _bad(f"compression.{key} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _scales_ok(scales: np.ndarray) -> None:
    if scales.size and not (np.isfinite(scales).all() and scales.min() >= 0):
        raise _bad("int8 scales must be finite and >= 0")


def decode(arrays: Sequence[np.ndarray], meta: Mapping[str, Any], *, size: int) -> np.ndarray:
    """The float32 delta of ``size`` values; rejects any mismatch between ``meta``, arrays and ``size``."""
    if not isinstance(meta, Mapping):
        raise _bad("compression meta must be a map")
    codec = meta.get("codec")
    if meta.get("size") != size:
        raise _bad(f"compression.size is {meta.get('size')!r}, the model has {size} values")
    if codec == "dense":
        _expect(arrays, [(["float32"], size)])
        return np.asarray(arrays[0])
    if codec == "int8":
        chunk = _meta_int(meta, "chunk", low=1, high=MAX_CHUNK)
        _expect(arrays, [(["int8"], size), (["float32"], -(-size // chunk))])
        _scales_ok(arrays[1])
        return dequantize_int8(arrays[0], arrays[1], chunk=chunk)
    if codec not in ("topk", "topk+int8"):
        raise _bad(f"unknown codec {codec!r}; expected dense, int8, topk or topk+int8")
    k = _meta_int(meta, "k", low=1, high=size)
    index_dtypes = ["int32", "int64"]
    if codec == "topk":
        _expect(arrays, [(index_dtypes, k), (["float32"], k)])
        values = np.asarray(arrays[1])
    else:
        chunk = _meta_int(meta, "chunk", low=1, high=MAX_CHUNK)
        _expect(arrays, [(index_dtypes, k), (["int8"], k), (["float32"], -(-k // chunk))])
        _scales_ok(arrays[2])
        values = dequantize_int8(arrays[1], arrays[2], chunk=chunk)
    idx = arrays[0]
    # NB: strictly increasing also rules out duplicates, which would otherwise silently overwrite
    if idx[0] < 0 or idx[-1] >= size or (k > 1 and not (np.diff(idx) > 0).all()):
        raise _bad(f"top-k indices must be strictly increasing within [0, {size})")
    return densify(idx, values, size=size)


class ErrorFeedback:
    """Client-side memory of what compression dropped, added to the next delta before compressing it.

    Invariant after each :meth:`compress`: ``sum(deltas) == sum(transmitted) + residual``, so the
    accumulated transmitted sum tracks the true sum up to one bounded residual.
    """

    def __init__(self, *, size: int, spec: CompressionSpec) -> None:
        self.spec = spec
        self.residual = np.zeros(size, dtype=np.float32)

    def compress(self, delta: np.ndarray) -> tuple[list[np.ndarray], dict[str, Any]]:
        corrected = self.residual + delta
        arrays, meta = encode(corrected, spec=self.spec)
        self.residual = corrected - decode(arrays, meta, size=corrected.size)
        return arrays, meta
