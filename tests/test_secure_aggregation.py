"""Secure aggregation through a real aggregator (CurveZMQ sockets on loopback, one thread per participant).

The participants run the real client side (:mod:`fedattn.participant.secure`); the aggregator relays keys
and sealed shares, sums masked uint32 inputs and unmasks the sum. Checked: the new global model equals
plain FedAvg of the same updates to fixed-point precision, also when a participant drops out after the
share exchange, and the rule folded exactly one update per round (the unmasked mean), never a
participant's own.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fedattn.aggregator.strategies.fedavg import FedAvg
from fedattn.participant import secure
from test_aggregator_server import CONTROL_IDENTITY, Harness, ctl, join, open_round, wait_event

SIZE = 300
MEMBERS = ("alice", "bob", "carol")
EXAMPLES = {"alice": 30, "bob": 70, "carol": 50}


def _participant(h: Harness, name: str, params: np.ndarray, *, send_update: bool, errors: list) -> None:
    try:
        channel = join(h, name)
        model = channel.recv()
        assert model.kind == "model" and "secagg" in model.meta, model.meta
        config = model.meta["secagg"]
        client, leftover = secure.exchange_keys(channel, round=1, config=config, timeout_seconds=30)
        assert client is not None and leftover is None, leftover
        if not send_update:
            return  # dropped out after sharing its secrets
        masked = secure.masked(client, params, weight=EXAMPLES[name], config=model.meta["secagg"])
        assert masked.dtype == np.uint32
        ack = channel.request("update", round=1, arrays=[masked], meta={"num_examples": EXAMPLES[name],
                                                                         "masked": True})
        assert ack.kind == "ack", ack.meta
        while (msg := channel.recv()).kind != "secagg_unmask":
            pass
        channel.send("secagg_reveal", round=1, meta=secure.reveal(client, msg.meta))
    except Exception as exc:
        errors.append(exc)


@pytest.mark.parametrize("dropped", [None, "carol"])
def test_secure_round_equals_fedavg_and_survives_a_dropout(tmp_path, dropped):
    rng = np.random.default_rng(5)
    local = {name: rng.standard_normal(SIZE).astype(np.float32) for name in MEMBERS}
    h = Harness(tmp_path)
    try:
        coord = h.client(CONTROL_IDENTITY)
        spec = {"minParticipants": 2, "strategy": {"name": "fedavg"},
                "privacy": {"secureAggregation": {"enabled": True, "threshold": 2}}}
        meta = {"mode": "learning", "spec": spec, "participants": dict.fromkeys(MEMBERS, 1.0), "params": SIZE}
        assert ctl(coord, h.events, "ctl_configure", meta=meta, arrays=[np.zeros(SIZE, np.float32)])["ok"]
        errors: list = []
        threads = [
            threading.Thread(target=_participant, args=(h, n, local[n]), kwargs={"send_update": n != dropped,
                                                                                "errors": errors})
            for n in MEMBERS
        ]
        for t in threads:
            t.start()
        for name in MEMBERS:
            wait_event(coord, h.events, "hello", participant=name)
        open_round(h, coord, 1, MEMBERS)
        survivors = [n for n in MEMBERS if n != dropped]
        for name in survivors:
            wait_event(coord, h.events, "contribution", participant=name)
        closed = ctl(coord, h.events, "ctl_close_round", round=1)  # answered once the sum is unmasked
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
        assert closed["ok"] and closed["contributions"] == len(survivors), closed
        state = h.server.sessions["s1"]
        assert state.strategy.folded == 1  # the unmasked mean, never a single participant's update
        reference = FedAvg(size=SIZE)
        reference.begin_round(round=1, global_params=np.zeros(SIZE, np.float32))
        for name in survivors:
            reference.fold(local[name], float(EXAMPLES[name]))
        # fixed point, 16 fraction bits: each of the <= 3 summands is off by <= 2^-17 (times its weight)
        np.testing.assert_allclose(state.global_params, reference.finish(), atol=1e-4)
        assert h.metric("fedattn_aggregator_secagg_unmask_seconds_count") == 1
    finally:
        h.close()
