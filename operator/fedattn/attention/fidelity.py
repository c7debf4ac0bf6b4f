"""How close a FedAttn run is to centralized inference."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def top1_agreement(reference_logits: np.ndarray, logits: np.ndarray) -> float:
    """Share of positions whose argmax token is the reference's."""
    _check(reference_logits, logits)
    return float(np.mean(np.argmax(reference_logits, axis=-1) == np.argmax(logits, axis=-1)))


def mean_kl(reference_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean over positions of KL(reference || run) in nats."""
    _check(reference_logits, logits)
    log_p, log_q = log_softmax(reference_logits), log_softmax(logits)
    return float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)))


def exact_match(reference_tokens: list[int], tokens: list[int]) -> bool:
    return list(reference_tokens) == list(tokens)


def _check(reference_logits: np.ndarray, logits: np.ndarray) -> None:
    if reference_logits.shape != logits.shape or reference_logits.ndim != 2 or reference_logits.shape[0] == 0:
        raise ValueError(f"logits shapes differ or are empty: {reference_logits.shape} vs {logits.shape}")
