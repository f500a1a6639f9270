"""Per-passage signals of the composite steering detector: question echo, answer-first shape, claims.

Stateless functions over one context list (a query and its passages); the
:class:`~ctxkit.faithfulness.steering.composite.CompositeDetector` computes them for a batch and
combines them. Every signal works on the list as retrieved: no count of distinct items, no
position in the list, nothing that exists only in a test bed.

* **question echo** (:func:`echo_features`): crafted poison is written to be retrieved for one
  question, so it restates the question; ordinary evidence covers the question's topic and
  carries other facts.
* **answer-first shape** (same function): the poison's first sentence holds the question's
  words and then asserts a value.
* **claim disagreement** (:func:`claim_pairs` + :func:`disagreement_features`): what a
  passage asserts about the question (its sentence closest to the question) is read against the
  other passages' claims by the claim judge (support / conflict / unrelated); near-duplicate
  passages are one source, so five copies of a false claim do not outvote two independent
  passages.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

__all__ = [
    "CLAIM_FEATURES",
    "ECHO_FEATURES",
    "SHAPE_FEATURES",
    "claim_pairs",
    "claim_sentence",
    "content_words",
    "disagreement_features",
    "echo_features",
    "independence_weights",
    "sentences",
]

ECHO_FEATURES: tuple[str, ...] = ("echo_cos", "echo_rel", "q_coverage", "q_density")
"""Question echo: cosine to the query, that cosine minus the list's median, share of the query's
content words present, share of the passage's content words that are query words."""

SHAPE_FEATURES: tuple[str, ...] = ("first_coverage", "first_density")
"""Answer-first shape: share of the query's content words found in the first sentence, and share
of the first sentence's content words that are query words (length is deliberately not a
feature: real web snippets are as short as crafted passages)."""

CLAIM_FEATURES: tuple[str, ...] = ("conflict_mass", "support_mass", "net_disagreement")
"""Claim disagreement against independent sources (see :func:`disagreement_features`)."""

_STOP = frozenset(
    "a an the of to in on for and or is are was were be been being by with as at from that this these those it its "  # noqa: SIM905
    "his her their he she they them which who whom whose what when where why how does do did done not no can could "
    "will would should may might must has have had there than then into about over also such but if so any all "
    "some many much more most other one two first name called known".split()
)
_TOKEN = re.compile(r"[a-z0-9]+")
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def _stem(w: str) -> str:
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        return w[:-1]
    return w


def content_words(text: str) -> set[str]:
    """Lower-cased, lightly stemmed content words (stop words and 1-letter tokens left out)."""
    return {_stem(w) for w in _TOKEN.findall(text.lower()) if len(w) > 1 and w not in _STOP}


def sentences(text: str) -> list[str]:
    """Sentences of a passage (a light splitter; no model)."""
    parts = [s.strip() for s in _SENT.split(text.strip()) if s.strip()]
    return parts or [text.strip()]


def claim_sentence(query: str, text: str) -> str:
    """The sentence of ``text`` that shares most content words with ``query`` (first on ties).

    Questions are skipped when the passage has other sentences: a passage that restates the
    question asserts its answer in the next sentence.
    """
    q = content_words(query)
    sents = [s for s in sentences(text) if not s.rstrip().endswith("?")] or sentences(text)
    best = max(range(len(sents)), key=lambda i: (len(content_words(sents[i]) & q), -i))
    return sents[best]


def echo_features(query: str, texts: Sequence[str], query_emb: np.ndarray, item_embs: np.ndarray) -> np.ndarray:
    """Question-echo and answer-first-shape features, one row per passage.

    Args:
        query: The query.
        texts: The passages of one list.
        query_emb: ``(d,)`` unit vector of the query.
        item_embs: ``(m, d)`` unit vectors of the passages.

    Returns:
        ``(m, len(ECHO_FEATURES) + len(SHAPE_FEATURES))`` float array.
    """
    m = len(texts)
    out = np.zeros((m, len(ECHO_FEATURES) + len(SHAPE_FEATURES)))
    if not m:
        return out
    cos = np.asarray(item_embs, dtype=np.float64) @ np.asarray(query_emb, dtype=np.float64)
    q = content_words(query)
    nq = max(len(q), 1)
    for i, t in enumerate(texts):
        w = content_words(t)
        first = content_words(sentences(t)[0])
        out[i, 2] = len(w & q) / nq
        out[i, 3] = len(w & q) / max(len(w), 1)
        out[i, 4] = len(first & q) / nq
        out[i, 5] = len(first & q) / max(len(first), 1)
    out[:, 0] = cos
    out[:, 1] = cos - np.median(cos)
    return out


def independence_weights(item_embs: np.ndarray, dup_threshold: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Near-duplicate groups: a weight per passage (``1 / group size``) and the duplicate matrix.

    Two passages are near-duplicates when the cosine of their embeddings is at least
    ``dup_threshold``; each passage's weight is one over the number of passages it duplicates
    (itself included), so a group of copies carries the weight of one source.
    """
    u = np.asarray(item_embs, dtype=np.float64)
    dup = (u @ u.T) >= dup_threshold
    np.fill_diagonal(dup, True)
    return 1.0 / dup.sum(1), dup


def claim_pairs(claims: Sequence[str], claim_embs: np.ndarray, min_similarity: float = 0.3) -> list[tuple[int, int]]:
    """Ordered pairs ``(i, j)``, ``i != j``, of claims close enough in topic to be worth judging."""
    u = np.asarray(claim_embs, dtype=np.float64)
    s = u @ u.T if len(u) else np.zeros((0, 0))
    return [(i, j) for i in range(len(claims)) for j in range(len(claims)) if i != j and s[i, j] >= min_similarity]


def disagreement_features(probs: np.ndarray, weights: np.ndarray, dup: np.ndarray) -> np.ndarray:
    """Claim-disagreement features from the judge's pairwise probabilities.

    Args:
        probs: ``(m, m, 3)``: ``probs[i, j]`` = P(support, conflict, unrelated) of passage ``j``'s
            claim read against passage ``i``'s claim (unjudged pairs: unrelated).
        weights: ``(m,)`` independence weights (:func:`independence_weights`).
        dup: ``(m, m)`` near-duplicate matrix; a passage's own copies do not vote on it.

    Returns:
        ``(m, 3)``: ``conflict_mass`` and ``support_mass`` (weighted sums over independent
        passages of the two directions' mean conflict / support probability), and
        ``net_disagreement = (conflict - support) / (conflict + support + 1)``.
    """
    m = len(weights)
    out = np.zeros((m, len(CLAIM_FEATURES)))
    if m < 2:
        return out
    sym = (probs + probs.transpose(1, 0, 2)) / 2.0
    for i in range(m):
        voters = ~dup[i]
        conflict = float(np.sum(weights[voters] * sym[i, voters, 1]))
        support = float(np.sum(weights[voters] * sym[i, voters, 0]))
        out[i] = (conflict, support, (conflict - support) / (conflict + support + 1.0))
    return out
