"""Privacy features one participant could void or stall (items 10, 11).

DP with secure aggregation: the aggregator only sees the unmasked sum, so it cannot clip any one
update, and participants did not clip their own; the epsilon in status would assume a per-member
sensitivity of ``clipNorm`` that nobody enforced. The combination is refused where a spec enters
(schema CEL, hence API server, coordinator, runner) and by the aggregator's own check.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fedattn.aggregator.strategies import check_learning_spec
from fedattn.api import apply_defaults_and_validate
from fedattn.api.spec import SessionSpec
from fedattn.api.validation import ManifestError
from fedattn.participant import secure
from test_aggregator_server import CONTROL_IDENTITY, Harness, ctl, join, open_round, wait_event
from test_coordinator_api import as_, manifests

SECURE = {"secureAggregation": {"enabled": True}}
COMBINATIONS = {
    "dp": {"privacy": {**SECURE, "dp": {"noiseMultiplier": 1.0, "clipNorm": 1.0}}},
    "clipNorm": {"privacy": SECURE, "updateLimits": {"clipNorm": 1.0}},
}


@pytest.mark.parametrize("extra", COMBINATIONS.values(), ids=COMBINATIONS.keys())
def test_clipping_with_secure_aggregation_is_refused_where_the_spec_enters(extra):
    spec = {"mode": "learning", "minParticipants": 2, **extra}
    with pytest.raises(ManifestError, match="secureAggregation hides each update"):
        apply_defaults_and_validate("FedSession", {"metadata": {"name": "s"}, "spec": spec})
    with pytest.raises(ValueError, match="cannot clip it"):
        check_learning_spec(SessionSpec.from_manifest(spec))


async def test_the_coordinator_refuses_dp_with_secure_aggregation(stack):
    body = manifests("dpsa", **COMBINATIONS["dp"])
    status, reply = await as_(stack.running, stack.pki_dir, "operator").call("POST", "/v1/sessions", body)
    assert status == 422 and "secureAggregation hides each update" in reply["message"], reply


# --- item 10: a member that withholds its key or its shares ----------------------------------------

SIZE = 64
EXAMPLES = {"alice": 30, "bob": 70, "carol": 50}


def _member(h: Harness, name: str, params: np.ndarray, *, withhold: str | None, errors: list) -> None:
    """The real client side (participant.secure), except that it withholds its ``key`` or ``reveal``."""
    try:
        channel = join(h, name)
        model = channel.recv()
        config = model.meta["secagg"]
        if withhold == "key":
            return  # joined, got the model, never takes part in the key exchange
        client, leftover = secure.exchange_keys(channel, round=1, config=config, timeout_seconds=30)
        assert client is not None and leftover is None, leftover
        masked = secure.masked(client, params, weight=EXAMPLES[name], config=config)
        ack = channel.request("update", round=1, arrays=[masked], meta={"num_examples": EXAMPLES[name], "masked": True})
        assert ack.kind == "ack", ack.meta
        while (msg := channel.recv()).kind != "secagg_unmask":
            pass
        if withhold != "reveal":
            channel.send("secagg_reveal", round=1, meta=secure.reveal(client, msg.meta))
    except Exception as exc:
        errors.append(exc)


def _secure_round(tmp_path, *, threshold: int, withheld: str) -> tuple[Harness, dict, dict, list]:
    rng = np.random.default_rng(14)
    local = {name: rng.standard_normal(SIZE).astype(np.float32) for name in EXAMPLES}
    h = Harness(tmp_path)
    coord = h.client(CONTROL_IDENTITY)
    spec = {
        "minParticipants": threshold,
        "roundTimeoutSeconds": 2,
        "privacy": {"secureAggregation": {"enabled": True, "threshold": threshold}},
    }
    meta = {"mode": "learning", "spec": spec, "participants": dict.fromkeys(EXAMPLES, 1.0), "params": SIZE}
    assert ctl(coord, h.events, "ctl_configure", meta=meta, arrays=[np.zeros(SIZE, np.float32)])["ok"]
    errors: list = []
    threads = [
        threading.Thread(
            target=_member,
            args=(h, n, local[n]),
            kwargs={"withhold": withheld if n == "carol" else None, "errors": errors},
        )
        for n in EXAMPLES
    ]
    for t in threads:
        t.start()
    for name in EXAMPLES:
        wait_event(coord, h.events, "hello", participant=name)
    open_round(h, coord, 1, list(EXAMPLES))
    contributors = [n for n in EXAMPLES if not (withheld == "key" and n == "carol")]
    for name in contributors:
        wait_event(coord, h.events, "contribution", participant=name)
    closed = ctl(coord, h.events, "ctl_close_round", round=1)  # deferred until unmasked, or given up
    for t in threads:
        t.join(timeout=60)
    return h, closed, local, errors


def test_a_member_that_never_sends_its_key_is_excluded_and_the_round_goes_on(tmp_path):
    h, closed, local, errors = _secure_round(tmp_path, threshold=2, withheld="key")
    try:
        assert not errors, errors
        assert closed["ok"] and closed["contributions"] == 2 and "model_kept" not in closed, closed
        excluded = next(e for e in h.events if e["event"] == "secagg_excluded")
        assert excluded["participants"] == ["carol"] and "no key" in excluded["message"]
        weights = {n: EXAMPLES[n] for n in ("alice", "bob")}
        expected = sum(local[n] * w for n, w in weights.items()) / sum(weights.values())
        np.testing.assert_allclose(h.server.sessions["s1"].global_params, expected, atol=1e-4)
    finally:
        h.close()


def test_a_survivor_that_never_reveals_cannot_stall_the_round(tmp_path):
    h, closed, _, errors = _secure_round(tmp_path, threshold=3, withheld="reveal")
    try:
        assert not errors, errors
        assert closed["ok"] and "carol" in closed["model_kept"], closed  # answered, saying who withheld
        np.testing.assert_array_equal(h.server.sessions["s1"].global_params, np.zeros(SIZE, np.float32))
        failed = wait_event(h.clients[0], h.events, "secagg_failed")  # NB: clients[0] is the control link
        assert "carol" in failed["message"]
        assert h.server.ready()
    finally:
        h.close()
