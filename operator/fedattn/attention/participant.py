"""One participant's FedAttn run: it holds only its own token slice and the shared public prefix.

Prefill runs layer by layer. At a local layer a token attends to the prefix and its own earlier
tokens; at a sync layer the participant hands its own post-RoPE K/V rows (never token ids, queries
or hidden states) to ``exchange`` and attends to the prefix plus the returned global rows. Decoding
needs no communication: each layer's cache is whatever that layer attended to during prefill, and
generated tokens are appended after the participant's last prompt position.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from fedattn.attention.exchange import Exchange
from fedattn.attention.forward import (
    Generation,
    LayerKV,
    attend,
    causal_mask,
    embed,
    finish_layer,
    greedy_decode,
    output_logits,
    project_qkv,
)
from fedattn.attention.gguf_model import LlamaModel
from fedattn.attention.kvcodec import KEY_AXIS, VALUE_AXIS, roundtrip
from fedattn.attention.masks import kept_rows
from fedattn.attention.reference import FedAttnPlan
from fedattn.attention.traffic import block_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrefillResult:
    logits: np.ndarray  # (T_i, V) at the participant's own prompt positions
    positions: np.ndarray  # (T_i,) its global positions
    cache: list[LayerKV]  # per layer: what that layer attended to
    kv_bytes_sent: int
    sync_seconds: tuple[float, ...]  # wall time of each exchange call (includes waiting for others)


def _checked_global(kv, *, layer: int, n_kv_heads: int, head_dim: int, n_prefix: int):
    """Validate what an exchange returned before it enters attention."""
    k, v, positions = kv
    k, v, positions = np.asarray(k), np.asarray(v), np.asarray(positions)
    if positions.shape == (0,):  # nobody before this participant (or it does not listen here)
        empty = np.zeros((n_kv_heads, 0, head_dim), np.float32)
        return empty, empty, np.zeros(0, np.int64)
    t = positions.shape[0] if positions.ndim == 1 else -1
    if positions.ndim != 1 or k.shape != (n_kv_heads, t, head_dim) or v.shape != k.shape:
        raise ValueError(
            f"layer {layer}: exchange returned K {k.shape}, V {v.shape}, positions {positions.shape}; "
            f"expected ({n_kv_heads}, T, {head_dim}) and (T,)"
        )
    if k.dtype != np.float32 or v.dtype != np.float32 or not np.issubdtype(positions.dtype, np.integer):
        raise ValueError(f"layer {layer}: exchange returned dtypes {k.dtype}/{v.dtype}/{positions.dtype}")
    if not (np.isfinite(k).all() and np.isfinite(v).all()):
        raise ValueError(f"layer {layer}: exchange returned NaN or Inf in K/V")
    if t and (positions.min() < n_prefix or (np.diff(positions) <= 0).any()):
        raise ValueError(
            f"layer {layer}: exchange positions must be strictly increasing "
            f"and >= {n_prefix} (the shared prefix)"
        )
    return k, v, positions.astype(np.int64)


def _merged(local: LayerKV, k: np.ndarray, v: np.ndarray, positions: np.ndarray) -> LayerKV:
    """Local rows plus received rows, sorted by global position."""
    merged = local.extended(k, v, positions)
    order = np.argsort(merged.positions, kind="stable")
    return LayerKV(merged.k[:, order], merged.v[:, order], merged.positions[order])


def participant_prefill(
    model: LlamaModel,
    *,
    participant: int,
    own_ids: np.ndarray,
    own_positions: np.ndarray,
    prefix_ids: np.ndarray,
    plan: FedAttnPlan,
    exchange: Exchange,
    publisher: bool = False,
) -> PrefillResult:
    """Prefill one participant's slice; ``exchange`` is called once per sync layer, in layer order.

    ``publisher``: this participant is the last in prompt order (it receives at every sync layer; a
    document holder receives only at the plan's holder sync layers).
    """
    cfg = model.config
    own_positions = np.asarray(own_positions, dtype=np.int64)
    n_prefix, n_own = len(prefix_ids), len(own_ids)
    if n_own == 0 or own_positions.shape != (n_own,):
        raise ValueError(f"need one global position per own token, got {own_positions.shape} for {n_own}")
    if own_positions.min() < n_prefix or (np.diff(own_positions) <= 0).any():
        raise ValueError(f"own positions must be strictly increasing and start at or after {n_prefix}")
    ids = np.concatenate([np.asarray(prefix_ids, np.int64), np.asarray(own_ids, np.int64)])
    positions = np.concatenate([np.arange(n_prefix, dtype=np.int64), own_positions])
    own_max = int(own_positions[-1])
    h = embed(model, ids)
    cache, sent_bytes, sync_seconds = [], 0, []
    receive_layers = plan.receive_layers(publisher=publisher)
    for layer in range(cfg.n_layers):
        q, k, v = project_qkv(model, layer, h, positions)
        context = LayerKV(k, v, positions)
        if layer in plan.sync_layers:
            # NB: the publisher is last in prompt order: causally nobody attends to its rows.
            keep = (
                np.zeros(n_own, dtype=bool)
                if publisher
                else kept_rows(n_own, plan.keep_ratio, seed=plan.seed, participant=participant, layer=layer)
            )
            # NB: the codec's round trip is what every receiver attends to, whatever the transport.
            send_k = roundtrip(np.ascontiguousarray(k[:, n_prefix:][:, keep]), plan.kv_codec, axis=KEY_AXIS)
            send_v = roundtrip(np.ascontiguousarray(v[:, n_prefix:][:, keep]), plan.kv_codec, axis=VALUE_AXIS)
            started = time.perf_counter()
            got_k, got_v, got_pos = _checked_global(
                exchange(layer, send_k, send_v, own_positions[keep]),
                layer=layer,
                n_kv_heads=cfg.n_kv_heads,
                head_dim=cfg.head_dim,
                n_prefix=n_prefix,
            )
            sync_seconds.append(time.perf_counter() - started)
            sent_bytes += block_bytes(
                int(keep.sum()),
                plan.kv_codec,
                sparse=plan.keep_ratio < 1.0,
                n_kv_heads=cfg.n_kv_heads,
                head_dim=cfg.head_dim,
            )
            # NB: own rows are used whole (a sparse sync sends only some of them); later rows of others
            # are dropped because decoding would otherwise see positions beyond its own prompt.
            others = ~np.isin(got_pos, own_positions) & (got_pos <= own_max) & (layer in receive_layers)
            context = _merged(context, got_k[:, others], got_v[:, others], got_pos[others])
            log.debug("sync", extra={"participant": participant, "layer": layer, "rows": int(others.sum())})
        h = finish_layer(model, layer, h, attend(cfg, q, context, causal_mask(positions, context.positions)))
        cache.append(context)
    return PrefillResult(
        logits=output_logits(model, h[n_prefix:]),
        positions=own_positions,
        cache=cache,
        kv_bytes_sent=sent_bytes,
        sync_seconds=tuple(sync_seconds),
    )


def participant_decode(
    model: LlamaModel,
    prefill: PrefillResult,
    *,
    max_new_tokens: int,
    stop_tokens: frozenset[int] = frozenset(),
    forced_tokens: list[int] | None = None,
) -> Generation:
    """Greedy continuation after the participant's own prompt; no communication."""
    return greedy_decode(
        model,
        cache=prefill.cache,
        last_logits=prefill.logits[-1],
        start_position=int(prefill.positions[-1]) + 1,
        max_new_tokens=max_new_tokens,
        stop_tokens=stop_tokens,
        forced_tokens=forced_tokens,
    )
