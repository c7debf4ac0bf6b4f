"""K/V wire codecs against independent references: numpy's float16, and a per-group loop formula."""

from __future__ import annotations

import numpy as np
import pytest

from fedattn.attention.kvcodec import (
    KEY_AXIS,
    VALUE_AXIS,
    KVCodec,
    block_nbytes,
    decode,
    encode,
    frames,
    from_frames,
    roundtrip,
)

BITS = {"int8": 8, "int4": 4, "int2": 2}


def sample(shape=(3, 21, 64), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(np.float32)
    x[:, :, 5] *= 30.0  # an outlier channel, as keys have
    return x


def loop_reference(x: np.ndarray, bits: int, *, axis: int) -> np.ndarray:
    """Asymmetric rounding to 2^bits levels, group by group, written out element-wise."""
    levels = 2**bits - 1
    out = np.empty_like(x)
    heads, rows, dims = x.shape
    groups = (
        [(h, slice(None), d) for h in range(heads) for d in range(dims)]
        if axis == KEY_AXIS
        else [(h, r, slice(None)) for h in range(heads) for r in range(rows)]
    )
    for index in groups:
        values = x[index]
        low = float(np.float16(values.min()))
        step = float(np.float16((values.max() - np.float32(low)) / levels))
        for i, value in enumerate(values):
            code = min(max(round((float(value) - low) / step), 0), levels) if step > 0 else 0
            out[index][i] = np.float32(low) + np.float32(code) * np.float32(step)
    return out


def test_float16_is_numpy_half_precision():
    x = sample()
    np.testing.assert_array_equal(roundtrip(x, "float16", axis=KEY_AXIS), x.astype(np.float16).astype(np.float32))
    assert roundtrip(x, "float32", axis=KEY_AXIS) is not None
    np.testing.assert_array_equal(roundtrip(x, "float32", axis=KEY_AXIS), x)


@pytest.mark.parametrize("codec", ["int8", "int4", "int2"])
@pytest.mark.parametrize("axis", [KEY_AXIS, VALUE_AXIS])
def test_integer_codecs_match_the_per_group_formula(codec, axis):
    x = sample(shape=(2, 9, 16))
    got = roundtrip(x, codec, axis=axis)
    np.testing.assert_allclose(got, loop_reference(x, BITS[codec], axis=axis), rtol=0, atol=1e-5)


@pytest.mark.parametrize("codec", ["int8", "int4", "int2"])
def test_error_is_half_a_step_and_keys_keep_outlier_channels_apart(codec):
    x = sample()
    k = roundtrip(x, codec, axis=KEY_AXIS)
    span = x.max(axis=1, keepdims=True) - x.min(axis=1, keepdims=True)
    step = span / (2 ** BITS[codec] - 1)
    # float16 scales and minimum add a relative error of ~1e-3 of the span
    assert (np.abs(k - x) <= step / 2 + 2e-3 * span).all()
    # per channel: the ordinary channels are not quantized on the outlier channel's grid
    ordinary = np.delete(np.arange(x.shape[2]), 5)
    assert np.abs(k - x)[:, :, ordinary].max() < np.abs(k - x)[:, :, 5].max()


@pytest.mark.parametrize("codec", list(KVCodec))
@pytest.mark.parametrize(("rows", "axis"), [(21, KEY_AXIS), (7, VALUE_AXIS), (1, KEY_AXIS), (0, VALUE_AXIS)])
def test_wire_form_decodes_to_the_roundtrip_and_has_the_counted_size(codec, rows, axis):
    x = sample(shape=(3, rows, 64))
    encoded = encode(x, codec, axis=axis)
    np.testing.assert_array_equal(decode(encoded), roundtrip(x, codec, axis=axis))
    both = encoded.nbytes + encode(x, codec, axis=KEY_AXIS + VALUE_AXIS - axis).nbytes
    assert both == block_nbytes(codec, n_rows=rows, n_kv_heads=3, head_dim=64)
    if codec in ("int4", "int2") and rows:
        assert encoded.data.nbytes == int(np.ceil(x.size * BITS[codec] / 8))


@pytest.mark.parametrize("codec", ["float16", "int8", "int4", "int2"])
def test_roundtrip_is_idempotent_so_a_transport_may_encode_received_values_again(codec):
    x = sample()
    for axis in (KEY_AXIS, VALUE_AXIS):
        once = roundtrip(x, codec, axis=axis)
        np.testing.assert_array_equal(roundtrip(once, codec, axis=axis), once)


def test_bad_blocks_are_rejected():
    with pytest.raises(ValueError, match="n_kv_heads, T, head_dim"):
        encode(np.zeros((4, 4), np.float32), "int8", axis=KEY_AXIS)
    with pytest.raises(ValueError, match="not a valid KVCodec"):
        encode(sample(), "int3", axis=KEY_AXIS)
    good = encode(sample(), "int4", axis=KEY_AXIS)
    with pytest.raises(ValueError, match="cannot hold"):
        decode(type(good)(good.codec, good.shape, good.data[:-1], good.scale, good.minimum))


@pytest.mark.parametrize("codec", list(KVCodec))
def test_a_block_survives_its_wire_frames_and_bad_frames_are_named(codec):
    k, v = sample(shape=(3, 11, 64)), sample(shape=(3, 11, 64), seed=1)
    sent = frames(encode(k, codec, axis=KEY_AXIS), encode(v, codec, axis=VALUE_AXIS))
    assert sum(a.nbytes for a in sent) == block_nbytes(codec, n_rows=11, n_kv_heads=3, head_dim=64)
    got_k, got_v = from_frames(sent, codec, n_rows=11, n_kv_heads=3, head_dim=64)
    np.testing.assert_array_equal(got_k, roundtrip(k, codec, axis=KEY_AXIS))
    np.testing.assert_array_equal(got_v, roundtrip(v, codec, axis=VALUE_AXIS))
    with pytest.raises(ValueError, match="expected"):
        from_frames(sent, codec, n_rows=12, n_kv_heads=3, head_dim=64)  # claims a row it did not send
    with pytest.raises(ValueError, match="arrays, got"):
        from_frames(sent[:-1], codec, n_rows=11, n_kv_heads=3, head_dim=64)
    poisoned = list(sent)
    if codec in ("float32", "float16"):
        poisoned[0] = np.full_like(sent[0], np.nan)
    else:
        poisoned[1] = np.full_like(sent[1], np.inf)
    with pytest.raises(ValueError, match="NaN or Inf"):
        from_frames(poisoned, codec, n_rows=11, n_kv_heads=3, head_dim=64)
