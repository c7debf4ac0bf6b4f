"""FedAttn over the real aggregator (CurveZMQ on loopback) reproduces the single-process reference.

The in-memory driver checks the per-participant math; this checks the network path on top of it:
the prompt-layout handshake, the aggregator's union of K/V rows, and what each participant receives.
"""

from __future__ import annotations

import numpy as np
import pytest

from attention_prompts import TEXTS
from fedattn.attention.layout import SharedPrefix, chat_layout
from fedattn.attention.masks import sync_layers
from fedattn.attention.reference import FedAttnPlan, reference_logits
from fedattn.runner.loopback import run_prefill

#: same float32 math in another order (row subsets, concatenations); measured max ~1e-4
TOLERANCE = 1e-3


@pytest.mark.parametrize(("h", "n"), [(2, 2), (4, 3)])
def test_distributed_run_over_the_aggregator_matches_the_reference(model, tokenizer, h, n):
    texts = [*TEXTS[: n - 1], TEXTS[-1]] if n < len(TEXTS) else TEXTS
    layout = chat_layout(tokenizer, texts, shared_prefix=SharedPrefix.TEMPLATE)
    plan = FedAttnPlan(sync_layers=sync_layers(model.config.n_layers, interval=h))
    reference = reference_logits(model, layout, plan=plan)
    results = run_prefill(model, layout, plan=plan)
    for index, result in enumerate(results):
        own = layout.positions_of(index)
        assert np.array_equal(result.positions, own)
        diff = np.abs(result.logits - reference[own]).max()
        assert diff < TOLERANCE, f"participant {index}: max |logit diff| {diff:.2e}"
        assert len(result.sync_seconds) == len(plan.sync_layers)
