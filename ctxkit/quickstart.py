"""``ctxkit quickstart``: an offline tour over the project's own docs."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="offline demo: index ctxkit's docs and answer questions")
    p.set_defaults(func=run_quickstart)


def run_quickstart(args: argparse.Namespace) -> int:
    print("ctxkit quickstart: (work in progress)")
    return 0
