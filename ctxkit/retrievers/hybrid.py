"""Hybrid retrieval: fuse the ranked lists of several retrievers.

Two fusion families (Bruch, Gai & Ingber, "An Analysis of Fusion Functions for Hybrid
Retrieval", ACM TOIS 2023):

* ``rrf`` — weighted reciprocal rank fusion: ``sum_i w_i / (rrf_k + rank_i(d))``. Uses ranks only,
  so it throws away how *much* better one candidate is than the next.
* ``convex`` — convex combination of normalised scores: ``sum_i w_i * phi_i(s_i(d))`` with weights
  summing to 1. A candidate missing from a retriever's list gets that retriever's normalised
  minimum (0).

Normalisations ``phi``: ``minmax`` (per query, ``(s - min) / (max - min)`` over the list),
``tmm`` (theoretical min-max: ``(s - floor) / (max - floor)`` with the retriever's lowest
possible score, -1 for cosine and 0 for BM25), ``zscore`` (per query, mean/std) and ``none``.

The default is ``convex`` with ``minmax`` normalisation and dense-leaning weights (dense 0.7,
lexical 0.3), see :class:`HybridRetriever` for why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ..errors import ConfigError
from ..pipeline import BaseStage
from ..types import ContextState, Passage
from .base import BaseRetriever

__all__ = ["DEFAULT_WEIGHTS", "HybridRetriever", "fuse", "normalize"]

Fusion = Literal["convex", "rrf"]
Normalization = Literal["minmax", "tmm", "zscore", "none"]

#: Default convex-combination weight per retriever kind (re-normalised to sum to 1).
DEFAULT_WEIGHTS: dict[str, float] = {"dense": 0.7, "lexical": 0.3, "other": 0.5}


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


def fuse(
    ranked_lists: Sequence[Sequence[tuple[str, float]]],
    *,
    method: Fusion = "convex",
    weights: Sequence[float] | None = None,
    normalization: Normalization = "minmax",
    floors: Sequence[float | None] | None = None,
    rrf_k: int = 60,
) -> list[tuple[str, float]]:
    """Fuse ranked lists of ``(id, score)`` (each best first) into one, best first.

    Args:
        ranked_lists: One list per retriever.
        method: ``"convex"`` or ``"rrf"``.
        weights: One weight per list (default: equal). Convex weights are rescaled to sum to 1.
        normalization: Score normalisation for ``"convex"``.
        floors: Theoretical minimum score per list (for ``"tmm"``).
        rrf_k: The RRF constant.

    Returns:
        ``(id, fused score)`` sorted by fused score (ties: by best rank in any list, then id).
    """
    n = len(ranked_lists)
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
        raise ConfigError(f"fuse: unknown method {method!r}; use 'convex' or 'rrf'")
    return sorted(fused.items(), key=lambda kv: (-kv[1], best_rank[kv[0]], kv[0]))


class HybridRetriever(BaseRetriever):
    """Fuse any retrievers (dense + BM25 typically) into one ranked list.

    Each input retriever fetches ``candidates`` passages per query (more than ``k``, so that a
    passage ranked low by one retriever but high by another can surface), then the lists are
    fused and the top ``k`` kept. Every passage keeps each input's score in ``Passage.scores``
    (e.g. ``"chroma"``, ``"bm25"``) plus the fused score under this stage's name.

    Why the default is ``convex`` + ``minmax`` with dense weight 0.7: Bruch et al. (2023) find
    that a convex combination of normalised scores beats RRF in and out of domain, because RRF
    keeps only ranks and throws away score gaps (a retriever that is sure and one that is not get
    the same say), and that the single weight of the combination needs very few queries to set.
    With min-max normalisation both lists span [0, 1] per query, so the weight alone decides how
    far the lexical list can move a passage: at 0.7/0.3 BM25 can reorder passages whose dense
    scores are close, and promote strong exact-term matches (names, numbers, rare words), but
    cannot push a clearly better dense match down far. That bounds the loss on data sets where
    BM25 is weak. 0.7/0.3 is a fixed prior (the dense-leaning side that paper reports; Weaviate's
    default ``alpha=0.75`` is the same idea), not a value fitted to our benchmark's queries;
    ``benchmarks/retrieval.py`` reports the neighbouring settings too.

    Args:
        retrievers: The input stages (any :class:`BaseRetriever`, or any stage that fills
            ``state.passages``; others are run on copies of the states with their own ``k``).
        k: Passages returned per query.
        candidates: Passages each input retriever fetches before fusion (>= k is enforced).
        fusion: ``"convex"`` (default) or ``"rrf"``.
        normalization: For ``"convex"``: ``"minmax"`` (default), ``"tmm"``, ``"zscore"``,
            ``"none"``.
        weights: One weight per retriever; default from each retriever's kind
            (:data:`DEFAULT_WEIGHTS`: dense 0.7, lexical 0.3; for ``rrf`` the default is equal
            weights, i.e. plain RRF).
        rrf_k: The RRF constant (60, as in Cormack et al. 2009).

    Example:
        >>> hybrid = HybridRetriever(
        ...     retrievers=[ChromaRetriever(path="./index"), BM25Retriever(path="./index")], k=10)
        >>> state = ctxkit.Pipeline([hybrid]).run("who discovered penicillin?")
    """

    nested_stage_fields: ClassVar[tuple[str, ...]] = ("retrievers",)

    retrievers: list[Any]
    candidates: int = Field(100, gt=0)
    fusion: Fusion = "convex"
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

    def effective_weights(self) -> list[float]:
        """The weights actually used (explicit, or from the retrievers' kinds)."""
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
        out: list[list[Passage]] = []
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
            fused = fuse(
                lists, method=self.fusion, weights=weights, normalization=self.normalization,
                floors=floors, rrf_k=self.rrf_k,
            )
            top = []
            for pid, score in fused[:k]:
                p = merged[pid]
                self.set_score(p, score)
                top.append(p)
            out.append(top)
        return out
