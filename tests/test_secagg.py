"""Secure aggregation: Shamir, masks that look uniform alone and cancel in the sum, dropout recovery."""

from __future__ import annotations

import itertools
import secrets

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from scipy import stats

from fedattn import wire
from fedattn.aggregator.strategies.fedavg import FedAvg
from fedattn.learning.secagg import (
    ClientKeys,
    SecAggClient,
    SecAggError,
    SecAggServer,
    decode_fixed,
    encode_fixed,
    expand_mask,
    pack_weighted,
    resolve_threshold,
    reveal_from_meta,
    reveal_to_meta,
    shamir_combine,
    shamir_split,
    unpack_weighted,
)

FRAC = 16


def _keys(i: int) -> ClientKeys:
    """Deterministic keys, so the statistical tests below are reproducible."""
    return ClientKeys(private=X25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32), self_seed=bytes([100 + i]) * 32)


def _setup(n=5, *, threshold=3, session="s1", round=1):
    names = [f"p{i}" for i in range(n)]
    keys = {name: _keys(i) for i, name in enumerate(names)}
    pubs = {name: k.public for name, k in keys.items()}
    clients = {
        name: SecAggClient(
            name=name, session=session, round=round, public_keys=pubs, keys=keys[name], threshold=threshold
        )
        for name in names
    }
    for sender, client in clients.items():
        for peer, blob in client.sealed_shares().items():
            clients[peer].receive_shares(sender, blob)
    return names, clients, pubs


# --- Shamir ---------------------------------------------------------------------------------------------


def test_shamir_any_threshold_subset_recovers_the_secret():
    secret = secrets.token_bytes(32)
    shares = shamir_split(secret, shares=5, threshold=3)
    for subset in itertools.combinations(shares, 3):
        assert shamir_combine(subset, threshold=3) == secret
    assert shamir_combine(shares, threshold=3) == secret  # extras consistent


def test_shamir_below_threshold_is_refused_and_corruption_detected():
    secret = secrets.token_bytes(32)
    shares = shamir_split(secret, shares=5, threshold=3)
    with pytest.raises(SecAggError, match="2 shares cannot recover"):
        shamir_combine(shares[:2], threshold=3)
    x, y = shares[4]
    with pytest.raises(SecAggError, match="inconsistent"):
        shamir_combine([*shares[:4], (x, y + 1)], threshold=3)
    with pytest.raises(SecAggError, match="same x"):
        shamir_combine([*shares[:3], (x, y), (x, y + 1)], threshold=3)
    with pytest.raises(SecAggError, match="threshold"):
        shamir_split(secret, shares=2, threshold=3)


# --- masking --------------------------------------------------------------------------------------------


def test_a_single_masked_update_is_indistinguishable_from_uniform():
    _, clients, _ = _setup(4)
    size = 200_000
    masked = clients["p1"].mask(np.zeros(size, dtype=np.uint32))  # the most structured input there is
    # KS against U[0, 1) and chi-square on the top byte (256 bins)
    assert stats.kstest(masked / 2.0**32, "uniform").pvalue > 1e-3
    counts = np.bincount(masked >> 24, minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-3
    # and on the low byte, where fixed-point structure would show first
    assert stats.chisquare(np.bincount(masked & 0xFF, minlength=256)).pvalue > 1e-3


def _run_round(n, drop, *, size=64, threshold=3, seed=0):
    names, clients, pubs = _setup(n, threshold=threshold)
    server = SecAggServer(session="s1", round=1, public_keys=pubs, threshold=threshold, size=size + 1)
    rng = np.random.default_rng(seed)
    params = {name: rng.normal(size=size) for name in names}
    weights = {name: float(w) for name, w in zip(names, rng.uniform(0.1, 1.0, size=n), strict=True)}
    fixed = {
        name: encode_fixed(pack_weighted(params[name], weights[name]), frac_bits=FRAC, n_summands=n) for name in names
    }
    for name in names:
        if name not in drop:
            server.add(name, clients[name].mask(fixed[name]))
    survivors, dropped = server.close()
    assert dropped == set(drop)
    total = server.unmask({s: clients[s].reveal(survivors=survivors, dropped=dropped) for s in survivors})
    return names, params, weights, fixed, total, survivors


@pytest.mark.parametrize("drop", [(), ("p2",), ("p0", "p4")])
def test_sum_is_exact_after_dropouts_and_equals_fedavg(drop):
    _, params, weights, fixed, total, survivors = _run_round(5, drop)
    exact = np.zeros_like(total)
    for s in survivors:
        exact += fixed[s]
    np.testing.assert_array_equal(total, exact)  # bit-exact fixed-point sum
    mean = unpack_weighted(decode_fixed(total, frac_bits=FRAC))
    reference = FedAvg(size=64)
    reference.begin_round(round=1, global_params=np.zeros(64, np.float32))
    for s in sorted(survivors):
        reference.fold(params[s].astype(np.float32), weights[s])
    # fixed-point error: each of <= 5 terms is off by <= 2^-17 in numerator and denominator
    np.testing.assert_allclose(mean, reference.finish(), atol=2e-4)


def test_without_revealed_shares_the_server_sum_is_noise():
    names, clients, pubs = _setup(3)
    server = SecAggServer(session="s1", round=1, public_keys=pubs, threshold=3, size=1000)
    x = np.zeros(1000, dtype=np.uint32)
    for name in names:
        server.add(name, clients[name].mask(x))
    # pairwise masks cancel, self masks do not: the raw sum is still uniform-looking, not zeros
    assert np.count_nonzero(server._sum) > 990


def test_a_late_update_after_close_is_refused_and_stays_masked():
    names, clients, pubs = _setup(4)
    server = SecAggServer(session="s1", round=1, public_keys=pubs, threshold=3, size=8)
    for name in names[:3]:
        server.add(name, clients[name].mask(np.zeros(8, np.uint32)))
    survivors, dropped = server.close()
    with pytest.raises(SecAggError, match="after the round's survivors were fixed"):
        server.add("p3", clients["p3"].mask(np.zeros(8, np.uint32)))
    # no honest client reveals both kinds of share for the dropped participant
    with pytest.raises(SecAggError, match="both survivors and dropped"):
        clients["p0"].reveal(survivors=survivors | {"p3"}, dropped=dropped)


def test_server_rejects_bad_inputs_and_bad_reveals():
    _, clients, pubs = _setup(4)
    server = SecAggServer(session="s1", round=1, public_keys=pubs, threshold=3, size=8)
    with pytest.raises(SecAggError, match="not a participant"):
        server.add("mallory", np.zeros(8, np.uint32))
    with pytest.raises(SecAggError, match="uint32"):
        server.add("p0", np.zeros(8, np.float32))
    server.add("p0", clients["p0"].mask(np.zeros(8, np.uint32)))
    with pytest.raises(SecAggError, match="duplicate"):
        server.add("p0", clients["p0"].mask(np.zeros(8, np.uint32)))
    with pytest.raises(SecAggError, match="below the threshold"):
        server.close()


def test_wrong_share_kind_is_refused_by_the_server():
    names, clients, pubs = _setup(4)
    server = SecAggServer(session="s1", round=1, public_keys=pubs, threshold=3, size=4)
    for name in names[:3]:
        server.add(name, clients[name].mask(np.zeros(4, np.uint32)))
    survivors, dropped = server.close()
    reveals = {s: clients[s].reveal(survivors=survivors, dropped=dropped) for s in survivors}
    reveals["p0"]["p1"] = ("key", *reveals["p0"]["p1"][1:])  # asks for a survivor's private key
    with pytest.raises(SecAggError, match="expected 'seed'"):
        server.unmask(reveals)


def test_sealed_shares_are_authenticated():
    keys = {name: _keys(i) for i, name in enumerate(("p0", "p1", "p2"))}
    pubs = {name: k.public for name, k in keys.items()}

    def client(name):
        return SecAggClient(name=name, session="s1", round=1, public_keys=pubs, keys=keys[name], threshold=2)

    blob = client("p0").sealed_shares()["p1"]
    tampered = bytearray(blob)
    tampered[5] ^= 1
    with pytest.raises(SecAggError, match="fails authentication"):
        client("p1").receive_shares("p0", bytes(tampered))
    with pytest.raises(SecAggError, match="fails authentication"):  # misrouted: sealed for p1, not p2
        client("p2").receive_shares("p0", blob)
    with pytest.raises(SecAggError, match="not a peer"):
        client("p1").receive_shares("mallory", blob)
    receiver = client("p1")
    receiver.receive_shares("p0", blob)
    with pytest.raises(SecAggError, match="already holding"):
        receiver.receive_shares("p0", blob)


def test_fixed_point_refuses_values_whose_sum_could_wrap():
    with pytest.raises(SecAggError, match="cannot wrap"):
        encode_fixed(np.array([20000.0]), frac_bits=16, n_summands=2)
    with pytest.raises(SecAggError, match="finite"):
        encode_fixed(np.array([np.nan]), frac_bits=16, n_summands=2)
    x = np.array([-1.5, 0.0, 3.25, -0.0001])
    np.testing.assert_allclose(decode_fixed(encode_fixed(x, frac_bits=16, n_summands=1), frac_bits=16), x, atol=2**-17)


def test_revealed_shares_survive_the_wire_and_malformed_ones_are_refused():
    names, clients, pubs = _setup(4)
    server = SecAggServer(session="s1", round=1, public_keys=pubs, threshold=3, size=16)
    x = encode_fixed(np.linspace(-1, 1, 16), frac_bits=FRAC, n_summands=4)
    for name in names[:3]:
        server.add(name, clients[name].mask(x))
    survivors, dropped = server.close()
    reveals = {}
    for s in survivors:
        meta = {"shares": reveal_to_meta(clients[s].reveal(survivors=survivors, dropped=dropped))}
        frames = wire.encode(kind="update", session="s1", participant=s, round=1, meta=meta)
        reveals[s] = reveal_from_meta(wire.decode([bytes(f) for f in frames]).meta["shares"])
    np.testing.assert_allclose(
        decode_fixed(server.unmask(reveals), frac_bits=FRAC), 3 * np.linspace(-1, 1, 16), atol=1e-4
    )
    good = reveal_to_meta(clients["p0"].reveal(survivors=survivors, dropped=dropped))
    owner = next(iter(good))
    for bad in (
        [],
        {owner: ["seed", 1]},
        {owner: ["secret", 1, good[owner][2]]},
        {owner: [good[owner][0], 0, good[owner][2]]},
        {owner: [good[owner][0], True, good[owner][2]]},
        {owner: [good[owner][0], 1, good[owner][2][:-1]]},
    ):
        with pytest.raises(SecAggError, match=r"revealed share|must be a map"):
            reveal_from_meta(bad)


def _philox4x64_10(counter: int, key: tuple[int, int]) -> list[int]:
    """Random123's Philox4x64-10 block, written from the spec (Salmon et al., SC'11)."""
    mask = (1 << 64) - 1
    c, k = [counter, 0, 0, 0], list(key)
    for _ in range(10):
        p0, p1 = 0xD2E7470EE14C6C93 * c[0], 0xCA5A826395121157 * c[2]
        c = [(p1 >> 64) ^ c[1] ^ k[0], p1 & mask, (p0 >> 64) ^ c[3] ^ k[1], p0 & mask]
        k = [(k[0] + 0x9E3779B97F4A7C15) & mask, (k[1] + 0xBB67AE8584CAA73B) & mask]
    return c


def test_mask_expansion_is_the_philox_reference_stream():
    # participants and the aggregator may run different numpy builds: the mask words must be exactly
    # Philox4x64-10 keyed by the seed's first 16 bytes (counter from 1), low 32 bits of each word first
    seed = bytes(range(32))
    key_int = int.from_bytes(seed[:16], "little")
    key = (key_int & (2**64 - 1), key_int >> 64)
    words = [w for block in (1, 2, 3) for w in _philox4x64_10(block, key)]
    expected = [half for w in words for half in (w & 0xFFFFFFFF, w >> 32)]
    np.testing.assert_array_equal(expand_mask(seed, 23), np.array(expected[:23], dtype=np.uint32))


def test_threshold_defaults_to_the_quorum_and_cannot_exceed_it():
    assert resolve_threshold({}, min_participants=4) == 4
    assert resolve_threshold({"threshold": 3}, min_participants=4) == 3
    for bad, match in (({"threshold": 5}, "could not be unmasked"), ({"threshold": 1.5}, "integer")):
        with pytest.raises(SecAggError, match=match):
            resolve_threshold(bad, min_participants=4)
