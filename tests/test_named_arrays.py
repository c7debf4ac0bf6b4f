"""Named arrays (fedattn.learning.named), model files and federated-evaluation arithmetic, in-process.

Property: any list of named float arrays survives the wire and the aggregator's flatten/unflatten
unchanged (values exactly representable in float32, which is what the aggregator folds in), and a
misfit names the array. The weighted evaluation is checked against numpy's average.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedattn import wire
from fedattn.aggregator.evaluation import RoundEvaluation
from fedattn.client import ClientError, Context, as_arrays, clean_metrics
from fedattn.learning import model_file
from fedattn.learning.named import Layout, LayoutError, names_of

NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._", min_size=1, max_size=20)
DTYPES = st.sampled_from(["float16", "float32", "float64"])


@st.composite
def models(draw) -> tuple[list[str], list[np.ndarray]]:
    names = draw(st.lists(NAMES, min_size=1, max_size=6, unique=True))
    arrays = []
    for _ in names:
        dtype = draw(DTYPES)
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4))
        # NB: float16 values, so every dtype holds them exactly and float32 aggregation loses nothing
        values = draw(hnp.arrays(np.float16, shape, elements=st.floats(-1e3, 1e3, width=16)))
        arrays.append(values.astype(dtype))
    return names, arrays


@settings(max_examples=150, deadline=None)
@given(models())
def test_named_arrays_survive_the_wire_and_the_flat_vector(model):
    names, arrays = model
    layout = Layout.of(arrays, names)
    frames = wire.encode(kind="update", session="s", participant="p", arrays=arrays, meta={"names": names})
    received = wire.decode([bytes(f) for f in frames])
    layout.check(received.arrays, names_of(received.meta))
    assert Layout.of(received.arrays, names_of(received.meta)) == layout
    flat = layout.flatten(received.arrays)
    assert flat.dtype == np.float32 and flat.shape == (layout.size,)
    back = layout.unflatten(flat)
    for original, restored in zip(arrays, back, strict=True):
        assert restored.dtype == original.dtype and restored.shape == original.shape
        np.testing.assert_array_equal(restored, original)
    assert Layout.from_meta(layout.to_meta()) == layout


def test_a_misfit_names_the_array_and_the_difference():
    layout = Layout.of([np.zeros((2, 3), np.float32), np.zeros(3, np.float64)], ["w", "b"])
    with pytest.raises(LayoutError, match=r"array 'w' has shape \[3, 2\], the session's model has \[2, 3\]"):
        layout.check([np.zeros((3, 2), np.float32), np.zeros(3, np.float64)])
    with pytest.raises(LayoutError, match="array 'b' has dtype float32, the session's model has float64"):
        layout.check([np.zeros((2, 3), np.float32), np.zeros(3, np.float32)])
    with pytest.raises(LayoutError, match=r"missing \['b'\], unexpected \['bias'\]"):
        layout.check([np.zeros((2, 3), np.float32), np.zeros(3, np.float64)], ["w", "bias"])
    with pytest.raises(LayoutError, match="another order"):
        layout.check([np.zeros(3, np.float64), np.zeros((2, 3), np.float32)], ["b", "w"])
    with pytest.raises(LayoutError, match="array 'b' contains NaN"):
        layout.check([np.zeros((2, 3), np.float32), np.array([0.0, np.nan, 1.0])])
    with pytest.raises(LayoutError, match="model arrays must be one of"):
        Layout.of([np.zeros(3, np.int64)], ["steps"])


def test_model_files_keep_the_order_of_the_model(tmp_path):
    names = ["fc2.weight", "fc1.weight", "fc1.bias"]
    arrays = [np.full((2, 4), 2.0, np.float32), np.ones((4, 3), np.float32), np.zeros(4, np.float64)]
    path = tmp_path / "m.safetensors"
    path.write_bytes(model_file.to_bytes(names, arrays, {"round": 3}))
    got_names, got = model_file.read(path)
    assert got_names == names
    for a, b in zip(arrays, got, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    np.savez(tmp_path / "m.npz", **dict(zip(names, arrays, strict=True)))
    assert model_file.read(tmp_path / "m.npz")[0] == names
    with pytest.raises(model_file.ModelFileError, match="does not exist"):
        model_file.read(tmp_path / "none.safetensors")


def test_evaluation_is_the_example_weighted_mean_of_who_reported():
    evaluation = RoundEvaluation(round=4, asked=frozenset({"a", "b", "c"}), deadline=0.0)
    reports = {"a": (0.5, 10, {"accuracy": 0.9}), "b": (1.5, 30, {"accuracy": 0.6, "auc": 0.7})}
    for name, (loss, n, metrics) in reports.items():
        evaluation.add(name, 4, {"loss": loss, "num_examples": n, "metrics": metrics})
    assert not evaluation.complete
    summary = evaluation.summary()
    assert summary["loss"] == pytest.approx(np.average([0.5, 1.5], weights=[10, 30]))
    assert summary["metrics"]["accuracy"] == pytest.approx(np.average([0.9, 0.6], weights=[10, 30]))
    assert summary["metrics"]["auc"] == pytest.approx(0.7)
    assert (summary["num_examples"], summary["participants"], summary["missing"]) == (40, ["a", "b"], ["c"])
    for meta, message in (
        ({"loss": float("nan"), "num_examples": 1}, "loss must be a finite number"),
        ({"loss": 1.0, "num_examples": 0}, "num_examples must be an integer"),
        ({"loss": 1.0, "num_examples": 1, "metrics": {f"m{i}": 1.0 for i in range(33)}}, "at most 32"),
        ({"loss": 1.0, "num_examples": 1, "metrics": {"acc": "high"}}, "metrics.acc must be a finite number"),
    ):
        with pytest.raises(wire.WireError, match=message):
            RoundEvaluation(round=1, asked=frozenset({"c"}), deadline=0.0).add("c", 1, meta)
    with pytest.raises(wire.WireError, match="already evaluated"):
        evaluation.add("a", 4, {"loss": 0.5, "num_examples": 10})
    with pytest.raises(wire.WireError, match="was not asked"):
        evaluation.add("mallory", 4, {"loss": 0.5, "num_examples": 10})


def test_client_results_are_checked_at_the_participant():
    assert as_arrays({"w": [1.0, 2.0]}, what="fit")[0] == ["w"]
    assert as_arrays([np.zeros(2)], what="fit")[0] is None
    with pytest.raises(ClientError, match="list or dict of numpy arrays"):
        as_arrays(np.zeros(2), what="fit")
    with pytest.raises(ClientError, match="metric 'acc' must be a finite number"):
        clean_metrics({"acc": float("inf")}, what="evaluate")
    context = Context(participant="p", session="s", index=0, parts=1, volumes={"data": "/d"})
    with pytest.raises(TypeError):
        context.volumes["other"] = "/x"  # type: ignore[index]
    with pytest.raises(KeyError, match="no volume mount 'site'"):
        context.volume("site")
