"""Isolate-then-aggregate answering: a poisoning defence that does not need to detect the poison.

The ``isolate_aggregate`` stage answers the question from each passage (or each small group of
passages) on its own, in one batched generator call for the whole batch of states, and then
aggregates the isolated answers by a keyword vote with a robustness threshold (the keyword
aggregation of RobustRAG, Xiang et al. 2024): a keyword counts when at least ``min_votes``
independent sources and ``min_share`` of the answering sources state it, and the answer whose
kept keywords have the most votes wins. Near-duplicate passages (cosine >= ``dedupe``) are one
source, so k copies of a planted passage are one vote; passages that do not answer ("I don't
know") do not vote. With too little agreement the stage abstains instead of guessing.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import numpy as np
from pydantic import Field

from ...llm.base import Message
from ...llm.stage import GeneratorStage
from ...types import ContextState
from .signals import content_words

__all__ = ["ISOLATED_TEMPLATE", "IsolateAggregate", "aggregate_answers"]

ISOLATED_TEMPLATE = (
    "Answer the question using only this passage. If the passage does not contain the answer, reply "
    "\"I don't know\". Answer in a few words.\n\nPassage: {context}\n\nQuestion: {question}\nAnswer:"
)
_NO_ANSWER = re.compile(r"i don'?t know|not (?:contain|mention|say|provide|state)|no (?:answer|information)|"
                        r"cannot (?:be )?(?:answer|determine)|can't (?:answer|determine)|unknown", re.IGNORECASE)


def _keywords(answer: str, query: str) -> set[str]:
    return content_words(answer) - content_words(query)


def aggregate_answers(
    query: str,
    answers: list[str | None],
    weights: list[float] | None = None,
    *,
    min_votes: float = 2.0,
    min_share: float = 0.3,
) -> tuple[str | None, dict[str, Any]]:
    """Keyword vote over isolated answers.

    Args:
        query: The question (its own words are not evidence of an answer).
        answers: One answer per source (``None``: failed).
        weights: Vote weight per source (``1 / near-duplicate group size``; default 1 each).
        min_votes: A keyword needs at least this much vote weight ...
        min_share: ... and this share of the answering sources' weight.

    Returns:
        ``(answer or None, details)``; ``None`` when no keyword passes the threshold.
    """
    weights = weights or [1.0] * len(answers)
    kws: list[set[str]] = []
    total = 0.0
    for a, w in zip(answers, weights, strict=True):
        k = set() if not a or _NO_ANSWER.search(a) else _keywords(a, query)
        kws.append(k)
        total += w if k else 0.0
    votes: Counter[str] = Counter()
    for k, w in zip(kws, weights, strict=True):
        for word in k:
            votes[word] += w
    need = max(min_votes, min_share * total)
    kept = {w: v for w, v in votes.items() if v >= need - 1e-9}
    details: dict[str, Any] = {"answering_weight": round(total, 3), "needed": round(need, 3),
                               "kept_keywords": dict(sorted(kept.items(), key=lambda kv: -kv[1])[:8])}
    if not kept:
        return None, details
    scored = [(sum(kept.get(w, 0.0) for w in k) / math.sqrt(len(k)), i) for i, k in enumerate(kws) if k & kept.keys()]
    best = max(scored)[1]
    details["source"] = best
    return (answers[best] or "").strip(), details


class IsolateAggregate(GeneratorStage):
    """Answer from each passage (or group) separately, then aggregate by a robust keyword vote.

    Attributes:
        generator: As for :class:`~ctxkit.llm.GenerateAnswer` (spec dict or generator object).
        template: Prompt with ``{question}`` and ``{context}`` (one passage or group).
        group_size: Passages per isolated prompt (1: each passage alone).
        max_passages: Use at most this many passages (in their current order).
        min_votes: Vote weight a keyword needs (independent sources).
        min_share: Share of the answering sources' weight a keyword needs.
        dedupe: Cosine at which passages are near-duplicates, one source (``None``: no merging;
            uses the packaged MiniLM).
        abstain: The answer written when no keyword passes the threshold.
        max_new_tokens: Generation budget per isolated answer.

    On each state: ``answer`` is the aggregated answer; ``metadata["isolated_answers"]`` holds
    the isolated answers and ``metadata["isolate_vote"]`` the vote.
    """

    template: str = ISOLATED_TEMPLATE
    group_size: int = Field(1, ge=1)
    max_passages: int | None = Field(None, ge=1)
    min_votes: float = Field(2.0, ge=0.0)
    min_share: float = Field(0.3, ge=0.0, le=1.0)
    dedupe: float | None = Field(0.9, gt=0.0, le=1.0)
    abstain: str = "I don't know."
    max_new_tokens: int = Field(24, ge=1)

    def _groups(self, state: ContextState) -> list[list[int]]:
        n = len(state.passages) if self.max_passages is None else min(len(state.passages), self.max_passages)
        return [list(range(i, min(i + self.group_size, n))) for i in range(0, n, self.group_size)]

    def _weights(self, states: list[ContextState], groups_of: list[list[list[int]]]) -> list[list[float]]:
        """Per state, one vote weight per group: near-duplicate groups share one vote
        (:func:`~ctxkit.faithfulness.steering.signals.independence_weights`); one embedder call."""
        need = [k for k, groups in enumerate(groups_of) if self.dedupe is not None and len(groups) >= 2]
        out = [[1.0] * len(groups) for groups in groups_of]
        if not need:
            return out
        from ...models import get_embedder
        from .signals import independence_weights

        texts = [" ".join(states[k].passages[i].text for i in g) for k in need for g in groups_of[k]]
        u = np.asarray(get_embedder("default").encode(texts))
        pos = 0
        for k in need:
            n = len(groups_of[k])
            out[k] = independence_weights(u[pos: pos + n], self.dedupe)[0].tolist()
            pos += n
        return out

    def run(self, states: list[ContextState]) -> list[ContextState]:
        convs: list[list[Message]] = []
        spans: list[tuple[int, int]] = []
        groups_of: list[list[list[int]]] = []
        for s in states:
            groups = self._groups(s)
            groups_of.append(groups)
            start = len(convs)
            for g in groups:
                ctx = "\n".join(s.passages[i].text for i in g)
                convs.append([Message(role="user", content=self.template.format(question=s.query, context=ctx))])
            spans.append((start, len(convs)))
        overrides = {"max_new_tokens": self.max_new_tokens}
        if self.sampling is not None:
            overrides.update(self.sampling.model_dump(exclude_unset=True))
        gens = self.generator_obj.generate(convs, None, **overrides) if convs else []
        weights = self._weights(states, groups_of)
        for s, (a, b), w in zip(states, spans, weights, strict=True):
            answers = [g.text.strip() if g.error is None else None for g in gens[a:b]]
            errors = sum(g.error is not None for g in gens[a:b])
            if errors:
                s.trace.count("generation_errors", errors)
            answer, details = aggregate_answers(s.query, answers, w,
                                                min_votes=self.min_votes, min_share=self.min_share)
            s.answer = answer if answer is not None else self.abstain
            s.metadata["isolated_answers"] = answers
            s.metadata["isolate_vote"] = details
            s.trace.count("isolated_prompts", b - a)
        return states
