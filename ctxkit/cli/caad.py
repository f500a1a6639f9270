"""CLI commands for CAAD: ``ctxkit caad-build`` (grounding space) and ``ctxkit caad-answer``.

Heavy imports happen inside the command functions.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ctxkit.errors import InputError

__all__ = ["add_commands", "read_examples"]


def read_examples(path: str | Path) -> list[tuple[str, str]]:
    """``(question, answer)`` pairs from JSONL / JSON (objects with ``question`` and ``answer``) or a
    CSV with ``question,answer`` columns (TruthfulQA's ``Question``/``Best Answer`` also work)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"examples file {str(p)!r} does not exist")
    rows: list[dict[str, Any]]
    if p.suffix == ".csv":
        with p.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    elif p.suffix == ".jsonl":
        rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        data = json.loads(p.read_text(encoding="utf-8"))
        rows = data if isinstance(data, list) else data.get("examples", [])
    out = []
    for i, r in enumerate(rows):
        q = r.get("question") or r.get("Question")
        a = r.get("answer") or r.get("Best Answer")
        if not q or not a:
            raise InputError(f"{p.name}: row {i} needs 'question' and 'answer' fields, got keys {sorted(r)}")
        out.append((str(q), str(a)))
    if not out:
        raise InputError(f"{p.name}: no examples found")
    return out


def add_commands(sub: Any) -> None:
    """Register the CAAD sub-commands."""
    p = sub.add_parser("caad-build", help="build a CAAD grounding space from truthful Q/A examples")
    p.add_argument("--examples", required=True, help="JSONL/JSON/CSV with question and answer fields")
    p.add_argument("--model", default="default", help="generator model (transformers name/path)")
    p.add_argument("--out", required=True, help="output directory (safetensors + manifest.json)")
    p.add_argument("--window", type=int, default=8, help="tokens of preceding text that form each key (default 8)")
    p.add_argument("--storage", choices=["fp16", "topk"], default="fp16",
                   help="full next-token logits in fp16 (default) or the top-k logits only (smaller)")
    p.add_argument("--top-k", type=int, default=64, help="logits kept per entry with --storage topk (default 64)")
    p.add_argument("--limit", type=int, default=None, help="use the first N examples")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda...")
    p.set_defaults(func=_build)

    p = sub.add_parser("caad-answer", help="answer questions plainly and with CAAD, side by side")
    p.add_argument("questions", nargs="+", help="one or more questions")
    p.add_argument("--space", required=True, help="directory written by caad-build")
    p.add_argument("--model", default=None, help="generator model (default: the space's model)")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the grounding logits (default 0.5; 0: off)")
    p.add_argument("--tau", type=float, default=0.7, help="cosine threshold for a stored window to match (default 0.7)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="answer length in tokens (default 64)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda...")
    p.set_defaults(func=_answer)


def _build(args: Any) -> int:
    from ctxkit.faithfulness.decoding.space import GroundingSpace
    from ctxkit.llm.transformers import TransformersGenerator

    examples = read_examples(args.examples)[: args.limit]
    gen = TransformersGenerator(args.model, device=args.device)
    space = GroundingSpace.from_generator(gen, examples, window=args.window, storage=args.storage,
                                          top_k=args.top_k, show_progress=True)
    space.save(args.out)
    print(f"grounding space: {len(space)} entries from {len(examples)} examples -> {args.out}")
    return 0


def _answer(args: Any) -> int:
    from ctxkit.faithfulness.decoding.caad import CAADLogitsProcessor
    from ctxkit.faithfulness.decoding.space import GroundingSpace
    from ctxkit.llm.transformers import TransformersGenerator

    manifest = json.loads((Path(args.space) / "manifest.json").read_text()) if (
        Path(args.space) / "manifest.json").is_file() else {}
    gen = TransformersGenerator(args.model or manifest.get("model") or "default", device=args.device)
    space = GroundingSpace.load(args.space, tokenizer=gen.tokenizer)
    proc = CAADLogitsProcessor(space, gen.tokenizer, alpha=args.alpha, tau=args.tau)
    convs = [[{"role": "user", "content": q}] for q in args.questions]
    plain = gen.generate(convs, max_new_tokens=args.max_new_tokens)
    shaped = gen.generate(convs, max_new_tokens=args.max_new_tokens, logits_processors=[proc])
    for q, a, b in zip(args.questions, plain, shaped, strict=True):
        print(f"Q: {q}\n  plain: {a.text}\n  CAAD : {b.text}")
    print(f"CAAD matches: {json.dumps(proc.stats.as_dict())}")
    return 0
