"""The machine-readable summary of a finished local run (``fedattn run --json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def learning_summary(
    status: dict[str, Any], *, centralized: dict[str, float] | None, store: str, output: Path | None = None
) -> dict[str, Any]:
    """``accuracy``/``final_accuracy``: the server's held-out accuracy (built-in models);
    ``evaluation``: each round's federated evaluation (the user's model: ``spec.evaluation``), whose
    last one is ``final_evaluation``; ``federated_accuracy`` is the final model's accuracy either way,
    ``accuracy_gap`` the centralized baseline's minus it; ``outputs`` the files written."""
    rounds = [r for r in status.get("rounds", []) if r.get("state") == "Closed"]
    accuracy = [r.get("accuracy") for r in rounds]
    evaluation = [r.get("evaluation") for r in rounds]
    final_evaluation = next((e for e in reversed(evaluation) if e), None)
    federated = (final_evaluation or {}).get("metrics", {}).get("accuracy")
    if federated is None and accuracy:
        federated = accuracy[-1]
    baseline = (centralized or {}).get("accuracy")
    return {
        "session": status.get("name"),
        "mode": "learning",
        "phase": status.get("phase"),
        "message": status.get("message"),
        "rounds": len(rounds),
        "accuracy": accuracy,
        "final_accuracy": accuracy[-1] if accuracy else None,
        "evaluation": evaluation if any(evaluation) else None,
        "final_evaluation": final_evaluation,
        "federated_accuracy": federated,
        "centralized": centralized,
        "centralized_accuracy": baseline,
        "accuracy_gap": None if federated is None or baseline is None else baseline - federated,
        "outputs": _outputs(output),
        "participants": {
            name: {"phase": p.get("phase"), "contributions": p.get("contributions", 0)}
            for name, p in sorted(status.get("participant_status", {}).items())
        },
        "contributions_recorded": status.get("contributions_recorded"),
        "store": store,
    }


def _outputs(directory: Path | None) -> dict[str, str] | None:
    """The files a session's ``spec.output`` got (fedattn.aggregator.output), by role."""
    if directory is None or not directory.is_dir():
        return None
    names = {"final": "final.safetensors", "best": "best.safetensors", "metrics_json": "metrics.json",
             "metrics_csv": "metrics.csv", "rounds": "rounds"}
    return {"directory": str(directory),
            **{role: str(directory / name) for role, name in names.items() if (directory / name).exists()}}


def progress_line(status: dict[str, Any]) -> str:
    """One human line per status change: phase, round, participants, latest accuracy."""
    parts = status.get("participants", {})
    line = (
        f"{status.get('name')}: {status.get('phase')} round {status.get('round', 0)}/{status.get('rounds_total', '?')}"
        f" participants {parts.get('ready', 0)}/{parts.get('total', 0)}"
    )
    closed = [r for r in status.get("rounds", []) if r.get("accuracy") is not None]
    if closed:
        line += f" accuracy {closed[-1]['accuracy']:.4f}"
    if status.get("syncs"):
        line += f" syncs {status['syncs']} avg {status.get('avg_sync_latency_ms', 0):.1f} ms"
    return line


def attention_summary(
    *, bundle: Any, status: dict[str, Any], results: dict[str, dict[str, Any]], workdir: Any
) -> dict[str, Any]:
    """Per participant: its text and its fidelity to centralized inference over the whole prompt.

    Only the local runner can compute this: it alone holds every participant's slice (the
    participants never see each other's text). Each participant's generated tokens and logits come
    from its local result files.
    """
    import numpy as np

    from fedattn.attention import spec as attention_spec
    from fedattn.attention.centralized import compare
    from fedattn.attention.gguf_model import load_model, resolve_model_path
    from fedattn.attention.layout import chat_layout
    from fedattn.attention.tokenizer import load_tokenizer

    spec = bundle.spec
    path = resolve_model_path(attention_spec.model_path(spec))
    model, tokenizer = load_model(path), load_tokenizer(path)
    order = attention_spec.participant_order(bundle.participant_names, spec.publisher)
    layout = chat_layout(tokenizer, [bundle.private[n]["prompt"] for n in order], shared_prefix=spec.shared_prefix)
    stop = frozenset({tokenizer.eos_token_id} - {None})
    rows, centralized_text = [], None
    for index, name in enumerate(order):
        result = results.get(name)
        row: dict[str, Any] = {"name": name, "publisher": name == spec.publisher}
        last = int(layout.positions_of(index)[-1])
        if result is None:
            rows.append({**row, "text": None, "error": "no result (participant failed or was left out)"})
            continue
        if result["first_position"] != int(layout.positions_of(index)[0]):
            raise RuntimeError(f"{name} placed its tokens at {result['first_position']}, the layout says "
                               f"{int(layout.positions_of(index)[0])}")
        saved = np.load(workdir / "results" / f"{name}.npz")
        cmp = compare(model, layout.token_ids, last_position=last, tokens=saved["tokens"].tolist(),
                      step_logits=saved["step_logits"], max_new_tokens=spec.max_new_tokens,
                      stop_tokens=stop)
        if name == spec.publisher:
            centralized_text = tokenizer.decode(cmp.centralized_tokens)
        rows.append({
            **row,
            "text": result["text"],
            "centralized_text": tokenizer.decode(cmp.centralized_tokens),
            "top1_agreement": cmp.top1_agreement,
            "kl": cmp.kl,
            "exact_match": cmp.exact_match,
            **{k: result.get(k) for k in ("kv_bytes", "syncs", "sync_p50_ms", "sync_p99_ms", "prefill_seconds",
                                          "decode_seconds")},
        })
    return {
        "session": status.get("name"),
        "mode": "attention",
        "phase": status.get("phase"),
        "message": status.get("message"),
        "participants": rows,
        "centralized_text": centralized_text,
        "syncs": status.get("syncs"),
        "avg_sync_latency_ms": status.get("avg_sync_latency_ms"),
        "contributions_recorded": status.get("contributions_recorded"),
    }
