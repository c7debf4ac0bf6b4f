"""End to end, real processes on loopback: checkpoints across an aggregator crash, compressed updates,
and Byzantine participants against a robust rule and against FedAvg (issue #4).

Runs are kept short (few rounds, the examples' small MLP); each starts the example manifest with the
local runner, changed only where the test says.
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
import yaml

from fedattn.aggregator import checkpoint
from fedattn.participant.learner import byzantine_update
from fedattn.runner import local, manifests
from fedattn.runner.processes import supervised
from polling import wait_for

ROOT = Path(__file__).resolve().parent.parent


def test_byzantine_update_flips_and_scales_the_honest_delta():
    global_params = np.array([1.0, -2.0, 0.5], np.float32)
    honest = np.array([1.5, -2.0, 0.0], np.float32)
    sent = byzantine_update(global_params, honest, mode="signflip", scale=10.0)
    np.testing.assert_allclose(sent - global_params, -10.0 * (honest - global_params))
    with pytest.raises(ValueError, match="unknown byzantine"):
        byzantine_update(global_params, honest, mode="noise", scale=1.0)


def _example(name: str, **spec_changes) -> manifests.Bundle:
    bundle = manifests.load(ROOT / f"examples/learning-{name}.yaml")
    session = copy.deepcopy(bundle.session)
    session["spec"].update(spec_changes)
    return manifests.Bundle(session=session, participants=bundle.participants, private=bundle.private)



@pytest.mark.slow
def test_killed_aggregator_resumes_from_its_checkpoint(tmp_path):
    rounds = 8
    bundle = _example("checkpoint", rounds=rounds, roundTimeoutSeconds=60)
    bundle.session["spec"].setdefault("resilience", {})["timeoutSeconds"] = 3
    ckpt = tmp_path / "checkpoints"
    name = bundle.name
    with supervised(tmp_path / "logs") as supervisor:
        session = local.start(bundle, workdir=tmp_path, supervisor=supervisor)
        wait_for(lambda: (checkpoint.load(ckpt, name) or ({}, {"round": 0}))[1]["round"] >= 3,
                  timeout=180, what="the checkpoint of round 3")
        args = supervisor.children["aggregator"].popen.args[3:]  # [python, -m, fedattn.cli, *args]
        supervisor.kill("aggregator")
        _, saved = checkpoint.load(ckpt, name)
        supervisor.start("aggregator", list(args))
        status = local.follow(session, on_status=lambda s: None, timeout_seconds=300)
    assert status["phase"] == "Succeeded", status["message"]
    closed = {r["round"]: r for r in status["rounds"] if r["state"] == "Closed"}
    assert sorted(closed) == list(range(1, rounds + 1))
    resumed_log = (tmp_path / "logs" / "aggregator.log").read_text()
    assert f"resumed from the checkpoint of round {saved['round']}" in resumed_log
    # The first round the new process aggregated built on the checkpoint, not on the initial model:
    # its accuracy is at least the checkpointed round's (minus noise), far above round 1's.
    after = [closed[r]["accuracy"] for r in closed if r > saved["round"] and closed[r]["contributions"]]
    assert after and after[0] >= closed[saved["round"]]["accuracy"] - 0.05 > closed[1]["accuracy"]
    _, final = checkpoint.load(ckpt, name)
    assert final["round"] == rounds


def _run(tmp_path: Path, bundle: manifests.Bundle) -> dict:
    path = tmp_path / f"{bundle.name}.yaml"
    path.write_text(yaml.safe_dump_all([bundle.session, *bundle.participants]))
    proc = subprocess.run(
        [sys.executable, "-m", "fedattn.cli", "run", str(path), "--json",
         "--workdir", str(tmp_path / bundle.name), "--timeout-seconds", "600"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)
    assert summary["phase"] == "Succeeded", summary
    return summary


@pytest.mark.slow
def test_compressed_updates_send_a_quarter_of_the_bytes_and_learn_alike(tmp_path):
    rounds = 5
    plain = _run(tmp_path, _example("digits", rounds=rounds))
    packed = _run(tmp_path, _example("compression", rounds=rounds))
    byte_sums = []
    for summary in (plain, packed):
        with sqlite3.connect(Path(summary["workdir"]) / "store.sqlite3") as db:
            byte_sums.append(db.execute("SELECT sum(bytes), count(*) FROM contributions").fetchone())
    (dense, n_dense), (int8, n_int8) = byte_sums
    assert n_dense == n_int8 == 5 * rounds
    # int8 values + one float32 scale per 1024: just over a quarter of float32
    assert 0.25 < int8 / dense < 0.26
    assert abs(packed["final_accuracy"] - plain["final_accuracy"]) <= 0.02


@pytest.mark.slow
def test_two_byzantine_of_seven_break_fedavg_but_not_krum(tmp_path):
    rounds = 6
    krum = _run(tmp_path, _example("krum", rounds=rounds))
    fedavg = _run(tmp_path, _example("byzantine-fedavg", rounds=rounds))
    assert krum["final_accuracy"] >= 0.85, krum["accuracy"]
    assert fedavg["final_accuracy"] < 0.5, fedavg["accuracy"]


@pytest.mark.slow
def test_secure_aggregation_learns_like_plain_fedavg(tmp_path):
    rounds = 4
    plain = _run(tmp_path, _example("digits", rounds=rounds))
    masked = _run(tmp_path, _example("secagg", rounds=rounds))
    # same seeds, same local training: the masked sum decodes to FedAvg's model up to fixed point (2^-16)
    np.testing.assert_allclose(masked["accuracy"], plain["accuracy"], atol=0.01)
