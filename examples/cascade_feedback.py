"""Pistis-RAG cascade with a feedback loop, offline (< 2 minutes on a laptop CPU).

1. A cascade: candidates -> bi-encoder pre-ranking (MiniLM, 8 kept) -> listwise ranking
   (3 kept) -> arrangement -> record the shown list in a SQLite feedback store.
2. Simulated users: they copy the answer when the first passage comes from a "verified" source
   and dislike it otherwise (a trait the semantic pre-ranker cannot see; the ranker sees it as
   the numeric metadata feature ``verified``).
3. The ranker is trained from the store (``fit``), then the same questions are ranked again.

Run: python examples/cascade_feedback.py
"""

from __future__ import annotations

import random
import tempfile
import zlib
from pathlib import Path

from ctxkit import ContextState, Passage, Pipeline
from ctxkit.rankers import (
    Arranger,
    BiEncoderPreRanker,
    FeedbackRanker,
    FeedbackStore,
    RecordFeedback,
)

FACTS = {
    "When was the Eiffel Tower completed?": "The Eiffel Tower was completed in {}.",
    "Who discovered penicillin?": "Penicillin was discovered by {}.",
    "What is the boiling point of water at sea level?": "At sea level water boils at {}.",
    "How tall is Mount Everest?": "Mount Everest is {} tall.",
}
FILLERS = ["1889", "Alexander Fleming", "100 degrees Celsius", "8,849 metres", "a date in dispute", "someone else"]


def candidates(question: str, rng: random.Random) -> ContextState:
    """What a matching stage would return: 12 passages, about a third from verified sources."""
    template = FACTS[question]
    ps = []
    for i in range(12):
        verified = float(rng.random() < 0.35)
        tag = "Encyclopedia" if verified else "Forum post"
        ps.append(Passage(id=f"{zlib.crc32(question.encode()) % 1000}-{rng.getrandbits(32):08x}", text=f"{tag}: " + template.format(rng.choice(FILLERS)),
                          metadata={"verified": verified}, scores={"matching": rng.random()}))
    return ContextState(query=question, passages=ps)


def user_reaction(state: ContextState) -> str:
    return "copy" if state.passages[0].metadata["verified"] else "dislike"


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="ctxkit_cascade_"))
    db = str(work / "feedback.sqlite")
    ranker = FeedbackRanker(k=3, use_embeddings=False, metadata_features=["verified"], epochs=400, seed=0)
    pipe = Pipeline([BiEncoderPreRanker(k=8), ranker, Arranger(strategy="as_ranked"), RecordFeedback(store=db)])
    rng = random.Random(0)

    def serve(rounds: int) -> float:
        liked = 0
        for _ in range(rounds):
            states = pipe.batch([candidates(q, rng) for q in FACTS])
            for s in states:
                event = user_reaction(s)
                pipe.feedback(s.trace.list_id, event)  # attaches to the exact list shown
                liked += event == "copy"
        return liked / (rounds * len(FACTS))

    print("before training (cold start keeps the pre-ranking order):")
    s = pipe.run(candidates("Who discovered penicillin?", rng))
    for p in s.passages:
        print(f"  {p.text:<60} scores={ {k: round(v, 3) for k, v in p.scores.items()} }")
    print("cascade trace:", [(r.stage, r.n_in, r.n_out) for r in s.trace.stages])

    # explore: show random subsets of the pre-ranked candidates so the feedback says something
    explore = Pipeline([BiEncoderPreRanker(k=8)])
    store = FeedbackStore(db)
    for _ in range(25):
        states = explore.batch([candidates(q, rng) for q in FACTS])
        for st in states:
            st.passages = rng.sample(st.passages, 3)
        store.record_lists(states)
        for st in states:
            store.record_event(st.trace.list_id, user_reaction(st))
    print(f"\nlogged feedback: {store.count()}")
    before = serve(10)
    info = ranker.fit(db)
    after = serve(10)
    print(f"trained on {info['lists']} lists ({info['groups']} query groups)")
    print(f"share of answers copied by users: before training {before:.0%}, after {after:.0%}")
    s = pipe.run(candidates("Who discovered penicillin?", rng))
    print("after training:")
    for p in s.passages:
        print(f"  {p.text:<60} feedback_ranker={p.scores['feedback_ranker']:.3f}")
    print(f"feedback store: {db}")


if __name__ == "__main__":
    main()
