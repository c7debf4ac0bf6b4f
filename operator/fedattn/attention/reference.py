"""Single-process reference FedAttn: the whole prompt in one forward pass with per-layer masks.

It is what the distributed system must reproduce (to float tolerance), and it is trivially
centralized inference when every layer syncs or there is one participant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedattn.attention.forward import prefill
from fedattn.attention.gguf_model import LlamaModel
from fedattn.attention.layout import PromptLayout
from fedattn.attention.masks import layer_mask, visible_rows


@dataclass(frozen=True, kw_only=True)
class FedAttnPlan:
    """The FedAttn schedule every participant and the reference follow."""

    sync_layers: frozenset[int]
    keep_ratio: float = 1.0
    seed: int = 0


def reference_logits(model: LlamaModel, layout: PromptLayout, *, plan: FedAttnPlan) -> np.ndarray:
    """Logits (L, V) at every prompt position under FedAttn's masks."""

    def masks(layer: int) -> np.ndarray:
        if layer not in plan.sync_layers:
            return layer_mask(layout, sync=False)
        visible = (
            None
            if plan.keep_ratio >= 1.0
            else visible_rows(layout, plan.keep_ratio, seed=plan.seed, layer=layer)
        )
        return layer_mask(layout, sync=True, visible=visible)

    logits, _ = prefill(model, layout.token_ids, layer_masks=masks)
    return logits
