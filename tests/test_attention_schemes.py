"""Sync schemes beyond uniform float32: wire codecs, asymmetric holder schedules, the bytes they move,
and decode-time sync. Every scheme's per-participant run must reproduce the masked reference."""

from __future__ import annotations

import numpy as np
import pytest

from fedattn.api.spec import SessionSpec
from fedattn.attention import spec as attention_spec
from fedattn.attention.driver import run_prefill
from fedattn.attention.forward import prefill
from fedattn.attention.gguf_model import load_model
from fedattn.attention.kvcodec import block_nbytes
from fedattn.attention.layout import PromptLayout, SharedPrefix, chat_layout, split_layout
from fedattn.attention.masks import sync_layers
from fedattn.attention.participant import participant_decode
from fedattn.attention.reference import FedAttnPlan, reference_logits, reference_run
from fedattn.attention.tokenizer import load_tokenizer
from fedattn.attention.traffic import RANGE_BYTES, exact_sync_bytes, traffic

TEXTS = [
    "Document 1: The lighthouse on Marrow Island was built in 1871 and painted red in 1902.\n",
    "Document 2: The ferry to Marrow Island leaves from Port Ellis every Tuesday at 9 am.\n",
    "Question: In which year was the lighthouse on Marrow Island painted red? Answer with the year only.\n",
]
FED_TOLERANCE = 1e-3
CODE_FLIP_TOLERANCE = 2e-2
ROW = 2 * 3 * 64  # K and V elements of one row (3 KV heads x 64)


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def layout3():
    return chat_layout(load_tokenizer(), TEXTS, shared_prefix=SharedPrefix.TEMPLATE)


def with_publisher_tokens(layout: PromptLayout, tokens: list[int]) -> PromptLayout:
    """The same split, with ``tokens`` appended to the publisher's slice."""
    starts = [int(layout.positions_of(p)[0]) for p in range(1, layout.n_participants)]
    ids = np.concatenate([layout.token_ids, np.asarray(tokens, dtype=np.int64)])
    return split_layout(ids, n_prefix=layout.n_prefix, boundaries=starts)


SCHEMES = {
    "int8 H=2": FedAttnPlan(sync_layers=sync_layers(30, interval=2), kv_codec="int8"),
    "int4 H=1 holders never": FedAttnPlan(
        sync_layers=sync_layers(30, interval=1), holder_sync_layers=frozenset(), kv_codec="int4"
    ),
    "float16 H=3 holders every other": FedAttnPlan(
        sync_layers=sync_layers(30, interval=3), holder_sync_layers=frozenset(range(0, 30, 6)), kv_codec="float16"
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_participants_reproduce_the_reference_for_every_scheme(model, layout3, name):
    plan = SCHEMES[name]
    ref = reference_logits(model, layout3, plan=plan)
    results = run_prefill(model, layout3, plan=plan)
    diff = max(np.abs(r.logits - ref[r.positions]).max() for r in results)
    exact = reference_logits(model, layout3, plan=FedAttnPlan(sync_layers=plan.sync_layers))
    effect = np.abs(ref - exact).max()
    assert effect > 1e-2  # the scheme really differs from its float32 symmetric twin (the test could fail)
    if plan.kv_codec in ("float32", "float16"):
        assert diff < FED_TOLERANCE, f"max |participant - reference| = {diff}"
    else:
        # NB: a participant computes its K/V over its own rows, the reference over the whole prompt; the
        # ~1e-6 difference flips an integer code now and then (one step of one element): measured 7e-3
        # (int8, H=2), an order of magnitude below what the codec itself does to the logits.
        assert diff < CODE_FLIP_TOLERANCE and diff < effect / 5, f"|participant - reference| {diff}, codec {effect}"


def test_asymmetric_schedule_changes_only_holders_who_receive(model, layout3):
    every = FedAttnPlan(sync_layers=sync_layers(30, interval=2))
    never = FedAttnPlan(sync_layers=every.sync_layers, holder_sync_layers=frozenset())
    a, b = reference_logits(model, layout3, plan=every), reference_logits(model, layout3, plan=never)
    first, second = layout3.positions_of(0), layout3.positions_of(1)
    # the first holder has nobody before it: identical; the second holder attends to the first or not
    np.testing.assert_allclose(a[first], b[first], atol=1e-4)
    assert np.abs(a[second] - b[second]).max() > 1e-2
    with pytest.raises(ValueError, match="not sync layers"):
        FedAttnPlan(sync_layers=frozenset({0, 2}), holder_sync_layers=frozenset({1}))


def test_decoding_publisher_attends_to_others_prompt_rows_at_sync_layers(model, layout3):
    """Decode-time sync: the publisher's generated tokens see the others' cached rows at sync layers
    only, exactly as if they had been part of its prompt slice in the masked reference."""
    plan = FedAttnPlan(sync_layers=sync_layers(30, interval=3), kv_codec="float16")
    publisher = run_prefill(model, layout3, plan=plan)[-1]
    generated = participant_decode(model, publisher, max_new_tokens=5)
    extended = with_publisher_tokens(layout3, generated.tokens[:-1])
    ref = reference_logits(model, extended, plan=plan)
    steps = ref[len(layout3.token_ids) - 1 :]
    assert np.abs(generated.step_logits - steps).max() < FED_TOLERANCE
    others = set(layout3.positions_of(0).tolist()) | set(layout3.positions_of(1).tolist())
    for layer, context in enumerate(publisher.cache):
        assert bool(others & set(context.positions.tolist())) == (layer in plan.sync_layers)
    # and the reference's publisher context decodes the same way (what the sweep uses)
    run = reference_run(model, layout3, plan=plan)
    for mine, theirs in zip(publisher.cache, run.publisher_cache, strict=True):
        np.testing.assert_array_equal(mine.positions, theirs.positions)
        assert np.abs(mine.k - theirs.k).max() < FED_TOLERANCE * np.abs(theirs.k).max()


def test_h1_float32_decoding_is_centralized(model, layout3):
    run = reference_run(model, layout3, plan=FedAttnPlan(sync_layers=sync_layers(30, interval=1)))
    logits, cache = prefill(model, layout3.token_ids)
    assert np.abs(run.logits - logits).max() < 1e-4
    for mine, central in zip(run.publisher_cache, cache, strict=True):
        np.testing.assert_array_equal(mine.positions, central.positions)


def test_traffic_counts_what_the_lean_protocol_moves(layout3):
    rows = [int((layout3.owners == p).sum()) for p in range(3)]
    h1 = FedAttnPlan(sync_layers=sync_layers(30, interval=1))
    block = [4 * ROW * r + RANGE_BYTES for r in rows]
    moved = traffic(layout3, h1, n_kv_heads=3, head_dim=64)
    # holders send at every layer, the publisher never; each receives the blocks before it
    assert [t.sent for t in moved] == [30 * block[0], 30 * block[1], 0]
    assert [t.received for t in moved] == [0, 30 * block[0], 30 * (block[0] + block[1])]
    never = FedAttnPlan(sync_layers=h1.sync_layers, holder_sync_layers=frozenset(), kv_codec="int4")
    moved = traffic(layout3, never, n_kv_heads=3, head_dim=64)
    int4 = [block_nbytes("int4", n_rows=r, n_kv_heads=3, head_dim=64) + RANGE_BYTES for r in rows]
    assert [t.received for t in moved] == [0, 0, 30 * (int4[0] + int4[1])]
    # int4 codes are an eighth of float32, plus float16 scale/minimum per key channel and value row
    assert int4[0] - RANGE_BYTES == ROW * rows[0] // 2 + 4 * (3 * 64 + 3 * rows[0])


def test_exact_sync_bytes_is_the_original_protocol_at_h1(layout3):
    rows = np.array([int((layout3.owners == p).sum()) for p in range(3)])
    per_row = 4 * ROW + 8
    sent = 30 * per_row * rows
    received = 30 * per_row * np.cumsum(rows)  # the union up to its own last row, its own included
    assert exact_sync_bytes(layout3, n_layers=30, n_kv_heads=3, head_dim=64) == pytest.approx(np.mean(sent + received))


def test_session_spec_knobs_reach_the_plan():
    spec = SessionSpec.from_manifest(
        {"mode": "attention", "publisher": "q", "syncInterval": 1, "kvCodec": "int4", "holderSync": "none"}
    )
    plan = attention_spec.plan(spec, n_layers=30)
    assert plan.sync_layers == frozenset(range(30)) and plan.kv_codec == "int4"
    assert plan.receive_layers(publisher=True) == plan.sync_layers
    assert plan.receive_layers(publisher=False) == frozenset()
    listening = attention_spec.plan(SessionSpec.from_manifest({"mode": "attention", "publisher": "q"}), n_layers=30)
    assert listening.receive_layers(publisher=False) == listening.sync_layers
