"""Compression: int8 error bound, exact top-k, error feedback convergence, wire round trip and rejections."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedattn import wire
from fedattn.api.spec import SessionSpec
from fedattn.learning.compression import (
    CompressionSpec,
    ErrorFeedback,
    decode,
    dequantize_int8,
    encode,
    quantize_int8,
    top_k,
    wire_bytes,
)


@pytest.mark.parametrize(("size", "chunk"), [(1, 4), (1000, 64), (1003, 64), (500, 1000)])
def test_int8_error_is_at_most_half_a_scale(size, chunk):
    x = np.random.default_rng(size).standard_t(3, size=size).astype(np.float32) * 5
    q, scales = quantize_int8(x, chunk=chunk)
    assert q.dtype == np.int8 and scales.dtype == np.float32 and scales.size == -(-size // chunk)
    # the scale of each chunk is its max |x| / 127, computed here independently
    for c, s in enumerate(scales):
        assert s == pytest.approx(np.abs(x[c * chunk : (c + 1) * chunk]).max() / 127, rel=1e-6)
    err = np.abs(x - dequantize_int8(q, scales, chunk=chunk))
    bound = np.repeat(scales, chunk)[:size] / 2
    assert np.all(err <= bound * (1 + 1e-5) + 1e-12)
    assert np.abs(q).max() <= 127


def test_int8_of_a_zero_chunk_is_zero():
    x = np.zeros(10, np.float32)
    x[7:] = [1.0, -2.0, 0.5]
    q, scales = quantize_int8(x, chunk=5)
    assert scales[0] == 0 and not q[:5].any()
    np.testing.assert_allclose(dequantize_int8(q, scales, chunk=5), x, atol=scales[1] / 2)


def test_top_k_keeps_exactly_the_k_largest_magnitudes():
    x = np.random.default_rng(1).normal(size=997).astype(np.float32)
    idx, vals = top_k(x, 50)
    expected = np.sort(np.argsort(-np.abs(x), kind="stable")[:50])
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_array_equal(vals, x[expected])
    assert idx.dtype == np.int32


def test_error_feedback_makes_the_transmitted_sum_converge_to_the_true_sum():
    rng = np.random.default_rng(2)
    size, steps = 400, 200
    spec = CompressionSpec(quantize_bits=8, top_k=0.05, chunk=16)
    ef = ErrorFeedback(size=size, spec=spec)
    true_sum = np.zeros(size)
    sent_sum = np.zeros(size)
    gaps = []
    for t in range(1, steps + 1):
        delta = rng.normal(0.1, 1.0, size=size).astype(np.float32)
        arrays, meta = ef.compress(delta)
        sent_sum += decode(arrays, meta, size=size)
        true_sum += delta
        np.testing.assert_allclose(true_sum, sent_sum + ef.residual, atol=1e-3)  # nothing is lost
        gaps.append(np.linalg.norm(true_sum - sent_sum) / np.linalg.norm(true_sum))
        if t == 20:
            without = _no_feedback_gap(rng, size, spec)
    assert gaps[-1] < 0.25 * gaps[19]  # the relative gap shrinks as rounds accumulate
    assert gaps[-1] < without


def _no_feedback_gap(rng, size, spec):
    """Relative gap after 200 steps when what top-k drops is simply thrown away."""
    true_sum, sent_sum = np.zeros(size), np.zeros(size)
    for _ in range(200):
        delta = rng.normal(0.1, 1.0, size=size).astype(np.float32)
        arrays, meta = encode(delta, spec=spec)
        sent_sum += decode(arrays, meta, size=size)
        true_sum += delta
    return np.linalg.norm(true_sum - sent_sum) / np.linalg.norm(true_sum)


@pytest.mark.parametrize(
    ("spec", "codec", "payload"),
    [
        (CompressionSpec(), "dense", 4 * 5000),
        (CompressionSpec(quantize_bits=8, chunk=1024), "int8", 5000 + 4 * 5),
        (CompressionSpec(top_k=0.01), "topk", 50 * (4 + 4)),
        (CompressionSpec(quantize_bits=8, top_k=0.01, chunk=32), "topk+int8", 50 * (4 + 1) + 4 * 2),
    ],
)
def test_codecs_round_trip_through_the_wire_and_count_their_bytes(spec, codec, payload):
    delta = np.random.default_rng(3).normal(size=5000).astype(np.float32)
    arrays, meta = encode(delta, spec=spec)
    assert meta["codec"] == codec and wire_bytes(arrays) == payload
    frames = wire.encode(
        kind="update", session="s", participant="p", round=1, meta={"compression": meta}, arrays=arrays
    )
    msg = wire.decode([bytes(f) for f in frames])
    out = decode(msg.arrays, msg.meta["compression"], size=5000)
    np.testing.assert_array_equal(out, decode(arrays, meta, size=5000))
    if codec == "dense":
        np.testing.assert_array_equal(out, delta)
    if codec.startswith("topk"):
        assert np.count_nonzero(out) <= 50


def _int8_msg():
    delta = np.linspace(-1, 1, 100, dtype=np.float32)
    return encode(delta, spec=CompressionSpec(quantize_bits=8, chunk=10))


def _topk_msg():
    delta = np.linspace(-1, 1, 100, dtype=np.float32)
    return encode(delta, spec=CompressionSpec(top_k=0.1))


@pytest.mark.parametrize(
    ("build", "tamper", "match"),
    [
        (_int8_msg, lambda a, m: (a, {**m, "codec": "zstd"}), "unknown codec"),
        (_int8_msg, lambda a, m: (a, {**m, "size": 99}), "compression.size"),
        (_int8_msg, lambda a, m: (a, {**m, "chunk": 0}), "chunk"),
        (_int8_msg, lambda a, m: (a, {**m, "chunk": True}), "chunk"),
        (_int8_msg, lambda a, m: (a[:1], m), "expected 2 arrays"),
        (_int8_msg, lambda a, m: ([a[0].astype(np.int32), a[1]], m), "int32"),
        (_int8_msg, lambda a, m: ([a[0], np.full_like(a[1], np.nan)], m), "scales"),
        (_int8_msg, lambda a, m: ([a[0], -a[1]], m), "scales"),
        (_topk_msg, lambda a, m: ([a[0][::-1].copy(), a[1]], m), "strictly increasing"),
        (_topk_msg, lambda a, m: ([np.r_[a[0][:-1], 100].astype(np.int32), a[1]], m), "within"),
        (_topk_msg, lambda a, m: ([np.r_[a[0][:1], a[0][:-1]].astype(np.int32), a[1]], m), "strictly"),
        (_topk_msg, lambda a, m: (a, {**m, "k": 11}), r"\[11\]"),
        (_topk_msg, lambda a, m: (a, {**m, "k": 101}), "compression.k"),
    ],
)
def test_decode_rejects_inconsistent_payloads_with_a_wire_error(build, tamper, match):
    arrays, meta = tamper(*build())
    with pytest.raises(wire.WireError, match=match) as info:
        decode(arrays, meta, size=100)
    assert info.value.code == "bad_encoding"


def _codec(compression: dict | None) -> CompressionSpec:
    """The codec of a session whose ``spec.compression`` is ``compression`` (None: not set)."""
    spec = {"mode": "learning"} if compression is None else {"mode": "learning", "compression": compression}
    return CompressionSpec.from_manifest(SessionSpec.from_manifest(spec).compression)


def test_spec_from_manifest_validates():
    assert _codec({"quantizeBits": 8, "topK": 0.1}).codec == "topk+int8"
    assert _codec(None).codec == "dense"
    assert _codec({"quantizeBits": 0, "topK": 1.0}).codec == "dense"
    assert _codec({}).codec == "int8"  # NB: the schema's defaults: quantizeBits 8, topK 1 (all)
    for bad in (
        {"quantizeBits": 4},
        {"quantizeBits": 8.5},
        {"quantizeBits": True},
        {"topK": 1.5},
        {"topK": -0.1},
        {"topK": "0.1"},
        {"bits": 8},
    ):
        with pytest.raises(ValueError, match=r"quantizeBits|topK"):
            _codec(bad)


_DTYPES = ["float32", "int8", "int32", "int64", "uint8"]


@settings(max_examples=150, deadline=None)
@given(
    meta=st.fixed_dictionaries(
        {"codec": st.sampled_from(["dense", "int8", "topk", "topk+int8", "lz4"])},
        optional={
            "size": st.one_of(st.integers(-2, 40), st.booleans(), st.text(max_size=2)),
            "k": st.one_of(st.integers(-2, 40), st.none()),
            "chunk": st.one_of(st.integers(-1, 40), st.floats()),
        },
    ),
    arrays=st.lists(st.tuples(st.sampled_from(_DTYPES), st.integers(0, 40), st.integers(0, 2**31)), max_size=4),
)
def test_decode_of_arbitrary_payloads_returns_a_model_sized_vector_or_a_wire_error(meta, arrays):
    built = [np.random.default_rng(seed).integers(-50, 50, size=n).astype(dt) for dt, n, seed in arrays]
    try:
        out = decode(built, meta, size=32)
    except wire.WireError as exc:
        assert exc.code == "bad_encoding"
    else:
        assert out.dtype == np.float32 and out.shape == (32,)
