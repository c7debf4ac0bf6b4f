"""``fedattn crds``: print the CRDs (or write them into a directory, as ``crds/`` is made)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedattn.api.crds import crd_files


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--legacy", action="store_true", help="without CEL rules, for API servers older than 1.25 (e.g. 1.20)"
    )
    parser.add_argument(
        "--out", type=Path, help="write one file per CRD into this directory instead of stdout"
    )


def run(args: argparse.Namespace) -> int:
    files = crd_files(legacy=args.legacy)
    if args.out is None:
        sys.stdout.write("---\n".join(files.values()))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text)
    return 0
