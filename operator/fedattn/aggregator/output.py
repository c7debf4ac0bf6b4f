"""A learning session's results where its user can take them: models as safetensors, metrics as JSON/CSV.

Written by the aggregator (the one process holding the global model) under
``--output-dir``/``spec.output.subPath`` (default: the session's name), each file atomically (temp
file, fsync, rename; fedattn.aggregator.checkpoint.write_atomically):

- ``final.safetensors``: the global model when the session finishes;
- ``best.safetensors`` (+ ``best.json``): the round's model that scored best on ``spec.output.best``
  (a federated-evaluation metric, or ``loss``), "rollback to best" being this file as the next
  session's ``spec.model.initial``;
- ``rounds/round-NNNNNN.safetensors``: every closed round's model when ``keepEveryRound``;
- ``metrics.json`` / ``metrics.csv``: one row per closed round (server accuracy, federated loss and
  metrics, contributions).

safetensors keeps each array's name, shape and dtype, so ``safetensors.numpy.load_file`` or
``safetensors.torch.load_file`` gives the user's own state dict back.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedattn.aggregator.checkpoint import write_atomically
from fedattn.api.spec import OutputSpec
from fedattn.learning.model_file import to_bytes as model_bytes


def _write_bytes(path: Path, data: bytes) -> None:
    write_atomically(path, lambda handle: handle.write(data))


def _flat_row(row: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k != "metrics"}
    out.update({f"eval_{k}": v for k, v in (row.get("metrics") or {}).items()})
    return out


class SessionOutput:
    """One session's output directory; rows already there (an aggregator restart) are kept."""

    def __init__(self, root: Path, *, session: str, spec: OutputSpec) -> None:
        self.directory = root / (spec.sub_path or session)
        self.session = session
        self.spec = spec
        path = self.directory / "metrics.json"
        self.rows: list[dict[str, Any]] = json.loads(path.read_text()) if path.exists() else []

    def round_closed(self, *, round: int, names: Sequence[str], arrays: Sequence[np.ndarray],
                     result: Mapping[str, Any]) -> None:
        """Record round ``round``'s close reply ``result``; write its model if kept or the best so far."""
        evaluation = result.get("evaluation") or {}
        row = {
            "round": round,
            "contributions": result.get("contributions"),
            "accuracy": result.get("accuracy"),
            "loss": evaluation.get("loss"),
            "num_examples": evaluation.get("num_examples"),
            "metrics": evaluation.get("metrics") or {},
        }
        self.rows = [r for r in self.rows if r["round"] != round] + [row]
        meta = {"session": self.session, "round": round}
        if self.spec.keep_every_round:
            _write_bytes(self.directory / "rounds" / f"round-{round:06d}.safetensors", model_bytes(names, arrays, meta))
        best = self.spec.best
        if best is not None and (score := self._score(row)) is not None:
            earlier = [s for r in self.rows[:-1] if (s := self._score(r)) is not None]
            if not earlier or (score > max(earlier) if best.mode == "max" else score < min(earlier)):
                meta = {**meta, best.metric: score}
                _write_bytes(self.directory / "best.safetensors", model_bytes(names, arrays, meta))
                _write_bytes(self.directory / "best.json", json.dumps(meta, indent=2).encode())
        self._write_metrics()

    def _score(self, row: Mapping[str, Any]) -> float | None:
        """The row's value of the ``best`` metric: ``loss``, server ``accuracy``, or a federated metric."""
        assert self.spec.best is not None
        metric = self.spec.best.metric
        value = row.get(metric) if metric in ("loss", "accuracy") and row.get(metric) is not None else None
        value = (row.get("metrics") or {}).get(metric, value)
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else None

    def finished(self, *, round: int, names: Sequence[str], arrays: Sequence[np.ndarray]) -> Path:
        path = self.directory / "final.safetensors"
        _write_bytes(path, model_bytes(names, arrays, {"session": self.session, "round": round}))
        return path

    def _write_metrics(self) -> None:
        _write_bytes(self.directory / "metrics.json", json.dumps(self.rows, indent=2).encode())
        flat = [_flat_row(r) for r in self.rows]
        columns = list(dict.fromkeys(k for r in flat for k in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(flat)
        _write_bytes(self.directory / "metrics.csv", buffer.getvalue().encode())
