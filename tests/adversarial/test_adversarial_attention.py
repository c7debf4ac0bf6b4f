"""An attention participant against the KV barrier: leaving mid-barrier, spoofed positions, flooding.

Layout of these sessions: a shared public prefix of ``PREFIX`` tokens (never sent), then alice's
private tokens, then bob's (carol's when she takes part). A participant's global positions are
``PREFIX + tokens before it + i``; it receives the blocks of those before it, never a later one's.
Blocks travel float32 (``kvCodec``) here, their positions as a trailing array, so rows stay readable.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from fedattn.aggregator.client import AggregatorClient, Timeout
from fedattn.attention.exchange import read_reply
from test_aggregator_server import CONTROL_IDENTITY, SESSION, Harness, ctl, kv_msg

PREFIX = 1
#: the (public) model's shape every participant announces in hello: what K/V of one token may weigh
MODEL = {"n_layers": 8, "n_kv_heads": 2, "head_dim": 4}


def configure(agg: Harness, members: dict[str, int], **spec) -> AggregatorClient:
    """An attention session over ``members`` (name -> private tokens), every member announced."""
    coord = agg.client(CONTROL_IDENTITY)
    meta = {
        "mode": "attention",
        "spec": {"minParticipants": 1, "roundTimeoutSeconds": 300, "syncInterval": 2, "kvCodec": "float32", **spec},
        "participants": dict.fromkeys(members, 1.0),
    }
    reply = ctl(coord, agg.events, "ctl_configure", meta=meta)
    assert reply["ok"], reply
    return coord


def hello_all(agg: Harness, members: dict[str, int]) -> dict[str, AggregatorClient]:
    clients = {}
    for name, tokens in members.items():
        clients[name] = agg.client(name)
        clients[name].send("hello", meta={"tokens": tokens, "prefix": PREFIX, "model": MODEL})
    for client in clients.values():
        assert client.recv().kind == "welcome"
    return clients


def slice_of(before: int, tokens: int) -> list[int]:
    return list(range(PREFIX + before, PREFIX + before + tokens))


def wait_until(predicate) -> None:
    """Poll (bounded by pytest-timeout, not by an assertion on wall-clock time)."""
    while not predicate():
        time.sleep(0.01)


# --- item 1: leaving while a barrier waits -------------------------------------------------------


@pytest.mark.parametrize("leave", ["bye", "ctl_revoke"])
def test_a_participant_leaving_while_a_barrier_waits_does_not_stop_the_aggregator(agg, leave):
    members = {"alice": 2, "bob": 2, "carol": 2}
    coord = configure(agg, members, roundTimeoutSeconds=1)
    clients = hello_all(agg, members)
    clients["alice"].send("kv", layer=0, **kv_msg(slice_of(0, 2)))
    clients["carol"].send("kv", layer=0, **kv_msg(slice_of(4, 2)))
    state = agg.server.sessions[SESSION]
    wait_until(lambda: len(state.barriers.get(0, None).parts if 0 in state.barriers else ()) == 2)
    if leave == "bye":
        assert clients["alice"].request("bye").kind == "ack"
    else:
        assert ctl(coord, agg.events, "ctl_revoke", meta={"participant": "alice"})["ok"]
    # bob never sends: the barrier times out with carol (and only carol: alice left)
    got = clients["carol"].recv(timeout_seconds=10)
    assert got.kind == "kv_global" and got.meta["participants"] == ["carol"]
    assert agg.server.ready(), "the aggregator's serve loop died"
    # the next barrier waits for bob and carol only, and everyone left is still served
    clients["carol"].send("kv", layer=2, **kv_msg(slice_of(4, 2)))
    clients["bob"].send("kv", layer=2, **kv_msg(slice_of(2, 2)))
    got = clients["bob"].recv(timeout_seconds=10)
    assert got.kind == "kv_global" and got.meta["participants"] == ["bob", "carol"], got.meta
    assert agg.metric("fedattn_aggregator_rejected_total", reason="internal") == 0


# --- item 3: positions bound to the sender's slice ------------------------------------------------


def test_a_participant_cannot_claim_positions_outside_its_slice_to_see_later_rows(agg):
    members = {"alice": 3, "bob": 3}
    configure(agg, members)
    clients = hello_all(agg, members)
    alice, bob = clients["alice"], clients["bob"]
    spoof = alice.request("kv", layer=0, **kv_msg([*slice_of(0, 2), 1_000_000]))  # fits the size bound
    assert spoof.kind == "error" and spoof.meta["code"] == "bad_kv", spoof.meta
    assert "slice" in spoof.meta["message"]
    alice.send("kv", layer=0, **kv_msg(slice_of(0, 3)))
    bob.send("kv", layer=0, **kv_msg(slice_of(3, 3)))
    seen = {name: c.recv(timeout_seconds=10) for name, c in clients.items()}
    # alice is first in the layout, so bob's later rows stay hidden from her (and she never gets her own)
    np.testing.assert_array_equal(_positions(seen["alice"]), [])
    np.testing.assert_array_equal(_positions(seen["bob"]), slice_of(0, 3))


def _positions(reply) -> np.ndarray:
    assert reply.kind == "kv_global", reply.meta
    return read_reply(reply.arrays, reply.meta["blocks"], "float32")[2]


def test_a_participant_cannot_squat_another_ones_positions(agg):
    members = {"alice": 3, "bob": 3}
    configure(agg, members)
    clients = hello_all(agg, members)
    squat = clients["alice"].request("kv", layer=0, **kv_msg(slice_of(3, 3)))  # bob's slice
    assert squat.kind == "error" and squat.meta["code"] == "bad_kv", squat.meta
    clients["bob"].send("kv", layer=0, **kv_msg(slice_of(3, 3)))
    clients["alice"].send("kv", layer=0, **kv_msg(slice_of(0, 3)))
    got = clients["bob"].recv(timeout_seconds=10)
    # bob's real KV was taken, not refused as overlapping; he gets alice's block
    np.testing.assert_array_equal(_positions(got), slice_of(0, 3))


def test_a_sparse_sync_inside_the_slice_is_taken(agg):
    """kvKeepRatio < 1 sends some of a slice's rows: still within the slice, still accepted."""
    members = {"alice": 4, "bob": 2}
    configure(agg, members, kvKeepRatio=0.5)
    clients = hello_all(agg, members)
    clients["alice"].send("kv", layer=0, **kv_msg(slice_of(0, 4)[::2]))
    clients["bob"].send("kv", layer=0, **kv_msg(slice_of(4, 2)[:1]))
    got = clients["bob"].recv(timeout_seconds=10)
    np.testing.assert_array_equal(_positions(got), slice_of(0, 4)[::2])


# --- item 4: barriers and payloads bounded by the session -----------------------------------------


def test_kv_only_for_sync_layers_of_the_model_and_a_few_pending_layers(agg):
    members = {"alice": 3, "bob": 3}
    configure(agg, members)  # 8 layers, syncInterval 2: layers 0, 2, 4, 6 sync
    alice = hello_all(agg, members)["alice"]
    own = kv_msg(slice_of(0, 3))
    for layer in (1, 8, 2**40):
        refused = alice.request("kv", layer=layer, **own)
        assert refused.kind == "error" and refused.meta["code"] == "bad_layer", (layer, refused.meta)
    accepted = [layer for layer in (0, 2, 4, 6) if _taken(alice, layer, own)]
    assert accepted == [0, 2], "a participant waits for one barrier at a time; at most two may be pending"
    assert len(agg.server.sessions[SESSION].barriers) == 2


def _taken(client: AggregatorClient, layer: int, message: dict) -> bool:
    client.send("kv", layer=layer, **message)
    try:
        reply = client.recv(timeout_seconds=0.5)
    except Timeout:
        return True  # taken: the barrier waits for bob
    assert reply.kind == "error" and reply.meta["code"] == "too_many_pending", reply.meta
    return False


def test_kv_payload_is_bounded_by_the_model_and_the_announced_prompt(agg):
    members = {"alice": 3, "bob": 3}
    configure(agg, members)
    alice = hello_all(agg, members)["alice"]
    k = np.zeros((2, 1000, 4), dtype=np.float32)  # 1000 rows from a 3-token slice
    too_many = alice.request("kv", layer=0, arrays=[k, k, np.arange(1000, dtype=np.int64)], meta={"count": 1000})
    assert too_many.kind == "error" and too_many.meta["code"] in {"oversized", "bad_kv"}, too_many.meta
    wide = np.zeros((8, 3, 64), dtype=np.float32)  # not this model's KV heads / head_dim
    other_model = alice.request("kv", layer=0, arrays=[wide, wide, np.asarray(slice_of(0, 3))], meta={"count": 3})
    assert other_model.kind == "error" and other_model.meta["code"] in {"oversized", "bad_kv"}
