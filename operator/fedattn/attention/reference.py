"""Single-process reference FedAttn: the whole prompt in one forward pass with per-layer masks.

It is what the distributed system must reproduce (to float tolerance), and it is trivially
centralized inference when every layer syncs or there is one participant. At a sync layer the
context is the exact rows (a token's own participant and the shared prefix) next to every
participant's sent block as the wire codec delivers it (others' rows), so a lossy codec is
modelled exactly where it acts: on rows that crossed the wire.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedattn.attention.forward import (
    LayerKV,
    attend,
    embed,
    finish_layer,
    output_logits,
    project_qkv,
)
from fedattn.attention.gguf_model import LlamaModel
from fedattn.attention.kvcodec import KEY_AXIS, VALUE_AXIS, KVCodec, roundtrip
from fedattn.attention.layout import PromptLayout
from fedattn.attention.masks import layer_mask, visible_rows


@dataclass(frozen=True, kw_only=True)
class FedAttnPlan:
    """The FedAttn schedule every participant and the reference follow.

    At a layer of ``sync_layers`` every participant but the publisher sends its rows and the
    publisher (last in prompt order, the one whose continuation is the answer) attends to everyone's.
    Document holders attend to earlier holders' rows only at ``holder_sync_layers`` (a subset; None
    means the same layers), so a schedule can spend its bytes where the answer is computed.
    """

    sync_layers: frozenset[int]
    holder_sync_layers: frozenset[int] | None = None
    keep_ratio: float = 1.0
    seed: int = 0
    kv_codec: KVCodec = KVCodec.FLOAT32

    def __post_init__(self) -> None:
        object.__setattr__(self, "kv_codec", KVCodec(self.kv_codec))
        if self.holder_sync_layers is not None and not self.holder_sync_layers <= self.sync_layers:
            extra = sorted(self.holder_sync_layers - self.sync_layers)
            raise ValueError(f"holder sync layers {extra} are not sync layers {sorted(self.sync_layers)}")

    def receive_layers(self, *, publisher: bool) -> frozenset[int]:
        """Layers at which a participant attends to others' rows."""
        if publisher or self.holder_sync_layers is None:
            return self.sync_layers
        return self.holder_sync_layers


@dataclass(frozen=True)
class ReferenceRun:
    logits: np.ndarray  # (L, V) at every prompt position
    publisher_cache: list[LayerKV]  # per layer: what the publisher's rows attended to (for decoding)


def reference_logits(model: LlamaModel, layout: PromptLayout, *, plan: FedAttnPlan) -> np.ndarray:
    """Logits (L, V) at every prompt position under FedAttn's masks."""
    return reference_run(model, layout, plan=plan).logits


def delivered(k: np.ndarray, v: np.ndarray, layout: PromptLayout, *, sent: np.ndarray, codec: KVCodec):
    """K, V as receivers see them: each participant's sent block through the codec (other rows as is)."""
    if codec is KVCodec.FLOAT32:
        return k, v
    k, v = k.copy(), v.copy()
    for participant in range(layout.n_participants):
        rows = np.flatnonzero((layout.owners == participant) & sent)
        k[:, rows] = roundtrip(k[:, rows], codec, axis=KEY_AXIS)
        v[:, rows] = roundtrip(v[:, rows], codec, axis=VALUE_AXIS)
    return k, v


def reference_run(model: LlamaModel, layout: PromptLayout, *, plan: FedAttnPlan) -> ReferenceRun:
    """Prompt logits, and the publisher's per-layer context, under FedAttn's masks."""
    owners = layout.owners
    n = owners.shape[0]
    positions = np.arange(n, dtype=np.int64)
    publisher = layout.n_participants - 1
    local = layer_mask(layout, sync=False)
    is_publisher = owners == publisher
    last = int(np.flatnonzero(is_publisher)[-1])
    h = embed(model, layout.token_ids)
    cache = []
    for layer in range(model.config.n_layers):
        q, k, v = project_qkv(model, layer, h, positions)
        if layer in plan.sync_layers:
            sent = (
                np.ones(n, dtype=bool)
                if plan.keep_ratio >= 1.0
                else visible_rows(layout, plan.keep_ratio, seed=plan.seed, layer=layer)
            )
            receives = np.where(
                is_publisher,
                layer in plan.receive_layers(publisher=True),
                layer in plan.receive_layers(publisher=False),
            )
            got_k, got_v = delivered(k, v, layout, sent=sent, codec=plan.kv_codec)
            # NB: keys appear twice, exact (own/prefix) and as delivered (others); the mask picks one copy.
            context = LayerKV(np.concatenate([k, got_k], 1), np.concatenate([v, got_v], 1),
                              np.concatenate([positions, positions]))
            others = layer_mask(layout, sync=True, visible=sent) & ~local
            mask = np.hstack([local, others & receives[:, None]])
        else:
            context, mask = LayerKV(k, v, positions), local
        h = finish_layer(model, layer, h, attend(model.config, q, context, mask))
        seen = np.flatnonzero(mask[last])
        order = seen[np.argsort(context.positions[seen], kind="stable")]
        cache.append(LayerKV(context.k[:, order], context.v[:, order], context.positions[order]))
    return ReferenceRun(output_logits(model, h), cache)
