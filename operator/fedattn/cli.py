"""The ``fedattn`` command: one subcommand per component, which are also the images' entrypoints.

Each subcommand lives in its component's ``command`` module, which provides
``configure(parser: argparse.ArgumentParser) -> None`` and ``run(args: argparse.Namespace) -> int``.
They are imported only when chosen, so ``fedattn participant`` does not pay for kopf's import.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand -> (module with configure/run, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("fedattn.runner.command", "run a session from manifests as local processes"),
    "coordinator": ("fedattn.coordinator.command", "the HTTPS control plane"),
    "aggregator": ("fedattn.aggregator.command", "the ZMQ data plane"),
    "participant": ("fedattn.participant.command", "one participant of a session"),
    "operator": ("fedattn.operator.command", "the Kubernetes operator (kopf)"),
    "model": ("fedattn.attention.command", "locate or install the default GGUF model"),
    "crds": ("fedattn.api.command", "print the CustomResourceDefinitions"),
    "results": ("fedattn.results.command", "a FedSession's progress and outputs, read with the kubeconfig"),
}


def _load(module: str):
    return importlib.import_module(module)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedattn", description="Federated attention and learning sessions.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        # NB: only the chosen subcommand's module is imported; the others keep their arguments unparsed.
        if name == chosen:
            _load(module).configure(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    module, _ = COMMANDS[args.command]
    return int(_load(module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
