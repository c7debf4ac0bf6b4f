"""benchmarks/aggregate.py runs, reports what it promises, and our peak memory does not grow with N."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "aggregate.py"


def test_benchmark_json_and_memory_independent_of_n():
    cmd = [sys.executable, str(SCRIPT), "--params", "200000", "--n", "2", "8", "--repeats", "1", "--json"]
    cmd += ["--methods", "ours", "copy", "f64_fullsize"]
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300).stdout)
    for key in ("ours_gbps", "copy_gbps", "flower_gbps", "ours_peak_mb", "flower_peak_mb"):
        assert key in out
    assert out["ours_gbps"] > 0 and out["copy_gbps"] > 0
    peaks = out["ours_peak_mb_by_n"]
    # accumulator (8 B/param) + output (4 B/param) + scratch, whatever N is
    assert abs(peaks["2"] - peaks["8"]) < 0.05 * peaks["8"]
    assert peaks["8"] < 200_000 * 16 / 2**20 + 2
    ours = [r for r in out["rows"] if r["method"] == "ours"]
    assert all(r["max_abs_error"] < 1e-5 for r in ours)


def test_benchmark_robust_and_secagg_rows_match_their_references():
    cmd = [sys.executable, str(SCRIPT), "--params", "20000", "--n", "5", "--repeats", "1", "--json"]
    cmd += ["--methods", "median_ours", "trimmed_ours", "krum_ours", "secagg_ours"]
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300).stdout)
    rows = {r["method"]: r for r in out["rows"]}
    assert set(rows) == {"median_ours", "trimmed_ours", "krum_ours", "secagg_ours"}
    for method in ("median_ours", "trimmed_ours", "krum_ours"):
        assert rows[method]["max_abs_error"] < 1e-5, rows[method]
    # fixed point with 16 fraction bits, 5 summands: within a few 2^-16 of the float64 mean
    assert rows["secagg_ours"]["max_abs_error"] < 1e-3
    assert all(r["gbps"] > 0 and r["peak_mb"] > 0 for r in rows.values())
