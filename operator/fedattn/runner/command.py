"""``fedattn run FILE.yaml [--json]``: run a session from its manifests as local processes."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fedattn.api import ManifestError
from fedattn.api.schema import SessionPhase
from fedattn.runner import local, manifests, summary
from fedattn.runner.processes import supervised


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="multi-document YAML: one FedSession, its FedParticipants, "
                        "and the ConfigMaps/Secrets they refer to")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where PKI, logs, the SQLite store and results go (default .fedattn/runs/NAME-TIME)")
    parser.add_argument("--store", default=None, help="store DSN (default: SQLite in the workdir)")
    parser.add_argument("--timeout-seconds", type=float, default=None, help="give up after this long")
    parser.add_argument("--output", type=Path, default=None,
                        help="where sessions with spec.output write models and metrics (default WORKDIR/output)")


def _centralized(bundle: manifests.Bundle, workdir: Path) -> dict[str, float] | None:
    """The same model trained on the union of the data: the built-in trainer, or the user's
    ``centralized_baseline`` (fedattn.runner.baseline)."""
    from fedattn.learning import session as learning_session

    if learning_session.builtin(bundle.spec):
        from fedattn.learning.centralized import centralized_accuracy

        return {"accuracy": centralized_accuracy(bundle.spec)}
    from fedattn.runner.baseline import centralized_baseline

    return centralized_baseline(bundle, workdir=workdir)


def _output_dir(bundle: manifests.Bundle, root: Path) -> Path | None:
    """Where the aggregator wrote this session's ``spec.output`` (None without one)."""
    output = bundle.spec.output
    return None if output is None else root / (output.sub_path or bundle.name)


def run(args: argparse.Namespace) -> int:
    try:
        bundle = manifests.load(args.file)
    except ManifestError as exc:
        print(f"fedattn run: {exc}", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(".fedattn") / "runs" / f"{bundle.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    workdir.mkdir(parents=True, exist_ok=True)
    out = sys.stderr if args.json else sys.stdout
    last: list[str] = []

    def show(status: dict) -> None:
        line = summary.progress_line(status)
        if not last or last[-1] != line:
            last.append(line)
            print(line, file=out, flush=True)

    with supervised(workdir / "logs") as supervisor:
        output = (args.output or workdir / "output").resolve()
        session = local.start(bundle, workdir=workdir, supervisor=supervisor, store_dsn=args.store, output_dir=output)
        status = local.follow(session, on_status=show, timeout_seconds=args.timeout_seconds)
        local.wait_participants(session)
        status = session.status()
        if bundle.spec.mode == "learning":
            result = summary.learning_summary(
                status,
                centralized=_centralized(bundle, workdir),
                store=session.store_dsn,
                output=_output_dir(bundle, output),
            )
        else:
            result = summary.attention_summary(
                bundle=bundle, status=status, results=local.read_results(session), workdir=workdir
            )
    result["workdir"] = str(workdir)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(f"{bundle.name}: {result['phase']}; details in {workdir}")
    return 0 if result["phase"] == SessionPhase.SUCCEEDED else 1
