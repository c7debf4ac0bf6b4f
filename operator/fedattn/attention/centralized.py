"""Centralized inference as the yardstick for a FedAttn participant's continuation.

A participant continues after its own last prompt position. Its centralized counterpart is the
ordinary model over the whole global prompt up to that position (causal attention makes every later
token irrelevant), decoding greedily from there. Fidelity compares the two on the participant's own
generated sequence (teacher forcing), so one early divergence does not make every later step
incomparable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedattn.attention import fidelity
from fedattn.attention.forward import greedy_decode, prefill
from fedattn.attention.gguf_model import LlamaModel


@dataclass(frozen=True)
class Comparison:
    centralized_tokens: list[int]
    top1_agreement: float
    kl: float
    exact_match: bool


def compare(
    model: LlamaModel,
    prompt_ids: np.ndarray,
    *,
    last_position: int,
    tokens: list[int],
    step_logits: np.ndarray,
    max_new_tokens: int,
    stop_tokens: frozenset[int],
) -> Comparison:
    """Centralized greedy continuation after ``last_position`` and the participant's fidelity to it.

    ``tokens``/``step_logits`` are what the participant generated and the logits it chose them from.
    """
    logits, cache = prefill(model, np.asarray(prompt_ids[: last_position + 1], dtype=np.int64))
    common = dict(cache=cache, last_logits=logits[-1], start_position=last_position + 1)
    centralized = greedy_decode(model, max_new_tokens=max_new_tokens, stop_tokens=stop_tokens, **common)
    if not tokens:
        return Comparison(centralized.tokens, 0.0, float("nan"), exact_match=not centralized.tokens)
    forced = greedy_decode(model, max_new_tokens=len(tokens), forced_tokens=tokens, **common)
    return Comparison(
        centralized_tokens=centralized.tokens,
        top1_agreement=fidelity.top1_agreement(forced.step_logits, step_logits),
        kl=fidelity.mean_kl(forced.step_logits, step_logits),
        exact_match=fidelity.exact_match(centralized.tokens, tokens),
    )
