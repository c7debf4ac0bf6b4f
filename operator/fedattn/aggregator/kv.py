"""The FedAttn KV sync barrier: collect each participant's K/V rows for one layer, checked on arrival.

At a sync layer every participant sends its own K and V (``(n_kv_heads, T_i, head_dim)``, after RoPE)
with the global positions of its rows. The global KV is their union along the token axis, sorted
by position -- never an average -- (``fedattn.attention.exchange.union_kv``, the same rule the
single-process reference uses): each participant gets back the blocks of the participants before it
in prompt order, forwarded in the wire form (codec) they came in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

KVPart = tuple[np.ndarray, np.ndarray, np.ndarray]
WireBlock = tuple[list[np.ndarray], dict]  # a block's arrays and meta as the participant sent them


def check_part(k: np.ndarray, v: np.ndarray, positions: np.ndarray) -> None:
    """Reject one participant's KV block that is not well-formed; raises ValueError saying why."""
    if k.ndim != 3 or v.shape != k.shape:
        raise ValueError(f"K and V must share a shape (n_kv_heads, T, head_dim); got {k.shape} and {v.shape}")
    if positions.ndim != 1 or positions.shape[0] != k.shape[1]:
        raise ValueError(f"positions must have shape ({k.shape[1]},), got {positions.shape}")
    if positions.dtype.kind not in "iu":
        raise ValueError(f"positions must be integers, got {positions.dtype}")
    if positions.size and positions.min() < 0:
        raise ValueError("positions must be >= 0")
    if np.unique(positions).size != positions.size:
        raise ValueError("positions repeat within one participant's block")


@dataclass
class Barrier:
    """One (session, layer) sync: who has sent what, and since when."""

    layer: int
    expected: frozenset[str]
    parts: dict[str, KVPart] = field(default_factory=dict)
    wire_forms: dict[str, WireBlock] = field(default_factory=dict)
    first_arrival: float = field(default_factory=time.monotonic)

    def add(self, participant: str, part: KVPart, *, wire_form: WireBlock) -> None:
        """Record a participant's block (decoded, and as it came to forward it) after checking it
        against the blocks already here.

        The caller rejects a second block from the same participant first (code ``duplicate``).
        """
        k, v, positions = part
        check_part(k, v, positions)
        others = [p for p in self.parts.values() if p[2].size]
        if others and positions.size:
            k0 = others[0][0]
            if (k.shape[0], k.shape[2]) != (k0.shape[0], k0.shape[2]):
                raise ValueError(
                    f"KV shape ({k.shape[0]} heads, dim {k.shape[2]}) differs from"
                    f" ({k0.shape[0]} heads, dim {k0.shape[2]}) sent by others"
                )
            taken = np.concatenate([p[2] for p in self.parts.values()])
            clash = np.intersect1d(taken, positions)
            if clash.size:
                raise ValueError(f"positions already sent by another participant, e.g. {int(clash[0])}")
        self.parts[participant] = part
        self.wire_forms[participant] = wire_form

    @property
    def complete(self) -> bool:
        return self.expected <= self.parts.keys()

    def missing(self) -> list[str]:
        return sorted(self.expected - self.parts.keys())
