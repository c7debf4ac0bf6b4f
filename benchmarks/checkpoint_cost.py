"""What checkpointing every round costs (spec.checkpoint.everyRounds defaults to 1).

For each model size P, in the same run and on the same disk: the median time of
:func:`fedattn.aggregator.checkpoint.save` (the global model plus a second P-vector of rule state, as
FedAdam keeps, written atomically with two fsyncs) against the median time of the least work a round
does with N updates of that size (their weighted sum into a preallocated float64 buffer). The ratio is
checkpoint / aggregation; the limit says a checkpoint must cost no more than LIMIT rounds' arithmetic
(everything else a round does, transfer and training, only makes the share smaller), or, for small
models where the two fsyncs are all there is, no more than FLOOR_SECONDS (a digits round with training
takes about 0.3 s on loopback, tests/test_e2e_restart.py's coordinator log).

Usage: python benchmarks/checkpoint_cost.py [--dir DIR] [--sizes 4810,1e6,1e7] [--participants 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from fedattn.aggregator import checkpoint

LIMIT = 2.0
FLOOR_SECONDS = 0.05
REPEATS = 7


def _median_seconds(work, *, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(size: int, *, participants: int, directory: Path) -> dict[str, float]:
    rng = np.random.default_rng(0)
    model = rng.standard_normal(size).astype(np.float32)
    moments = rng.standard_normal(size).astype(np.float32)
    updates = [rng.standard_normal(size).astype(np.float32) for _ in range(participants)]
    weights = rng.uniform(1, 100, participants)
    total = np.zeros(size, dtype=np.float64)

    def aggregate() -> None:
        total.fill(0.0)
        for w, u in zip(weights, updates, strict=True):
            np.add(total, w * u, out=total)

    meta = {"round": 1, "strategy": "fedadam"}
    saved = _median_seconds(
        lambda: checkpoint.save(directory, "bench", arrays={"params": model, "m": moments}, meta=meta)
    )
    aggregated = _median_seconds(aggregate)
    return {"params": size, "checkpoint_seconds": saved, "aggregate_seconds": aggregated, "ratio": saved / aggregated}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="where to write (the disk a claim would be); a temporary directory")
    parser.add_argument("--sizes", default="4810,1e6,1e7", help="model sizes (4810 = the digits mlp)")
    parser.add_argument("--participants", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = [
            measure(int(float(s)), participants=args.participants, directory=Path(tmp)) for s in args.sizes.split(",")
        ]
    if args.json:
        print(json.dumps({"limit": LIMIT, "rows": rows}))
        return
    for row in rows:
        verdict = "ok" if row["ratio"] <= LIMIT or row["checkpoint_seconds"] <= FLOOR_SECONDS else "OVER"
        print(
            f"P={row['params']:>10,}  checkpoint {row['checkpoint_seconds'] * 1e3:8.2f} ms  "
            f"aggregate N={args.participants} {row['aggregate_seconds'] * 1e3:8.2f} ms  "
            f"ratio {row['ratio']:6.2f} (limit {LIMIT:g}, or under {FLOOR_SECONDS * 1e3:g} ms) {verdict}"
        )


if __name__ == "__main__":
    main()
