"""Faithful answering: find where retrieved passages contradict what you trust, offline.

1. LLM-free: trusted beliefs (a knowledge base, previous answers, "question + known answer")
   are checked against the passages; every disagreement becomes a ``Conflict`` record.
2. Optional (``--llm``): FaithfulRAG with the offline SmolLM2 - the model's self-facts are the
   beliefs, aligned to the context, and the answer follows the context (slow on CPU: ~1-3 min).

Run: python examples/faithful_answering.py [--llm]
"""

from __future__ import annotations

import sys

from ctxkit import ContextState, Passage, Pipeline
from ctxkit.faithfulness import ConflictCheck, FaithfulRAG

passages = [
    Passage(id="wiki#3", text=(
        "Penicillin was discovered in 1935 by the Scottish physician Alexander Fleming. "
        "He noticed that a mould killed the bacteria around it."
    )),
    Passage(id="blog#1", text="Fleming worked at St Mary's Hospital in London for most of his career."),
]
trusted = [
    "When was penicillin discovered? 1928",                  # question + known answer
    "Alexander Fleming was a Scottish physician.",             # a knowledge-base statement
    {"text": "Fleming worked at St Mary's Hospital in Paris.", "source": "old notes"},  # wrong belief
]

state = ContextState(query="When was penicillin discovered?", passages=passages)
[state] = Pipeline([ConflictCheck(beliefs=trusted, action="warn")]).batch([state])

print(f"Question: {state.query}\n")
for c in state.conflicts:
    print(f"CONFLICT [{c.kind}] score={c.score:.2f} similarity={c.similarity:.2f}")
    print(f"  believed: {c.belief}   ({c.belief_span!r})")
    print(f"  context : {c.chunk}   ({c.chunk_span!r}, passage {c.passage_id})")
print("\nPrompt section a generator would receive:\n" + state.metadata.get("conflict_note", "(none)"))

if "--llm" in sys.argv:
    stage = FaithfulRAG(generator="default", mode="direct", max_new_tokens=24, facts_max_new_tokens=96)
    [out] = Pipeline([stage]).batch([ContextState(query=state.query, passages=passages)])
    print("\nSmolLM2 self-facts:", out.facts)
    print("Aligned chunks:", [a["text"] for a in out.metadata["aligned_chunks"]])
    print("Answer:", out.answer)
