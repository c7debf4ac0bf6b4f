"""Numpy Llama forward pass, exposed layer by layer so FedAttn can swap in external K/V.

Shapes: hidden states ``h`` are (T, D); per-head tensors are (heads, T, head_dim). Every attention
takes explicit global position ids (RoPE) and an explicit boolean mask (query, key), so the same
code serves the centralized model, the masked single-process reference and a participant whose
context at a sync layer is other participants' K/V rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from fedattn.attention.gguf_model import LlamaConfig, LlamaModel


@dataclass(frozen=True)
class LayerKV:
    """One layer's attention context: post-RoPE keys, values and their global positions."""

    k: np.ndarray  # (n_kv_heads, S, head_dim) float32
    v: np.ndarray  # (n_kv_heads, S, head_dim) float32
    positions: np.ndarray  # (S,) int64

    def extended(self, k: np.ndarray, v: np.ndarray, positions: np.ndarray) -> LayerKV:
        """A new context with rows appended; the original stays valid (a prefill cache can be reused)."""
        return LayerKV(
            np.concatenate([self.k, k], axis=1),
            np.concatenate([self.v, v], axis=1),
            np.concatenate([self.positions, positions]),
        )

    def __len__(self) -> int:
        return int(self.positions.shape[0])


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)) * weight


def rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """Rotate adjacent pairs (2i, 2i+1) of each head by angle position * theta^(-2i/head_dim).

    NB: llama.cpp's "normal" RoPE; GGUF files store Q/K rows permuted for it, so the Hugging Face
    ``rotate_half`` pairing (i, i + head_dim/2) would be wrong here.
    """
    head_dim = x.shape[-1]
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = positions.astype(np.float64)[:, None] * inv_freq[None, :]  # (T, head_dim/2)
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def causal_mask(query_positions: np.ndarray, key_positions: np.ndarray) -> np.ndarray:
    """(T, S) boolean: a query sees every key at its own or an earlier global position."""
    return key_positions[None, :] <= query_positions[:, None]


def embed(model: LlamaModel, token_ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(token_ids, dtype=np.int64)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"token ids must be a non-empty 1-D sequence, got shape {ids.shape}")
    if ids.min() < 0 or ids.max() >= model.config.vocab_size:
        raise ValueError(f"token id out of range [0, {model.config.vocab_size})")
    return model.embedding[ids]


def project_qkv(
    model: LlamaModel, layer: int, h: np.ndarray, positions: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Post-RoPE queries (n_heads, T, hd) and keys, values (n_kv_heads, T, hd) of one layer."""
    cfg, w = model.config, model.layers[layer]
    t, hd = h.shape[0], cfg.head_dim
    qkv = rms_norm(h, w.attn_norm, cfg.rms_eps) @ w.w_qkv
    q_end, k_end = cfg.n_heads * hd, (cfg.n_heads + cfg.n_kv_heads) * hd
    q = qkv[:, :q_end].reshape(t, cfg.n_heads, hd).transpose(1, 0, 2)
    k = qkv[:, q_end:k_end].reshape(t, cfg.n_kv_heads, hd).transpose(1, 0, 2)
    v = np.ascontiguousarray(qkv[:, k_end:].reshape(t, cfg.n_kv_heads, hd).transpose(1, 0, 2))
    return rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta), v


def attend(cfg: LlamaConfig, q: np.ndarray, context: LayerKV, mask: np.ndarray) -> np.ndarray:
    """Grouped-query attention of q (n_heads, T, hd) over context under a (T, S) mask -> (T, n_heads*hd)."""
    n_heads, t, hd = q.shape
    if mask.shape != (t, len(context)):
        raise ValueError(f"mask shape {mask.shape} does not match (queries, keys) = {(t, len(context))}")
    if not mask.any(axis=1).all():
        raise ValueError("attention mask leaves a query with no visible key")
    group = n_heads // cfg.n_kv_heads
    # NB: query heads j*group .. (j+1)*group-1 share KV head j, so stacking them along the token axis
    # makes GQA one batched matmul per KV head (3-D stacks keep numpy on its BLAS path).
    qg = np.ascontiguousarray(q).reshape(cfg.n_kv_heads, group * t, hd)
    scores = (qg @ context.k.transpose(0, 2, 1)).reshape(cfg.n_kv_heads, group, t, -1)
    scores *= np.float32(1.0 / np.sqrt(hd))
    scores = np.where(mask, scores, np.float32(-np.inf))
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    out = probs.reshape(cfg.n_kv_heads, group * t, -1) @ context.v  # (kv, group*T, hd)
    return out.reshape(n_heads, t, hd).transpose(1, 0, 2).reshape(t, n_heads * hd)


def finish_layer(model: LlamaModel, layer: int, h: np.ndarray, attn: np.ndarray) -> np.ndarray:
    """Output projection and SwiGLU MLP, each with its residual connection."""
    cfg, w = model.config, model.layers[layer]
    h = h + attn @ w.w_o
    gate_up = rms_norm(h, w.ffn_norm, cfg.rms_eps) @ w.w_gate_up
    gate, up = gate_up[:, : cfg.ffn_size], gate_up[:, cfg.ffn_size :]
    return h + ((gate / (1.0 + np.exp(-gate))) * up) @ w.w_down


def output_logits(model: LlamaModel, h: np.ndarray) -> np.ndarray:
    return rms_norm(h, model.output_norm, model.config.rms_eps) @ model.lm_head.T


def prefill(
    model: LlamaModel,
    token_ids: np.ndarray,
    *,
    positions: np.ndarray | None = None,
) -> tuple[np.ndarray, list[LayerKV]]:
    """Run a whole sequence causally; returns logits (T, V) and each layer's K/V cache.

    Positions default to 0..T-1.
    """
    h = embed(model, token_ids)
    positions = (
        np.arange(h.shape[0], dtype=np.int64) if positions is None else np.asarray(positions, np.int64)
    )
    causal = causal_mask(positions, positions)
    cache = []
    for layer in range(model.config.n_layers):
        q, k, v = project_qkv(model, layer, h, positions)
        context = LayerKV(k, v, positions)
        h = finish_layer(model, layer, h, attend(model.config, q, context, causal))
        cache.append(context)
    return output_logits(model, h), cache


def decode_step(
    model: LlamaModel, token: int, position: int, cache: list[LayerKV]
) -> tuple[np.ndarray, list[LayerKV]]:
    """Logits (V,) for one new token at a global position, attending to each layer's cache and itself."""
    h = embed(model, np.array([token]))
    pos = np.array([position], dtype=np.int64)
    new_cache = []
    for layer, context in enumerate(cache):
        q, k, v = project_qkv(model, layer, h, pos)
        context = context.extended(k, v, pos)
        h = finish_layer(
            model, layer, h, attend(model.config, q, context, causal_mask(pos, context.positions))
        )
        new_cache.append(context)
    return output_logits(model, h)[0], new_cache


@dataclass(frozen=True)
class Generation:
    tokens: list[int]
    step_logits: np.ndarray  # (len(tokens), V): the logits each token was chosen from


def greedy_decode(
    model: LlamaModel,
    *,
    cache: list[LayerKV],
    last_logits: np.ndarray,
    start_position: int,
    max_new_tokens: int,
    stop_tokens: frozenset[int] = frozenset(),
    forced_tokens: list[int] | None = None,
) -> Generation:
    """Greedy continuation from a prefill cache (left unchanged, so it can be decoded again).

    With ``forced_tokens`` the given tokens are fed instead of the argmax (teacher forcing), so
    per-step logits of two models can be compared on the same sequence.
    """
    if forced_tokens is not None:
        max_new_tokens = len(forced_tokens)
    tokens, step_logits, logits = [], [], last_logits
    # NB: one-token steps are memory-bound matrix-vector products; a second BLAS thread only adds
    # synchronisation (measured 3x slower on 2 busy cores), so decoding pins BLAS to one thread.
    with threadpool_limits(limits=1, user_api="blas"):
        for step in range(max_new_tokens):
            token = int(np.argmax(logits)) if forced_tokens is None else int(forced_tokens[step])
            tokens.append(token)
            step_logits.append(logits)
            if step == max_new_tokens - 1 or (forced_tokens is None and token in stop_tokens):
                break
            logits, cache = decode_step(model, token, start_position + step, cache)
    width = last_logits.shape[-1]
    return Generation(tokens, np.stack(step_logits) if step_logits else np.empty((0, width), np.float32))
