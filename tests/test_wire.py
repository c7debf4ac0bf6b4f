"""fedattn.wire: round trips of arbitrary valid messages, and every corruption rejected as a WireError."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedattn import wire

names = st.text(min_size=1, max_size=40)
big_int = st.integers(min_value=0, max_value=2**62)
meta_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
metas = st.dictionaries(st.text(max_size=12), meta_values, max_size=5)


@st.composite
def arrays(draw):
    dtype = np.dtype(draw(st.sampled_from(sorted(wire.DTYPES))))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
    elements = None
    if dtype.kind == "f":
        elements = st.floats(allow_nan=False, allow_infinity=False, width=dtype.itemsize * 8)
    return draw(hnp.arrays(dtype, shape, elements=elements))


@st.composite
def messages(draw):
    return {
        "kind": draw(st.sampled_from(sorted(wire.KINDS))),
        "session": draw(names),
        "participant": draw(names),
        "round": draw(big_int),
        "layer": draw(st.integers(min_value=-1, max_value=2**62)),
        "seq": draw(big_int),
        "meta": draw(metas),
        "arrays": draw(st.lists(arrays(), max_size=4)),
    }


def as_bytes(frames):
    return [bytes(f) for f in frames]


@given(messages())
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip_of_any_valid_message(msg):
    decoded = wire.decode(as_bytes(wire.encode(**msg)))
    for key in ("kind", "session", "participant", "round", "layer", "seq", "meta"):
        assert getattr(decoded, key) == msg[key]
    assert len(decoded.arrays) == len(msg["arrays"])
    for got, sent in zip(decoded.arrays, msg["arrays"], strict=True):
        assert got.dtype == sent.dtype and got.shape == sent.shape
        np.testing.assert_array_equal(got, sent)
    assert decoded.nbytes == sum(a.nbytes for a in msg["arrays"])


def _decode_or_wire_error(frames):
    try:
        return wire.decode(frames)
    except wire.WireError as exc:
        assert exc.code and exc.detail
        return None


@given(messages(), st.data())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_any_header_mutation_is_a_wire_error_or_a_consistent_message(msg, data):
    frames = as_bytes(wire.encode(**msg))
    header = bytearray(frames[0])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(header) - 1))
        header[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(0, len(header)))
        header = header[:cut]
    decoded = _decode_or_wire_error([bytes(header), *frames[1:]])
    if decoded is not None:  # a mutation that still reads as a valid header must describe the frames
        assert len(decoded.arrays) == len(frames) - 1
        for array, frame in zip(decoded.arrays, frames[1:], strict=True):
            assert array.nbytes == len(frame)


@given(messages().filter(lambda m: any(a.nbytes for a in m["arrays"])), st.data())
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_any_payload_byte_change_fails_the_checksum(msg, data):
    frames = as_bytes(wire.encode(**msg))
    index = data.draw(st.sampled_from([i for i in range(1, len(frames)) if frames[i]]))
    payload = bytearray(frames[index])
    pos = data.draw(st.integers(0, len(payload) - 1))
    payload[pos] ^= data.draw(st.integers(1, 255))
    frames[index] = bytes(payload)
    with pytest.raises(wire.WireError) as err:
        wire.decode(frames)
    assert err.value.code == "checksum"


@given(messages().filter(lambda m: m["arrays"]), st.data())
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_any_frame_length_change_or_frame_loss_is_rejected(msg, data):
    frames = as_bytes(wire.encode(**msg))
    index = data.draw(st.integers(1, len(frames) - 1))
    action = data.draw(st.sampled_from(["grow", "shrink", "drop", "extra"]))
    if action == "grow":
        frames[index] += data.draw(st.binary(min_size=1, max_size=16))
    elif action == "shrink" and frames[index]:
        frames[index] = frames[index][: data.draw(st.integers(0, len(frames[index]) - 1))]
    elif action == "drop":
        del frames[index]
    else:
        frames.append(data.draw(st.binary(max_size=8)))
    if action == "shrink" and len(frames[index]) == len(as_bytes(wire.encode(**msg))[index]):
        return  # an empty frame cannot shrink
    with pytest.raises(wire.WireError) as err:
        wire.decode(frames)
    assert err.value.code in {"length_mismatch", "frame_count"}


@given(st.binary(max_size=200), st.lists(st.binary(max_size=16), max_size=3))
def test_arbitrary_bytes_never_raise_anything_but_wire_error(header, payload):
    _decode_or_wire_error([header, *payload])


# --- one test per error code ----------------------------------------------------------------------


def header_of(**changes):
    base = wire.encode(kind="update", session="s", participant="p", round=1, arrays=[np.ones(3, np.float32)])
    header = msgpack.unpackb(base[0], raw=False)
    header.update(changes)
    return [msgpack.packb(header, use_bin_type=True), bytes(base[1])]


def code_of(frames, **kwargs):
    with pytest.raises(wire.WireError) as err:
        wire.decode(frames, **kwargs)
    assert err.value.detail
    return err.value.code


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b"\xc1"],  # never-used msgpack byte
        [msgpack.packb([1, 2, 3])],
        header_of(extra=1),
        header_of(session=""),
        header_of(session=7),
        header_of(participant="x" * 254),
        header_of(round=-1),
        header_of(round=True),
        header_of(layer=-2),
        header_of(seq=2**63),
        header_of(meta=[]),
        header_of(arrays={}),
        header_of(arrays=[0]),
        header_of(arrays=[{"dtype": "float32", "shape": [3], "nbytes": "12", "xxh3": 0}]),
        header_of(arrays=[{}] * (wire.MAX_ARRAYS + 1)),
    ],
)
def test_malformed_header(frames):
    assert code_of(frames) == "malformed_header"


@pytest.mark.parametrize(("changes", "code"), [({"v": 2}, "bad_version"), ({"v": None}, "bad_version")])
def test_version(changes, code):
    assert code_of(header_of(**changes)) == code


@pytest.mark.parametrize("kind", ["nope", 3, None, ["update"]])
def test_unknown_kind(kind):
    assert code_of(header_of(kind=kind)) == "unknown_kind"


@pytest.mark.parametrize("dtype", ["complex64", "float128", 5, ["float32"], None])
def test_bad_dtype(dtype):
    frames = header_of(arrays=[{"dtype": dtype, "shape": [3], "nbytes": 12, "xxh3": 0}])
    assert code_of(frames) == "bad_dtype"


@pytest.mark.parametrize("shape", [3, [-1], [1.5], [True], [1] * (wire.MAX_DIMS + 1), [2**41]])
def test_bad_shape(shape):
    frames = header_of(arrays=[{"dtype": "float32", "shape": shape, "nbytes": 12, "xxh3": 0}])
    assert code_of(frames) == "bad_shape"


def test_length_mismatch_between_header_fields_and_against_the_frame():
    spec = {"dtype": "float32", "shape": [3], "nbytes": 16, "xxh3": 0}
    assert code_of(header_of(arrays=[spec])) == "length_mismatch"
    frames = header_of()
    assert code_of([frames[0], frames[1][:-1]]) == "length_mismatch"


def test_frame_count():
    frames = header_of()
    assert code_of(frames[:1]) == "frame_count"
    assert code_of([*frames, b""]) == "frame_count"


def test_oversized_payload_and_header():
    assert code_of(header_of(), max_bytes=11) == "oversized"
    assert wire.decode(header_of(), max_bytes=12).nbytes == 12
    assert code_of([b"\x00" * (wire.MAX_HEADER_BYTES + 1)]) == "oversized"
    with pytest.raises(wire.WireError) as err:
        wire.encode(kind="hello", session="s", participant="p", meta={"x": "y" * wire.MAX_HEADER_BYTES})
    assert err.value.code == "oversized"


def test_checksum():
    frames = header_of()
    corrupt = bytearray(frames[1])
    corrupt[0] ^= 1
    assert code_of([frames[0], bytes(corrupt)]) == "checksum"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite(bad):
    x = np.array([1.0, bad, 2.0], dtype=np.float16)
    frames = as_bytes(wire.encode(kind="kv", session="s", participant="p", arrays=[x]))
    assert code_of(frames) == "non_finite"
    np.testing.assert_array_equal(wire.decode(frames, allow_non_finite=True).arrays[0], x)


def test_encode_refuses_unknown_kinds_and_unsendable_arrays():
    for kind, arrays, code in [
        ("nope", [], "unknown_kind"),
        ("update", [np.zeros(2, np.complex64)], "bad_dtype"),
        ("update", [np.zeros(2, ">f4")], "bad_dtype"),
    ]:
        with pytest.raises(wire.WireError) as err:
            wire.encode(kind=kind, session="s", participant="p", arrays=arrays)
        assert err.value.code == code


def test_decoded_arrays_are_zero_copy_views():
    x = np.arange(6, dtype=np.int64).reshape(2, 3)
    frames = wire.encode(kind="kv", session="s", participant="p", arrays=[x])
    buf = bytearray(frames[1])
    decoded = wire.decode([frames[0], buf])
    assert np.shares_memory(decoded.arrays[0], np.frombuffer(buf, dtype=np.int64))


def test_error_reply_names_the_problem():
    error = wire.WireError("stale_round", "round 3 is closed")
    msg = wire.decode(as_bytes(wire.error_reply(session="", participant="", error=error, round=3, seq=9)))
    assert (msg.kind, msg.session, msg.participant, msg.round, msg.seq) == ("error", "-", "-", 3, 9)
    assert msg.meta == {"code": "stale_round", "message": "round 3 is closed"}
