"""Reasoning & aggregating: several reasoning paths over different subsets/orders of the kept
items, one answer per path, and a (weighted) vote.

Every path of every state of the batch goes to the generator in ONE call.
"""

from __future__ import annotations

import math
import re
import string
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from ..errors import ConfigError
from ..llm.base import CONTEXT_SLOT, Message, SamplingSettings, require_scoring
from ..llm.stage import GeneratorStage
from ..types import ContextState, Passage

__all__ = ["DEFAULT_COT_TEMPLATE", "ReasonAggregate", "normalize_answer", "parse_answer"]

DEFAULT_COT_TEMPLATE = (
    "Use the context to answer the question. Think step by step, then write the final answer on "
    "its own line as 'Answer: <answer>'.\n\n"
    + CONTEXT_SLOT
    + "\n\n"
    "Question: {question}{options}"
)
_LETTERS = "ABCDEFGHIJ"
# An answer label: the whole word "answer" (never inside "answered", "answers", "unanswerable"),
# optionally "final" before it and markdown emphasis around it, then an explicit separator: a
# colon / dash / equals sign, or "is" (as in "the answer is Paris"). Group 1: the rest of the line.
_ANSWER_RE = re.compile(
    r"(?<![\w-])(?:final[ \t]+)?answer(?![\w-])[*_ \t]*(?:[:=\-\u2013\u2014]|\bis\b[ \t]*:?)[ \t]*(.*)",
    re.IGNORECASE,
)


def normalize_answer(text: str) -> str:
    """Lowercase, strip punctuation, articles and extra spaces (for voting)."""
    t = text.lower().strip()
    t = t.translate(str.maketrans("", "", string.punctuation))
    t = re.sub(r"\b(a|an|the)\b", " ", t)
    return " ".join(t.split())


def _labelled_answer(text: str) -> str | None:
    """The text after the last answer label; ``""`` for an empty label, ``None`` without one."""
    from ..retrievers.chunking import split_sentences

    matches = list(_ANSWER_RE.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    rest = m.group(1).strip()
    if not rest.strip(" *_`"):  # "Answer:" ends its line: the answer is on the next non-empty line
        following = [ln.strip() for ln in text[m.end():].splitlines() if ln.strip(" *_`\t")]
        if not following:
            return ""
        rest = following[0]
    sentences = split_sentences(rest)
    return sentences[0] if sentences else rest


def parse_answer(text: str, options: list[str] | None = None) -> str | None:
    """The final answer of a reasoning path, tolerant to format drift.

    Looks for the last answer label (``Answer: ...``, ``Final answer - ...``, ``**Answer:**
    ...``, ``the answer is ...``; the word "answer" only as a whole word) and takes the first
    sentence after it, or the next non-empty line when the label ends its line. Without a label
    it falls back to the last non-empty line. With ``options`` (multiple choice) the result is the
    option letter (``"A"``...) found as a letter or as the option's text, or ``None``.
    """
    if not text or not text.strip():
        return None
    cand = _labelled_answer(text)
    if cand == "":  # a label with nothing after it: no answer was given
        return None
    if cand is None:
        cand = [ln for ln in text.strip().splitlines() if ln.strip()][-1].strip()
    cand = cand.strip(" *_.:`\"'")
    if not options:
        return cand or None
    letters = _LETTERS[: len(options)]
    m = re.match(rf"^\(?([{letters}])\)?(?:[\s.):]|$)", cand)
    if m:
        return m.group(1)
    norm = normalize_answer(cand)
    for i, opt in enumerate(options):
        if norm and normalize_answer(opt) and (normalize_answer(opt) == norm or normalize_answer(opt) in norm):
            return letters[i]
    m = re.search(rf"\b([{letters}])\b", cand)
    return m.group(1) if m else None


class ReasonAggregate(GeneratorStage):
    """N reasoning paths per query, each over a different subset/order of the kept items.

    Attributes:
        generator: Generator object or spec dict (as for the ``generate`` stage).
        n_paths: Reasoning paths per query.
        items_per_path: Items in each path's context (``None``: all kept items).
        variation: ``"orders"`` (all items, shuffled per path), ``"subsets"`` (random subsets in
            ranked order) or ``"both"``. Path 0 always uses the ranked items as they are.
        answer_mode: ``"generate"`` (chain-of-thought text, answer parsed) or ``"options"``
            (multiple choice: each option scored by the generator's log-likelihood; needs
            ``metadata["options"]``).
        weighting: ``"uniform"`` votes, or ``"score"``: each path's vote weighs the mean of the
            softmax-normalised last-stage scores of its items.
        template: Prompt with ``{context}``, ``{question}``, ``{options}``.
        passage_format: How each item is written (``{i}`` 1-based, ``{text}``).
        passage_separator: Text between items.
        sampling: Sampling for ``"generate"`` (default: temperature 0.7, 256 new tokens).
        seed: Seed of the path variations.

    Results: ``state.answer`` (the winning answer; for multiple choice the option letter),
    ``state.metadata["agreement"]`` (vote share of the winner), ``metadata["votes"]`` and
    ``metadata["paths"]``; unparseable paths count in ``trace.counters["parse_failures"]``.
    """


    n_paths: int = Field(5, ge=1, le=64)
    items_per_path: int | None = Field(None, ge=1)
    variation: Literal["orders", "subsets", "both"] = "both"
    answer_mode: Literal["generate", "options"] = "generate"
    weighting: Literal["uniform", "score"] = "uniform"
    template: str = DEFAULT_COT_TEMPLATE
    passage_format: str = "[{i}] {text}"
    passage_separator: str = "\n\n"
    seed: int = 0

    @field_validator("template")
    @classmethod
    def _check_template(cls, v: str) -> str:
        for f in ("{context}", "{question}"):
            if f not in v:
                raise ValueError(f"template must contain {f}")
        return v


    # -- paths -----------------------------------------------------------------------------------
    def paths(self, state: ContextState, rng: np.random.Generator) -> list[list[Passage]]:
        """The item lists of the ``n_paths`` reasoning paths for one state."""
        items = list(state.passages)
        n = len(items)
        size = min(self.items_per_path or n, n)
        out = [items[:size]]
        for _ in range(1, self.n_paths):
            if n == 0:
                out.append([])
                continue
            if self.variation == "orders":
                idx = rng.permutation(n)[:size] if size == n else rng.permutation(size)
            elif self.variation == "subsets":
                idx = np.sort(rng.choice(n, size=size, replace=False))
            else:
                idx = rng.choice(n, size=size, replace=False)
            out.append([items[i] for i in idx])
        return out

    def _messages(self, state: ContextState, items: list[Passage]) -> list[Message]:
        ctx = self.passage_separator.join(self.passage_format.format(i=i, text=p.text) for i, p in enumerate(items, 1))
        opts = state.metadata.get("options") or []
        opt_txt = "".join(f"\n{_LETTERS[i]}. {o}" for i, o in enumerate(opts))
        user = self.template.format(context=ctx, question=state.query, options=opt_txt)
        if self.answer_mode == "options":
            user = user.rstrip() + "\nAnswer:"
        return [Message(role="user", content=user)]

    def _weight(self, items: list[Passage], state: ContextState) -> float:
        if self.weighting == "uniform" or not items:
            return 1.0
        all_scores = np.array([p.score or 0.0 for p in state.passages], dtype=np.float64)
        soft = np.exp(all_scores - all_scores.max())
        soft /= soft.sum()
        by_id = {p.id: w for p, w in zip(state.passages, soft, strict=True)}
        return float(np.mean([by_id.get(p.id, 0.0) for p in items])) + 1e-9

    def warm_up(self) -> None:
        """Build the generator; in ``"options"`` mode check that it can score (before any query).

        Raises:
            CapabilityError: ``answer_mode="options"`` with a generator that cannot score.
        """
        super().warm_up()
        self._check_scoring()

    def _check_scoring(self) -> None:
        if self.answer_mode == "options":
            require_scoring(self.generator_obj, "reason_aggregate answer_mode='options' (option scoring)")

    def run(self, states: list[ContextState]) -> list[ContextState]:
        self._check_scoring()  # also when run() is called without warm_up(); the check is cached
        rng = np.random.default_rng(self.seed)
        plans = [self.paths(s, rng) for s in states]
        convs, owners = [], []
        for si, (s, paths) in enumerate(zip(states, plans, strict=True)):
            for items in paths:
                convs.append(self._messages(s, items))
                owners.append(si)
        answers: list[str | None]
        if self.answer_mode == "options":
            answers = self._answer_by_options(states, convs, owners)
            texts = [""] * len(convs)
        else:
            settings = self.sampling or SamplingSettings(temperature=0.7, max_new_tokens=256, seed=self.seed)
            gens = self.generator_obj.generate(convs, settings)
            texts = [g.text if g.error is None else "" for g in gens]
            answers = [parse_answer(t, states[o].metadata.get("options")) for t, o in zip(texts, owners, strict=True)]
        k = 0
        for si, (s, paths) in enumerate(zip(states, plans, strict=True)):
            votes: dict[str, float] = {}
            shown: dict[str, str] = {}
            recs = []
            for items in paths:
                ans = answers[k]
                recs.append({"items": [p.id for p in items], "answer": ans, "text": texts[k][:2000]})
                k += 1
                if ans is None:
                    s.trace.count("parse_failures")
                    continue
                key = normalize_answer(ans) or ans
                votes[key] = votes.get(key, 0.0) + self._weight(items, s)
                shown.setdefault(key, ans)
            s.metadata["paths"] = recs
            if votes:
                best = max(votes, key=lambda a: (votes[a], -list(votes).index(a)))
                s.answer = shown[best]
                s.metadata["agreement"] = votes[best] / sum(votes.values())
                s.metadata["votes"] = {shown[a]: v for a, v in votes.items()}
            else:
                s.answer = None
                s.metadata["agreement"] = 0.0
                s.trace.errors.append(f"{self.name}: no reasoning path gave a parseable answer")
        return states

    def _answer_by_options(self, states: list[ContextState], convs: list[list[Message]], owners: list[int]) -> list[str | None]:
        batch, conts, where = [], [], []
        for ci, (conv, o) in enumerate(zip(convs, owners, strict=True)):
            opts = states[o].metadata.get("options") or []
            if not opts:
                raise ConfigError("reason_aggregate: answer_mode 'options' needs state.metadata['options']")
            for i in range(len(opts)):
                batch.append(conv)
                conts.append(f" {_LETTERS[i]}")
                where.append((ci, i))
        scores = self.generator_obj.score(batch, conts)
        best: dict[int, tuple[float, int]] = {}
        for (ci, i), sc in zip(where, scores, strict=True):
            if math.isnan(sc):  # this option could not be scored
                continue
            if ci not in best or sc > best[ci][0]:
                best[ci] = (sc, i)
        return [_LETTERS[best[ci][1]] if ci in best else None for ci in range(len(convs))]
