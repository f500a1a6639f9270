"""Dense retrieval with Chroma: embedded (``PersistentClient``) or client/server (``HttpClient``).

The stage queries the store's collection (:mod:`ctxkit.retrievers.store`); it writes nothing.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from typing import Any, ClassVar

from pydantic import Field, PrivateAttr, model_validator

from ..errors import ConfigError, IndexNotFoundError
from ..models import get_embedder
from ..types import Passage
from .base import BaseRetriever, where_key
from .store.clients import chroma_client
from .store.index import DEFAULT_COLLECTION, Index

MAX_RESULTS_PER_QUERY_CALL = 20_000
"""Queries x k per Chroma ``query`` call. Chroma fetches all results of a call with one SQL
statement, and SQLite refuses more than 32,766 variables ("too many SQL variables"), so larger
batches are split into several calls."""

__all__ = ["ChromaRetriever"]

log = logging.getLogger(__name__)


class ChromaRetriever(BaseRetriever):
    """Dense (embedding) retrieval from a Chroma collection, cosine similarity.

    Embedded mode (default) opens the index folder written by :func:`ctxkit.retrievers.ingest` /
    ``ctxkit ingest``: its manifest gives the collection and the embedding model, so queries are
    embedded with the same model as the documents. Server mode talks to ``chroma run`` (or any
    Chroma server) with ``host``/``port``; give ``path`` too when the index folder (manifest and
    BM25) lives on this machine.

    All queries of a batch are embedded in one encoder call and sent in one ``collection.query``
    call (one per distinct ``where`` filter). ctxkit always passes its own embedding function,
    never Chroma's default (which downloads a model). Scores are cosine similarities (higher is
    better) stored under the stage name.

    Args:
        path: Index folder (embedded mode, or server mode with a local manifest).
        host: Chroma server host (server mode).
        port: Chroma server port.
        ssl: HTTPS for the server.
        collection: Collection name (default: the manifest's, else ``"ctxkit"``).
        embedding_model: Query embedder (default: the manifest's, else ``"default"``).
        device: Embedder device.
        k: Passages per query.
        where: Chroma ``where`` metadata filter for every query (AND-ed with
            ``state.metadata["where"]``).
        where_document: Chroma ``where_document`` filter (e.g. ``{"$contains": "fleming"}``).

    Example:
        >>> dense = ChromaRetriever(path="./index", k=20)
        >>> server = ChromaRetriever(host="127.0.0.1", port=8000, collection="ctxkit")
    """

    score_floor: ClassVar[float | None] = -1.0
    kind: ClassVar[str] = "dense"

    path: str | None = None
    host: str | None = None
    port: int = Field(8000, gt=0, lt=65536)
    ssl: bool = False
    collection: str | None = None
    embedding_model: str | None = None
    device: str = "auto"
    where_document: dict[str, Any] | None = None

    _collection: Any = PrivateAttr(None)
    _embedder: Any = PrivateAttr(None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    @model_validator(mode="after")
    def _check_target(self) -> ChromaRetriever:
        if not self.path and not self.host:
            raise ValueError("pass path=<index folder> (embedded) or host=<server> (server mode)")
        return self

    def warm_up(self) -> None:
        model = self.embedding_model
        name = self.collection
        if self.path:
            idx = Index.open(self.path, host=self.host, port=self.host and self.port, ssl=self.ssl if self.host else None)
            if model is not None and model != idx.embedding_model:
                raise ConfigError(
                    f"ChromaRetriever: the index was embedded with {idx.embedding_model!r}; "
                    f"querying it with {model!r} would give meaningless scores"
                )
            model = idx.embedding_model
            name = name or idx.collection_name
            idx.device = self.device
            coll = _get_collection(idx.client, name, idx.embedding_function())
        else:
            from .store.embedding_function import CtxkitEmbeddingFunction

            client = chroma_client(host=self.host, port=self.port, ssl=self.ssl)
            name = name or DEFAULT_COLLECTION
            probe = _get_collection(client, name, None, raw=True)
            stored = (probe.metadata or {}).get("ctxkit:embedding_model")
            if model is None:
                model = stored or "default"
            elif stored and stored != model:
                raise ConfigError(f"ChromaRetriever: collection {name!r} was embedded with {stored!r}, not {model!r}")
            coll = _get_collection(client, name, CtxkitEmbeddingFunction(model=model, device=self.device))
        self._collection = coll
        self._embedder = get_embedder(model, device=self.device)

    def _retrieve(self, queries: list[str], k: int, wheres: list[dict[str, Any] | None]) -> list[list[Passage]]:
        embeddings = self._embedder.encode(queries)
        n = self._collection.count()
        out: list[list[Passage]] = [[] for _ in queries]
        if n == 0:
            return out
        groups: dict[str, list[int]] = defaultdict(list)
        for i, w in enumerate(wheres):
            groups[where_key(w)].append(i)
        per_call = max(1, MAX_RESULTS_PER_QUERY_CALL // max(1, min(k, n)))
        chunks = [rows[i : i + per_call] for rows in groups.values() for i in range(0, len(rows), per_call)]
        for rows in chunks:
            res = self._collection.query(
                query_embeddings=embeddings[rows],
                n_results=min(k, n),
                where=wheres[rows[0]],
                where_document=self.where_document,
                include=["documents", "metadatas", "distances"],
            )
            for j, qi in enumerate(rows):
                passages = []
                for cid, text, meta, dist in zip(
                    res["ids"][j], res["documents"][j], res["metadatas"][j], res["distances"][j], strict=True
                ):
                    meta = dict(meta or {})
                    p = Passage(id=cid, text=text or "", doc_id=str(meta.get("doc_id", cid.rsplit("#", 1)[0])), metadata=meta)
                    self.set_score(p, 1.0 - float(dist))
                    passages.append(p)
                out[qi] = passages
        return out


def _get_collection(client: Any, name: str, ef: Any, raw: bool = False) -> Any:
    try:
        if raw:
            return client.get_collection(name)
        return client.get_collection(name, embedding_function=ef)
    except Exception as exc:
        if "does not exist" not in str(exc) and "not found" not in str(exc).lower():
            raise
        try:
            names = [c if isinstance(c, str) else c.name for c in client.list_collections()]
        except Exception:  # noqa: BLE001 - only for a nicer message
            names = []
        raise IndexNotFoundError(
            f"no Chroma collection {name!r} (existing: {names or 'none'}); ingest documents first with "
            "`ctxkit ingest PATH... --index DIR`"
        ) from exc
