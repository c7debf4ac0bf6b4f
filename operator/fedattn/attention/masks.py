"""Which layers sync, which rows others see at a sync layer, and the reference's per-layer masks.

Pure functions shared by the single-process reference and the per-participant run, so both apply
exactly the same FedAttn schedule.
"""

from __future__ import annotations

import math
from enum import StrEnum

import numpy as np

from fedattn.attention.layout import PREFIX_OWNER, PromptLayout


class SyncPolicy(StrEnum):
    """Placement of ``ceil(n_layers / H)`` sync layers (the budget interval H would give).

    uniform: evenly spaced from layer 0 (what ``l % H == 0`` gives when H divides n_layers).
    deep-half: evenly spaced over the second half, none in the first (layer 0 is local).
    progressive: from layer 0, gaps shrink with depth (layer ~ n * sqrt(i / count)).

    Deep layers matter more: at H=2's budget deep-half and progressive beat uniform, while the
    mirrored shallow-half and regressive placements lost to it and were removed
    (docs/fedattn-frontier.md).
    """

    UNIFORM = "uniform"
    DEEP_HALF = "deep-half"
    PROGRESSIVE = "progressive"


def _spread(raw: np.ndarray, *, low: int, high: int) -> tuple[int, ...]:
    """Round sorted raw positions to distinct integers in [low, high)."""
    count = raw.shape[0]
    layers: list[int] = []
    for i, value in enumerate(np.floor(raw).astype(int)):
        floor = layers[-1] + 1 if layers else low
        layers.append(min(max(int(value), floor), high - count + i))
    return tuple(layers)


def sync_layers(
    n_layers: int, *, interval: int = 2, layers: list[int] | None = None, policy: str | None = None
) -> frozenset[int]:
    """The sync layers: an explicit list, else a policy with the interval's budget, else ``l % H == 0``."""
    if interval < 1:
        raise ValueError(f"sync interval must be >= 1, got {interval}")
    if layers is not None:
        bad = [layer for layer in layers if not 0 <= layer < n_layers]
        if bad or not layers:
            raise ValueError(
                f"explicit sync layers must be a non-empty list in [0, {n_layers}), got {layers}"
            )
        return frozenset(int(layer) for layer in layers)
    if policy is None:
        return frozenset(range(0, n_layers, interval))
    count = math.ceil(n_layers / interval)
    i = np.arange(count, dtype=np.float64)
    half = n_layers // 2
    match SyncPolicy(policy):
        case SyncPolicy.UNIFORM:
            chosen = _spread(i * n_layers / count, low=0, high=n_layers)
        case SyncPolicy.DEEP_HALF:
            count = min(count, n_layers - half)
            chosen = _spread(half + np.arange(count) * (n_layers - half) / count, low=half, high=n_layers)
        case SyncPolicy.PROGRESSIVE:
            chosen = _spread(n_layers * np.sqrt(i / count), low=0, high=n_layers)
    return frozenset(chosen)


def kept_rows(n_rows: int, keep_ratio: float, *, seed: int, participant: int, layer: int) -> np.ndarray:
    """Boolean (n_rows,): which of a participant's non-prefix rows it sends at a sync layer.

    A fresh seeded subset per (seed, participant, layer) of ``ceil(keep_ratio * n_rows)`` rows, so the
    reference and the participant draw the same one and each layer covers different tokens.
    """
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"kvKeepRatio must be in (0, 1], got {keep_ratio}")
    keep = np.zeros(n_rows, dtype=bool)
    n_keep = math.ceil(keep_ratio * n_rows)
    if n_keep >= n_rows:
        keep[:] = True
    else:
        rng = np.random.default_rng([seed, participant, layer])
        keep[rng.choice(n_rows, size=n_keep, replace=False)] = True
    return keep


def layer_mask(layout: PromptLayout, *, sync: bool, visible: np.ndarray | None = None) -> np.ndarray:
    """(L, L) boolean mask of the reference at one layer.

    Local layer: causal and (same participant or shared prefix). Sync layer: causal, but another
    participant's row only if it is in ``visible`` (its kept rows; all rows when None).
    """
    owners = layout.owners
    n = owners.shape[0]
    causal = np.tril(np.ones((n, n), dtype=bool))
    own_or_public = (owners[None, :] == owners[:, None]) | (owners[None, :] == PREFIX_OWNER)
    if not sync:
        return causal & own_or_public
    if visible is None:
        return causal
    return causal & (own_or_public | visible[None, :])


def visible_rows(layout: PromptLayout, keep_ratio: float, *, seed: int, layer: int) -> np.ndarray:
    """Boolean (L,): rows every participant contributes at this sync layer (prefix rows count as kept)."""
    visible = layout.owners == PREFIX_OWNER
    for participant in range(layout.n_participants):
        rows = np.flatnonzero(layout.owners == participant)
        visible[rows] = kept_rows(rows.shape[0], keep_ratio, seed=seed, participant=participant, layer=layer)
    return visible
