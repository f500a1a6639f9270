"""LLM-preference labels without users (content-centric alignment).

For labelled examples (a question with a known answer, and pre-ranked candidates), several
candidate lists are built (the pre-ranking's top items, and random subsets of the top candidates
in random orders). Each list is written into a prompt and scored by the generator's
log-likelihood of the known answer; that score, relative to the prompt without any list, is the
list's reward. The lists and rewards go into the feedback store like user feedback, so
:class:`~ctxkit.rankers.FeedbackRanker` trains offline from the LLM's own preferences.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..llm.base import Message, require_scoring
from ..types import ContextState, Passage
from .feedback import FeedbackStore

__all__ = ["PreferenceTemplate", "candidate_lists", "llm_preference_labels"]


@dataclass
class PreferenceTemplate:
    """How a list and a question are written into the scored prompt.

    Attributes:
        prompt: User message with ``{context}`` and ``{question}``.
        passage: How one item is written (``{i}``, ``{text}``).
        answer: The scored continuation, with ``{answer}``.
        system: Optional system message.
    """

    prompt: str = "{context}\n\nQuestion: {question}\nAnswer:"
    passage: str = "{text}"
    separator: str = "\n\n"
    answer: str = " {answer}"
    system: str | None = None

    def messages(self, question: str, passages: Sequence[Passage]) -> list[Message]:
        """The conversation for ``question`` with ``passages`` as context."""
        ctx = self.separator.join(self.passage.format(i=i, text=p.text) for i, p in enumerate(passages, 1))
        user = self.prompt.format(context=ctx, question=question).lstrip()
        msgs = [Message(role="system", content=self.system)] if self.system else []
        return msgs + [Message(role="user", content=user)]


def candidate_lists(passages: Sequence[Passage], n_lists: int, list_size: int, pool: int, rng: np.random.Generator) -> list[list[Passage]]:
    """The pre-ranking's top ``list_size`` plus ``n_lists - 1`` random subsets/orders of the top ``pool``."""
    top = list(passages[:pool])
    size = min(list_size, len(top))
    out = [top[:size]]
    seen = {tuple(p.id for p in out[0])}
    tries = 0
    while len(out) < n_lists and tries < 20 * n_lists:
        tries += 1
        idx = rng.choice(len(top), size=size, replace=False)
        cand = [top[i] for i in idx]
        key = tuple(p.id for p in cand)
        if key not in seen:
            seen.add(key)
            out.append(cand)
    return out


def llm_preference_labels(
    generator: Any,
    examples: Sequence[ContextState],
    store: FeedbackStore,
    *,
    n_lists: int = 4,
    list_size: int = 3,
    pool: int = 10,
    answer_key: str = "answer",
    template: PreferenceTemplate | None = None,
    seed: int = 0,
    relative: bool = True,
) -> dict[str, Any]:
    """Score candidate lists by the LLM's log-likelihood of the known answer; store as feedback.

    Args:
        generator: Anything with ``score(batch_of_conversations, continuations)`` (e.g.
            :class:`~ctxkit.llm.TransformersGenerator`, or an
            :class:`~ctxkit.llm.OpenAIGenerator` whose server returns prompt log-probabilities).
            All lists of all examples (and the no-context prompts) are scored in ONE call.
        examples: States holding pre-ranked ``passages`` and the known answer in
            ``metadata[answer_key]``.
        store: Where the lists and their rewards are written (source ``"llm"``), in one
            transaction.
        n_lists: Lists per example.
        list_size: Items per list.
        pool: Lists are drawn from the top ``pool`` candidates.
        answer_key: Metadata key of the known answer.
        template: Prompt layout.
        seed: Seed of the list sampling.
        relative: Reward = log-likelihood gain over the prompt without context (else the raw
            log-likelihood).

    Returns:
        ``{"lists": n, "examples": m, "skipped": s, "mean_reward": r, "list_ids": [...]}``
        (``skipped``: lists the generator could not score, e.g. too long; not recorded).

    Raises:
        CapabilityError: the generator cannot score (checked before anything else).
    """
    require_scoring(generator, "llm_preference_labels")  # before any list is built or scored
    tpl = template or PreferenceTemplate()
    rng = np.random.default_rng(seed)
    convs, conts, owners = [], [], []
    built: list[tuple[ContextState, list[list[Passage]]]] = []
    for ex in examples:
        answer = ex.metadata.get(answer_key)
        if answer is None or not str(answer).strip():
            raise InputError(f"example {ex.query[:60]!r} has no known answer in metadata[{answer_key!r}]")
        if not ex.passages:
            raise InputError(f"example {ex.query[:60]!r} has no candidate passages to build lists from")
        lists = candidate_lists(ex.passages, n_lists, list_size, pool, rng)
        built.append((ex, lists))
        cont = tpl.answer.format(answer=answer)
        if relative:
            convs.append(tpl.messages(ex.query, []))
            conts.append(cont)
            owners.append((len(built) - 1, -1))
        for j, lst in enumerate(lists):
            convs.append(tpl.messages(ex.query, lst))
            conts.append(cont)
            owners.append((len(built) - 1, j))
    scores = generator.score(convs, conts)
    base = {e: s for (e, j), s in zip(owners, scores, strict=True) if j == -1}
    list_ids, rewards, skipped = [], [], 0
    with store.transaction():
        for (e, j), s in zip(owners, scores, strict=True):
            if j == -1:
                continue
            ex, lists = built[e]
            reward = float(s) - (base[e] if relative else 0.0)
            if not np.isfinite(reward):  # the generator could not score this prompt (too long...)
                skipped += 1
                continue
            state = ContextState(query=ex.query, passages=[copy.deepcopy(p) for p in lists[j]],
                                 metadata={answer_key: ex.metadata[answer_key]})
            store.record_list(state, source="llm")
            store.record_event(state.trace.list_id, reward)
            list_ids.append(state.trace.list_id)
            rewards.append(reward)
    return {"lists": len(list_ids), "examples": len(built), "skipped": skipped,
            "mean_reward": float(np.mean(rewards)) if rewards else 0.0, "list_ids": list_ids}
