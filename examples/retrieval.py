"""Index the project's own docs/ and compare dense, BM25 and hybrid retrieval (offline).

Run: python examples/retrieval.py
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ctxkit import Pipeline
from ctxkit.retrievers import BM25Retriever, ChromaRetriever, HybridRetriever, ingest

DOCS = Path(__file__).resolve().parent.parent / "docs"
QUESTIONS = [
    "How do I run Chroma as a server?",
    "What happens when an ingest is interrupted?",
]

with tempfile.TemporaryDirectory() as tmp:
    index = Path(tmp) / "index"
    report = ingest([DOCS], index=index, show_progress=True)
    print("ingest:", report.summary())
    again = ingest([DOCS], index=index)  # idempotent: nothing is embedded twice
    print("again: ", again.summary())

    dense = ChromaRetriever(path=str(index), k=3)
    bm25 = BM25Retriever(path=str(index), k=3)
    hybrid = HybridRetriever(retrievers=[dense, bm25], k=3)  # convex, min-max, dense 0.7 / BM25 0.3
    pipe = Pipeline([hybrid])
    for state in pipe.batch(QUESTIONS):
        print(f"\nQ: {state.query}   ({state.trace.stages[0].seconds * 1000:.0f} ms)")
        for p in state.passages:
            scores = "  ".join(f"{k}={v:.3f}" for k, v in p.scores.items())
            snippet = " ".join(p.text.split())[:90]
            print(f"  {p.id:<40} {scores}\n      {snippet}...")
print("retrieval: ok")
