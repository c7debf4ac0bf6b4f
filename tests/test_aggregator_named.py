"""The aggregator on the user's model, in-process over real CurveZMQ: a participant's parameters as
the initial model, named updates checked by name, federated evaluation deferring the close reply,
the layout through a checkpoint and a restart."""

from __future__ import annotations

import numpy as np

from test_aggregator_checkpoint import _restart
from test_aggregator_server import CONTROL_IDENTITY, Harness, ctl, join, open_round

SPEC = {"minParticipants": 1, "model": {"name": "client"}, "checkpoint": {"everyRounds": 1},
        "evaluation": {"everyRounds": 1, "timeoutSeconds": 30}}
MODEL = {"w": np.arange(6, dtype=np.float64).reshape(2, 3), "b": np.ones(2, np.float32)}


def _configure(h: Harness) -> object:
    coord = h.client(CONTROL_IDENTITY)
    reply = ctl(coord, h.events, "ctl_configure",
                meta={"mode": "learning", "spec": SPEC, "participants": {"alice": 1.0, "bob": 1.0}})
    assert reply["ok"], reply
    return coord


def test_participant_parameters_start_a_named_session_that_survives_a_restart(tmp_path):
    h, ckpt = Harness(tmp_path), tmp_path / "ckpt"
    try:
        _restart(h, ckpt)
        coord = _configure(h)
        open_round(h, coord, 1, ["alice"])  # NB: before any model exists: it starts when one arrives
        alice = h.client("alice")
        welcome = alice.request("hello")
        assert welcome.kind == "welcome" and welcome.meta["need_parameters"] is True
        ack = alice.request("parameters", arrays=list(MODEL.values()), meta={"names": list(MODEL)})
        assert ack.kind == "ack"
        model = alice.recv()
        assert (model.kind, model.round, model.meta["names"]) == ("model", 1, ["w", "b"])
        assert [a.dtype.name for a in model.arrays] == ["float64", "float32"]
        np.testing.assert_array_equal(model.arrays[0], MODEL["w"])

        wrong = alice.request("update", round=1, arrays=[MODEL["b"], MODEL["w"]], meta={"names": ["b", "w"],
                                                                                        "num_examples": 1})
        assert wrong.kind == "error" and wrong.meta["code"] == "shape_mismatch"
        assert "same names, another order" in wrong.meta["message"]
        new = [MODEL["w"] + 1.0, MODEL["b"] * 3]
        assert alice.request("update", round=1, arrays=new, meta={"names": ["w", "b"], "num_examples": 4}).kind == "ack"
        coord.send("ctl_close_round", round=1)  # NB: deferred until alice evaluated the new model
        ask = alice.recv()
        assert ask.kind == "evaluate" and ask.round == 1
        np.testing.assert_array_equal(ask.arrays[0], new[0])
        reply = alice.request("evaluation", round=1, meta={"loss": 0.25, "num_examples": 8,
                                                             "metrics": {"accuracy": 0.75}})
        assert reply.kind == "ack"
        closed = ctl_reply(coord, h.events)
        assert closed["ok"] and closed["evaluation"]["metrics"] == {"accuracy": 0.75}
        assert closed["evaluation"]["participants"] == ["alice"]

        _restart(h, ckpt)
        coord = _configure(h)
        open_round(h, coord, 2, ["alice"])
        alice = join(h, "alice")
        model = alice.recv()
        assert (model.kind, model.round, model.meta["names"]) == ("model", 2, ["w", "b"])
        np.testing.assert_array_equal(model.arrays[0], new[0])
        np.testing.assert_array_equal(model.arrays[1], new[1])
    finally:
        h.close()


def ctl_reply(coord, events: list[dict]) -> dict:
    """The next ``ctl_reply`` on the control link (events that come first are kept)."""
    while True:
        msg = coord.recv()
        if msg.kind == "ctl_reply":
            return msg.meta
        events.append(msg.meta)
