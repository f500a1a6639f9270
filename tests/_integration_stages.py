"""Small real ctxkit stages for the integration tests (an in-memory keyword index and a ranker)."""

from __future__ import annotations

import re

from ctxkit.pipeline import BaseStage
from ctxkit.types import ContextState, Passage

CORPUS = {
    "fleming#0": "Penicillin was discovered by Alexander Fleming in 1928 at St Mary's Hospital.",
    "fleming#1": "Fleming noticed that a mould killed the bacteria around it in a petri dish.",
    "eiffel#0": "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    "eiffel#1": "Gustave Eiffel's company designed and built the tower.",
    "curie#0": "Marie Curie discovered polonium and radium with Pierre Curie.",
    "curie#1": "Marie Curie won Nobel prizes in physics and in chemistry.",
    "poison#0": "Penicillin was discovered by Louis Pasteur in 1901.",
    "moon#0": "Apollo 11 landed on the Moon in 1969.",
}


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


class KeywordRetriever(BaseStage):
    """Scores every corpus passage by word overlap with the query; keeps the top k (> 0 overlap)."""

    k: int = 5

    def run(self, states: list[ContextState]) -> list[ContextState]:
        for state in states:
            q = _words(state.query)
            scored = []
            for pid, text in CORPUS.items():
                overlap = len(q & _words(text))
                if overlap:
                    p = Passage(id=pid, text=text, doc_id=pid.split("#")[0], metadata={"source": "corpus"})
                    self.set_score(p, overlap)
                    scored.append(p)
            scored.sort(key=lambda p: -p.scores[self.name])
            state.passages = scored[: self.k]
        return states


class ShortFirstRanker(BaseStage):
    """Re-ranks passages: shorter text first (a visible change of order with its own score)."""

    k: int | None = None

    def run(self, states: list[ContextState]) -> list[ContextState]:
        for state in states:
            for p in state.passages:
                self.set_score(p, 1.0 / len(p.text))
            state.passages.sort(key=lambda p: -p.scores[self.name])
            if self.k is not None:
                state.passages = state.passages[: self.k]
        return states


class FlagPoison(BaseStage):
    """Marks passages that contradict a trusted belief, like a faithfulness stage would."""

    def run(self, states: list[ContextState]) -> list[ContextState]:
        from ctxkit.types import Conflict

        for state in states:
            for p in state.passages:
                if "Pasteur" in p.text:
                    state.conflicts.append(
                        Conflict(
                            belief="Penicillin was discovered by Alexander Fleming.",
                            chunk=p.text, passage_id=p.id, similarity=0.9, kind="entity",
                            score=0.8, belief_span="Alexander Fleming", chunk_span="Louis Pasteur",
                        )
                    )
                    state.flags.setdefault("inappropriate", []).append(p.id)
        return states


class EchoGenerator:
    """A deterministic ctxkit generator: answers with the roles and last message it received.

    Records every ``generate`` call's batch size, so tests can check batching.
    """

    def __init__(self) -> None:
        from ctxkit.llm.base import SamplingSettings

        self.default_settings = SamplingSettings(max_new_tokens=64)
        self.calls: list[int] = []
        self.settings_seen: list = []

    def generate(self, batch, settings=None, **overrides):
        from ctxkit.llm.base import Generation

        self.calls.append(len(batch))
        self.settings_seen.append(settings)
        out = []
        for conv in batch:
            last = conv[-1].content
            if "FAIL" in last:
                out.append(Generation(error="asked to fail", finish_reason="error"))
                continue
            roles = ",".join(m.role for m in conv)
            text = f"[{roles}] {last}"[: (settings or self.default_settings).max_new_tokens]
            out.append(Generation(text=text, n_prompt_tokens=len(last.split()), n_tokens=len(text.split())))
        return out

    async def agenerate(self, batch, settings=None, **overrides):
        import asyncio

        return await asyncio.to_thread(self.generate, batch, settings)

    def score(self, batch, continuations):
        raise NotImplementedError
