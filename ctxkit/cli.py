"""The ``ctxkit`` command line.

Each feature area contributes its sub-commands from its own module (listed in
``_COMMAND_MODULES``), through a function ``add_commands(subparsers)`` that registers parsers
whose ``func(args) -> int`` runs the command. Modules imported here must stay light at import
time (heavy imports inside the command functions).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from .errors import CtxkitError

__all__ = ["main", "build_parser"]

_COMMAND_MODULES = [
    "ctxkit.quickstart",
    "ctxkit.retrievers.cli",
    "ctxkit.llm.cli",
    "ctxkit.faithfulness.cli",
    "ctxkit.faithfulness.caad_cli",
    "ctxkit.faithfulness.conflicts_cli",
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered sub-command."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="ctxkit", description="Context engineering for retrieval-augmented generation."
    )
    parser.add_argument("--version", action="version", version=f"ctxkit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _COMMAND_MODULES:
        importlib.import_module(mod).add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ctxkit`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CtxkitError as exc:
        print(f"ctxkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
