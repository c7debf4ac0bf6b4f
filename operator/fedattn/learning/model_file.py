"""Model files of named arrays: safetensors (what fedattn writes) or .npz, read in the model's order.

safetensors lists tensors by name, not in the order a client's ``get_parameters`` gives them, and
Flower-shaped clients take parameters by position; so fedattn writes the order into the file's
metadata (``fedattn.names``, a JSON list) and reads it back from there (a file without it: sorted
names, which is how ``safetensors`` lists them; an .npz keeps its own order).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ORDER_KEY = "fedattn.names"


class ModelFileError(ValueError):
    """A model file that cannot be read; the message names the file and the problem."""


def to_bytes(names: Sequence[str], arrays: Sequence[np.ndarray], metadata: Mapping[str, Any]) -> bytes:
    """A safetensors file of the named arrays, their order in its metadata (values become strings)."""
    from safetensors.numpy import save

    tensors = {n: np.ascontiguousarray(a) for n, a in zip(names, arrays, strict=True)}
    meta = {**{k: str(v) for k, v in metadata.items()}, ORDER_KEY: json.dumps(list(names))}
    return save(tensors, metadata=meta)


def read(path: Path) -> tuple[list[str], list[np.ndarray]]:
    """Names and arrays of a .safetensors or .npz file, in the model's order."""
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                names = list(archive.files)
                return names, [archive[n] for n in names]
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as handle:
            stored = list(handle.keys())
            order = json.loads((handle.metadata() or {}).get(ORDER_KEY, "null")) or stored
            if sorted(order) != sorted(stored):
                raise ModelFileError(f"{path}: metadata {ORDER_KEY} does not list the file's tensors")
            return order, [handle.get_tensor(n) for n in order]
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"model file {path} cannot be read as .safetensors or .npz: {exc}") from None
