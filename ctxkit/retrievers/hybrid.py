"""Hybrid retrieval: fuse the ranked lists of several retrievers.

Three fusion methods:

* ``adaptive`` (default for a dense + a lexical input) -- decides per query how much to trust each
  input: the convex combination of min-max normalised scores with a per-query dense weight
  ``sigmoid(intercept + coefficients . features)``, the features read from the query and the two
  candidate lists (see :func:`trust_features`). Any other set of inputs uses ``convex``.
* ``convex`` -- fixed convex combination of normalised scores: ``sum_i w_i * phi_i(s_i(d))`` with
  weights summing to 1 (Bruch, Gai & Ingber, "An Analysis of Fusion Functions for Hybrid
  Retrieval", ACM TOIS 2023). A candidate missing from a retriever's list gets that retriever's
  normalised minimum (0).
* ``rrf`` -- weighted reciprocal rank fusion: ``sum_i w_i / (rrf_k + rank_i(d))``. Uses ranks only,
  so it throws away how *much* better one candidate is than the next.

Normalisations ``phi``: ``minmax`` (per query, ``(s - min) / (max - min)`` over the list),
``tmm`` (theoretical min-max: ``(s - floor) / (max - floor)`` with the retriever's lowest
possible score, -1 for cosine and 0 for BM25), ``zscore`` (per query, mean/std) and ``none``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from ..errors import ConfigError
from ..pipeline import BaseStage
from ..types import ContextState, Passage
from .base import BaseRetriever

__all__ = ["ADAPTIVE_MODEL", "DEFAULT_WEIGHTS", "HybridRetriever", "adaptive_weights", "fuse", "normalize",
           "trust_features"]

Fusion = Literal["adaptive", "convex", "rrf"]
Normalization = Literal["minmax", "tmm", "zscore", "none"]

#: Convex-combination weight per retriever kind (re-normalised to sum to 1): the fixed weights of
#: ``fusion="convex"`` and of ``"adaptive"`` when its inputs are not one dense and one lexical list.
DEFAULT_WEIGHTS: dict[str, float] = {"dense": 0.7, "lexical": 0.3, "other": 0.5}

#: The per-query trust model of ``fusion="adaptive"``: the dense list's weight is
#: ``lo + (hi - lo) * sigmoid(intercept + sum(coefficient * feature))`` over
#: :func:`trust_features`, ``(lo, hi) = ADAPTIVE_RANGE``. Fitted on the dev queries of the
#: benchmark's four sets (TREC DL 2019, HotpotQA, SQuAD, MuSiQue) and their stress variants (the
#: same queries with one input weakened), ``python benchmarks/retrieval.py --split dev
#: --fit-fusion dense_top,dense_gap,lexical_peak,overlap,dense_rates_lexical,lexical_rates_dense,log_query_words``;
#: the benchmark's test queries and held-out collections never took part. In words: trust the
#: dense list more when its best match is close (``dense_top``) and stands out (``dense_gap``),
#: the lexical list more when its best matches stand out (``lexical_peak``) and when the two
#: lists already agree (``overlap``: little to lose by listening to BM25).
ADAPTIVE_MODEL: dict[str, float] = {
    "intercept": -1.3939,
    "dense_top": 4.3106,
    "dense_gap": 3.9142,
    "lexical_peak": -2.99,
    "overlap": -1.2383,
    "dense_rates_lexical": -0.1349,
    "lexical_rates_dense": 0.012,
    "log_query_words": -0.0364,
}

#: Bounds of the adaptive dense weight: neither input is ever switched off entirely.
ADAPTIVE_RANGE: tuple[float, float] = (0.1, 0.9)


def normalize(scores: Sequence[float], method: Normalization, floor: float | None = None) -> list[float]:
    """Normalise one query's scores from one retriever.

    Args:
        scores: Scores of the retrieved candidates (higher is better).
        method: ``"minmax"``, ``"tmm"`` (needs ``floor``; falls back to min-max without),
            ``"zscore"`` or ``"none"``.
        floor: The retriever's theoretical minimum score, for ``"tmm"``.
    """
    if not scores:
        return []
    if method == "none":
        return [float(s) for s in scores]
    if method == "zscore":
        mean = sum(scores) / len(scores)
        std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
        return [0.0 if std == 0 else (s - mean) / std for s in scores]
    hi = max(scores)
    lo = floor if method == "tmm" and floor is not None else min(scores)
    if hi - lo <= 0:
        return [1.0 for _ in scores]
    return [(s - lo) / (hi - lo) for s in scores]


def trust_features(query: str, dense: Sequence[tuple[str, float]], lexical: Sequence[tuple[str, float]]) -> dict[str, float]:
    """What the adaptive fusion reads to decide how much to trust each input for one query.

    Args:
        query: The query text.
        dense: The dense retriever's ``(id, score)`` list, best first (cosine similarities).
        lexical: The lexical retriever's ``(id, score)`` list, best first (BM25 scores).

    Returns:
        Named features (see :data:`ADAPTIVE_MODEL` for how they are weighed).
    """
    return _features(query, [s for _, s in dense], [s for _, s in lexical],
                     [i for i, _ in dense], [i for i, _ in lexical])


def _features(query: str, ds: Sequence[float], ls: Sequence[float], dids: Sequence[str], lids: Sequence[str]) -> dict[str, float]:
    k = 10
    d10 = ds[min(k, len(ds)) - 1] if ds else 0.0
    l10 = ls[min(k, len(ls)) - 1] if ls else 0.0
    dn = dict(zip(dids, normalize(list(ds), "minmax"), strict=True))
    ln = dict(zip(lids, normalize(list(ls), "minmax"), strict=True))
    top_d, top_l = list(dids[:5]), list(lids[:5])
    return {
        # how close the best dense match is (cosine) and how far it stands above the 10th
        "dense_top": float(ds[0]) if ds else 0.0,
        "dense_gap": float(ds[0] - d10) if ds else 0.0,
        # how peaked the lexical list is: 0 when the 10th scores like the 1st, near 1 when the
        # best matches share rare words with the query and the rest do not
        "lexical_peak": float(1.0 - l10 / ls[0]) if ls and ls[0] > 0 else 0.0,
        # agreement: shared top 10, and how each input rates the other's top 5
        "overlap": len(set(dids[:k]) & set(lids[:k])) / max(1, len(set(dids[:k]) | set(lids[:k]))),
        "dense_rates_lexical": sum(dn.get(i, 0.0) for i in top_l) / max(1, len(top_l)),
        "lexical_rates_dense": sum(ln.get(i, 0.0) for i in top_d) / max(1, len(top_d)),
        # long natural-language questions carry names and rare words that BM25 matches exactly
        "log_query_words": math.log(max(1, len(query.split()))),
    }


def adaptive_weights(query: str, dense: Sequence[tuple[str, float]], lexical: Sequence[tuple[str, float]],
                     model: dict[str, float] | None = None) -> tuple[float, float]:
    """The ``(dense, lexical)`` weights of the adaptive fusion for one query (they sum to 1).

    Args:
        query: The query text.
        dense: The dense list, ``(id, score)`` best first.
        lexical: The lexical list, ``(id, score)`` best first.
        model: Intercept and coefficients (default :data:`ADAPTIVE_MODEL`).
    """
    m = ADAPTIVE_MODEL if model is None else model
    if not dense or not lexical:  # one input found nothing: the other decides alone
        return (1.0, 0.0) if dense else (0.0, 1.0)
    f = trust_features(query, dense, lexical)
    z = m.get("intercept", 0.0) + sum(c * f[k] for k, c in m.items() if k != "intercept")
    lo, hi = ADAPTIVE_RANGE
    w = lo + (hi - lo) / (1.0 + math.exp(-z))
    return w, 1.0 - w


def _resolve(ranked_lists: Sequence[Sequence[tuple[str, float]]], method: Fusion, weights: Sequence[float] | None,
             normalization: Normalization, kinds: Sequence[str] | None, query: str | None,
             ) -> tuple[Fusion, Sequence[float] | None, Normalization]:
    """The fixed fusion one query's ``"adaptive"`` fusion amounts to: min-max convex with the
    trust model's weights over one dense and one lexical list, the given weights otherwise. Other
    methods pass through unchanged."""
    if method != "adaptive":
        return method, weights, normalization
    kinds = list(kinds or [])
    if sorted(kinds) == ["dense", "lexical"] and len(ranked_lists) == 2:
        i_d = kinds.index("dense")
        wd, wl = adaptive_weights(query or "", ranked_lists[i_d], ranked_lists[1 - i_d])
        weights = [wd, wl] if i_d == 0 else [wl, wd]
    return "convex", weights, "minmax"


def fuse(
    ranked_lists: Sequence[Sequence[tuple[str, float]]],
    *,
    method: Fusion = "convex",
    weights: Sequence[float] | None = None,
    normalization: Normalization = "minmax",
    floors: Sequence[float | None] | None = None,
    rrf_k: int = 60,
    kinds: Sequence[str] | None = None,
    query: str | None = None,
) -> list[tuple[str, float]]:
    """Fuse ranked lists of ``(id, score)`` (each best first) into one, best first.

    Args:
        ranked_lists: One list per retriever.
        method: ``"adaptive"``, ``"convex"`` or ``"rrf"``.
        weights: One weight per list (default: equal). Convex weights are rescaled to sum to 1.
            For ``"adaptive"``, the weights used when the inputs are not one dense and one
            lexical list.
        normalization: Score normalisation for ``"convex"`` (``"adaptive"`` uses min-max).
        floors: Theoretical minimum score per list (for ``"tmm"``).
        rrf_k: The RRF constant.
        kinds: Each list's retriever kind (``"dense"``, ``"lexical"``, ``"other"``), for
            ``"adaptive"``.
        query: The query text, for ``"adaptive"``.

    Returns:
        ``(id, fused score)`` sorted by fused score (ties: by best rank in any list, then id).
    """
    n = len(ranked_lists)
    method, weights, normalization = _resolve(ranked_lists, method, weights, normalization, kinds, query)
    w = list(weights) if weights is not None else [1.0] * n
    if len(w) != n:
        raise ConfigError(f"fuse: {len(w)} weights for {n} ranked lists")
    if any(x < 0 for x in w) or sum(w) <= 0:
        raise ConfigError(f"fuse: weights must be >= 0 with a positive sum, got {w}")
    floors = list(floors) if floors is not None else [None] * n
    fused: dict[str, float] = {}
    best_rank: dict[str, int] = {}
    if method == "rrf":
        for weight, lst in zip(w, ranked_lists, strict=True):
            for rank, (pid, _s) in enumerate(lst, 1):
                fused[pid] = fused.get(pid, 0.0) + weight / (rrf_k + rank)
                best_rank[pid] = min(best_rank.get(pid, rank), rank)
    elif method == "convex":
        total = sum(w)
        w = [x / total for x in w]
        normed: list[dict[str, float]] = []
        for lst, floor in zip(ranked_lists, floors, strict=True):
            values = normalize([s for _, s in lst], normalization, floor)
            normed.append(dict(zip([pid for pid, _ in lst], values, strict=True)))
            for rank, (pid, _s) in enumerate(lst, 1):
                best_rank[pid] = min(best_rank.get(pid, rank), rank)
        missing = [min(d.values()) if normalization in ("zscore", "none") and d else 0.0 for d in normed]
        for pid in best_rank:
            fused[pid] = sum(weight * d.get(pid, miss) for weight, d, miss in zip(w, normed, missing, strict=True))
    else:
        raise ConfigError(f"fuse: unknown method {method!r}; use 'adaptive', 'convex' or 'rrf'")
    return sorted(fused.items(), key=lambda kv: (-kv[1], best_rank[kv[0]], kv[0]))


class HybridRetriever(BaseRetriever):
    """Fuse any retrievers (dense + BM25 typically) into one ranked list.

    Each input retriever fetches ``candidates`` passages per query (more than ``k``, so that a
    passage ranked low by one retriever but high by another can surface), then the lists are
    fused and the top ``k`` kept. Every passage keeps each input's score in ``Passage.scores``
    (e.g. ``"chroma"``, ``"bm25"``) plus the fused score under this stage's name.

    The default, ``fusion="adaptive"``, decides per query how much to trust each input: a fixed
    weight suits the collection it was chosen on (dense-leaning weights lose to BM25 on questions
    full of names, BM25-leaning ones lose to dense on topical or entity search). For one dense
    and one lexical input it reads the query and the two candidate lists
    (:func:`trust_features`) and turns them into the dense weight of a min-max convex
    combination (:func:`adaptive_weights`, bounded to [0.1, 0.9]). Other combinations of inputs,
    and ``fusion="convex"``, use fixed weights: explicit ``weights`` or each retriever's kind
    (:data:`DEFAULT_WEIGHTS`: dense 0.7, lexical 0.3, the previous default). ``fusion="rrf"`` is
    reciprocal rank fusion. The weights used for each query of the last call are in
    :attr:`last_weights`.

    Args:
        retrievers: The input stages (any :class:`BaseRetriever`, or any stage that fills
            ``state.passages``; others are run on copies of the states with their own ``k``).
        k: Passages returned per query.
        candidates: Passages each input retriever fetches before fusion (>= k is enforced).
        fusion: ``"adaptive"`` (default), ``"convex"`` or ``"rrf"``.
        normalization: For ``"convex"``: ``"minmax"`` (default), ``"tmm"``, ``"zscore"``,
            ``"none"`` (``"adaptive"`` always uses min-max).
        weights: One weight per retriever for ``"convex"`` / ``"rrf"`` (and for ``"adaptive"``
            when the inputs are not one dense and one lexical retriever); default from each
            retriever's kind (for ``rrf``: equal weights, i.e. plain RRF).
        rrf_k: The RRF constant (60, as in Cormack et al. 2009).

    Example:
        >>> hybrid = HybridRetriever(
        ...     retrievers=[ChromaRetriever(path="./index"), BM25Retriever(path="./index")], k=10)
        >>> state = ctxkit.Pipeline([hybrid]).run("who discovered penicillin?")
        >>> hybrid.last_weights[0]   # this query's (dense, bm25) weights
    """

    nested_stage_fields: ClassVar[tuple[str, ...]] = ("retrievers",)

    retrievers: list[Any]
    candidates: int = Field(100, gt=0)
    fusion: Fusion = "adaptive"
    normalization: Normalization = "minmax"
    weights: list[float] | None = None
    rrf_k: int = Field(60, gt=0)

    @field_validator("retrievers")
    @classmethod
    def _check_retrievers(cls, value: list[Any]) -> list[Any]:
        if not value:
            raise ValueError("needs at least one retriever")
        for r in value:
            if not isinstance(r, BaseStage) and not (hasattr(r, "run") and hasattr(r, "name")):
                raise ValueError(f"{r!r} is not a stage")
        return value

    @model_validator(mode="after")
    def _check_weights(self) -> HybridRetriever:
        if self.weights is not None:
            if len(self.weights) != len(self.retrievers):
                raise ValueError(f"{len(self.weights)} weights for {len(self.retrievers)} retrievers")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError("weights must be >= 0 with a positive sum")
        seen: set[str] = set()
        for r in self.retrievers:  # unique input names: their scores share Passage.scores
            base, i = r.name, 1
            while r.name in seen or r.name == self.name:
                i += 1
                r.name = f"{base}_{i}"
            seen.add(r.name)
        return self

    _last_weights: list[list[float]] = PrivateAttr(default_factory=list)

    @property
    def last_weights(self) -> list[list[float]]:
        """Per query of the last call, the weight each input had (input order; for ``rrf`` the
        RRF weights)."""
        return [list(w) for w in self._last_weights]

    def adaptive(self) -> bool:
        """Whether the per-query trust model applies: ``fusion="adaptive"`` over exactly one
        dense and one lexical input."""
        kinds = sorted(getattr(r, "kind", "other") for r in self.retrievers)
        return self.fusion == "adaptive" and kinds == ["dense", "lexical"]

    def effective_weights(self) -> list[float]:
        """The fixed weights (explicit, or from the retrievers' kinds); with the adaptive fusion
        over a dense and a lexical input they are the fallback, see :attr:`last_weights`."""
        if self.weights is not None:
            return list(self.weights)
        if self.fusion == "rrf":
            return [1.0] * len(self.retrievers)
        return [DEFAULT_WEIGHTS.get(getattr(r, "kind", "other"), 0.5) for r in self.retrievers]

    def warm_up(self) -> None:
        for r in self.retrievers:
            if hasattr(r, "_ensure_warm"):
                r._ensure_warm()

    def _retrieve(self, queries: list[str], k: int, wheres: list[dict[str, Any] | None]) -> list[list[Passage]]:
        depth = max(self.candidates, k)
        per_retriever: list[list[list[Passage]]] = []
        for r in self.retrievers:
            if isinstance(r, BaseRetriever):
                per_retriever.append(r.retrieve(queries, depth, wheres))
            else:
                states = [
                    ContextState(query=q, metadata={"where": w} if w else {}) for q, w in zip(queries, wheres, strict=True)
                ]
                states = r(states) if isinstance(r, BaseStage) else r.run(states)
                per_retriever.append([list(s.passages) for s in states])
        weights = self.effective_weights()
        floors = [getattr(r, "score_floor", None) for r in self.retrievers]
        kinds = [getattr(r, "kind", "other") for r in self.retrievers]
        out: list[list[Passage]] = []
        used: list[list[float]] = []
        for qi in range(len(queries)):
            lists: list[list[tuple[str, float]]] = []
            merged: dict[str, Passage] = {}
            for r, results in zip(self.retrievers, per_retriever, strict=True):
                lst = []
                for p in results[qi]:
                    s = p.scores.get(r.name, p.score if p.score is not None else 0.0)
                    lst.append((p.id, float(s)))
                    if p.id in merged:
                        merged[p.id].scores.update(p.scores)
                    else:
                        merged[p.id] = p.model_copy(deep=True)
                lists.append(lst)
            method, q_weights, norm = _resolve(lists, self.fusion, weights, self.normalization, kinds, queries[qi])
            q_weights = list(q_weights if q_weights is not None else weights)
            fused = fuse(lists, method=method, weights=q_weights, normalization=norm, floors=floors, rrf_k=self.rrf_k)
            total = sum(q_weights)
            used.append([x / total for x in q_weights] if self.fusion != "rrf" else list(q_weights))
            top = []
            for pid, score in fused[:k]:
                p = merged[pid]
                self.set_score(p, score)
                top.append(p)
            out.append(top)
        self._last_weights = used
        return out
