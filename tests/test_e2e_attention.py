"""End to end FedAttn: participant processes with private prompts, a real aggregator and coordinator.

The aggregator runs in this process with a tap on every frame it receives (after CurveZMQ
decryption), so the test can check that no participant's prompt text or token ids ever crossed the
wire, only K/V rows and positions. The runner's report is checked against its own claims: the
publisher's fidelity numbers come from comparing with centralized inference over the whole prompt.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedattn.aggregator.server import Aggregator
from fedattn.attention import spec as attention_spec
from fedattn.attention.gguf_model import resolve_model_path
from fedattn.attention.tokenizer import load_tokenizer
from fedattn.runner import local, manifests
from fedattn.runner.processes import supervised

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples/attention-smollm2.yaml"
pytestmark = pytest.mark.slow


def _contains(haystack: bytes, needle: np.ndarray) -> bool:
    """Whether the token sequence appears in a frame as int64, int32 or uint16-packed ids."""
    return any(needle.astype(dtype).tobytes() in haystack for dtype in ("<i8", "<i4", "<u2"))


def test_prompts_never_cross_the_wire_and_sync_counts_follow_h(tmp_path):
    bundle = manifests.load(EXAMPLE)
    prepared = local.prepare(bundle, workdir=tmp_path)
    server = prepared.identities["server"]
    seen: list[bytes] = []
    aggregator = Aggregator(
        bind=prepared.endpoints.aggregator,
        server_public=server.curve_public.read_bytes(),
        server_secret=server.curve_secret.read_bytes(),
        allow_dir=prepared.allow_dir,
        metrics_host="127.0.0.1",
        metrics_port=prepared.endpoints.aggregator_metrics,
    )
    handle = aggregator._on_frames_safely

    def tap(frames):
        seen.append(b"".join(bytes(f.buffer) for f in frames))
        handle(frames)

    aggregator._on_frames_safely = tap
    aggregator.start()
    try:
        with supervised(tmp_path / "logs") as supervisor:
            session = local.start(bundle, workdir=tmp_path, supervisor=supervisor, prepared=prepared)
            status = local.follow(session, on_status=lambda s: None, timeout_seconds=600)
            local.wait_participants(session)
            results = local.read_results(session)
    finally:
        aggregator.close()
    assert status["phase"] == "Succeeded", status["message"]
    tokenizer = load_tokenizer(resolve_model_path(attention_spec.model_path(bundle.spec)))
    n_layers = 30
    expected_syncs = len(range(0, n_layers, bundle.spec.sync_interval))
    assert status["syncs"] == expected_syncs
    wire = b"".join(seen)
    assert len(seen) > expected_syncs * len(bundle.participants)
    for name in bundle.participant_names:
        text = bundle.private[name]["prompt"]
        ids = np.asarray(tokenizer.encode(text))
        assert text.strip().encode() not in wire
        assert not _contains(wire, ids), f"{name}'s token ids crossed the wire"
        assert results[name]["syncs"] == expected_syncs
        assert results[name]["text"]
        # the publisher (last in prompt order) sends no rows: nobody attends to them
        assert (results[name]["kv_bytes"] == 0) == (name == bundle.spec.publisher)
        # the generated text stays local too
        assert results[name]["text"].strip().encode() not in wire


def test_run_attention_example_reports_fidelity(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fedattn.cli", "run", str(EXAMPLE), "--json", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)
    assert summary["phase"] == "Succeeded"
    rows = {row["name"]: row for row in summary["participants"]}
    assert set(rows) == {"holder-a", "holder-b", "asker"}
    publisher = rows["asker"]
    assert publisher["publisher"] and summary["centralized_text"] == publisher["centralized_text"]
    for row in rows.values():
        assert 0.0 <= row["top1_agreement"] <= 1.0 and row["kl"] >= 0.0
        assert row["exact_match"] == (row["text"] == row["centralized_text"])
        assert row["syncs"] == 30  # the example syncs every layer (syncInterval 1, kvCodec int4)
        assert row["sync_p50_ms"] <= row["sync_p99_ms"]
    # K/V bytes per participant and sync: 4-bit codes for K and V (3 KV heads x 64 dims per own token),
    # float16 scale and minimum per key channel and per value row, 16 bytes of start/count; the
    # publisher (last in prompt order) sends nothing.
    for name, row in rows.items():
        result = json.loads((tmp_path / "results" / f"{name}.json").read_text())
        tokens = result["prompt_tokens"]
        per_sync = 2 * (3 * 64 * tokens // 2) + 4 * (3 * 64 + 3 * tokens) + 16
        assert row["kv_bytes"] == (0 if name == "asker" else 30 * per_sync)
    assert summary["contributions_recorded"] == 30
