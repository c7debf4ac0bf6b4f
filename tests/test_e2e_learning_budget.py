"""End to end through real processes: a DP session stops cleanly when its privacy budget is spent."""

from __future__ import annotations

import copy
import sqlite3
from pathlib import Path

import pytest

from fedattn.learning.privacy import epsilon_after
from fedattn.runner import local, manifests
from fedattn.runner.processes import supervised

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("rounds", "ending"),
    [(20, "PrivacyBudgetExhausted: round 4 would"), (3, "3 rounds completed")],  # budget / rounds end it
)
def test_dp_session_succeeds_with_privacy_budget_exhausted_after_the_rounds_it_allows(tmp_path, rounds, ending):
    bundle = manifests.load(ROOT / "examples/learning-dp.yaml")
    session = copy.deepcopy(bundle.session)
    session["spec"]["rounds"] = rounds
    dp = session["spec"]["privacy"]["dp"]
    dp["targetEpsilon"] = 9.5
    bundle = manifests.Bundle(session=session, participants=bundle.participants, private=bundle.private)
    accounting = {"noise_multiplier": dp["noiseMultiplier"], "sampling_rate": 1.0, "delta": dp["delta"]}
    spent = [epsilon_after(r, **accounting) for r in range(1, 21)]
    allowed = sum(e <= dp["targetEpsilon"] for e in spent)
    assert allowed == 3

    with supervised(tmp_path / "logs") as supervisor:
        running = local.start(bundle, workdir=tmp_path, supervisor=supervisor)
        status = local.follow(running, on_status=lambda s: None, timeout_seconds=300)

    assert status["phase"] == "Succeeded", status["message"]
    assert status["message"].startswith(ending), status["message"]
    closed = [r for r in status["rounds"] if r["state"] == "Closed"]
    assert [r["round"] for r in status["rounds"]] == [r["round"] for r in closed] == list(range(1, allowed + 1))
    assert status["round"] == allowed
    assert [r["epsilon"] for r in closed] == pytest.approx(spent[:allowed], rel=1e-9)
    assert status["epsilon"] == pytest.approx(spent[allowed - 1], rel=1e-9)
    assert all(r["update_bytes"] > 0 for r in closed)
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        stored = db.execute("SELECT round, epsilon FROM rounds ORDER BY round").fetchall()
    assert [r for r, _ in stored] == list(range(1, allowed + 1))
    assert [e for _, e in stored] == pytest.approx(spent[:allowed], rel=1e-9)


def test_low_scoring_attackers_are_evicted_and_left_out_of_later_rounds(tmp_path):
    bundle = manifests.load(ROOT / "examples/learning-krum.yaml")  # participants f and g flip their updates' sign
    session = copy.deepcopy(bundle.session)
    session["spec"].update(
        minParticipants=5, rounds=5, strategy={"name": "median"}, eviction={"minScore": 0.0, "afterRounds": 2}
    )
    bundle = manifests.Bundle(session=session, participants=bundle.participants, private=bundle.private)
    attackers = ["digits-krum-f", "digits-krum-g"]

    with supervised(tmp_path / "logs") as supervisor:
        running = local.start(bundle, workdir=tmp_path, supervisor=supervisor)
        status = local.follow(running, on_status=lambda s: None, timeout_seconds=300)

    assert status["phase"] == "Succeeded", status["message"]
    phases = {p: s["phase"] for p, s in status["participant_status"].items()}
    assert sorted(p for p, phase in phases.items() if phase == "Evicted") == attackers, phases
    by_round = {r["round"]: r for r in status["rounds"]}
    # scores start in round 2 (cosine to round 1's step); two low rounds in a row evict at round 3's close
    assert all(by_round[2]["scores"][p] < 0 < min(by_round[2]["scores"][h] for h in phases if h not in attackers)
               for p in attackers)
    assert sorted(by_round[3]["evict"]) == attackers
    assert [by_round[r]["participants"] for r in range(1, 6)] == [7, 7, 7, 5, 5]
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        evicted = db.execute("SELECT participant, reason FROM events WHERE kind = 'evict' ORDER BY participant")
        assert evicted.fetchall() == [(p, "LowContributionScore") for p in attackers]
        scored = db.execute("SELECT round FROM events WHERE kind = 'scores' ORDER BY round").fetchall()
    assert [r for (r,) in scored] == [2, 3, 4, 5]
