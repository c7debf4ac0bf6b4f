"""Aggregator checkpoints: a learning session's global model, rule state and round, written atomically.

One file per session, ``SESSION.ckpt.npz`` (numpy arrays only, no pickle), written to a temporary file
in the same directory, fsynced, renamed over the old one and the directory fsynced: a crash leaves
either the previous checkpoint or the new one, never half of one. The small JSON document of scalars
(round, epsilon rounds, the last close reply, ...) travels inside the archive as UTF-8 bytes, so the
model and its description cannot come from different writes.

A second, tiny file ``SESSION.round.json`` (same atomic write) records the round that is open, so a
restarted aggregator reopens it for the same participants instead of waiting for a round the
coordinator will never open again.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

_META = "__meta__"
_SAFE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (wrong session, corrupt file); the text says why."""


def _path(directory: Path, session: str, suffix: str) -> Path:
    if not _SAFE_NAME.match(session):  # NB: the name becomes a file name; k8s names always pass
        raise CheckpointError(f"session name {session!r} is not a DNS-1123 name")
    return directory / f"{session}{suffix}"


def write_atomically(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # NB: makes the rename itself durable
    finally:
        os.close(dir_fd)


def save(directory: Path, session: str, *, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Path:
    """Write ``arrays`` and the JSON-able ``meta`` as the session's checkpoint; returns its path."""
    if _META in arrays:
        raise CheckpointError(f"array name {_META!r} is reserved")
    path = _path(directory, session, ".ckpt.npz")
    encoded = np.frombuffer(json.dumps(dict(meta), sort_keys=True).encode(), dtype=np.uint8)
    write_atomically(path, lambda handle: np.savez(handle, **{_META: encoded}, **arrays))
    return path


def load(directory: Path, session: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The session's last checkpoint as ``(arrays, meta)``, or None when there is none."""
    path = _path(directory, session, ".ckpt.npz")
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        meta = json.loads(arrays.pop(_META).tobytes().decode())
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from None
    return arrays, meta


def save_open_round(directory: Path, session: str, *, round: int, participants: list[str]) -> None:
    """Record that ``round`` is open for ``participants`` (cleared by :func:`clear_open_round`)."""
    body = json.dumps({"round": round, "participants": sorted(participants)}).encode()
    write_atomically(_path(directory, session, ".round.json"), lambda handle: handle.write(body))


def load_open_round(directory: Path, session: str) -> tuple[int, list[str]] | None:
    path = _path(directory, session, ".round.json")
    try:
        doc = json.loads(path.read_bytes())
        return int(doc["round"]), [str(p) for p in doc["participants"]]
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is unreadable: {exc}") from None


def clear_open_round(directory: Path, session: str) -> None:
    _path(directory, session, ".round.json").unlink(missing_ok=True)
