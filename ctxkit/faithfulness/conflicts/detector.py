"""The conflict detector: where does the context disagree with what we believe?

A *belief* is a statement from a trusted source (a knowledge base, a previous answer, "question +
known answer", or the model's own self-facts). :class:`ConflictDetector` reads every (belief,
sentence) pair with the claim judge (:class:`~ctxkit.faithfulness.judge.ClaimJudge`, a small
cross-encoder that outputs calibrated probabilities of support / conflict / unrelated), flags the
passages whose conflict score reaches a threshold calibrated on dev data for precision (at most
10% of supporting, or of off-topic, passages flagged), and explains each conflicting sentence as a
:class:`~ctxkit.types.Conflict`: its ``kind`` (``entity``, ``number``, ``date``, ``negation``,
``opposite`` or ``other``) and the two differing spans come from the span heuristics
(:mod:`.heuristics`).

A passage's conflict score for a belief combines what the judge says about its sentences with
plain facts, in a small logistic head (:data:`PASSAGE_FEATURES`): the highest conflict and
support probabilities of its sentences, the mean of its two most conflicting sentences, how
on-topic its best sentence is, whether the passage plainly states the belief at all
(:func:`stated`), and how close its nearest sentence comes to the belief's question and to the
whole belief in the embedder's space (:data:`SIMILARITY_FEATURES`; the cross-encoder takes a
passage about the same subject for a relevant one, the embedder tells such a passage from one
that answers the question). The head may weigh products of two features (``"a*b"``). A belief
that is a plain statement (no answer) is scored by a second head without the similarity features
(``statement_head``; the dev data holds question + answer beliefs only, and a statement is far
closer to a sentence that contradicts it than any question is). The heads and the flagging
threshold are fitted on the dev splits of the conflict benchmark
(``benchmarks/conflicts.py --calibrate``) and stored in the judge's ``judge.json``; without a
head the score is the highest conflict probability. A yes / no belief is also read with the
opposite answer (``polarity_check``): the judge reads such beliefs mostly by topic, so a passage
that conflicts with the opposite answer at least as much is capped at :data:`POLARITY_CAP`.

``judge=None`` ranks and flags with the span heuristics alone (no model that reads the pair: the
behaviour of earlier releases); ``judge=LLMClaimJudge(generator)`` asks an LLM instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import ConfigError, InputError
from ...types import Conflict, Passage
from .beliefs import Belief
from .heuristics import DEFAULT_MISMATCH_WEIGHT, DEFAULT_WEIGHTS, Candidate, SpanHeuristics
from .text import split_chunks

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MISMATCH_WEIGHT",
    "DEFAULT_SPAN_RANK_WEIGHT",
    "DEFAULT_WEIGHTS",
    "PASSAGE_FEATURES",
    "POLARITY_CAP",
    "SIMILARITY_FEATURES",
    "Candidate",
    "ConflictDetector",
    "head_logit",
    "judge_input",
    "passage_features",
    "polarity_capped",
    "stated",
]

DEFAULT_SPAN_RANK_WEIGHT = 1.0
"""Weight of the span heuristics' ranking score next to the judge's conflict probability when the
sentences of a conflicting passage are ordered. Chosen on the dev split (first 300 ids,
``benchmarks/results/conflicts_localisation_dev_w*.json``): recall@1 of the substituted sentence
0.762 / 0.836 / 0.855 / 0.848 on SQuAD-KRE and 0.554 / 0.621 / 0.625 / 0.625 on MuSiQue-KRE at
weights 0 (the judge alone) / 0.5 / 1 / 2."""

POLARITY_CAP = 0.5
"""The highest score a passage gets against a yes / no belief when it conflicts with the opposite
answer at least as much (``polarity_check``): undecided, below the packaged judge's calibrated
threshold (0.7783) and any threshold calibrated for it with the polarity check. The claim
judge reads the topic of such a belief far better than its answer
(``benchmarks/conflicts_polarity.py``); the small difference between the two readings is what
separates (dev AUC 0.94 against 0.80 for the score alone)."""



def polarity_capped(score: Any, opposite_score: Any) -> Any:
    """A yes / no passage's score after the polarity check: capped at :data:`POLARITY_CAP` where
    the passage scores at least as high against the opposite answer (floats or arrays)."""
    return np.where(np.asarray(opposite_score) >= score, np.minimum(score, POLARITY_CAP), score)


SIMILARITY_FEATURES = ("topic_similarity", "belief_similarity")
"""Passage features from the embedder: the highest cosine similarity of a passage's sentences to
the belief's question (its statement when it has no answer) and to the whole belief."""

PASSAGE_FEATURES = ("conflict_max", "conflict_top2", "support_max", "relevant_max", "answer_stated",
                    *SIMILARITY_FEATURES)
"""Features of a (belief, passage) pair that the passage head combines."""


def head_logit(head: dict[str, Any], features: Any) -> Any:
    """The passage head's log-odds: ``bias`` plus each weighted term, a term being a feature
    name or a product ``"a*b"`` of two. ``features`` maps names to floats or to arrays (one
    value per passage)."""
    z: Any = float(head.get("bias", 0.0))
    for term, w in head.get("weights", {}).items():
        value: Any = 1.0
        for f in term.split("*"):
            value = value * features[f]
        z = z + float(w) * value
    return z


def _unknown_features(head: dict[str, Any]) -> list[str]:
    """The feature names a head's terms use that are not :data:`PASSAGE_FEATURES`."""
    return sorted({f for term in head.get("weights", {}) for f in term.split("*")} - set(PASSAGE_FEATURES))


@dataclass
class _Chunk:
    text: str
    passage_id: str | None


def passage_features(belief: Belief, probs: np.ndarray, text: str,
                     similarity: np.ndarray | None = None) -> dict[str, float]:
    """The passage head's features from the judge's ``(sentences, 3)`` probabilities and, when
    given, the ``(sentences, 2)`` cosine similarities of the sentences to the belief's question
    and to the belief (:data:`SIMILARITY_FEATURES`; left out without them)."""
    pc = np.sort(probs[:, 1])[::-1]
    out = {
        "conflict_max": float(pc[0]),
        "conflict_top2": float(pc[:2].mean()),
        "support_max": float(probs[:, 0].max()),
        "relevant_max": float((1 - probs[:, 2]).max()),
        "answer_stated": float(stated(belief, text)),
    }
    if similarity is not None:
        out.update(zip(SIMILARITY_FEATURES, (float(v) for v in similarity.max(axis=0)), strict=True))
    return out


_CONTRASTED = r"(?:not|never|nor|rather than|instead of|in place of)\s+(?:the\s+|a\s+|an\s+)?"


def stated(belief: Belief, text: str) -> bool:
    """Whether ``text`` plainly states the belief.

    A "question + answer" belief: the answer appears other than in a contrast ("Sydney, not
    Canberra"). A plain statement: one sentence holds all its content words, with the same
    negation and no relation word swapped for its opposite ("after" for "before").
    """
    import re

    from .text import _has_negation, _opposite, content_words

    if belief.answer:
        from ..judge.data import states
        from .text import _norm

        if not states(text, belief.answer):
            return False
        plain = re.sub(_CONTRASTED + re.escape(_norm(belief.answer)) + r"\b", " ", _norm(text))
        return states(plain, belief.answer)
    need = content_words(belief.text)
    return bool(need) and any(
        need <= content_words(s) and _has_negation(s) == _has_negation(belief.text) and _opposite(belief.text, s) is None
        for s in split_chunks(text, 0)
    )


def judge_input(belief: Belief) -> str:
    """How a belief is shown to the claim judge (``"<question> Answer: <answer>"`` or the statement)."""
    from ..judge.data import belief_input

    return belief_input(belief.topic if belief.answer else None, belief.answer, belief.text)


class ConflictDetector:
    """Find context chunks that disagree with beliefs.

    Args:
        embedder: Sentence-embedding model of the span heuristics (``"default"``:
            all-MiniLM-L6-v2).
        judge: The claim judge: ``"default"`` (packaged), a folder written by
            ``ctxkit judge-train``, a judge object with ``predict(beliefs, texts)`` (such as
            :class:`~ctxkit.faithfulness.judge.LLMClaimJudge`), or ``None`` for the span
            heuristics alone.
        device: Device of the models (``"auto"``, ``"cpu"``, ``"cuda"``...).
        threshold: With a judge, the passage conflict score from which a passage is flagged
            (``None``: the judge's calibrated threshold); without one, the minimum heuristic
            mismatch (``None``: 0.5).
        head: With a judge, the passage head ``{"bias": b, "weights": {term: w}}``, a term being
            one of :data:`PASSAGE_FEATURES` or a product ``"a*b"`` of two (``None``: the judge's
            calibrated heads, its ``statement_head`` for beliefs without an answer; ``{}``: the
            passage's highest sentence conflict probability). A head given here scores every belief.
        span_rank_weight: With a judge, the weight of the span heuristics' ranking score added to
            the judge's conflict probability when ordering the sentences of a flagged passage (and
            in :meth:`rank`): which sentence a record names. ``0``: the judge's probability alone.
            Detection (which passages are flagged, their scores) does not depend on it.
        polarity_check: With a judge, read a yes / no belief ("Is X...? No") against each passage
            twice, with its answer and with the opposite one; when the passage conflicts with the
            opposite answer at least as much, its score is capped at 0.5 (it is about the topic,
            not evidence against this answer; see :data:`POLARITY_CAP`). ``None``: as the judge
            was calibrated (``judge.json``; the packaged judge: on).
        batch_size: Encoder / judge batch size.
        alpha, mismatch_weight, min_relevance, span_candidates, phrase_candidates, weights:
            Settings of the span heuristics (see :class:`.heuristics.SpanHeuristics`).

    Example:
        >>> det = ConflictDetector()
        >>> det.detect(["The Eiffel Tower was completed in 1889."],
        ...            ["The Eiffel Tower was completed in 1901 for the fair."])[0].kind
        'date'
    """

    def __init__(
        self,
        embedder: str = "default",
        *,
        judge: Any = "default",
        device: str = "auto",
        threshold: float | None = None,
        head: dict[str, Any] | None = None,
        span_rank_weight: float = DEFAULT_SPAN_RANK_WEIGHT,
        polarity_check: bool | None = None,
        batch_size: int = 64,
        alpha: float = 0.3,
        mismatch_weight: float = DEFAULT_MISMATCH_WEIGHT,
        min_relevance: float = 0.35,
        span_candidates: int = 8,
        phrase_candidates: bool = True,
        weights: dict[str, float] | None = None,
    ) -> None:
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"ConflictDetector: threshold must be in [0, 1], got {threshold}")
        if not span_rank_weight >= 0.0:
            raise ConfigError(f"ConflictDetector: span_rank_weight must be >= 0, got {span_rank_weight}")
        self.span_rank_weight = float(span_rank_weight)
        self.embedder_name = embedder
        self.device = device
        self.batch_size = batch_size
        self._embedder: Any = None
        self._judge_setting = judge
        self._judge: Any = None
        self.polarity_check = False
        if judge is None:
            self._threshold, self._head = (0.5 if threshold is None else threshold), {}
            self._statement_head: dict[str, Any] = {}
        else:
            self._judge = self._load_judge(judge)
            cal = dict(getattr(self._judge, "config", {}).get("detector", {}))
            if threshold is None and "threshold" not in cal:
                log.warning("ConflictDetector: the judge %s carries no calibration; flagging at an uncalibrated "
                            "0.5 on its highest sentence conflict probability. Calibrate a judge folder with "
                            "`python benchmarks/conflicts.py --calibrate DIR`, or pass threshold=...",
                            type(self._judge).__name__)
            self._threshold = float(cal.get("threshold", 0.5)) if threshold is None else threshold
            self._head = dict(cal.get("head", {})) if head is None else dict(head)
            self._statement_head = dict(cal.get("statement_head", {})) if head is None else {}
            self.polarity_check = bool(cal.get("polarity_check", False)) if polarity_check is None else polarity_check
            unknown = _unknown_features(self._head)
            if unknown:
                raise ConfigError(f"ConflictDetector: unknown passage features {unknown}; known: {PASSAGE_FEATURES}")
            if any(f in t for t in self._statement_head.get("weights", {}) for f in SIMILARITY_FEATURES):
                raise ConfigError("ConflictDetector: a statement head cannot use the similarity features")
        self.similarity_features = any(f in term for term in self._head.get("weights", {}) for f in SIMILARITY_FEATURES)
        """Whether passages get the embedder's :data:`SIMILARITY_FEATURES` (on when the head uses
        them; a calibration that fits a head on them turns it on)."""
        self.heuristics = SpanHeuristics(
            lambda: self.embedder, alpha=alpha, mismatch_weight=mismatch_weight,
            threshold=self._threshold if judge is None else 0.5, min_relevance=min_relevance,
            batch_size=128, span_candidates=span_candidates, phrase_candidates=phrase_candidates, weights=weights,
        )

    def _load_judge(self, judge: Any) -> Any:
        if isinstance(judge, str):
            from ..judge.model import shared_judge

            return shared_judge(judge, device=self.device, batch_size=self.batch_size)
        if not callable(getattr(judge, "predict", None)):
            raise ConfigError(
                "ConflictDetector: judge must be 'default', a judge folder, an object with "
                f"predict(beliefs, texts), or None; got {type(judge).__name__}"
            )
        return judge

    # -- settings --------------------------------------------------------------------------------
    @property
    def threshold(self) -> float:
        """The flagging threshold in use (see the ``threshold`` argument)."""
        return self._threshold

    @property
    def head(self) -> dict[str, Any]:
        """The passage head in use (empty: the highest sentence conflict probability)."""
        return self._head

    def passage_score(self, features: dict[str, float], *, statement: bool = False) -> float:
        """A passage's conflict score from its :func:`passage_features` (``statement``: for a
        belief without an answer, scored by the statement head when the calibration has one)."""
        head = self._statement_head if statement and self._statement_head else self._head
        if not head:
            return features["conflict_max"]
        return float(1.0 / (1.0 + np.exp(-head_logit(head, features))))

    @property
    def weights(self) -> dict[str, float]:
        """Feature weights of the span heuristics' ranking (used without a judge, and for explanations)."""
        return self.heuristics.weights

    @property
    def judge(self) -> Any:
        """The claim judge (``None``: span heuristics only)."""
        return self._judge

    @property
    def judge_name(self) -> str | None:
        """What reads the pairs: the judge folder or class, or ``None``."""
        if self._judge is None:
            return None
        return self._judge_setting if isinstance(self._judge_setting, str) else type(self._judge).__name__

    @property
    def embedder(self) -> Any:
        """The shared :class:`~ctxkit.models.Embedder` of the span heuristics (loaded on first use)."""
        if self._embedder is None:
            from ...models import get_embedder

            self._embedder = get_embedder(self.embedder_name, device=self.device)
        return self._embedder

    @embedder.setter
    def embedder(self, value: Any) -> None:
        self._embedder = value

    # -- public API ------------------------------------------------------------------------------
    def detect(
        self,
        beliefs: list[Belief | str | dict[str, Any]],
        context: list[str | Passage] | str,
        *,
        top_k: int | None = None,
        chunk_words: int = 0,
    ) -> list[Conflict]:
        """Conflicts between ``beliefs`` and ``context`` (one query), strongest first.

        Args:
            beliefs: Trusted statements (strings, dicts or :class:`Belief`).
            context: A text, a list of texts, or passages; split into sentences (or chunks of
                ``chunk_words`` words when > 0).
            top_k: Keep at most this many conflicts per belief.
            chunk_words: Greedy chunk size in words; 0 means one chunk per sentence.
        """
        return self.detect_batch([beliefs], [_passages(context)], top_k=top_k, chunk_words=chunk_words)[0]

    def detect_batch(
        self,
        beliefs: list[list[Belief | str | dict[str, Any]]],
        passages: list[list[Passage]],
        *,
        top_k: int | None = None,
        chunk_words: int = 0,
    ) -> list[list[Conflict]]:
        """:meth:`detect` for many queries at once (one judge / encoder pass for the batch)."""
        bel, chunks = self._prepare(beliefs, passages, chunk_words)
        scored = self._score(bel, [[c.text for c in cs] for cs in chunks], [[c.passage_id for c in cs] for cs in chunks])
        out: list[list[Conflict]] = []
        for bs, cs, cands in zip(bel, chunks, scored, strict=True):
            per_belief: dict[int, int] = {}
            records = []
            for c in sorted(cands, key=lambda c: -c.rank_score):
                if not c.flagged:
                    continue
                if top_k is not None and per_belief.get(c.belief, 0) >= top_k:
                    continue
                per_belief[c.belief] = per_belief.get(c.belief, 0) + 1
                records.append(
                    Conflict(
                        belief=bs[c.belief].text,
                        chunk=cs[c.chunk].text,
                        passage_id=cs[c.chunk].passage_id,
                        similarity=round(c.similarity, 4),
                        kind=c.kind,  # type: ignore[arg-type]
                        score=round(self._conflict_score(c), 4),
                        belief_span=c.belief_span,
                        chunk_span=c.chunk_span,
                    )
                )
            records.sort(key=lambda r: -r.score)
            out.append(records)
        return out

    def passage_scores(
        self,
        beliefs: list[list[Belief | str | dict[str, Any]]],
        passages: list[list[Passage]],
        *,
        chunk_words: int = 0,
    ) -> list[list[float]]:
        """Each passage's conflict score (0-1; the highest over the query's beliefs), per query.

        A passage is flagged by :meth:`detect_batch` when this score reaches :attr:`threshold`.
        """
        bel, chunks = self._prepare(beliefs, passages, chunk_words)
        scored = self._score(bel, [[c.text for c in cs] for cs in chunks], [[c.passage_id for c in cs] for cs in chunks],
                             localise=False)
        out = []
        for ps, cs, cands in zip(passages, chunks, scored, strict=True):
            best: dict[str | None, float] = {}
            for c in cands:
                pid = cs[c.chunk].passage_id
                best[pid] = max(best.get(pid, 0.0), float(c.info.get("passage_score", self._conflict_score(c))))
            out.append([round(best.get(p.id, 0.0), 6) for p in ps])
        return out

    def rank(
        self, beliefs: list[list[Belief | str | dict[str, Any]]], chunks: list[list[str]]
    ) -> list[list[Candidate]]:
        """Score every (belief, chunk) pair of each query; candidates sorted most conflicting first.

        This is the low-level entry used by benchmarks: ``chunks`` are given as already split
        texts (all chunks of a query are treated as one passage). With a judge, ``rank_score`` is
        the judge's conflict probability plus ``span_rank_weight`` x the span heuristics' ranking
        score (``info["span_rank"]``).
        """
        bel = [[Belief.coerce(b) for b in bs] for bs in beliefs]
        scored = self._score(bel, chunks)
        if self._judge is not None:  # flagged passages are fused already
            self._fuse_spans(bel, chunks, [[c for c in cs if "span_rank" not in c.info] for cs in scored])
        return [sorted(c, key=lambda c: -c.rank_score) for c in scored]

    # -- scoring ---------------------------------------------------------------------------------
    def _prepare(
        self, beliefs: list[list[Any]], passages: list[list[Passage]], chunk_words: int
    ) -> tuple[list[list[Belief]], list[list[_Chunk]]]:
        if len(beliefs) != len(passages):
            raise InputError(f"detect_batch: {len(beliefs)} belief lists but {len(passages)} passage lists")
        chunks = [
            [_Chunk(c, p.id) for p in ps for c in (split_chunks(p.text, chunk_words) if p.text.strip() else [])]
            for ps in passages
        ]
        return [[Belief.coerce(b) for b in bs] for bs in beliefs], chunks

    def _conflict_score(self, c: Candidate) -> float:
        if self._judge is None:
            return self.heuristics.conflict_score(c)
        return float(c.info.get("passage_score", c.mismatch))

    def _score(
        self, beliefs: list[list[Belief]], chunks: list[list[str]], groups: list[list[Any]] | None = None,
        localise: bool = True,
    ) -> list[list[Candidate]]:
        if len(beliefs) != len(chunks):
            raise InputError(f"{len(beliefs)} belief lists but {len(chunks)} chunk lists")
        if self._judge is None:
            return self.heuristics.score(beliefs, chunks, groups)
        return self._judge_score(beliefs, chunks, groups, localise)

    def _judge_score(
        self, beliefs: list[list[Belief]], chunks: list[list[str]], groups: list[list[Any]] | None,
        localise: bool = True,
    ) -> list[list[Candidate]]:
        """Judge every pair, score passages; with ``localise``, pick and explain the records of
        the flagged passages (span ranking fused in)."""
        pairs = [(qi, bi, ci) for qi, (bs, cs) in enumerate(zip(beliefs, chunks, strict=True))
                 for bi in range(len(bs)) for ci in range(len(cs))]
        opposite = {(qi, bi): o for qi, bs in enumerate(beliefs) for bi, b in enumerate(bs)
                    if self.polarity_check and (o := b.opposite()) is not None}
        flipped = [(qi, bi, ci) for qi, bi, ci in pairs if (qi, bi) in opposite]
        both = np.asarray(self._judge.predict(
            [judge_input(beliefs[qi][bi]) for qi, bi, _ in pairs] + [judge_input(opposite[qi, bi]) for qi, bi, _ in flipped],
            [chunks[qi][ci] for qi, _, ci in pairs + flipped],
        ), dtype=np.float64).reshape(len(pairs) + len(flipped), 3)
        probs = both[: len(pairs)]
        flipped_probs = dict(zip(flipped, both[len(pairs):], strict=True))
        sims = self._similarities(beliefs, chunks, opposite) if self.similarity_features else None
        out: list[list[Candidate]] = [[] for _ in beliefs]
        for (qi, bi, ci), (ps, pc, pu) in zip(pairs, probs, strict=True):
            out[qi].append(Candidate(
                belief=bi, chunk=ci, similarity=float(1 - pu), relevance=float(1 - pu), mismatch=float(pc),
                kind="other", belief_span=None, chunk_span=None, rank_score=float(pc), flagged=False,
                supports=bool(ps > max(pc, pu)), info={"support": float(ps), "conflict": float(pc), "unrelated": float(pu)},
            ))
        flagged: list[tuple[int, Candidate]] = []
        hit: list[tuple[int, list[Candidate]]] = []
        for qi, cands in enumerate(out):
            grp = groups[qi] if groups is not None else [0] * len(chunks[qi])
            by_passage: dict[tuple[int, Any], list[Candidate]] = {}
            for c in cands:
                by_passage.setdefault((c.belief, grp[c.chunk]), []).append(c)
            for (bi, _), members in by_passage.items():
                probs = np.array([[c.info["support"], c.info["conflict"], c.info["unrelated"]] for c in members])
                text = " ".join(chunks[qi][c.chunk] for c in members)
                rows = [c.chunk for c in members]
                feats = passage_features(beliefs[qi][bi], probs, text, None if sims is None else sims[qi][bi][rows])
                score = self.passage_score(feats, statement=not beliefs[qi][bi].answer)
                polarity = None
                if (qi, bi) in opposite:
                    fp = np.array([flipped_probs[qi, bi, c.chunk] for c in members])
                    opp = self.passage_score(passage_features(
                        opposite[qi, bi], fp, text, None if sims is None else sims[qi]["opposite", bi][rows]))
                    polarity = {"opposite": opposite[qi, bi].text, "opposite_score": opp, "capped": score <= opp}
                    score = float(polarity_capped(score, opp))
                for c in members:
                    c.info["passage_score"] = score
                    c.info["passage_features"] = feats
                    if polarity is not None:
                        c.info["polarity"] = polarity
                if score >= self._threshold:
                    hit.append((qi, members))
        if not localise:
            return out
        self._fuse_spans(beliefs, chunks, [m for _, m in hit], [qi for qi, _ in hit])
        for qi, members in hit:
            # a flagged passage's records: its most conflicting sentence (judge + span ranking) and
            # any other sentence the judge finds more conflicting than not
            top = max(c.rank_score for c in members)
            for c in members:
                if c.rank_score == top or c.mismatch >= 0.5:
                    c.flagged = True
                    flagged.append((qi, c))
        self._explain(beliefs, chunks, flagged)
        return out

    def _similarities(self, beliefs: list[list[Belief]], chunks: list[list[str]],
                      opposite: dict[tuple[int, int], Belief]) -> list[dict[Any, np.ndarray]]:
        """Per query, ``{belief index: (chunks, 2)}`` cosine similarities of each chunk to the
        belief's question and to the belief (and ``{("opposite", belief index): ...}`` for the
        opposite answers), from one embedder pass over the distinct texts of the batch."""
        def question(b: Belief) -> str:
            return b.topic if b.answer and b.topic else b.text

        texts = list(dict.fromkeys(
            [c for cs in chunks for c in cs]
            + [t for bs in beliefs for b in bs for t in (question(b), b.text)]
            + [o.text for o in opposite.values()]))
        index = {t: i for i, t in enumerate(texts)}
        emb = np.asarray(self.embedder.encode(texts), dtype=np.float64)
        out: list[dict[Any, np.ndarray]] = []
        for qi, (bs, cs) in enumerate(zip(beliefs, chunks, strict=True)):
            ce = emb[[index[c] for c in cs]] if cs else np.zeros((0, emb.shape[1]))
            sims: dict[Any, np.ndarray] = {}
            for bi, b in enumerate(bs):
                sims[bi] = ce @ emb[[index[question(b)], index[b.text]]].T
                if (qi, bi) in opposite:
                    sims["opposite", bi] = ce @ emb[[index[question(b)], index[opposite[qi, bi].text]]].T
            out.append(sims)
        return out

    def _fuse_spans(self, beliefs: list[list[Belief]], chunks: list[list[str]], groups: list[list[Candidate]],
                    queries: list[int] | None = None) -> None:
        """Add ``span_rank_weight`` x the span heuristics' ranking score to each candidate's
        ``rank_score``; each group (one belief's candidates in one passage, of query
        ``queries[g]``, default ``g``) is read by the heuristics as one text."""
        if not self.span_rank_weight:
            return
        if queries is None:
            queries = list(range(len(groups)))
        jobs = []  # one heuristics "query" per (query, belief, passage) group
        for qi, members in zip(queries, groups, strict=True):
            by_belief: dict[int, list[Candidate]] = {}
            for c in members:
                by_belief.setdefault(c.belief, []).append(c)
            jobs += [(qi, bi, sorted(cs, key=lambda c: c.chunk)) for bi, cs in by_belief.items()]
        if not jobs:
            return
        h = self.heuristics.score([[beliefs[qi][bi]] for qi, bi, _ in jobs],
                                  [[chunks[qi][c.chunk] for c in cs] for qi, _, cs in jobs])
        for (_, _, cs), hs in zip(jobs, h, strict=True):
            for hc in hs:
                c = cs[hc.chunk]
                c.info["span_rank"] = float(hc.rank_score)
                c.info["span_explain"] = (hc.mismatch, hc.kind, hc.belief_span, hc.chunk_span)
                c.rank_score = float(c.info["conflict"]) + self.span_rank_weight * float(hc.rank_score)

    def _explain(self, beliefs: list[list[Belief]], chunks: list[list[str]], flagged: list[tuple[int, Candidate]]) -> None:
        """Kind and differing spans of the flagged pairs, from the span heuristics: those the span
        ranking read already (in their passage), the others in one batch."""
        todo = [(qi, c) for qi, c in flagged if "span_explain" not in c.info]
        if todo:
            explained = self.heuristics.score(
                [[beliefs[qi][c.belief]] for qi, c in todo], [[chunks[qi][c.chunk]] for qi, c in todo]
            )
            for (_, c), (h,) in zip(todo, explained, strict=True):
                c.info["span_explain"] = (h.mismatch, h.kind, h.belief_span, h.chunk_span)
        for _, c in flagged:
            mismatch, kind, belief_span, chunk_span = c.info["span_explain"]
            if mismatch > 0:
                c.kind, c.belief_span, c.chunk_span = kind, belief_span, chunk_span


def _passages(context: list[str | Passage] | str) -> list[Passage]:
    if isinstance(context, str):
        context = [context]
    return [c if isinstance(c, Passage) else Passage(id=f"p{i}", text=str(c)) for i, c in enumerate(context)]
