"""The ``ctxkit`` command line.

Every ``ctxkit <command>`` lives in this package, one module per command group (listed in
``_COMMAND_MODULES``): ``quickstart`` (the offline tour), ``index`` (ingest, query), ``llm``
(serve), ``steering`` (rw-testbed, rw-fit, rw-susceptibility, rw-detect, steer-train), ``caad``
(caad-build, caad-answer) and ``conflicts``. Each module has ``add_commands(subparsers)``, which
registers parsers whose ``func(args) -> int`` runs the command. Modules stay light at import time
(heavy imports inside the command functions).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from ctxkit.errors import CtxkitError

__all__ = ["build_parser", "main"]

_COMMAND_MODULES = [
    "ctxkit.cli.quickstart",
    "ctxkit.cli.index",
    "ctxkit.cli.llm",
    "ctxkit.cli.steering",
    "ctxkit.cli.caad",
    "ctxkit.cli.conflicts",
    "ctxkit.cli.judge",
    "ctxkit.cli.serve",
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered sub-command."""
    from ctxkit import __version__

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

