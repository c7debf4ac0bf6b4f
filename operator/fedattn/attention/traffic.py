"""K/V bytes a FedAttn prefill moves per participant: sent plus received, codes, scales and positions.

``traffic`` is the lean protocol: at a sync layer every participant but the publisher sends its
block (nobody attends to the publisher's rows: it is last in prompt order, attention is causal), and
a participant receives the blocks of the participants before it, only at the layers where it
attends to them. A contiguous block's positions travel as one (start, count) pair; a sparse block
(``kvKeepRatio`` < 1) lists an int64 position per row.

``exact_sync_bytes`` is the yardstick the issue set: uniform H=1 in float32 as the original protocol
moved it (every participant sends every row with an int64 position at every layer and gets back the
union up to its own last position, its own rows included).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedattn.attention.kvcodec import KVCodec, block_nbytes
from fedattn.attention.layout import PromptLayout
from fedattn.attention.masks import kept_rows
from fedattn.attention.reference import FedAttnPlan

POSITION_BYTES = 8  # one int64
RANGE_BYTES = 2 * POSITION_BYTES  # start and count of a contiguous block


@dataclass(frozen=True)
class Traffic:
    sent: int
    received: int

    @property
    def total(self) -> int:
        return self.sent + self.received


def block_bytes(n_rows: int, codec: KVCodec, *, sparse: bool, n_kv_heads: int, head_dim: int) -> int:
    """One participant's block at one layer on the wire: K/V codes, scales and positions."""
    if n_rows == 0:
        return 0
    positions = POSITION_BYTES * n_rows if sparse else RANGE_BYTES
    return block_nbytes(codec, n_rows=n_rows, n_kv_heads=n_kv_heads, head_dim=head_dim) + positions


def traffic(layout: PromptLayout, plan: FedAttnPlan, *, n_kv_heads: int, head_dim: int) -> list[Traffic]:
    """Per participant (prompt order) bytes sent and received over one prefill."""
    n = layout.n_participants
    rows = [int((layout.owners == p).sum()) for p in range(n)]
    sent, received = [0] * n, [0] * n
    sparse = plan.keep_ratio < 1.0
    for layer in sorted(plan.sync_layers):
        blocks = [
            block_bytes(
                int(kept_rows(rows[p], plan.keep_ratio, seed=plan.seed, participant=p, layer=layer).sum()),
                plan.kv_codec,
                sparse=sparse,
                n_kv_heads=n_kv_heads,
                head_dim=head_dim,
            )
            for p in range(n - 1)
        ]
        for p in range(n - 1):
            sent[p] += blocks[p]
        for p in range(1, n):
            if layer in plan.receive_layers(publisher=p == n - 1):
                received[p] += sum(blocks[:p])
    return [Traffic(s, r) for s, r in zip(sent, received, strict=True)]


def exact_sync_bytes(layout: PromptLayout, *, n_layers: int, n_kv_heads: int, head_dim: int) -> float:
    """Mean per participant of uniform H=1 in float32 under the original protocol."""
    row = 2 * 4 * n_kv_heads * head_dim + POSITION_BYTES
    owned = np.array([int((layout.owners == p).sum()) for p in range(layout.n_participants)])
    # the union up to a participant's last position is every private row up to and including its own
    upto = np.cumsum(owned)
    return float(n_layers * row * np.mean(owned + upto))
