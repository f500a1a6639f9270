"""``ctxkit conflicts``: show where a context contradicts trusted beliefs (no LLM)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ctxkit.errors import InputError

__all__ = ["add_commands"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``ctxkit conflicts``."""
    p = sub.add_parser("conflicts", help="list conflict records between trusted beliefs and a context (no LLM)")
    p.add_argument("--belief", action="append", default=[], help="a trusted statement or 'question? answer' (repeatable)")
    p.add_argument("--context", action="append", default=[], help="context text (repeatable)")
    p.add_argument("--file", action="append", default=[], help="a text file used as context (repeatable)")
    p.add_argument("--chunk-words", type=int, default=30, help="greedy chunk size in words (0: one sentence per chunk)")
    p.add_argument("--top-k", type=int, default=5, help="conflicts kept per belief")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda...")
    p.add_argument("--json", action="store_true", help="print JSON records")
    p.add_argument("--demo", action="store_true", help="run the built-in offline demo")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ctxkit.cli.demos import demo_conflicts
    from ctxkit.faithfulness.conflicts.detector import ConflictDetector
    from ctxkit.types import Passage

    if args.demo:
        demo_conflicts()
        return 0
    if not args.belief:
        raise InputError("give at least one --belief (or --demo)")
    passages = [Passage(id=f"context{i}", text=t) for i, t in enumerate(args.context)]
    for f in args.file:
        path = Path(f)
        if not path.is_file():
            raise InputError(f"--file {f}: no such file")
        passages.append(Passage(id=path.name, text=path.read_text(encoding="utf-8")))
    if not passages:
        raise InputError("give a context with --context TEXT or --file PATH")
    det = ConflictDetector(device=args.device)
    found = det.detect(args.belief, passages, top_k=args.top_k, chunk_words=args.chunk_words)
    if args.json:
        print(json.dumps([c.model_dump() for c in found], indent=2))
        return 0
    if not found:
        print("no conflicts found")
    for c in found:
        print(f"[{c.kind}] score={c.score:.2f} sim={c.similarity:.2f} {c.belief_span!r} -> {c.chunk_span!r}")
        print(f"  belief : {c.belief}\n  context: {c.chunk} ({c.passage_id})")
    return 0
