"""The ``hbd`` command line. Each sub-command lives in ``hf_backdoor_defense/commands/<name>.py``
and exposes ``register(subparsers)``, which adds its parser and sets ``func(args) -> int``.

Example:
    $ hbd poison --dataset rotten_tomatoes --attack badnets --output ./poisoned
    $ hbd evaluate --model ./model --dataset rotten_tomatoes --attack badnets
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Sub-command modules (hf_backdoor_defense/commands/<name>.py), in the order `hbd --help` lists them.
COMMANDS = ["assets", "poison", "train", "purify", "evaluate", "scan", "scenario", "analyze_frequency", "push"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hbd", description="hf-backdoor-defense: poison, train, purify and evaluate language models."
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"hf_backdoor_defense.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        # One clear line, non-zero exit; tracebacks only with HBD_DEBUG=1.
        import os

        if os.environ.get("HBD_DEBUG"):
            raise
        print(f"hbd {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
