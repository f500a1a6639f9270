"""Training pairs for the claim judge, built offline from text with known answers.

A pair is (belief, text, label) with label ``support`` (the text states the belief's value),
``conflict`` (the text states another value for the same thing, or the opposite) or
``unrelated`` (the text does not speak to the belief). Pairs come from three kinds of source:

* **question-answer records** (:class:`QARecord`): a question, its answer and the sentences of a
  passage that states it; optionally a counterfactual passage of the same question. The
  sentence stating the answer supports; the same sentence with the answer swapped for a value of
  the same type conflicts, and so does the unchanged sentence against a belief holding the
  swapped value (both directions, so that the judge cannot tell a conflict from an edited text);
  the passage's other sentences and sentences of other passages are unrelated.
* **plain sentences** (cloze records): a value (entity, number, date) of a sentence becomes the
  answer of a question made from the sentence itself ("Normandy is a region in ___."), and the
  sentence is also used as a statement belief, with negation and opposite-word flips.
* **claim lists** (a question with true and false answers, as in TruthfulQA): true answers
  support the best answer, false answers conflict with it.

Everything is seeded; :func:`balance` evens out the labels.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..conflicts.text import _norm
from .perturb import flip_negation, other_date, other_number, restyle, swap_opposite

__all__ = [
    "CONFLICT",
    "LABELS",
    "SUPPORT",
    "UNRELATED",
    "JudgePair",
    "PairBuilder",
    "QARecord",
    "SubstitutePool",
    "balance",
    "belief_input",
]

LABELS = ("support", "conflict", "unrelated")
SUPPORT, CONFLICT, UNRELATED = 0, 1, 2

_WH = {"number": "how many", "date": "when", "entity": "what", "other": "what"}
_CONTRASTS = (
    "{new}, not {old},", "{new} (not {old})", "{new} rather than {old}", "{new}, not {old} as often claimed,",
    "{new} (previously reported as {old})",
)
_NO_COMMENT = re.compile(r"no comment|i don't know|i have no", re.IGNORECASE)


@dataclass(frozen=True)
class JudgePair:
    """One training pair: the belief as the judge reads it, the text, and the label index."""

    belief: str
    text: str
    label: int
    source: str


@dataclass
class QARecord:
    """A question, its answer and a passage stating it (split into sentences).

    Attributes:
        question: The question (or any topic text the answer completes).
        answer: The value the passage states.
        sentences: The passage's sentences.
        source: Name of the data set, kept on the pairs for audits.
        alt_answer: A counterfactual answer, when a rewritten passage states it.
        alt_sentences: The counterfactual passage's sentences.
        wrong_answers: Other answers known to be wrong (multiple-choice distractors).
    """

    question: str
    answer: str
    sentences: list[str]
    source: str
    alt_answer: str | None = None
    alt_sentences: list[str] = field(default_factory=list)
    wrong_answers: list[str] = field(default_factory=list)


def belief_input(topic: str | None, answer: str | None, text: str | None = None) -> str:
    """The belief as the judge reads it: ``"<topic> Answer: <answer>"``, or the statement."""
    if answer and topic and answer.strip() and topic.strip():
        return f"{topic.strip()} Answer: {answer.strip()}"
    return (text or topic or answer or "").strip()


def states(sentence: str, value: str) -> bool:
    """Whether ``sentence`` contains ``value`` (articles, case and punctuation ignored)."""
    v = _norm(value)
    return bool(v) and f" {v} " in f" {_norm(sentence)} "


def _replace_value(sentence: str, value: str, new: str) -> str | None:
    """``sentence`` with every occurrence of ``value`` replaced by ``new`` (case-insensitive)."""
    pattern = re.compile(r"(?<!\w)" + re.escape(value.strip()) + r"(?!\w)", re.IGNORECASE)
    out, n = pattern.subn(new.strip(), sentence)
    return out if n else None


class SubstitutePool:
    """Values of the same type to swap in: numbers and dates are rewritten; entities and other
    terms come from a pool, preferring the nearest neighbours in embedding space (a country for a
    country, a chemist for a chemist).

    Args:
        values: The pool of entity / term strings (e.g. every entity span of a corpus).
        kind_of: Function giving a value's type (``"entity"``, ``"number"``, ``"date"``,
            ``"other"``).
        embed: Optional function mapping texts to L2-normalised vectors; without it, pool
            substitutes are drawn at random among values of the same type.
        neighbours: How many nearest neighbours to draw from.
    """

    def __init__(
        self,
        values: Iterable[str],
        kind_of: Callable[[str], str],
        embed: Callable[[list[str]], np.ndarray] | None = None,
        neighbours: int = 20,
    ) -> None:
        self.kind_of = kind_of
        self.embed = embed
        self.neighbours = neighbours
        by_kind: dict[str, list[str]] = {}
        for v in dict.fromkeys(v.strip() for v in values if v and v.strip()):
            by_kind.setdefault(kind_of(v), []).append(v)
        self.by_kind = by_kind
        self._vectors: dict[str, np.ndarray] = {}
        self._near: dict[str, list[str]] = {}

    def prepare(self, values: Iterable[str], batch: int = 2048) -> None:
        """Compute the nearest pool neighbours of ``values`` (entities and terms) at once."""
        if self.embed is None:
            return
        todo = [v for v in dict.fromkeys(values) if v not in self._near and self.kind_of(v) in ("entity", "other")]
        for kind in ("entity", "other"):
            pool = self.by_kind.get(kind, [])
            if kind not in self._vectors and pool:
                self._vectors[kind] = np.concatenate(
                    [self.embed(pool[i: i + batch]) for i in range(0, len(pool), batch)]
                )
            queries = [v for v in todo if self.kind_of(v) == kind]
            if not queries or not pool:
                continue
            qv = np.concatenate([self.embed(queries[i: i + batch]) for i in range(0, len(queries), batch)])
            for i in range(0, len(queries), 512):
                sims = qv[i: i + 512] @ self._vectors[kind].T
                k = min(self.neighbours * 3, sims.shape[1])
                top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
                for q, row, sim in zip(queries[i: i + 512], top, sims, strict=True):
                    self._near[q] = [pool[j] for j in row[np.argsort(-sim[row])]]

    def substitute(self, value: str, rng: random.Random, avoid: Sequence[str] = ()) -> str | None:
        """A different value of the same type as ``value``, or ``None``."""
        kind = self.kind_of(value)
        if kind == "number":
            return other_number(value, rng)
        if kind == "date":
            return other_date(value, rng)
        words = set(_norm(value).split())
        banned = {_norm(a) for a in (value, *avoid)}

        def ok(c: str) -> bool:
            n = _norm(c)
            return bool(n) and n not in banned and not (set(n.split()) & words) and n not in _norm(value)

        near = [c for c in self._near.get(value, []) if ok(c)][: self.neighbours]
        if near:
            return rng.choice(near)
        pool = self.by_kind.get(kind, [])
        for _ in range(20):
            if not pool:
                return None
            c = rng.choice(pool)
            if ok(c):
                return c
        return None


class PairBuilder:
    """Builds labelled pairs from records and sentences (see the module docstring).

    Args:
        pool: Where swapped-in values come from.
        spans: Function returning ``(text, kind, start, end)`` value spans of a sentence.
        opposites: Relation word -> its opposites, for opposite-word conflicts.
        seed: Seed of every random choice.
    """

    def __init__(
        self,
        pool: SubstitutePool,
        spans: Callable[[str], list[tuple[str, str, int, int]]],
        opposites: dict[str, frozenset[str]] | None = None,
        seed: int = 0,
    ) -> None:
        self.pool = pool
        self.spans = spans
        self.opposites = opposites or {}
        self.rng = random.Random(seed)

    def _qa(self, question: str, answer: str) -> str:
        """A question-answer belief as the judge reads it, sometimes written the way users write
        it ("<question> <answer>", no marker), so that both forms are learnt."""
        if self.rng.random() < 0.25:
            return f"{question.strip()} {answer.strip()}"
        return belief_input(question, answer)

    # -- question-answer records ---------------------------------------------------------------
    def from_record(self, rec: QARecord, distractors: Sequence[str]) -> list[JudgePair]:
        """Pairs from one :class:`QARecord`; ``distractors`` are sentences of other passages."""
        rng, out = self.rng, []
        stating = [s for s in rec.sentences if states(s, rec.answer)]
        others = [s for s in rec.sentences if not states(s, rec.answer)]
        src = rec.source
        belief = self._qa(rec.question, rec.answer)
        if stating:
            s = rng.choice(stating)
            out.append(JudgePair(belief, self._style(s, [rec.answer], others, 0.3), SUPPORT, f"{src}:support"))
            i = rec.sentences.index(s)
            if i + 1 < len(rec.sentences) and rng.random() < 0.5:
                out.append(JudgePair(belief, f"{s} {rec.sentences[i + 1]}", SUPPORT, f"{src}:support_window"))
            sub = self.pool.substitute(rec.answer, rng, avoid=rec.wrong_answers)
            swapped = _replace_value(s, rec.answer, sub) if sub else None
            if swapped:
                out.append(JudgePair(belief, self._style(swapped, [sub], others, 0.3), CONFLICT, f"{src}:text_swap"))
                out += self._contrasts(belief, s, rec.answer, sub, src)
            wrong = rng.choice(rec.wrong_answers) if rec.wrong_answers else self.pool.substitute(rec.answer, rng)
            if wrong and not states(s, wrong):
                out.append(JudgePair(self._qa(rec.question, wrong), s, CONFLICT, f"{src}:belief_swap"))
        if rec.alt_answer and rec.alt_sentences:
            alt = [s for s in rec.alt_sentences if states(s, rec.alt_answer) and not states(s, rec.answer)]
            if alt:
                a = rng.choice(alt)
                out.append(JudgePair(belief, a, CONFLICT, f"{src}:counterfactual"))
                out.append(JudgePair(self._qa(rec.question, rec.alt_answer), a, SUPPORT, f"{src}:counterfactual_support"))
                if stating:
                    out.append(JudgePair(self._qa(rec.question, rec.alt_answer), rng.choice(stating),
                                         CONFLICT, f"{src}:counterfactual_belief"))
        if rec.alt_sentences:
            out += self._aligned(rec)
        if others and rec.source != "faitheval":  # every FaithEval sentence is about its question
            out.append(JudgePair(belief, rng.choice(others), UNRELATED, f"{src}:same_passage"))
        if distractors:
            out.append(JudgePair(belief, rng.choice(distractors), UNRELATED, f"{src}:other_passage"))
        return out

    def _style(self, text: str, keep: Sequence[str], neighbours: Sequence[str], p: float) -> str:
        """``text`` reworded (:func:`restyle`) with probability ``p``: supports and conflicts get
        the same surface edits, so that only what a text claims tells them apart."""
        return restyle(text, self.rng, keep, neighbours) if self.rng.random() < p else text

    def _aligned(self, rec: QARecord, limit: int = 3) -> list[JudgePair]:
        """Statement pairs from a passage and its rewritten (counterfactual) version: sentences
        at the same position that name the same values paraphrase each other (support); a
        rewritten sentence whose values differ states something else (conflict)."""
        if len(rec.alt_sentences) != len(rec.sentences):
            return []
        out = []
        for a, b in zip(rec.sentences, rec.alt_sentences, strict=True):
            if a == b or len(a.split()) < 5:
                continue
            va = {_norm(v[0]) for v in self.spans(a)}
            vb = {_norm(v[0]) for v in self.spans(b)}
            if va == vb:
                out.append(JudgePair(a, b, SUPPORT, f"{rec.source}:aligned_paraphrase"))
            elif va - vb and vb - va:
                pair = (a, b) if self.rng.random() < 0.5 else (b, a)
                out.append(JudgePair(*pair, CONFLICT, f"{rec.source}:aligned_rewrite"))
        self.rng.shuffle(out)
        return out[:limit]

    def _contrasts(self, belief: str, sentence: str, value: str, other: str, src: str) -> list[JudgePair]:
        """Sentences that name both values but assert one ("X, not Y"): the belief's value is
        present in a conflicting text and absent from nothing, so string matching cannot decide."""
        rng = self.rng
        if rng.random() >= 0.3:
            return []
        form = rng.choice(_CONTRASTS)
        wrong = _replace_value(sentence, value, form.format(new=other, old=value))
        right = _replace_value(sentence, value, form.format(new=value, old=other))
        out = []
        if wrong:
            out.append(JudgePair(belief, wrong, CONFLICT, f"{src}:contrast_conflict"))
        if right and rng.random() < 0.5:
            out.append(JudgePair(belief, right, SUPPORT, f"{src}:contrast_support"))
        return out

    # -- plain sentences -----------------------------------------------------------------------
    def from_sentence(self, sentence: str, neighbours: Sequence[str], distractors: Sequence[str]) -> list[JudgePair]:
        """Cloze and statement pairs from one sentence of a passage (``neighbours``: the
        passage's other sentences)."""
        rng, out = self.rng, []
        spans = [sp for sp in self.spans(sentence) if sp[1] in ("entity", "number", "date") and len(sp[0]) > 1]
        if spans:
            value, kind, start, end = rng.choice(spans)
            blank = rng.random() < 0.5
            question = sentence[:start] + ("___" if blank else _WH[kind]) + sentence[end:]
            if not blank:
                question = question.rstrip(" .") + "?"
            belief = self._qa(question, value)
            out.append(JudgePair(belief, self._style(sentence, [value], neighbours, 0.4), SUPPORT, "cloze:support"))
            sub = self.pool.substitute(value, rng)
            if sub:
                swapped = sentence[:start] + sub + sentence[end:]
                out.append(JudgePair(belief, self._style(swapped, [sub], neighbours, 0.4), CONFLICT, "cloze:text_swap"))
                out += self._contrasts(belief, sentence, value, sub, "cloze")
                out.append(JudgePair(sentence, self._style(swapped, [sub], neighbours, 0.7), CONFLICT,
                                     "statement:text_swap"))
                if rng.random() < 0.5:
                    out.append(JudgePair(swapped, self._style(sentence, [value], neighbours, 0.7), CONFLICT,
                                         "statement:belief_swap"))
            sub2 = self.pool.substitute(value, rng)
            if sub2:
                out.append(JudgePair(self._qa(question, sub2), sentence, CONFLICT, "cloze:belief_swap"))
            unrelated = [n for n in neighbours if not states(n, value)]
            if unrelated:
                out.append(JudgePair(belief, rng.choice(unrelated), UNRELATED, "cloze:same_passage"))
        keep = [sp[0] for sp in spans]
        if rng.random() < 0.1:
            out.append(JudgePair(sentence, sentence, SUPPORT, "statement:copy"))
        else:
            styled = self._style(sentence, keep, neighbours, 1.0)
            if styled != sentence:
                out.append(JudgePair(sentence, styled, SUPPORT, "statement:restyled"))
        neg = flip_negation(sentence)
        if neg and rng.random() < 0.5:
            pair = (sentence, self._style(neg, keep, neighbours, 0.6)) if rng.random() < 0.5 else (neg, sentence)
            out.append(JudgePair(*pair, CONFLICT, "statement:negation"))
        opp = swap_opposite(sentence, self.opposites, rng) if self.opposites else None
        if opp:
            out.append(JudgePair(sentence, self._style(opp, keep, neighbours, 0.6), CONFLICT, "statement:opposite"))
        if neighbours and rng.random() < 0.5:
            out.append(JudgePair(sentence, rng.choice(neighbours), UNRELATED, "statement:same_passage"))
        if distractors:
            out.append(JudgePair(sentence, rng.choice(distractors), UNRELATED, "statement:other_passage"))
        return out

    # -- claim lists ---------------------------------------------------------------------------
    def from_claims(
        self, question: str, best: str, true: Sequence[str], false: Sequence[str], source: str
    ) -> list[JudgePair]:
        """Pairs from a question with its best answer, other true answers and false answers."""
        rng, out = self.rng, []
        true = [t for t in true if t.strip() and t != best and not _NO_COMMENT.search(t)]
        false = [f for f in false if f.strip() and not _NO_COMMENT.search(f)]
        if _NO_COMMENT.search(best):
            return out
        qbelief = self._qa(question, best)
        sentence = len(best.split()) >= 5  # a bare answer ("Denmark") says nothing without its question

        def belief() -> str:
            return best if sentence and rng.random() < 0.4 else qbelief

        for t in rng.sample(true, min(2, len(true))):
            out.append(JudgePair(belief(), t, SUPPORT, f"{source}:true"))
        for f in rng.sample(false, min(2, len(false))):
            out.append(JudgePair(belief(), f, CONFLICT, f"{source}:false"))
            if rng.random() < 0.3 and len(f.split()) >= 5:
                out.append(JudgePair(f, best if sentence else qbelief, CONFLICT, f"{source}:false_belief"))
        return out


def balance(pairs: list[JudgePair], seed: int = 0, shares: Sequence[float] = (0.33, 0.37, 0.30)) -> list[JudgePair]:
    """Subsample ``pairs`` so that labels follow ``shares`` (support, conflict, unrelated), then
    shuffle; the scarcest label (relative to its share) is kept whole."""
    rng = random.Random(seed)
    by = [[p for p in pairs if p.label == lab] for lab in range(len(LABELS))]
    total = min(len(b) / s for b, s in zip(by, shares, strict=True) if s > 0)
    out = []
    for b, s in zip(by, shares, strict=True):
        rng.shuffle(b)
        out += b[: int(total * s)]
    rng.shuffle(out)
    return out
