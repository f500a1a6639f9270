"""BM25 lexical retrieval: the stage that queries the store's saved ``bm25s`` index.

The statistics (English stemming with PyStemmer, English stop words) are built and saved by the
store (:mod:`ctxkit.retrievers.store.bm25_index`); this stage loads them and scores queries.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, PrivateAttr

from ..errors import ConfigError
from ..types import Passage
from .base import BaseRetriever
from .store.bm25_index import tokenize
from .store.index import Index

__all__ = ["BM25Retriever"]

log = logging.getLogger(__name__)


class BM25Retriever(BaseRetriever):
    """Lexical BM25 retrieval over an index folder's chunks.

    The BM25 index lives in ``<path>/bm25`` and is rebuilt from the chunk store after every
    ingest (BM25's statistics are global). If it is older than the chunk store (an ingest that
    stopped part-way), it is rebuilt when the retriever loads.

    ``where`` filters support equality on chunk metadata (``{"doc_id": "a"}``, ``{"lang": {"$eq":
    "en"}}``), ``$in``, ``$ne``, ``$nin`` and ``$and``/``$or`` of those; passages that fail the
    filter get no score.

    Args:
        path: The index folder (see :class:`~ctxkit.retrievers.Index`).
        k: Passages per query.
        where: Metadata filter applied to every query.

    Example:
        >>> bm25 = BM25Retriever(path="./index", k=20)
        >>> [p.id for p in bm25.retrieve(["who discovered penicillin"])[0]]
    """

    score_floor: ClassVar[float | None] = 0.0
    kind: ClassVar[str] = "lexical"

    path: str = Field(..., description="index folder")

    _index: Any = PrivateAttr(None)
    _model: Any = PrivateAttr(None)
    _ids: list[str] = PrivateAttr(default_factory=list)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)
    _meta_cache: dict[str, Any] | None = PrivateAttr(None)
    _generation: int = PrivateAttr(-1)

    def warm_up(self) -> None:
        self._index = Index.open(self.path)
        self._load()

    def _load(self) -> None:
        idx: Index = self._index
        if not idx.bm25_is_current():
            log.warning("BM25 index at %s is older than the chunk store: rebuilding it", idx.bm25_dir)
            idx.rebuild_bm25()
        self._ids, self._generation, self._model = idx.load_bm25()
        self._meta_cache = None

    def reload(self) -> None:
        """Pick up a newer index written by another ingest."""
        with self._lock:
            self._load()

    def _retrieve(self, queries: list[str], k: int, wheres: list[dict[str, Any] | None]) -> list[list[Passage]]:
        idx: Index = self._index
        if idx.generation != self._generation:
            self.reload()
        if self._model is None:
            return [[] for _ in queries]
        n = len(self._ids)
        tokens = tokenize(queries, idx.manifest.get("bm25", {}))
        results: list[list[tuple[int, float]]] = [[] for _ in queries]
        # One bm25s call for all unfiltered queries; filtered ones get a weight mask each.
        plain = [i for i, w in enumerate(wheres) if not w]
        if plain:
            sub = _subset_tokens(tokens, plain)
            docs, scores = self._model.retrieve(sub, k=min(k, n), show_progress=False, n_threads=0)
            for row, qi in enumerate(plain):
                results[qi] = [(int(d), float(s)) for d, s in zip(docs[row], scores[row], strict=True)]
        for qi, w in enumerate(wheres):
            if not w:
                continue
            mask = self._mask(w)
            if not mask.any():
                continue
            sub = _subset_tokens(tokens, [qi])
            docs, scores = self._model.retrieve(
                sub, k=min(k, n), show_progress=False, weight_mask=mask.astype(np.float32)
            )
            results[qi] = [(int(d), float(s)) for d, s in zip(docs[0], scores[0], strict=True) if mask[int(d)]]
        wanted = sorted({self._ids[d] for r in results for d, s in r if s > 0})
        chunks = idx.get_chunks(wanted)
        out: list[list[Passage]] = []
        for r in results:
            passages = []
            for d, s in r:
                if s <= 0:  # no query term matches: not a lexical match at all
                    continue
                cid = self._ids[d]
                if cid not in chunks:
                    continue
                text, doc_id, _ci, meta = chunks[cid]
                p = Passage(id=cid, text=text, doc_id=doc_id, metadata=meta)
                self.set_score(p, s)
                passages.append(p)
            out.append(passages)
        return out

    def _mask(self, where: dict[str, Any]) -> np.ndarray:
        if self._meta_cache is None or self._meta_cache.get("n") != len(self._ids):
            metas = self._index.get_chunks(self._ids)
            self._meta_cache = {"n": len(self._ids), "metas": [metas[i][3] if i in metas else {} for i in self._ids]}
        return np.array([_match(m, where) for m in self._meta_cache["metas"]], dtype=bool)


def _subset_tokens(tokens: Any, rows: list[int]) -> Any:
    """A bm25s ``Tokenized`` restricted to some queries (vocab shared)."""
    ids = [tokens.ids[i] for i in rows]
    return type(tokens)(ids=ids, vocab=tokens.vocab)


_OPS = {
    "$eq": lambda a, b: a == b,
    "$ne": lambda a, b: a != b,
    "$in": lambda a, b: a in b,
    "$nin": lambda a, b: a not in b,
    "$gt": lambda a, b: a is not None and a > b,
    "$gte": lambda a, b: a is not None and a >= b,
    "$lt": lambda a, b: a is not None and a < b,
    "$lte": lambda a, b: a is not None and a <= b,
}


def _match(meta: dict[str, Any], where: dict[str, Any]) -> bool:
    """Evaluate a Chroma-style ``where`` filter on one metadata dict."""
    for key, cond in where.items():
        if key == "$and":
            if not all(_match(meta, c) for c in cond):
                return False
        elif key == "$or":
            if not any(_match(meta, c) for c in cond):
                return False
        elif isinstance(cond, dict):
            for op, val in cond.items():
                if op not in _OPS:
                    raise ConfigError(f"BM25Retriever: unsupported filter operator {op!r}; use {sorted(_OPS)}")
                try:
                    if not _OPS[op](meta.get(key), val):
                        return False
                except TypeError:
                    return False
        elif meta.get(key) != cond:
            return False
    return True


