"""Seeded generator of hostile wire messages: valid messages of every participant kind, mutated.

What an authenticated participant can put on the wire, short of a valid exchange: random values in
every header field and meta key (wrong types, huge and negative numbers, deep nesting), lying array
specs, flipped, dropped, duplicated and truncated frames, kinds it may not send, other sessions'
names. Sequence numbers keep increasing (a random huge ``seq`` would turn the rest of a run into
``duplicate`` rejections, which tests nothing); everything else is fair game. Deterministic per seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import numpy as np

from fedattn import wire
from fedattn.attention.exchange import block_message

#: largest array a re-signed message may hold (values, not bytes)
MAX_RESIGNED_VALUES = 1 << 16
#: meta keys the aggregator reads from participants (so random values there reach real code paths)
META_KEYS = ("num_examples", "tokens", "compression", "masked", "public_key", "sealed", "shares", "seq")


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.randrange(14 if depth < 3 else 10)
    if pick == 0:
        return rng.choice([0, 1, -1, 2**31, 2**62, 2**63 - 1, -(2**63), 2**64 - 1])
    if pick == 1:
        return rng.choice([1e308, -1e308, 1e-320, float("nan"), float("inf"), -float("inf"), 3.4e38])
    if pick == 2:
        return rng.choice(["", "x" * rng.randrange(1, 300), "alice", "*", "\x00", "ü" * 40, "-"])
    if pick == 3:
        return rng.choice([None, True, False])
    if pick == 4:
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64)))
    if pick == 5:
        return rng.randrange(-1000, 1000)
    if pick == 6:
        return rng.random() * 10 ** rng.randrange(-5, 40)
    if pick == 7:
        return rng.choice(["int8", "topk", "dense", "float32", "complex64"])
    if pick == 8:
        return [rng.randrange(-5, 2**20) for _ in range(rng.randrange(0, 6))]
    if pick == 9:
        return {"codec": rng.choice(["int8", "topk", "x"]), "scale": _random_value(rng, 9), "k": rng.randrange(-3, 99)}
    if pick in (10, 11):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    nested: Any = rng.randrange(9)
    for _ in range(rng.randrange(1, 60)):  # NB: deep nesting, as a stack-depth probe
        nested = [nested] if rng.random() < 0.5 else {"k": nested}
    return nested


def _header(frames: list[bytes]) -> dict[str, Any]:
    return msgpack.unpackb(frames[0], raw=False, strict_map_key=False)


def _repack(header: dict[str, Any], rest: list[bytes]) -> list[bytes]:
    return [msgpack.packb(header, use_bin_type=True), *rest]


def _set_field(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    header = _header(frames)
    field = rng.choice(["session", "participant", "kind", "round", "layer", "v", "arrays", "meta", "extra"])
    header[field] = _random_value(rng)
    return _repack(header, frames[1:])


def _set_meta(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    header = _header(frames)
    meta = header.get("meta") if isinstance(header.get("meta"), dict) else {}
    meta[rng.choice(META_KEYS)] = _random_value(rng)
    header["meta"] = meta
    return _repack(header, frames[1:])


def _set_kind(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    header = _header(frames)
    header["kind"] = rng.choice(sorted(wire.KINDS))
    return _repack(header, frames[1:])


def _set_numbers(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    header = _header(frames)
    header["round"] = rng.choice([0, 1, 2, 3, 2**40, 2**62])
    header["layer"] = rng.choice([-1, 0, 1, 2, 3, 29, 30, 1000, 2**62])
    return _repack(header, frames[1:])


def _lie_about_arrays(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    header = _header(frames)
    arrays = header.get("arrays") or []
    if not arrays:
        return _set_field(rng, frames)
    spec = arrays[rng.randrange(len(arrays))]
    key = rng.choice(["dtype", "shape", "nbytes", "xxh3"])
    spec[key] = rng.choice([_random_value(rng), [2**39, 2**39], [0], "float64", -1, 0])
    return _repack(header, frames[1:])


def _flip_bytes(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    index = rng.randrange(len(frames))
    buf = bytearray(frames[index])
    for _ in range(rng.randrange(1, 8)):
        if buf:
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    return [*frames[:index], bytes(buf), *frames[index + 1 :]]


def _reframe(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    choice = rng.randrange(5)
    if choice == 0 and len(frames) > 1:
        return frames[:-1]
    if choice == 1:
        return [*frames, frames[-1]]
    if choice == 2 and len(frames) > 1:
        return [frames[0], *(f[: rng.randrange(len(f) + 1)] for f in frames[1:])]
    if choice == 3:
        return [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200)))]
    return [frames[0], *(f + b"\x00" * rng.randrange(1, 16) for f in frames[1:])]


def _resign(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    """A well-formed message (correct digests) with hostile numbers inside: reaches the session logic."""
    header = _header(frames)
    arrays = []
    for spec in header.get("arrays") or []:
        if math.prod(spec["shape"]) > MAX_RESIGNED_VALUES:
            # NB: a lied-about shape can name terabytes; materialising it here would kill the test itself
            raise ValueError("too large to re-sign")
        dtype = np.dtype(spec["dtype"])
        values = rng.choice([3.4e38, -3.4e38, 1e30, 0.0, 1.0]) if dtype.kind == "f" else rng.randrange(-2, 2**20)
        arrays.append(np.full(spec["shape"], values, dtype=dtype))
    return wire.encode(
        kind=header["kind"],
        session=header["session"],
        participant=header["participant"],
        round=header["round"],
        layer=rng.choice([header["layer"], rng.randrange(0, 2**20)]),
        seq=header["seq"],
        meta={**header["meta"], rng.choice(META_KEYS): _random_value(rng)},
        arrays=arrays,
    )


MUTATORS: tuple[Callable[[random.Random, list[bytes]], list[bytes]], ...] = (
    _set_field,
    _set_meta,
    _set_meta,
    _set_kind,
    _set_numbers,
    _lie_about_arrays,
    _flip_bytes,
    _reframe,
    _resign,
    _resign,
)


def seeds(*, session: str, attention_session: str, name: str, size: int) -> list[Callable[[int], list[bytes]]]:
    """Builders of valid messages (given a seq) of every kind a participant sends, for both modes."""
    model = np.linspace(-1, 1, size, dtype=np.float32)
    k = np.ones((2, 3, 4), dtype=np.float32)
    positions = np.arange(3, dtype=np.int64)
    shape = {"n_layers": 4, "n_kv_heads": 2, "head_dim": 4}
    first, second = (block_message(k, -k, p, "int4") for p in (positions, positions + 3))  # the default kvCodec

    def msg(kind: str, *, sess: str = session, **fields: Any) -> Callable[[int], list[bytes]]:
        return lambda seq: [bytes(f) for f in wire.encode(kind=kind, session=sess, participant=name, seq=seq, **fields)]

    return [
        msg("hello"),
        msg("hello", sess=attention_session, meta={"tokens": 3, "prefix": 0, "model": shape}),
        msg("update", round=1, meta={"num_examples": 10}, arrays=[model]),
        msg(
            "update",
            round=1,
            meta={"num_examples": 10, "compression": {"codec": "int8", "scale": 0.01}},
            arrays=[np.ones(size, dtype=np.int8)],
        ),
        msg(
            "update",
            round=1,
            meta={"num_examples": 10, "compression": {"codec": "topk"}},
            arrays=[np.arange(4, dtype=np.int32), np.ones(4, dtype=np.float32)],
        ),
        msg("kv", sess=attention_session, layer=0, arrays=first[0], meta=first[1]),
        msg("kv", sess=attention_session, layer=2, arrays=second[0], meta=second[1]),
        msg("bye"),
        msg("bye", sess=attention_session),
        msg("secagg_keys", round=1, meta={"public_key": "x" * 44}),
        msg("secagg_shares", round=1, meta={"sealed": {"alice": "00"}}),
        msg("secagg_reveal", round=1, meta={"shares": {"alice": "00"}}),
    ]


def hostile_messages(
    *, count: int, seed: int, session: str, attention_session: str, name: str, size: int, first_seq: int
) -> Iterator[list[bytes]]:
    """``count`` messages: every tenth a valid seed message, the rest mutated ones (1 to 3 mutations)."""
    rng = random.Random(seed)
    builders = seeds(session=session, attention_session=attention_session, name=name, size=size)
    for i in range(count):
        frames = rng.choice(builders)(first_seq + i)
        if i % 10:
            for _ in range(rng.randrange(1, 4)):
                try:
                    frames = rng.choice(MUTATORS)(rng, frames)
                except Exception:  # NB: a mutation may need a decodable header the previous one broke
                    frames = _flip_bytes(rng, frames)
        yield frames
