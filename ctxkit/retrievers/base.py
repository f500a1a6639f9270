"""Common base of ctxkit retrievers: ``retrieve(queries, k, where)`` plus the stage ``run``."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import Field

from ..errors import InputError
from ..pipeline import BaseStage
from ..types import ContextState, Passage

__all__ = ["BaseRetriever", "merge_where"]


def merge_where(*filters: dict[str, Any] | None) -> dict[str, Any] | None:
    """AND-combine Chroma-style ``where`` filters (``None`` and empty ones are ignored)."""
    parts = [f for f in filters if f]
    if not parts:
        return None
    if len(parts) == 1:
        return dict(parts[0])
    return {"$and": parts}


class BaseRetriever(BaseStage):
    """A stage that replaces each state's passages with the top ``k`` matches of its query.

    Subclasses implement :meth:`retrieve` for a whole batch at once. Per-query metadata filters
    come from ``state.metadata["where"]`` (a Chroma-style ``where`` dict) and are AND-ed with the
    stage's own ``where`` setting.

    Class attributes:
        score_floor: The lowest score the retriever can give (for theoretical min-max fusion);
            ``None`` when unbounded.
        kind: ``"dense"``, ``"lexical"`` or ``"other"`` (used for default fusion weights).
    """

    score_floor: ClassVar[float | None] = None
    kind: ClassVar[str] = "other"

    k: int = Field(10, gt=0, description="passages returned per query")
    where: dict[str, Any] | None = Field(None, description="metadata filter applied to every query")

    def retrieve(
        self, queries: list[str], k: int | None = None, where: list[dict[str, Any] | None] | dict[str, Any] | None = None
    ) -> list[list[Passage]]:
        """Top-``k`` passages for each query, best first, scored under this stage's name.

        Args:
            queries: The queries (all processed together).
            k: Passages per query (default: the ``k`` setting).
            where: One filter for all queries or one per query, AND-ed with the ``where`` setting.
        """
        self._ensure_warm()
        if isinstance(queries, str):
            raise InputError("retrieve() expects a list of queries, not a single string")
        for q in queries:
            if not isinstance(q, str) or not q.strip():
                raise InputError("a query is empty: pass a non-empty question")
        if not queries:
            return []
        if where is None or isinstance(where, dict):
            wheres = [merge_where(self.where, where)] * len(queries)
        else:
            if len(where) != len(queries):
                raise InputError(f"retrieve(): got {len(where)} filters for {len(queries)} queries")
            wheres = [merge_where(self.where, w) for w in where]
        return self._retrieve(list(queries), k or self.k, wheres)

    def _retrieve(self, queries: list[str], k: int, wheres: list[dict[str, Any] | None]) -> list[list[Passage]]:
        raise NotImplementedError

    def run(self, states: list[ContextState]) -> list[ContextState]:
        results = self.retrieve([s.query for s in states], self.k, [s.metadata.get("where") for s in states])
        for state, passages in zip(states, results, strict=True):
            state.passages = passages
        return states


def where_key(where: dict[str, Any] | None) -> str:
    """A hashable key for grouping queries that share a filter."""
    return json.dumps(where, sort_keys=True, default=str)
