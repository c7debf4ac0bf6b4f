"""How K/V rows travel at a sync layer: float32, float16, or asymmetric integer codes with scales.

Integer codecs follow KIVI (Liu et al., 2024): keys are quantized per channel (one scale and
minimum per KV head and head-dim channel, over the block's rows), because a few key channels carry
large magnitudes that a shared per-token scale would crush; values are quantized per token (one
scale and minimum per KV head and row). Scales and minima travel as float16. A block is what one
participant sends at one layer, so the scales are a function of that block alone: the reference and
the distributed run quantize identically.

``roundtrip`` is what a receiver sees; ``encode``/``decode`` are the wire form; ``block_nbytes`` is
what a block costs on the wire (codes plus scales; positions are counted by the caller).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np


class KVCodec(StrEnum):
    """K/V element format on the wire (``spec.kvCodec``)."""

    FLOAT32 = "float32"  # exact
    FLOAT16 = "float16"  # IEEE half: 2 bytes per element, no scales
    INT8 = "int8"  # 8-bit codes, keys per channel, values per token
    INT4 = "int4"  # 4-bit codes, two per byte
    INT2 = "int2"  # 2-bit codes, four per byte


_BITS = {KVCodec.INT8: 8, KVCodec.INT4: 4, KVCodec.INT2: 2}
#: axis the integer scales reduce over in a (n_kv_heads, T, head_dim) block: keys over rows
#: (one scale per channel), values over channels (one scale per row)
KEY_AXIS, VALUE_AXIS = 1, 2
_SCALE_BYTES = 2  # float16 scale and float16 minimum per group


@dataclass(frozen=True)
class Encoded:
    """One K or V block in wire form: packed codes (or float16 values) and per-group scale/minimum."""

    codec: KVCodec
    shape: tuple[int, int, int]
    data: np.ndarray  # uint8 packed codes, float16 or float32 values
    scale: np.ndarray | None = None  # float16, broadcastable to shape
    minimum: np.ndarray | None = None  # float16, broadcastable to shape

    @property
    def nbytes(self) -> int:
        extra = 0 if self.scale is None else self.scale.nbytes + self.minimum.nbytes
        return int(self.data.nbytes) + extra


def encode(x: np.ndarray, codec: KVCodec | str, *, axis: int) -> Encoded:
    """Encode a (n_kv_heads, T, head_dim) float32 block; integer scales reduce over ``axis``."""
    codec = KVCodec(codec)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"K/V block must be (n_kv_heads, T, head_dim), got shape {x.shape}")
    shape = (int(x.shape[0]), int(x.shape[1]), int(x.shape[2]))
    if codec is KVCodec.FLOAT32:
        return Encoded(codec, shape, np.ascontiguousarray(x))
    if codec is KVCodec.FLOAT16:
        return Encoded(codec, shape, x.astype(np.float16))
    levels = (1 << _BITS[codec]) - 1
    if x.size == 0:
        empty = np.zeros((shape[0], 0, 1), np.float16)  # no rows, no groups: nothing on the wire
        return Encoded(codec, shape, np.zeros(0, np.uint8), empty, empty)
    minimum = x.min(axis=axis, keepdims=True).astype(np.float16)
    # NB: scales are rounded to float16 before the codes are computed, so decoding with the float16
    # scale the receiver gets reproduces exactly the grid the sender rounded to.
    span = x.max(axis=axis, keepdims=True) - minimum.astype(np.float32)
    scale = (span / levels).astype(np.float16)
    safe = np.where(scale > 0, scale.astype(np.float32), np.float32(1.0))
    codes = np.clip(np.rint((x - minimum.astype(np.float32)) / safe), 0, levels).astype(np.uint8)
    return Encoded(codec, shape, _pack(codes.ravel(), _BITS[codec]), scale, minimum)


def decode(encoded: Encoded) -> np.ndarray:
    """The float32 block a receiver attends to."""
    if encoded.codec in (KVCodec.FLOAT32, KVCodec.FLOAT16):
        return encoded.data.astype(np.float32).reshape(encoded.shape)
    n = math.prod(encoded.shape)
    codes = _unpack(encoded.data, _BITS[encoded.codec], n).reshape(encoded.shape).astype(np.float32)
    return encoded.minimum.astype(np.float32) + codes * encoded.scale.astype(np.float32)


def roundtrip(x: np.ndarray, codec: KVCodec | str, *, axis: int) -> np.ndarray:
    """``decode(encode(x))``: the values every other participant sees for this block."""
    if KVCodec(codec) is KVCodec.FLOAT32:
        return np.asarray(x, dtype=np.float32)
    return decode(encode(x, codec, axis=axis))


def block_nbytes(codec: KVCodec | str, *, n_rows: int, n_kv_heads: int, head_dim: int) -> int:
    """Wire bytes of one participant's K and V block of ``n_rows`` rows (codes and scales)."""
    codec = KVCodec(codec)
    elements = n_kv_heads * n_rows * head_dim
    if codec is KVCodec.FLOAT32:
        return 2 * 4 * elements
    if codec is KVCodec.FLOAT16:
        return 2 * 2 * elements
    if n_rows == 0:
        return 0
    codes = 2 * math.ceil(elements * _BITS[codec] / 8)
    key_groups, value_groups = n_kv_heads * head_dim, n_kv_heads * n_rows
    return codes + 2 * _SCALE_BYTES * (key_groups + value_groups)


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Little-endian within a byte: code i of a byte sits at bit offset bits * i."""
    per_byte = 8 // bits
    padded = np.zeros(math.ceil(codes.size / per_byte) * per_byte, np.uint8)
    padded[: codes.size] = codes
    lanes = padded.reshape(-1, per_byte).astype(np.uint16) << (bits * np.arange(per_byte, dtype=np.uint16))
    return lanes.sum(axis=1, dtype=np.uint16).astype(np.uint8)


def _unpack(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    per_byte = 8 // bits
    if packed.size != math.ceil(n / per_byte):
        raise ValueError(f"{packed.size} code bytes cannot hold {n} {bits}-bit codes")
    mask = np.uint8((1 << bits) - 1)
    lanes = (packed[:, None] >> (bits * np.arange(per_byte, dtype=np.uint8))) & mask
    return lanes.ravel()[:n]


def frames(k: Encoded, v: Encoded) -> list[np.ndarray]:
    """One block's arrays on the wire: K then V, each as its data (plus scale and minimum if integer)."""
    return [a for e in (k, v) for a in ((e.data,) if e.scale is None else (e.data, e.scale, e.minimum))]


def block_dims(arrays: list[np.ndarray], codec: KVCodec | str) -> tuple[int, int]:
    """(n_kv_heads, head_dim) a block's frames claim: from the K values (float codecs) or the K scales
    (one per head and channel); ``from_frames`` then checks every array against them."""
    codec = KVCodec(codec)
    probe = 0 if codec in (KVCodec.FLOAT32, KVCodec.FLOAT16) else 1
    if len(arrays) <= probe or arrays[probe].ndim != 3:
        raise ValueError(f"a {codec} block's array {probe} must be 3-D (n_kv_heads, ., head_dim)")
    return int(arrays[probe].shape[0]), int(arrays[probe].shape[2])


def from_frames(
    arrays: list[np.ndarray], codec: KVCodec | str, *, n_rows: int, n_kv_heads: int, head_dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """Decoded K and V of a block received as ``frames``; ValueError says what does not fit the codec.

    Every array's dtype and shape is checked against what ``n_rows`` rows in this codec must be
    before anything is decoded, so a sender cannot make a receiver read past a buffer or guess.
    """
    codec = KVCodec(codec)
    shape = (n_kv_heads, n_rows, head_dim)
    per = 1 if codec in (KVCodec.FLOAT32, KVCodec.FLOAT16) else 3
    if len(arrays) != 2 * per:
        raise ValueError(f"a {codec} block is {2 * per} arrays, got {len(arrays)}")
    out = []
    for axis, part in ((KEY_AXIS, arrays[:per]), (VALUE_AXIS, arrays[per:])):
        if per == 1:
            dtype, expected = np.dtype(codec.value), [shape]
        else:
            groups = tuple(1 if i == axis else s for i, s in enumerate(shape)) if n_rows else (n_kv_heads, 0, 1)
            dtype, expected = np.dtype(np.uint8), [(math.ceil(math.prod(shape) * _BITS[codec] / 8),), groups, groups]
        dtypes = [dtype] + [np.dtype(np.float16)] * (per - 1)
        for i, (array, want, want_dtype) in enumerate(zip(part, expected, dtypes, strict=True)):
            if array.dtype != want_dtype or tuple(array.shape) != want:
                raise ValueError(
                    f"{codec} block array {i} is {array.dtype}{list(array.shape)}, expected {want_dtype}{list(want)}"
                )
        if not all(np.isfinite(a).all() for a in part if a.dtype.kind == "f"):
            raise ValueError(f"{codec} block carries NaN or Inf")
        values = decode(Encoded(codec, shape, *part))
        if not np.isfinite(values).all():
            raise ValueError(f"{codec} block decodes to NaN or Inf")
        out.append(values)
    return out[0], out[1]
