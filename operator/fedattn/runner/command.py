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
        session = local.start(bundle, workdir=workdir, supervisor=supervisor, store_dsn=args.store)
        status = local.follow(session, on_status=show, timeout_seconds=args.timeout_seconds)
        local.wait_participants(session)
        status = session.status()
        spec = bundle.spec
        if spec.mode == "learning":
            from fedattn.learning.centralized import centralized_accuracy

            result = summary.learning_summary(
                status, centralized=centralized_accuracy(spec), store=session.store_dsn
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
