"""Secure aggregation: the aggregator learns the sum of the participants' updates and nothing else.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning" (CCS 2017),
semi-honest server, one round of keys per training round:

1. Every participant ``u`` draws an X25519 key pair and a self-mask seed ``b_u``; public keys go to
   everyone through the coordinator/aggregator.
2. ``u`` Shamir-splits its X25519 private key and ``b_u`` (threshold ``t``) and sends peer ``v`` its
   share pair sealed with ChaCha20-Poly1305 under a key both derive from X25519(u, v).
3. ``u`` sends ``y_u = x_u + PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)`` (mod 2^32),
   where ``x_u`` is its update in fixed point and ``s_uv`` is HKDF(X25519(u, v), session, round).
   The pairwise masks cancel in the sum; alone, ``y_u`` is uniformly distributed.
4. The aggregator sums what arrived. For each participant that dropped after step 2, survivors
   reveal their shares of its private key (so the server can recompute and remove its pairwise
   masks); for each survivor, they reveal shares of ``b_u`` (so its self mask can be removed).
   Never both for the same participant: a "dropped" participant whose update arrives late stays
   masked by ``b_u``.

Masks are expanded by Philox keyed with the HKDF output (its raw 64-bit stream, little-endian, so
every platform expands the same seed to the same words). Values are fixed point with ``frac_bits``
fraction bits in uint32 wraparound arithmetic. Shamir's scheme runs over the prime field
GF(2^521 - 1): the maintained PyPI packages either cap shares at 16 (SLIP-39) or are unmaintained.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PRIME = 2**521 - 1
SECRET_BYTES = 32
_SHARE_BYTES = 66  # ceil(521 / 8)
_RAW = serialization.Encoding.Raw


class SecAggError(ValueError):
    """A secure-aggregation step that cannot proceed; the text says which input was wrong."""


def resolve_threshold(secure_aggregation: Mapping[str, object], *, min_participants: int) -> int:
    """``secureAggregation.threshold`` with 0 meaning ``minParticipants``; refuses a threshold a round
    closing at quorum could not meet (its survivors could never unmask the sum)."""
    t = secure_aggregation.get("threshold", 0)
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise SecAggError(f"secureAggregation.threshold must be an integer >= 0, got {t!r}")
    if t > min_participants:
        raise SecAggError(
            f"secureAggregation.threshold {t} exceeds minParticipants {min_participants}: a round closing "
            "at quorum could not be unmasked"
        )
    return t or min_participants


# --- Shamir secret sharing over GF(2^521 - 1) ---------------------------------------------------------


def shamir_split(secret: bytes, *, shares: int, threshold: int) -> list[tuple[int, int]]:
    """``shares`` points ``(x, f(x))``, x = 1..shares, of a random degree ``threshold - 1`` polynomial."""
    if not 1 <= threshold <= shares:
        raise SecAggError(f"need 1 <= threshold <= shares, got threshold={threshold}, shares={shares}")
    if len(secret) > 64:
        raise SecAggError(f"secret of {len(secret)} bytes does not fit the field (max 64)")
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    points = []
    for x in range(1, shares + 1):
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        points.append((x, y))
    return points


def _lagrange_at(points: list[tuple[int, int]], at: int) -> int:
    total = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * (at - xj) % PRIME
                den = den * (xi - xj) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    return total


def shamir_combine(shares: Iterable[tuple[int, int]], *, threshold: int, length: int = SECRET_BYTES) -> bytes:
    """The secret from >= ``threshold`` distinct shares; extra shares must lie on the same polynomial."""
    points = sorted(set(shares))
    xs = [x for x, _ in points]
    if len(set(xs)) != len(xs):
        raise SecAggError("two different shares for the same x: at least one is corrupt")
    if any(not 0 < x < PRIME or not 0 <= y < PRIME for x, y in points):
        raise SecAggError("share out of the field's range")
    if len(points) < threshold:
        raise SecAggError(f"{len(points)} shares cannot recover a secret of threshold {threshold}")
    base = points[:threshold]
    for x, y in points[threshold:]:
        if _lagrange_at(base, x) != y:
            raise SecAggError(f"share x={x} is inconsistent with the others: at least one share is corrupt")
    secret = _lagrange_at(base, 0)
    if secret >= 1 << (8 * length):
        raise SecAggError("recovered value does not fit the secret's length: shares are corrupt")
    return secret.to_bytes(length, "big")


# --- fixed point and masks ---------------------------------------------------------------------------


def encode_fixed(x: np.ndarray, *, frac_bits: int, n_summands: int) -> np.ndarray:
    """``round(x * 2^frac_bits)`` as uint32 (two's complement); refuses values whose sum could wrap."""
    limit = 2.0 ** (31 - frac_bits) / n_summands
    x = np.asarray(x, dtype=np.float64)
    if x.size and not (np.isfinite(x).all() and np.abs(x).max() < limit):
        raise SecAggError(f"values must be finite with |x| < {limit:g} so a sum of {n_summands} cannot wrap")
    return np.rint(x * 2.0**frac_bits).astype(np.int64).astype(np.uint32)


def decode_fixed(total: np.ndarray, *, frac_bits: int) -> np.ndarray:
    """Float64 values of a uint32 fixed-point sum (read as two's complement)."""
    return total.view(np.int32).astype(np.float64) / 2.0**frac_bits


def _hkdf(secret: bytes, info: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info.encode()).derive(secret)


def expand_mask(seed: bytes, size: int) -> np.ndarray:
    """``size`` uint32 words of Philox keyed with the first 16 bytes of ``seed``."""
    gen = np.random.Philox(key=int.from_bytes(seed[:16], "little"))
    raw = gen.random_raw((size + 1) // 2).astype("<u8", copy=False)
    return raw.view("<u4")[:size].astype(np.uint32)


def _context(session: str, round: int) -> str:
    return f"fedattn-secagg|{session}|{round}"


def pair_secret(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """X25519 shared secret with a peer (the same from both ends)."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise SecAggError(f"invalid X25519 public key ({exc})") from None


def pair_mask(secret: bytes, *, session: str, round: int, size: int) -> np.ndarray:
    return expand_mask(_hkdf(secret, _context(session, round) + "|pair-mask"), size)


def self_mask(seed: bytes, *, session: str, round: int, size: int) -> np.ndarray:
    return expand_mask(_hkdf(seed, _context(session, round) + "|self-mask"), size)


def pack_weighted(params: np.ndarray, weight: float) -> np.ndarray:
    """``[weight * params..., weight]``: summed securely, it gives FedAvg's numerator and denominator."""
    return np.append(weight * np.asarray(params, dtype=np.float64), weight)


def unpack_weighted(total: np.ndarray) -> np.ndarray:
    """The weighted mean from the sum of :func:`pack_weighted` vectors."""
    if total[-1] <= 0:
        raise SecAggError("the summed weight is not positive")
    return total[:-1] / total[-1]


# --- participant --------------------------------------------------------------------------------------


@dataclass
class ClientKeys:
    """One round's X25519 key pair and self-mask seed."""

    private: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    self_seed: bytes = field(default_factory=lambda: secrets.token_bytes(SECRET_BYTES))

    @property
    def public(self) -> bytes:
        return self.private.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)

    def private_bytes(self) -> bytes:
        return self.private.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def _pack_share(x: int, y_key: int, y_seed: int) -> bytes:
    return x.to_bytes(2, "big") + y_key.to_bytes(_SHARE_BYTES, "big") + y_seed.to_bytes(_SHARE_BYTES, "big")


def _unpack_share(blob: bytes) -> tuple[int, int, int]:
    if len(blob) != 2 + 2 * _SHARE_BYTES:
        raise SecAggError(f"share bundle has {len(blob)} bytes, expected {2 + 2 * _SHARE_BYTES}")
    return (
        int.from_bytes(blob[:2], "big"),
        int.from_bytes(blob[2 : 2 + _SHARE_BYTES], "big"),
        int.from_bytes(blob[2 + _SHARE_BYTES :], "big"),
    )


class SecAggClient:
    """One participant's side of a round: seal shares for peers, mask its update, reveal shares."""

    def __init__(
        self,
        *,
        name: str,
        session: str,
        round: int,
        public_keys: Mapping[str, bytes],
        keys: ClientKeys,
        threshold: int,
    ) -> None:
        if name not in public_keys or public_keys[name] != keys.public:
            raise SecAggError(f"{name}'s own public key must be among the round's keys")
        if not 1 <= threshold <= len(public_keys):
            raise SecAggError(f"threshold must be in [1, {len(public_keys)}], got {threshold}")
        self.name, self.session, self.round = name, session, round
        self.peers = sorted(public_keys)
        self.keys, self.threshold = keys, threshold
        self._secrets = {p: pair_secret(keys.private, public_keys[p]) for p in self.peers if p != name}
        self._held: dict[str, tuple[int, int, int]] = {}  # owner -> (x, key share, seed share)

    def _aead(self, peer: str) -> ChaCha20Poly1305:
        return ChaCha20Poly1305(_hkdf(self._secrets[peer], _context(self.session, self.round) + "|shares"))

    def _nonce_aad(self, sender: str, receiver: str) -> tuple[bytes, bytes]:
        # NB: the key is shared by both directions of a pair; the sender's side makes each nonce unique.
        nonce = (b"\x00" if sender < receiver else b"\x01") * 12
        return nonce, f"{_context(self.session, self.round)}|{sender}->{receiver}".encode()

    def sealed_shares(self) -> dict[str, bytes]:
        """``{peer: sealed bundle}`` carrying that peer's share of my private key and self seed."""
        n = len(self.peers)
        key_shares = shamir_split(self.keys.private_bytes(), shares=n, threshold=self.threshold)
        seed_shares = shamir_split(self.keys.self_seed, shares=n, threshold=self.threshold)
        out = {}
        for peer, (x, yk), (_, ys) in zip(self.peers, key_shares, seed_shares, strict=True):
            if peer == self.name:
                self._held[peer] = (x, yk, ys)
                continue
            nonce, aad = self._nonce_aad(self.name, peer)
            out[peer] = self._aead(peer).encrypt(nonce, _pack_share(x, yk, ys), aad)
        return out

    def receive_shares(self, sender: str, sealed: bytes) -> None:
        """Open and keep a peer's bundle; a forged or misrouted bundle raises."""
        if sender not in self._secrets:
            raise SecAggError(f"{sender!r} is not a peer of this round")
        if sender in self._held:
            raise SecAggError(f"already holding shares from {sender}")
        nonce, aad = self._nonce_aad(sender, self.name)
        try:
            self._held[sender] = _unpack_share(self._aead(sender).decrypt(nonce, sealed, aad))
        except InvalidTag:
            raise SecAggError(f"share bundle from {sender} fails authentication") from None

    def mask(self, values: np.ndarray) -> np.ndarray:
        """``y = values + self mask + pairwise masks`` (uint32), for a fixed-point vector."""
        if values.dtype != np.uint32 or values.ndim != 1:
            raise SecAggError("mask expects a 1-D uint32 fixed-point vector (see encode_fixed)")
        size = values.size
        y = values + self_mask(self.keys.self_seed, session=self.session, round=self.round, size=size)
        for peer, secret in self._secrets.items():
            m = pair_mask(secret, session=self.session, round=self.round, size=size)
            if self.name < peer:
                y += m
            else:
                y -= m
        return y

    def reveal(self, *, survivors: Iterable[str], dropped: Iterable[str]) -> dict[str, tuple[str, int, int]]:
        """``{owner: (kind, x, y)}``: seed shares of survivors, private-key shares of the dropped."""
        survivors, dropped = set(survivors), set(dropped)
        if survivors & dropped:
            raise SecAggError(f"participants cannot be both survivors and dropped: {sorted(survivors & dropped)}")
        if len(survivors) < self.threshold:
            raise SecAggError(f"only {len(survivors)} survivors, below the threshold {self.threshold}")
        unknown = (survivors | dropped) - set(self.peers)
        if unknown:
            raise SecAggError(f"not participants of this round: {sorted(unknown)}")
        out: dict[str, tuple[str, int, int]] = {}
        for owner in survivors | dropped:
            if owner not in self._held:
                continue  # NB: its bundle never reached us; other survivors cover for it
            x, yk, ys = self._held[owner]
            out[owner] = ("seed", x, ys) if owner in survivors else ("key", x, yk)
        return out


def reveal_to_meta(reveal: Mapping[str, tuple[str, int, int]]) -> dict[str, list]:
    """A :meth:`SecAggClient.reveal` result as msgpack-safe meta (field elements as 66-byte strings)."""
    return {owner: [kind, x, y.to_bytes(_SHARE_BYTES, "big")] for owner, (kind, x, y) in reveal.items()}


def reveal_from_meta(raw: object) -> dict[str, tuple[str, int, int]]:
    """Inverse of :func:`reveal_to_meta`; anything malformed raises :class:`SecAggError`."""
    if not isinstance(raw, Mapping):
        raise SecAggError("revealed shares must be a map of owner -> [kind, x, y]")
    out = {}
    for owner, entry in raw.items():
        if not (
            isinstance(owner, str)
            and isinstance(entry, list | tuple)
            and len(entry) == 3
            and entry[0] in ("seed", "key")
            and isinstance(entry[1], int)
            and not isinstance(entry[1], bool)
            and 0 < entry[1] < 2**16
            and isinstance(entry[2], bytes)
            and len(entry[2]) == _SHARE_BYTES
        ):
            raise SecAggError(f"malformed revealed share for {owner!r}")
        out[owner] = (entry[0], entry[1], int.from_bytes(entry[2], "big"))
    return out


# --- aggregator ---------------------------------------------------------------------------------------


class SecAggServer:
    """Sums masked vectors as they arrive (O(P)) and removes the masks from shares revealed after."""

    def __init__(self, *, session: str, round: int, public_keys: Mapping[str, bytes], threshold: int, size: int):
        self.session, self.round, self.size = session, round, size
        self.public_keys = dict(public_keys)
        self.threshold = threshold
        self._sum = np.zeros(size, dtype=np.uint32)
        self.received: set[str] = set()
        self.closed = False

    def add(self, name: str, masked: np.ndarray) -> None:
        if self.closed:
            raise SecAggError(f"masked input from {name} arrived after the round's survivors were fixed")
        if name not in self.public_keys:
            raise SecAggError(f"{name!r} is not a participant of this round")
        if name in self.received:
            raise SecAggError(f"duplicate masked input from {name}")
        if masked.dtype != np.uint32 or masked.shape != (self.size,):
            raise SecAggError(f"masked input must be uint32[{self.size}], got {masked.dtype}{list(masked.shape)}")
        self._sum += masked
        self.received.add(name)

    def close(self) -> tuple[set[str], set[str]]:
        """Fix the survivors (inputs received) and the dropped; later inputs are refused."""
        self.closed = True
        survivors = set(self.received)
        if len(survivors) < self.threshold:
            raise SecAggError(f"only {len(survivors)} inputs arrived, below the threshold {self.threshold}")
        return survivors, set(self.public_keys) - survivors

    def unmask(self, reveals: Mapping[str, Mapping[str, tuple[str, int, int]]]) -> np.ndarray:
        """The plain uint32 sum of the survivors' inputs from ``{revealer: client.reveal(...)}``."""
        if not self.closed:
            raise SecAggError("close the round before unmasking")
        survivors = set(self.received)
        dropped = set(self.public_keys) - survivors
        by_owner: dict[str, list[tuple[int, int]]] = {}
        for revealer, shares in reveals.items():
            if revealer not in survivors:
                raise SecAggError(f"shares revealed by {revealer!r}, who is not a survivor")
            for owner, (kind, x, y) in shares.items():
                expected = "seed" if owner in survivors else "key" if owner in dropped else None
                if kind != expected:
                    raise SecAggError(f"{revealer} revealed a {kind!r} share of {owner!r}; expected {expected!r}")
                by_owner.setdefault(owner, []).append((x, y))
        total = self._sum.copy()
        for owner in survivors:
            seed = shamir_combine(by_owner.get(owner, []), threshold=self.threshold)
            total -= self_mask(seed, session=self.session, round=self.round, size=self.size)
        for owner in dropped:
            key = X25519PrivateKey.from_private_bytes(shamir_combine(by_owner.get(owner, []), threshold=self.threshold))
            for survivor in survivors:
                m = pair_mask(
                    pair_secret(key, self.public_keys[survivor]),
                    session=self.session,
                    round=self.round,
                    size=self.size,
                )
                # the survivor added +m if it sorts before the dropped owner, -m otherwise: undo that
                if survivor < owner:
                    total -= m
                else:
                    total += m
        return total
