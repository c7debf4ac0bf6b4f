"""Federated learning on the user's own model, data and code (docs/byom.md), end to end.

Real coordinator, aggregator and participant processes over real TLS and CurveZMQ, as ``fedattn
run`` starts them:

- the three examples in examples/byom (PyTorch, scikit-learn, a Flower-shaped NumPyClient) run to
  Succeeded, federated accuracy within 0.03 of the same model trained centrally on the union of the
  sites' data (IID); the non-IID PyTorch run reports its own figure;
- the final model written to ``spec.output`` loads into the user's model class and reproduces the
  reported federated accuracy;
- updates with a wrong shape, dtype, array names or a NaN are refused with an error naming the array
  and the mismatch, and every round still closes with the honest participants.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedattn.runner import local, manifests
from fedattn.runner.processes import supervised

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "byom"
pytestmark = pytest.mark.slow


def _run(manifest: Path, workdir: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "fedattn.cli", "run", str(manifest), "--json", "--workdir", str(workdir),
         "--timeout-seconds", "600"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)
    assert summary["phase"] == "Succeeded", summary["message"]
    return summary


@pytest.mark.parametrize("example", ["torch", "sklearn", "flower"])
def test_example_matches_centralized_training(tmp_path, example):
    summary = _run(EXAMPLES / f"{example}-breast-cancer.yaml", tmp_path)
    assert summary["rounds"] == 20
    assert all(e["participants"] == ["hospital-a", "hospital-b", "hospital-c"] for e in summary["evaluation"])
    assert summary["final_evaluation"]["num_examples"] == 144  # every site's test.csv, once
    print(example, "federated", summary["federated_accuracy"], "centralized", summary["centralized_accuracy"])
    assert summary["federated_accuracy"] >= 0.9
    assert abs(summary["accuracy_gap"]) <= 0.03
    outputs = summary["outputs"]
    assert {"final", "best", "metrics_json", "metrics_csv", "rounds"} <= outputs.keys()
    rows = json.loads(Path(outputs["metrics_json"]).read_text())
    assert [r["round"] for r in rows] == list(range(1, 21))
    assert rows[-1]["metrics"] == summary["final_evaluation"]["metrics"]
    assert len(list(Path(outputs["rounds"]).glob("round-*.safetensors"))) == 20
    best = json.loads((Path(outputs["directory"]) / "best.json").read_text())
    assert float(best["accuracy"]) == max(r["metrics"]["accuracy"] for r in rows)


def test_final_torch_model_loads_into_the_users_class_and_reproduces_the_accuracy(tmp_path):
    summary = _run(EXAMPLES / "torch-breast-cancer.yaml", tmp_path)
    sys.path.insert(0, str(EXAMPLES))
    try:
        import sites
        import torch_client
        from safetensors.torch import load_file
    finally:
        sys.path.remove(str(EXAMPLES))
    model = torch_client.Net()
    model.load_state_dict(load_file(summary["outputs"]["final"]))  # NB: strict: every name and shape
    correct = total = 0
    for site in ("a", "b", "c"):
        data = sites.load(EXAMPLES / "volumes" / f"site-{site}")
        _, accuracy = torch_client.test(model, data.x_test, data.y_test)
        correct += accuracy * len(data.y_test)
        total += len(data.y_test)
    assert correct / total == pytest.approx(summary["federated_accuracy"], abs=1e-9)


def test_noniid_torch_example_reports_its_gap(tmp_path):
    summary = _run(EXAMPLES / "torch-breast-cancer-noniid.yaml", tmp_path)
    print("non-IID federated", summary["federated_accuracy"], "centralized", summary["centralized_accuracy"])
    # NB: each site standardizes with its own statistics; under label skew they differ, which costs
    # far more than the averaging (0.69 against 0.97 measured): the figure is reported, not bounded.
    assert summary["federated_accuracy"] > 0.5 and summary["accuracy_gap"] > 0


def _misfit_bundle() -> manifests.Bundle:
    bundle = manifests.load(EXAMPLES / "sklearn-breast-cancer.yaml")
    session = copy.deepcopy(bundle.session)
    session["spec"].update(rounds=2, minParticipants=2, waitAfterMinSeconds=2, roundTimeoutSeconds=120)
    template = bundle.participants[0]
    participants = []
    for name, site in (("site-a", "a"), ("site-b", "b"), ("bad-shape", "c"), ("bad-dtype", "c"),
                       ("bad-nan", "c"), ("bad-names", "c")):
        p = copy.deepcopy(template)
        p["metadata"]["name"] = name
        p["spec"]["client"] = {"module": "byom_misfits:make_client"}
        p["spec"]["volumes"] = [{"name": "site-data", "hostPath": {"path": str(EXAMPLES / "volumes" / f"site-{site}")}}]
        participants.append(p)
    return manifests.Bundle(session=session, participants=participants, directory=ROOT / "tests")


def test_misfit_updates_are_refused_by_name_and_rounds_close_with_the_others(tmp_path):
    bundle = _misfit_bundle()
    with supervised(tmp_path / "logs") as supervisor:
        session = local.start(bundle, workdir=tmp_path, supervisor=supervisor)
        status = local.follow(session, on_status=lambda s: None, timeout_seconds=600)
        local.wait_participants(session)
    assert status["phase"] == "Succeeded", status["message"]
    closed = [r for r in status["rounds"] if r["state"] == "Closed"]
    assert [r["contributions"] for r in closed] == [2, 2]
    assert all(r["evaluation"]["participants"] == ["site-a", "site-b"] for r in closed)
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        rejected = db.execute("SELECT participant, reason, message FROM events WHERE kind = 'rejected'").fetchall()
    by_name: dict[str, set[tuple[str, str]]] = {}
    for participant, reason, message in rejected:
        by_name.setdefault(participant, set()).add((reason, message))
    assert by_name["bad-shape"] == {("shape_mismatch", "update refused: array 'coef' has shape [1, 29], "
                                                       "the session's model has [1, 30]")}
    assert by_name["bad-dtype"] == {("shape_mismatch", "update refused: array 'coef' has dtype float32, "
                                                       "the session's model has float64")}
    assert by_name["bad-nan"] == {("non_finite", "arrays[0] contains NaN or Inf")}
    assert by_name["bad-names"] == {("shape_mismatch", "update refused: array names differ from the session's "
                                                       "model: missing ['coef'], unexpected ['weights']")}
    assert set(by_name) == {"bad-shape", "bad-dtype", "bad-nan", "bad-names"}


def test_a_session_starts_from_spec_model_initial(tmp_path):
    """Rollback / warm start: ``model.initial`` is the first global model, not a participant's zeros."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import sites
        import sklearn_client
    finally:
        sys.path.remove(str(EXAMPLES))
    union = sites.load(*(EXAMPLES / "volumes" / f"site-{s}" for s in "abc"))
    trained = sklearn_client.new_model(lr=0.1, seed=0)
    sklearn_client.epochs(trained, union.x_train, union.y_train, 20)
    initial = tmp_path / "warm.npz"
    np.savez(initial, coef=trained.coef_, intercept=trained.intercept_)
    bundle = manifests.load(EXAMPLES / "sklearn-breast-cancer.yaml")
    bundle.session["spec"].update(rounds=1, evaluation={"everyRounds": 1, "timeoutSeconds": 60})
    bundle.session["spec"]["model"]["initial"] = {"path": str(initial)}  # NB: absolute: the join keeps it
    bundle.session["spec"]["training"]["learningRate"] = 1e-6  # NB: one round barely moves it
    with supervised(tmp_path / "logs") as supervisor:
        session = local.start(bundle, workdir=tmp_path, supervisor=supervisor, output_dir=tmp_path / "out")
        status = local.follow(session, on_status=lambda s: None, timeout_seconds=600)
    assert status["phase"] == "Succeeded", status["message"]
    assert status["rounds"][0]["evaluation"]["metrics"]["accuracy"] >= 0.95
    from safetensors.numpy import load_file

    final = load_file(tmp_path / "out" / bundle.name / "final.safetensors")
    np.testing.assert_allclose(final["coef"], trained.coef_, atol=1e-3)
