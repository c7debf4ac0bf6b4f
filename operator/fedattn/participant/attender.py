"""An attention-mode participant: FedAttn prefill over the aggregator, then local greedy decoding.

What leaves this process: its token count (in ``hello``, to place everyone's rows at global
positions) and, at each sync layer, post-RoPE K/V rows with their global positions. Token ids, text,
queries and hidden states stay here; the generated text is written only to the local result file.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedattn.aggregator.client import AggregatorClient
from fedattn.api.spec import SessionSpec
from fedattn.attention import spec as attention_spec
from fedattn.attention.exchange import block_message, read_reply
from fedattn.attention.gguf_model import load_model, resolve_model_path
from fedattn.attention.participant import participant_decode, participant_prefill
from fedattn.attention.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


class SyncFailed(RuntimeError):
    """The aggregator answered a sync with an error (timeout without quorum, rejected KV...)."""


def await_kind(channel: AggregatorClient, kind: str, *, layer: int | None = None, timeout_seconds: float):
    """The next ``kind`` message (for ``layer`` when given); an ``error`` ends the wait with its reason."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        msg = channel.recv(timeout_seconds=max(0.001, deadline - time.monotonic()))
        if msg.kind == "error":
            raise SyncFailed(f"aggregator: {msg.meta.get('code')}: {msg.meta.get('message')}")
        if msg.kind == kind and (layer is None or msg.layer == layer):
            return msg
        log.debug("ignoring %s while waiting for %s", msg.kind, kind)


def zmq_exchange(channel: AggregatorClient, *, codec: str, timeout_seconds: float):
    """The FedAttn exchange callback over the aggregator: send own K/V block in the session's codec,
    get the union of the blocks before it in prompt order (decoded)."""

    def exchange(layer: int, k: np.ndarray, v: np.ndarray, positions: np.ndarray):
        arrays, meta = block_message(k, v, positions, codec)
        channel.send("kv", layer=layer, arrays=arrays, meta=meta)
        msg = await_kind(channel, "kv_global", layer=layer, timeout_seconds=timeout_seconds)
        blocks = msg.meta.get("blocks")
        if not isinstance(blocks, list):
            raise SyncFailed(f"aggregator: kv_global for layer {layer} has no block list")
        return read_reply(msg.arrays, blocks, codec)

    return exchange


def run_attention(
    channel: AggregatorClient,
    *,
    spec: SessionSpec,
    name: str,
    participants: list[str],
    prompt: str,
    logits_file: Path | None = None,
) -> dict[str, Any]:
    """Prefill with FedAttn, decode greedily; returns this participant's own report."""
    path = resolve_model_path(attention_spec.model_path(spec))
    model, tokenizer = load_model(path), load_tokenizer(path)
    order = attention_spec.participant_order(participants, spec.publisher)
    index = order.index(name)
    tokens = attention_spec.own_tokens(
        tokenizer, prompt, shared_prefix=spec.shared_prefix, index=index, count=len(order)
    )
    timeout = float(spec.round_timeout_seconds)
    cfg = model.config
    shape = {"n_layers": cfg.n_layers, "n_kv_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim}
    channel.send("hello", meta={"tokens": len(tokens.own), "prefix": len(tokens.prefix), "model": shape})
    welcome = await_kind(channel, "welcome", timeout_seconds=timeout)
    start = len(tokens.prefix) + int(welcome.meta["tokens_before"])
    positions = np.arange(start, start + len(tokens.own), dtype=np.int64)
    plan = attention_spec.plan(spec, n_layers=model.config.n_layers)
    began = time.perf_counter()
    prefill = participant_prefill(
        model,
        participant=index,
        own_ids=np.asarray(tokens.own, dtype=np.int64),
        own_positions=positions,
        prefix_ids=np.asarray(tokens.prefix, dtype=np.int64),
        plan=plan,
        exchange=zmq_exchange(channel, codec=plan.kv_codec, timeout_seconds=timeout),
        publisher=index == len(order) - 1,
    )
    prefill_seconds = time.perf_counter() - began
    stop = frozenset({tokenizer.eos_token_id} - {None})
    began = time.perf_counter()
    generation = participant_decode(model, prefill, max_new_tokens=spec.max_new_tokens, stop_tokens=stop)
    decode_seconds = time.perf_counter() - began
    sync_ms = np.asarray(prefill.sync_seconds) * 1000.0
    if logits_file is not None:
        logits_file.parent.mkdir(parents=True, exist_ok=True)
        np.savez(logits_file, prompt_logits=prefill.logits, step_logits=generation.step_logits,
                 positions=prefill.positions, tokens=np.asarray(generation.tokens, dtype=np.int64))
    return {
        "reason": "generated",
        "text": tokenizer.decode(generation.tokens),
        "tokens": generation.tokens,
        "kv_bytes": prefill.kv_bytes_sent,
        "syncs": len(prefill.sync_seconds),
        "sync_p50_ms": float(np.percentile(sync_ms, 50)) if sync_ms.size else None,
        "sync_p99_ms": float(np.percentile(sync_ms, 99)) if sync_ms.size else None,
        "prefill_seconds": prefill_seconds,
        "decode_seconds": decode_seconds,
        "prompt_tokens": len(tokens.own),
        "first_position": int(positions[0]),
    }
