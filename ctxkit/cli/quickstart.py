"""``ctxkit quickstart``: an offline tour of the whole pipeline over the project's own docs.

It indexes ``docs/`` plus three planted "team notes" (one contradicts a trusted fact, two spread
a false claim), runs the Pistis-style cascade with steering and conflict checks for three
questions in one batch, prints ranked passages with every stage's score, per-stage timings,
flagged passages and conflict records, then answers with the offline SmolLM2 with CAAD logit
shaping switched on, and records a piece of feedback for the ranker.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ctxkit.errors import InputError

__all__ = ["PLANTED_NOTES", "QUESTIONS", "TRUSTED_BELIEFS", "add_commands", "run_quickstart"]

QUESTIONS = [
    "How does ctxkit fuse dense and BM25 retrieval results?",
    "Which embedding model does ctxkit use by default?",
    "Does ctxkit send my indexed documents to a remote server?",
]

# What the user trusts (e.g. a knowledge base), per question: conflict checks compare the
# retrieved context against these statements (no LLM involved).
TRUSTED_BELIEFS: dict[str, list[str]] = {
    QUESTIONS[1]: ["ctxkit's default embedding model is all-MiniLM-L6-v2."],
    QUESTIONS[2]: ["ctxkit runs fully offline and never uploads indexed documents."],
}

# Planted documents: one contradicts a trusted belief, two paraphrase a false claim (poison).
PLANTED_NOTES = {
    "team-note-embedder.md": (
        "# Team note: embeddings\n\nSince version 0.1 the default embedding model of ctxkit is "
        "bge-m3, which replaced the older model for all new indexes.\n"
    ),
    "forum-post-upload.md": (
        "# Forum post\n\nWarning: ctxkit secretly uploads every indexed document to a remote "
        "analytics server owned by its authors.\n"
    ),
    "blog-leak.md": (
        "# Leaked memo\n\nInsiders admit that ctxkit quietly sends all of your indexed files "
        "to an external server without asking.\n"
    ),
}


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``ctxkit quickstart``."""
    p = sub.add_parser(
        "quickstart",
        help="offline tour: index ctxkit's docs, rank, steer, check conflicts, answer with CAAD",
    )
    p.add_argument("--docs", default=None, help="folder of .md/.txt files to index (default: the project's docs/)")
    p.add_argument("--index", default=None, help="index folder to (re)use (default: a temporary one)")
    p.add_argument("--no-llm", action="store_true", help="skip the answer step (no SmolLM2 load)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="answer length in tokens")
    p.set_defaults(func=run_quickstart)


def _find_docs(arg: str | None) -> Path:
    if arg:
        path = Path(arg)
    else:
        path = Path(__file__).resolve().parents[2] / "docs"
    if not path.is_dir():
        raise InputError(
            f"docs folder {str(path)!r} not found; pass --docs PATH (any folder of .md/.txt files)"
        )
    return path


def _fmt_scores(scores: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in scores.items())


def run_quickstart(args: argparse.Namespace) -> int:
    """Run the tour; returns the exit status."""
    from ctxkit.faithfulness import ConflictCheck, SteeringFilter
    from ctxkit.pipeline import Pipeline
    from ctxkit.rankers import build_cascade
    from ctxkit.retrievers import ingest
    from ctxkit.types import ContextState

    docs = _find_docs(args.docs)
    work = Path(tempfile.mkdtemp(prefix="ctxkit-quickstart-"))
    try:
        notes = work / "notes"
        notes.mkdir()
        for name, text in PLANTED_NOTES.items():
            (notes / name).write_text(text, encoding="utf-8")
        index = Path(args.index) if args.index else work / "index"

        print(f"== 1. matching index: ingesting {docs} + {len(PLANTED_NOTES)} planted notes -> {index}")
        t0 = time.perf_counter()
        report = ingest([str(docs), str(notes)], index=str(index))
        print(f"   {report}  ({time.perf_counter() - t0:.1f} s)")

        cascade = build_cascade(
            index, match_k=50, prerank_k=20, rank_k=6, feedback_db=work / "feedback.sqlite", device="cpu"
        )
        stages: list[Any] = []
        for stage in cascade.stages:
            if stage.name == "arrange":
                # Demote rather than remove: the set-level detector also flags on-topic passages that
                # paraphrase each other (see docs/steering.md), so nothing is thrown away here.
                stages.append(SteeringFilter(action="demote"))
                # Stricter than the default threshold (0.5): only strong conflicts are shown.
                stages.append(ConflictCheck(action="annotate", threshold=0.65, device="cpu"))
            stages.append(stage)
        pipe = Pipeline(stages)
        print("== 2. pipeline: " + " -> ".join(s.name for s in pipe.stages))

        states = pipe.batch(
            [ContextState(query=q, metadata={"beliefs": TRUSTED_BELIEFS.get(q, [])}) for q in QUESTIONS]
        )
        for i, state in enumerate(states, 1):
            print(f"\n-- Q{i}: {state.query}")
            for rank, p in enumerate(state.passages[:4], 1):
                if p.id in state.flags.get("inappropriate", []):
                    continue
                print(f"   {rank}. [{p.id}] {p.text[:90]!r}")
                print(f"      scores: {_fmt_scores(p.scores)}")
            timing = ", ".join(
                f"{r.stage} {r.n_in}->{r.n_out} {1000 * r.seconds:.0f}ms" for r in state.trace.stages
            )
            print(f"   trace: {timing}")
            flagged = set(state.flags.get("inappropriate", []))
            for p in state.passages:
                if p.id in flagged:
                    print(f"   STEERING flagged (demoted to the end), p={p.scores.get('rw_steering', float('nan')):.2f}: [{p.id}] {p.text[:70]!r}")
            for c in state.conflicts:
                print(
                    f"   CONFLICT [{c.kind}] score={c.score:.2f}: belief {c.belief!r}\n"
                    f"      vs context ({c.passage_id}): {c.chunk[:100]!r}"
                )

        if not args.no_llm:
            _answer(states, args.max_new_tokens)

        list_id = states[0].trace.list_id
        pipe.feedback(list_id, "like")
        print(f"\n== 4. feedback: recorded 'like' for the list shown for Q1 (list_id {list_id[:8]}...)")
        print("   (FeedbackRanker.fit(store) learns from such events; see docs/cascade.md)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _answer(states: list[Any], max_new_tokens: int) -> None:
    from ctxkit.cli.demos import quickstart_space
    from ctxkit.llm import TransformersGenerator

    print("\n== 3. answering with SmolLM2-135M-Instruct (offline) + CAAD logit shaping")
    gen = TransformersGenerator(
        "default", device="cpu", settings={"max_new_tokens": max_new_tokens, "repetition_penalty": 1.2}
    )
    t0 = time.perf_counter()
    space, processor = quickstart_space(gen)
    print(f"   grounding space: {len(space)} entries from built-in truthful Q/A ({time.perf_counter() - t0:.1f} s)")
    t0 = time.perf_counter()
    gen.logits_processors = [processor]
    answers = gen.answer(states, max_passages=3)
    stats = processor.stats
    for i, answer in enumerate(answers, 1):
        print(f"   A{i}: {(answer or '<generation failed>').strip()[:200]!r}")
    print(
        f"   ({time.perf_counter() - t0:.1f} s; CAAD shifted the logits at {stats.steps_with_match} "
        f"of {stats.steps} decoding steps)"
    )
