"""Streaming FedAvg vs a plain memory copy vs Flower's ``aggregate``: throughput and peak memory.

Every measurement runs in a fresh subprocess (``--worker METHOD``) so its peak memory is its own.
Throughput is update bytes folded per second (N x P float32 in, best of ``--repeats``; our FedAvg is
allocated once per session and reused across rounds, as in the aggregator), both per CPU
second of the process (``gbps``, the headline: every method here is single-threaded, and CPU time
stays meaningful on a shared, loaded machine) and per wall second (``wall_gbps``). Peak memory is
what the aggregation allocates on top of its inputs (tracemalloc, which numpy reports to), so
"memory independent of N" shows as the same peak for N=4 and N=16.

Methods: ``ours`` (fedattn.aggregator.strategies.fedavg.FedAvg.fold_many: updates that arrive in one socket
burst, folded in groups of FOLD_GROUP), ``ours_one_by_one`` (FedAvg.fold per update, as when they
arrive spread out), ``copy`` (``np.copyto`` of the same bytes: the memory-bandwidth ceiling for
touching every input once), ``flower`` (flwr.server.strategy.aggregate.aggregate, which keeps all N
weighted copies), and the alternatives the fold was chosen over: ``numpy_chunked`` (same chunks,
numpy widen + multiply + add instead of daxpy), ``f64_fullsize`` (multiply into a full-size float64
temporary, then add), ``f32_kahan`` (float32 accumulator with Kahan compensation, chunked).

Robust rules and secure aggregation, against Flower's functions on the same inputs where Flower has
them: ``median_ours`` / ``median_flower`` (``aggregate_median``), ``trimmed_ours`` / ``trimmed_flower``
(``aggregate_trimmed_avg``, cutting 20% at each end), ``krum_ours`` / ``krum_flower`` (``aggregate_krum``
with the largest f that n >= 2f + 3 allows), and ``secagg_ours``: the aggregator's part of a secure
aggregation round (sum N masked uint32 inputs, unmask with the revealed shares, decode the fixed-point
weighted mean); the participants' part (keys, shares, masking) is prepared before timing. Each row's
``max_abs_error`` is against a direct float64 computation of that rule (for Krum, ties between
equally scored inputs may pick different rows).

    .venv/bin/python benchmarks/aggregate.py --params 10000000 --n 4 16 [--json]

Flower is not a dependency of fedattn: install it into the venv (or any directory, then pass
``--flower-path DIR``) to include it; without it the row says so and ``flower_gbps`` is null.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

METHODS = (
    "ours",
    "ours_one_by_one",
    "copy",
    "flower",
    "numpy_chunked",
    "f64_fullsize",
    "f32_kahan",
    "median_ours",
    "median_flower",
    "trimmed_ours",
    "trimmed_flower",
    "krum_ours",
    "krum_flower",
    "secagg_ours",
)
#: robust rules' parameters, the same for ours and Flower's
TRIM = 0.2
SECAGG_FRAC_BITS = 16
CHUNK = 1 << 17


def make_inputs(n: int, size: int) -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(0)
    base = rng.standard_normal(size, dtype=np.float32)
    return [base + np.float32(i) for i in range(n)], [int(e) for e in rng.integers(10, 1000, n)]


_SESSION: dict[int, object] = {}


def _fedavg(size: int):
    """The session's FedAvg: preallocated once and reused every round, as the aggregator does."""
    from fedattn.aggregator.strategies.fedavg import FedAvg

    if size not in _SESSION:
        _SESSION[size] = FedAvg(size=size)
    return _SESSION[size]


def ours(xs: list[np.ndarray], weights: list[int]) -> np.ndarray:
    strategy = _fedavg(xs[0].size)
    strategy.begin_round(round=1, global_params=xs[0])
    strategy.fold_many(xs, weights)
    return strategy.finish()


def ours_one_by_one(xs: list[np.ndarray], weights: list[int]) -> np.ndarray:
    strategy = _fedavg(xs[0].size)
    strategy.begin_round(round=1, global_params=xs[0])
    for x, w in zip(xs, weights, strict=True):
        strategy.fold(x, w)
    return strategy.finish()


def copy(xs: list[np.ndarray], weights: list[int]) -> np.ndarray:
    out = np.empty_like(xs[0])
    for x in xs:
        np.copyto(out, x)
    return out


def flower(xs: list[np.ndarray], weights: list[int]) -> np.ndarray:
    from flwr.server.strategy.aggregate import aggregate

    return aggregate([([x], w) for x, w in zip(xs, weights, strict=True)])[0]


def f64_fullsize(xs: list[np.ndarray], weights: list[int]) -> np.ndarray:
    acc, tmp = np.zeros(xs[0].size), np.empty(xs[0].size)
    for x, w in zip(xs, weights, strict=True):
        np.multiply(x, float(w), out=tmp)
        np.add(acc, tmp, out=acc)
    return (acc / sum(weights)).astype(np.float32)


def numpy_chunked(xs: list[np.ndarray], weights: list[int]) -> np.ndarray:
    size = xs[0].size
    acc, tmp = np.zeros(size), np.empty(CHUNK)
    for x, w in zip(xs, weights, strict=True):
        for start in range(0, size, CHUNK):
            stop = min(start + CHUNK, size)
            t, dst = tmp[: stop - start], acc[start:stop]
            np.copyto(t, x[start:stop])
            np.multiply(t, float(w), out=t)
            np.add(dst, t, out=dst)
    return (acc / sum(weights)).astype(np.float32)


def f32_kahan(xs: list[np.ndarray], weights: list[int]) -> np.ndarray:
    size = xs[0].size
    acc, comp = np.zeros(size, np.float32), np.zeros(size, np.float32)
    y, t = np.empty(CHUNK, np.float32), np.empty(CHUNK, np.float32)
    for x, w in zip(xs, weights, strict=True):
        for start in range(0, size, CHUNK):
            stop = min(start + CHUNK, size)
            yv, tv, a, c = y[: stop - start], t[: stop - start], acc[start:stop], comp[start:stop]
            np.multiply(x[start:stop], np.float32(w), out=yv)
            np.subtract(yv, c, out=yv)
            np.add(a, yv, out=tv)
            np.subtract(tv, a, out=c)
            np.subtract(c, yv, out=c)
            np.copyto(a, tv)
    return acc / np.float32(sum(weights))


# --- robust rules and secure aggregation (server side) -------------------------------------------------


def _byzantine(n: int) -> int:
    """The most Byzantine updates Krum tolerates among n (n >= 2f + 3), at least 0."""
    return max(0, (n - 3) // 2)


def _rule(name: str, size: int, params: dict):
    """A session's robust rule, preallocated once and reused every round (its (N, P) buffer too)."""
    from fedattn.aggregator.strategies import build_strategy

    key = hash((name, size))
    if key not in _SESSION:
        _SESSION[key] = build_strategy(name, params, size=size)
    return _SESSION[key]


def _fold_rule(rule, xs: list[np.ndarray], weights: list[int]) -> np.ndarray:
    rule.begin_round(round=1, global_params=xs[0], n_expected=len(xs))
    for x, w in zip(xs, weights, strict=True):
        rule.fold(x, float(w))
    return rule.finish()


def median_ours(xs: list[np.ndarray], weights: list[int]) -> np.ndarray:
    return _fold_rule(_rule("median", xs[0].size, {}), xs, weights)


def trimmed_ours(xs: list[np.ndarray], weights: list[int]) -> np.ndarray:
    return _fold_rule(_rule("trimmedmean", xs[0].size, {"trimFraction": TRIM}), xs, weights)


def krum_ours(xs: list[np.ndarray], weights: list[int]) -> np.ndarray:
    return _fold_rule(_rule("krum", xs[0].size, {"byzantine": _byzantine(len(xs))}), xs, weights)


def _flower_results(xs: list[np.ndarray], weights: list[int]) -> list:
    return [([x], w) for x, w in zip(xs, weights, strict=True)]


def median_flower(xs: list[np.ndarray], weights: list[int]) -> np.ndarray:
    from flwr.server.strategy.aggregate import aggregate_median

    return aggregate_median(_flower_results(xs, weights))[0]


def trimmed_flower(xs: list[np.ndarray], weights: list[int]) -> np.ndarray:
    from flwr.server.strategy.aggregate import aggregate_trimmed_avg

    return aggregate_trimmed_avg(_flower_results(xs, weights), TRIM)[0]


def krum_flower(xs: list[np.ndarray], weights: list[int]) -> np.ndarray:
    from flwr.server.strategy.aggregate import aggregate_krum

    return aggregate_krum(_flower_results(xs, weights), _byzantine(len(xs)), 0)[0]


_SECAGG: dict[tuple[int, int], tuple] = {}


def _secagg_round(xs: list[np.ndarray], weights: list[int]) -> tuple:
    """Participants' side, done once per input set (not timed): keys, shares, masked inputs, reveals."""
    from fedattn.learning import secagg

    key = (len(xs), xs[0].size)
    if key not in _SECAGG:
        names = [f"p{i:03d}" for i in range(len(xs))]
        keys = {name: secagg.ClientKeys() for name in names}
        public = {name: k.public for name, k in keys.items()}
        threshold = len(names) // 2 + 1
        clients = {
            name: secagg.SecAggClient(
                name=name, session="bench", round=1, public_keys=public, keys=keys[name], threshold=threshold
            )
            for name in names
        }
        for sender, client in clients.items():
            for peer, blob in client.sealed_shares().items():
                clients[peer].receive_shares(sender, blob)
        total = float(sum(weights))
        masked = {}
        for name, x, w in zip(names, xs, weights, strict=True):
            packed = secagg.pack_weighted(x, w / total)  # NB: normalised weights keep the sum in range
            fixed = secagg.encode_fixed(packed, frac_bits=SECAGG_FRAC_BITS, n_summands=len(xs))
            masked[name] = clients[name].mask(fixed)
        reveals = {name: c.reveal(survivors=names, dropped=[]) for name, c in clients.items()}
        _SECAGG[key] = (public, threshold, masked, reveals)
    return _SECAGG[key]


def secagg_ours(xs: list[np.ndarray], weights: list[int]) -> np.ndarray:
    """The aggregator's share of a secure-aggregation round: sum masked uint32 inputs, unmask, decode."""
    from fedattn.learning import secagg

    public, threshold, masked, reveals = _secagg_round(xs, weights)
    server = secagg.SecAggServer(
        session="bench", round=1, public_keys=public, threshold=threshold, size=xs[0].size + 1
    )
    for name, y in masked.items():
        server.add(name, y)
    server.close()
    total = server.unmask(reveals)
    return secagg.unpack_weighted(secagg.decode_fixed(total, frac_bits=SECAGG_FRAC_BITS)).astype(np.float32)


def _reference(method: str, xs: list[np.ndarray], weights: list[int]) -> np.ndarray:
    """What ``method`` should return, computed directly in float64 (independently of both)."""
    stack = np.stack([x.astype(np.float64) for x in xs])
    if method.startswith("median"):
        return np.median(stack, axis=0)
    if method.startswith("trimmed"):
        from scipy import stats

        return stats.trim_mean(stack, TRIM, axis=0)
    if method.startswith("krum"):
        f = _byzantine(len(xs))
        dist = np.array([[float(np.sum((a - b) ** 2)) for b in stack] for a in stack])  # NB: O(P) memory
        scores = [np.sort(np.delete(row, i))[: len(xs) - f - 2].sum() for i, row in enumerate(dist)]
        return stack[int(np.argmin(scores))]
    return (np.asarray(weights, dtype=np.float64) @ stack) / sum(weights)


def worker(method: str, *, n: int, size: int, repeats: int) -> dict:
    """Run one method in this process: best time of ``repeats``, then one traced run for the peak."""
    fn: Callable[[list[np.ndarray], list[int]], np.ndarray] = globals()[method]
    xs, weights = make_inputs(n, size)
    result = fn(xs, weights)  # warm-up (page faults, imports)
    best = best_wall = float("inf")
    for _ in range(repeats):
        start, start_wall = time.process_time(), time.perf_counter()
        result = fn(xs, weights)
        best = min(best, time.process_time() - start)
        best_wall = min(best_wall, time.perf_counter() - start_wall)
    del result
    _SESSION.clear()  # NB: the traced run allocates the accumulator too, so the peak includes it
    tracemalloc.start()
    result = fn(xs, weights)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out = {"method": method, "n": n, "params": size, "cpu_seconds": best, "wall_seconds": best_wall}
    out["gbps"] = n * size * 4 / best / 1e9
    out["wall_gbps"] = n * size * 4 / best_wall / 1e9
    out["peak_mb"] = peak / 2**20
    if method != "copy":
        reference = _reference(method, xs, weights)
        out["max_abs_error"] = float(np.max(np.abs(result - reference)))
    return out


def run_worker(method: str, *, n: int, size: int, repeats: int, flower_path: str | None) -> dict:
    env = dict(os.environ)
    if flower_path:
        env["FEDATTN_BENCH_EXTRA_PATH"] = flower_path
    cmd = [sys.executable, __file__, "--worker", method, "--n", str(n), "--params", str(size)]
    proc = subprocess.run([*cmd, "--repeats", str(repeats)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        return {"method": method, "n": n, "error": last}
    return json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=float, default=1e7, help="P, float32 parameters per update")
    parser.add_argument("--n", type=int, nargs="+", default=[4, 16], help="numbers of updates")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--flower-path", default=os.environ.get("FEDATTN_FLOWER_PATH"))
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = int(args.params)
    if args.worker:
        extra = os.environ.get("FEDATTN_BENCH_EXTRA_PATH")
        if extra:
            sys.path.append(extra)  # NB: appended, so the venv's numpy wins over any copy in there
        print(json.dumps(worker(args.worker, n=args.n[0], size=size, repeats=args.repeats)))
        return 0
    rows = [
        run_worker(m, n=n, size=size, repeats=args.repeats, flower_path=args.flower_path)
        for n in args.n
        for m in args.methods
    ]
    by = {(r["method"], r["n"]): r for r in rows}
    big = max(args.n)

    def get(method: str, key: str, n: int = big) -> float | None:
        row = by.get((method, n), {})
        return row.get(key)

    summary = {
        "params": size,
        "n": big,
        "ours_gbps": get("ours", "gbps"),
        "copy_gbps": get("copy", "gbps"),
        "flower_gbps": get("flower", "gbps"),
        "ours_peak_mb": get("ours", "peak_mb"),
        "flower_peak_mb": get("flower", "peak_mb"),
        "ours_peak_mb_by_n": {n: get("ours", "peak_mb", n) for n in args.n},
        "flower_peak_mb_by_n": {n: get("flower", "peak_mb", n) for n in args.n},
        "rows": rows,
    }
    if summary["ours_gbps"] and summary["flower_gbps"]:
        summary["speedup_vs_flower"] = summary["ours_gbps"] / summary["flower_gbps"]
    if summary["ours_gbps"] and summary["copy_gbps"]:
        summary["fraction_of_copy"] = summary["ours_gbps"] / summary["copy_gbps"]
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"P = {size:,} float32, best of {args.repeats}; GB/s of updates per CPU s (and per wall s);")
    print("peak = allocations on top of the inputs")
    print(f"{'method':<16}{'N':>4}{'GB/s':>9}{'wall GB/s':>11}{'peak MB':>10}{'max |err|':>12}")
    for r in rows:
        if "error" in r:
            hint = " (install flwr or pass --flower-path)" if r["method"] == "flower" else ""
            print(f"{r['method']:<16}{r['n']:>4}  unavailable: {r['error']}{hint}")
            continue
        err = f"{r['max_abs_error']:.1e}" if "max_abs_error" in r else "-"
        rates = f"{r['gbps']:>9.2f}{r['wall_gbps']:>11.2f}"
        print(f"{r['method']:<16}{r['n']:>4}{rates}{r['peak_mb']:>10.1f}{err:>12}")
    for key in ("speedup_vs_flower", "fraction_of_copy"):
        if key in summary:
            print(f"{key}: {summary[key]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
