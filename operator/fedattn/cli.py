"""The ``fedattn`` command: one subcommand per component, which are also the images' entrypoints."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedattn", description=__doc__)
    parser.add_subparsers(dest="command", required=True)
    args = parser.parse_args(argv)
    return int(args.command is None)


if __name__ == "__main__":
    sys.exit(main())
