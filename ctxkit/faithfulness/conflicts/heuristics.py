"""Span heuristics: typed values, relevance and mismatch of (belief, sentence) pairs, no model
that reads the pair.

They rank and flag conflicts when :class:`~ctxkit.faithfulness.conflicts.ConflictDetector` runs
without its claim judge (``judge=None``), and explain the judge's conflicts otherwise (the
``kind`` of a conflict and the two differing spans).
How a (belief, sentence) pair is scored:

* **relevance**: the sentence is about the belief's subject. A mix of embedding cosine between
  the sentence and the belief's *topic* (the belief without its answer) and the share of the
  topic's content words found in the sentence.
* **mismatch**: the sentence lacks the believed value and holds a different value of the same
  type where it would go: another number, another date, or another entity / term that is
  semantically close to the believed one (a substituted value comes from the same category:
  a country for a country, a state for a state). Candidates are the chunk's entities, runs of
  listed entities ("Ming, Qing, and Yuan dynasties"), its content words and, for a phrase
  answer, its phrases of about the answer's length. A flipped negation on an otherwise matching
  sentence is a ``negation`` conflict, an opposite relation word (``before`` for ``after``,
  ``larger`` for ``smaller``, ``increased`` for ``decreased``) an ``opposite`` conflict; a
  flipped negation *and* an opposite word ("not shorter" / "longer") cancel out.

* **answer-aware ranking features** (``DEFAULT_WEIGHTS``): cosine of the sentence with the
  believed *answer* alone (a sentence holding a substitute of the same category looks like the
  answer, even when it is about a bridge entity the question never names) and the share of the
  answer's own words in a sentence lacking the full answer ("County" of "Hancock County").
  Also computed, off by default: an idf-weighted question-word overlap, the neighbours' overlap
  and "states the believed value".

The ranking score is ``relevance + mismatch_weight * mismatch + sum(weights[f] * f)`` (weights
fitted on the dev split of ``benchmarks/conflicts.py``); a pair is flagged as a conflict
when ``mismatch >= threshold`` and ``relevance >= min_relevance``. All texts of a batch (topics,
sentences, candidate spans) are embedded in one encoder call; similarities are matrix products.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ...errors import ConfigError, InputError
from .beliefs import Belief
from .spans import Span, _entity_lists, _other_terms, _phrases, extract_spans, span_kind
from .text import (
    _IDENT,
    _STOP,
    _has_negation,
    _norm,
    _numbers,
    _opposite,
    content_words,
)

__all__ = ["DEFAULT_MISMATCH_WEIGHT", "DEFAULT_WEIGHTS", "Candidate", "SpanHeuristics"]


# Weights of the extra ranking features: a conditional logit fitted once on the dev split of
# benchmarks/conflicts.py (first 150 ids of SQuAD-KRE and of MuSiQue-KRE, alpha fixed at 0.3).
# lex_idf, context and has_value did not help on dev (see the ablation in benchmarks/README.md)
# and are off by default; they stay computed and can be switched on with ``weights``.
DEFAULT_WEIGHTS: dict[str, float] = {
    "lex_idf": 0.0,
    "context": 0.0,
    "answer_sim": 0.81,
    "partial_answer": 0.23,
    "has_value": 0.0,
}
DEFAULT_MISMATCH_WEIGHT = 0.55


@dataclass
class Candidate:
    """A scored (belief, chunk) pair; :class:`ConflictDetector` ranks these."""

    belief: int
    chunk: int
    similarity: float
    relevance: float
    mismatch: float
    kind: str
    belief_span: str | None
    chunk_span: str | None
    rank_score: float
    flagged: bool
    supports: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class SpanHeuristics:
    """Relevance, typed-value mismatch and answer-aware features of (belief, chunk) pairs.

    Args:
        embedder: Function returning the :class:`~ctxkit.models.Embedder` (called on first use).
        alpha: Weight of embedding cosine vs. content-word overlap in the relevance score.
        mismatch_weight: Weight of the mismatch score in the ranking score.
        threshold: Minimum mismatch for a flagged conflict.
        min_relevance: Minimum relevance for a flagged conflict (the chunk must be on topic).
        batch_size: Encoder batch size.
        span_candidates: Per belief, the chunks ranked highest before the mismatch whose
            entity/term spans are embedded to measure a mismatch (the others keep
            number/date/negation checks only).
        phrase_candidates: Compare a multi-word, non-entity answer with the chunk's phrases of
            about its length as well as its single words (better spans; costs encoder time).
        weights: Weights of the extra ranking features (keys of ``DEFAULT_WEIGHTS``); given
            keys override the defaults.
    """

    def __init__(
        self,
        embedder: Any,
        *,
        alpha: float = 0.3,
        mismatch_weight: float = DEFAULT_MISMATCH_WEIGHT,
        threshold: float = 0.5,
        min_relevance: float = 0.35,
        batch_size: int = 128,
        span_candidates: int = 8,
        phrase_candidates: bool = True,
        weights: dict[str, float] | None = None,
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"ConflictDetector: alpha must be in [0, 1], got {alpha}")
        if mismatch_weight < 0:
            raise ConfigError(f"ConflictDetector: mismatch_weight must be >= 0, got {mismatch_weight}")
        w = {**DEFAULT_WEIGHTS, **(weights or {})}
        unknown = set(w) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ConfigError(
                f"ConflictDetector: unknown feature weight(s) {sorted(unknown)}; known: {sorted(DEFAULT_WEIGHTS)}"
            )
        self._get_embedder = embedder
        self.alpha = alpha
        self.mismatch_weight = mismatch_weight
        self.threshold = threshold
        self.min_relevance = min_relevance
        self.batch_size = batch_size
        self.span_candidates = span_candidates
        self.phrase_candidates = phrase_candidates
        self.weights = w

    @property
    def embedder(self) -> Any:
        """The sentence embedder."""
        return self._get_embedder()

    def conflict_score(self, c: Candidate) -> float:
        """A 0-1 conflict score of a candidate: its mismatch, damped when barely on topic."""
        return max(0.0, min(1.0, c.mismatch * min(1.0, c.relevance / max(self.min_relevance, 1e-6) * 0.5 + 0.5)))

    def score(
        self,
        beliefs: list[list[Belief]],
        chunks: list[list[str]],
        groups: list[list[Any]] | None = None,
    ) -> list[list[Candidate]]:
        """Features and scores of every (belief, chunk) pair; ``groups`` marks which chunks are
        neighbours (same passage); by default all chunks of a query are one text in order."""
        if len(beliefs) != len(chunks):
            raise InputError(f"{len(beliefs)} belief lists but {len(chunks)} chunk lists")
        import numpy as np

        # Phase 1: one encoder call for the topics, believed values and chunks of the whole batch.
        texts: dict[str, int] = {}

        def idx(t: str) -> int:
            if t not in texts:
                texts[t] = len(texts)
            return texts[t]

        key_spans: list[list[list[Span]]] = []
        for bs, cs in zip(beliefs, chunks, strict=True):
            ks_q = []
            for b in bs:
                idx(b.topic or b.text)
                ks = [Span(b.answer, span_kind(b.answer))] if b.answer else extract_spans(b.text)
                for k in ks:
                    if k.kind in ("entity", "other") or b.answer:
                        idx(k.text)
                ks_q.append(ks)
            key_spans.append(ks_q)
            for c in cs:
                idx(c)
        if not texts:
            return [[] for _ in beliefs]
        emb = np.asarray(self.embedder.encode(list(texts), batch_size=self.batch_size), dtype=np.float32)

        pending: list[tuple[int, int, int, Span]] = []  # (query, belief, chunk, key) needing spans
        rows: list[dict[str, Any]] = []
        for qi, (bs, cs, ks_q) in enumerate(zip(beliefs, chunks, key_spans, strict=True)):
            row: dict[str, Any] = {"pairs": {}}
            rows.append(row)
            if not bs or not cs:
                continue
            cvec = emb[[texts[c] for c in cs]]
            sims = emb[[texts[b.topic or b.text] for b in bs]] @ cvec.T
            row["spans"] = [extract_spans(c) for c in cs]
            words = [content_words(c) for c in cs]
            norms = [f" {_norm(c)} " for c in cs]
            nums = [_numbers(c) for c in cs]
            # BM25-style idf from the query's own chunks: a word in every chunk locates nothing
            df: dict[str, int] = {}
            for ws in words:
                for w in ws:
                    df[w] = df.get(w, 0) + 1
            n_c = len(cs)
            grp = groups[qi] if groups is not None else [0] * n_c
            for bi, (b, ks) in enumerate(zip(bs, ks_q, strict=True)):
                topic = b.topic or b.text
                topic_words = content_words(topic)
                if not b.answer:  # a plain statement: its values are not part of its topic
                    topic_words -= {w for k in ks if k.kind in ("number", "date") for w in content_words(k.text)}
                idf = {w: float(np.log1p((n_c - df.get(w, 0) + 0.5) / (df.get(w, 0) + 0.5))) for w in topic_words}
                idf_total = sum(idf.values()) or 1.0
                ans_words = content_words(b.answer) - topic_words if b.answer else set()
                ans_sims = emb[texts[b.answer]] @ cvec.T if b.answer else np.zeros(n_c, np.float32)
                for ci in range(n_c):
                    sim = float(sims[bi, ci])
                    shared = topic_words & words[ci]
                    lex = len(shared) / max(len(topic_words), 1)
                    lex_idf = sum(idf[w] for w in shared) / idf_total
                    absent = [k for k in ks if not self._present(k, norms[ci], nums[ci], words[ci])]
                    partial = len(ans_words & words[ci]) / len(ans_words) if ans_words and absent else 0.0
                    rel = self.alpha * sim + (1 - self.alpha) * lex
                    row["pairs"][bi, ci] = {
                        "sim": sim, "lex": lex, "lex_idf": lex_idf, "rel": rel, "absent": absent,
                        "answer_sim": float(ans_sims[ci]), "partial_answer": partial,
                        "has_value": float(bool(ks) and not absent), "best": (0.0, "other", None, None),
                    }
                # neighbour context: a sentence's subject is often named in the one before it
                lexes = [row["pairs"][bi, ci]["lex_idf"] for ci in range(n_c)]
                for ci in range(n_c):
                    nb = [lexes[j] for j in (ci - 1, ci + 1) if 0 <= j < n_c and grp[j] == grp[ci]]
                    row["pairs"][bi, ci]["context"] = max(nb, default=0.0)
                # Spans are embedded only for the chunks ranked highest before the mismatch
                # (the rest cannot rank high).
                pre = [
                    pr["rel"] + sum(w * pr[f] for f, w in self.weights.items())
                    for pr in (row["pairs"][bi, ci] for ci in range(n_c))
                ]
                for ci in sorted(range(n_c), key=lambda i: -pre[i])[: self.span_candidates]:
                    for k in row["pairs"][bi, ci]["absent"]:
                        if k.kind in ("entity", "other"):
                            pending.append((qi, bi, ci, k))
        # Phase 2: candidate values of the same category as the believed value (one encoder call).
        pools: dict[tuple[int, int, int, str], list[str]] = {}
        for qi, bi, ci, k in pending:
            b = beliefs[qi][bi]
            topic_norm = f" {_norm(b.topic or b.text)} "
            topic_words = content_words(b.topic or b.text)
            phrases: set[str] = set()
            if k.kind == "entity":
                pool = [sp.text for sp in rows[qi]["spans"][ci] if sp.kind == "entity"]
                pool += _entity_lists(chunks[qi][ci], rows[qi]["spans"][ci])
            else:
                pool = _other_terms(chunks[qi][ci])
                if self.phrase_candidates and len(content_words(k.text)) > 1:  # a phrase for a phrase
                    found = _phrases(chunks[qi][ci], len(_norm(k.text).split()))
                    phrases = set(found)
                    pool += found
            # A value named in the belief's topic is its subject, not a substitute for its value;
            # nor is a name or phrase built on the subject's words ("Gustave Eiffel's" for a
            # belief about the Eiffel Tower).
            subject = topic_words - content_words(k.text)
            key_norm = _norm(k.text)
            kept = []
            for t in dict.fromkeys(pool):
                words, norm = content_words(t), _norm(t)
                if f" {norm} " in topic_norm or words <= topic_words or norm == key_norm:
                    continue
                if (k.kind == "entity" or t in phrases) and words & subject:
                    continue
                kept.append(t)
            pool = kept
            pools[qi, bi, ci, k.text] = pool
            for t in pool:
                idx(t)
        if len(texts) > len(emb):
            new = list(texts)[len(emb):]
            emb = np.concatenate(
                [emb, np.asarray(self.embedder.encode(new, batch_size=self.batch_size), dtype=np.float32)]
            )

        out: list[list[Candidate]] = []
        for qi, (bs, cs, row) in enumerate(zip(beliefs, chunks, rows, strict=True)):
            cands: list[Candidate] = []
            for (bi, ci), pr in row["pairs"].items():
                b, ks = bs[bi], key_spans[qi][bi]
                best = pr["best"]
                for k in pr["absent"]:
                    if k.kind in ("number", "date"):
                        m, span = self._typed_mismatch(k, row["spans"][ci], f" {_norm(b.topic or b.text)} ")
                    else:
                        pool = pools.get((qi, bi, ci, k.text), [])
                        m, span = 0.0, None
                        if pool:
                            vs = emb[[texts[t] for t in pool]] @ emb[texts[k.text]]
                            # two values of one category (two countries) have cosine ~0.3-0.7
                            ms = np.clip((vs - 0.15) / 0.4, 0.0, 1.0)
                            if _IDENT.match(k.text):  # a code/model name replaced by another one
                                ms = np.maximum(ms, [0.75 if _IDENT.match(t) else 0.0 for t in pool])
                            j = int(np.lexsort((-vs, -ms))[0])  # ties at the clip: most similar
                            m, span = float(ms[j]), pool[j]
                    if m > best[0]:
                        best = (m, k.kind, k.text, span)
                supports = bool(pr["has_value"])
                if not b.answer and len(ks) > 1 and len(pr["absent"]) == len(ks):
                    # nothing of a multi-part statement is in the chunk: probably another subject
                    best = (best[0] * 0.5, *best[1:])
                if best[0] == 0.0 and pr["lex"] >= 0.5:
                    flipped = _has_negation(cs[ci]) != _has_negation(b.text)
                    opposite = _opposite(b.text, cs[ci])
                    if flipped != bool(opposite):  # both at once ("not shorter" / "longer") agree
                        kind_ = "opposite" if opposite else "negation"
                        best = (0.6 if supports else 0.8, kind_, *(opposite or (None, None)))
                        supports = False
                mismatch, kind, bspan, cspan = best
                feats = {
                    "lex_idf": pr["lex_idf"], "context": pr["context"],
                    "answer_sim": pr["answer_sim"], "partial_answer": pr["partial_answer"],
                    "has_value": float(supports),
                }
                rank = pr["rel"] + self.mismatch_weight * mismatch + sum(
                    w * feats[f] for f, w in self.weights.items()
                )
                cands.append(
                    Candidate(
                        belief=bi,
                        chunk=ci,
                        similarity=pr["sim"],
                        relevance=pr["rel"],
                        mismatch=mismatch,
                        kind=kind,
                        belief_span=bspan,
                        chunk_span=cspan,
                        rank_score=rank,
                        flagged=mismatch >= self.threshold and pr["rel"] >= self.min_relevance,
                        supports=supports,
                        info={"lex": pr["lex"], "lex_idf": pr["lex_idf"], "sim": pr["sim"], "features": feats},
                    )
                )
            # A context that states the believed value where it is most on topic does not
            # contradict it in a less relevant place: only chunks more on topic than the best
            # supporting chunk can be flagged.
            support: dict[int, float] = {}
            for c in cands:
                if c.supports:
                    support[c.belief] = max(support.get(c.belief, -1.0), c.relevance)
            for c in cands:
                if c.flagged and c.relevance <= support.get(c.belief, -1.0):
                    c.flagged = False
                    c.info["outweighed_by_support"] = True
            out.append(cands)
        return out

    @staticmethod
    def _typed_mismatch(k: Span, spans: list[Span], belief_norm: str) -> tuple[float, str | None]:
        novel = [s for s in spans if f" {_norm(s.text)} " not in belief_norm]
        same = [s for s in novel if s.kind == k.kind]
        if same:
            return 1.0, same[0].text
        other = [s for s in novel if s.kind in ("number", "date")]
        return (0.6, other[0].text) if other else (0.0, None)

    @staticmethod
    def _present(k: Span, chunk_norm: str, chunk_nums: set[str], chunk_words: set[str]) -> bool:
        if k.kind == "number":
            nums = _numbers(k.text)
            if nums:
                return nums <= chunk_nums
        tokens = _norm(k.text).split()
        if not tokens:
            return True
        roman = {t for t in tokens[1:] if re.fullmatch(r"[ivxlcdm]+", t)}  # "World War I"
        while len(tokens) > 1 and tokens[0] in _STOP:  # "at the right bank" ~ "on the right bank"
            tokens = tokens[1:]
        while len(tokens) > 1 and tokens[-1] in _STOP and tokens[-1] not in roman:
            tokens = tokens[:-1]
        if f" {' '.join(tokens)} " in chunk_norm:
            return True
        # Paraphrased word order counts, but a short token ("World War I" vs "II", "5" vs "50")
        # must be there as a word.
        short = {t for t in tokens if len(t) <= 2 and t not in _STOP} | roman
        words = content_words(k.text)
        return bool(words) and words <= chunk_words and short <= set(chunk_norm.split())
