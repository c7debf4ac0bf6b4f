"""Which CurveZMQ client keys may connect, and the identity each key speaks for.

Two sources: a directory of ``NAME.curve.pub`` files (Z85, rescanned so a mounted Secret or
ConfigMap update, or a deleted file, takes effect within a second) and ``ctl_allow`` /
``ctl_revoke`` from the coordinator. A revoked name stays out even if its file is still on disk,
until it is allowed again. ZAP runs in pyzmq's authenticator thread and reads the current mapping,
which is swapped whole (never mutated) so that thread needs no lock.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from fedattn.api.schema import RESERVED_NAMES

log = logging.getLogger("fedattn.aggregator.allowlist")

SUFFIX = ".curve.pub"


def read_key_dir(directory: Path) -> dict[bytes, str]:
    """Public key (Z85 bytes) -> name for every readable, well-formed ``NAME.curve.pub`` file."""
    keys: dict[bytes, str] = {}
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        name = path.name[: -len(SUFFIX)]
        try:
            key = path.read_bytes().strip()
            z85.decode(key)
        except (OSError, ValueError) as exc:
            log.warning("skipping unreadable Curve key file %s: %s", path, exc)
            continue
        if len(key) != 40:
            log.warning("skipping %s: not a 40-character Z85 key", path)
            continue
        keys[key] = name
    return keys


class Allowlist:
    """Allowed Curve public keys and their names; doubles as the ZAP credentials provider."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._from_dir: dict[bytes, str] = {}
        self._allowed: dict[bytes, str] = {}
        self._revoked: set[str] = set()
        self._lock = threading.Lock()  # NB: serialises writers; the ZAP thread only reads _by_key
        self._by_key: dict[bytes, str] = {}
        self._names: frozenset[str] = frozenset()
        self.rescan()

    def rescan(self) -> None:
        """Reload the key directory (cheap: a handful of small files)."""
        if self.directory is None:
            return
        try:
            found = read_key_dir(self.directory)
        except OSError as exc:
            log.warning("cannot read allowlist directory %s: %s", self.directory, exc)
            return
        with self._lock:
            self._from_dir = found
            self._publish()

    def allow(self, name: str, public_key: bytes) -> None:
        """Allow ``public_key`` (Z85) as ``name``; replaces any earlier key allowed for that name."""
        if name in RESERVED_NAMES:
            raise ValueError(f"{name!r} is a reserved identity; ctl_allow is for participants")
        key = public_key.strip()
        if len(key) != 40:
            raise ValueError("public_key must be a 40-character Z85 Curve key")
        z85.decode(key)
        with self._lock:
            self._allowed = {k: n for k, n in self._allowed.items() if n != name}
            self._allowed[key] = name
            self._revoked.discard(name)
            self._publish()

    def revoke(self, name: str) -> None:
        """Refuse ``name``'s keys from now on, whichever source listed them."""
        with self._lock:
            self._allowed = {k: n for k, n in self._allowed.items() if n != name}
            self._revoked.add(name)
            self._publish()

    def _publish(self) -> None:
        merged = {**self._from_dir, **self._allowed}
        by_key = {k: n for k, n in merged.items() if n not in self._revoked}
        self._by_key, self._names = by_key, frozenset(by_key.values())

    def name_of(self, public_key: bytes) -> str | None:
        return self._by_key.get(public_key)

    def is_allowed(self, name: str) -> bool:
        return name in self._names

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP hook (pyzmq credentials provider): ``key`` is the client's Z85 public key."""
        return key in self._by_key


class NamingAuthenticator(ThreadAuthenticator):
    """ZAP handler that sets each connection's User-Id to the name bound to its Curve key."""

    def __init__(self, context: zmq.Context, allowlist: Allowlist) -> None:
        super().__init__(context)
        self.allowlist = allowlist

    def curve_user_id(self, client_public_key: bytes) -> str:
        # NB: only called after the callback accepted the key; a revoke in between yields "", rejected later.
        return self.allowlist.name_of(z85.encode(client_public_key)) or ""


def start_authenticator(context: zmq.Context, allowlist: Allowlist) -> NamingAuthenticator:
    """Start ZAP for every Curve socket of ``context`` with ``allowlist`` deciding who gets in."""
    auth = NamingAuthenticator(context, allowlist)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=allowlist)
    return auth
