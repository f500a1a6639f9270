"""The on-disk index shared by :class:`ChromaRetriever`, :class:`BM25Retriever` and the CLI.

Layout of an index folder ``DIR``::

    DIR/
      ctxkit-index.json   manifest: embedding model, chunking, collection, Chroma mode, BM25 settings
      chunks.sqlite       every chunk (id, doc_id, index, text, metadata) and per-document hashes
      chroma/             Chroma's persistent data (embedded mode only)
      bm25/               the bm25s index built from chunks.sqlite, plus the chunk ids it covers

Chunk ids are ``"<doc_id>#<chunk_index>"``, so writing a document twice overwrites it (upsert).
A document whose text did not change is skipped; a changed one is re-chunked and its stale extra
chunks are deleted. Documents are written in batches, each committed to Chroma first and to
SQLite after, so an ingest that stops half-way can simply be run again: finished documents are
skipped and the rest are written.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from ...errors import ConfigError, DuplicateDocumentError, IndexNotFoundError, InputError
from ..chunking import chunk_text
from .bm25_index import load_bm25, save_bm25, saved_generation
from .clients import chroma_client
from .documents import Document, as_document, sanitize_meta
from .report import IngestReport

__all__ = ["DEFAULT_COLLECTION", "EMBED_STEP", "MANIFEST", "Index", "OnDuplicate"]

log = logging.getLogger(__name__)

MANIFEST = "ctxkit-index.json"
DEFAULT_COLLECTION = "ctxkit"
FORMAT_VERSION = 1
EMBED_STEP = 256
"""Chunks embedded per encoder call while writing (the progress bar advances after each)."""

OnDuplicate = Literal["error", "keep_last"]

_DEFAULTS: dict[str, Any] = {
    "collection": DEFAULT_COLLECTION,
    "embedding_model": "default",
    "chunk_size": 160,
    "chunk_overlap": 30,
    "chunk_unit": "words",
}


class Index:
    """An index folder: chunking + Chroma + the SQLite chunk store + BM25.

    Opening a folder that has a manifest uses its settings; passing a setting that contradicts
    the manifest raises :class:`~ctxkit.errors.ConfigError` (re-ingesting with another embedding
    model or chunking would silently mix incompatible chunks).

    Args:
        path: The index folder.
        collection: Chroma collection name.
        embedding_model: Embedder name or path (``"default"``: all-MiniLM-L6-v2, offline).
        chunk_size: Chunk size in ``chunk_unit``.
        chunk_overlap: Overlap between consecutive chunks in ``chunk_unit``.
        chunk_unit: ``"words"`` or ``"chars"``.
        host: Chroma server host (server mode); ``None`` keeps Chroma embedded in ``path/chroma``.
        port: Chroma server port.
        ssl: Use HTTPS for the server.
        device: Device for the embedder.
        create: Create the folder and manifest when missing (else raise IndexNotFoundError).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        collection: str | None = None,
        embedding_model: str | None = None,
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
        chunk_unit: str | None = None,
        host: str | None = None,
        port: int | None = None,
        ssl: bool | None = None,
        device: str = "auto",
        create: bool = True,
    ) -> None:
        self.path = Path(path).expanduser()
        self.device = device
        given = {
            "collection": collection,
            "embedding_model": embedding_model,
            "chunk_size": chunk_size,
            "chunk_overlap": chunk_overlap,
            "chunk_unit": chunk_unit,
        }
        manifest_path = self.path / MANIFEST
        if manifest_path.exists():
            try:
                self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise IndexNotFoundError(f"{manifest_path} is unreadable ({exc}); delete the folder and ingest again") from exc
            for key, value in given.items():
                if value is not None and self.manifest.get(key) != value:
                    raise ConfigError(
                        f"index {str(self.path)!r} was built with {key}={self.manifest.get(key)!r}, not "
                        f"{value!r}: use the index's setting or ingest into a new --index folder"
                    )
            chroma = self.manifest.get("chroma", {})
            if host is not None and chroma.get("host") != host:
                where = f"the Chroma server {chroma.get('host')!r}" if chroma.get("host") else "embedded Chroma"
                raise ConfigError(
                    f"index {str(self.path)!r} was built with {where}, not the server {host!r}: "
                    "drop --host/host= or ingest into a new index folder"
                )
            self._host = host or chroma.get("host")
            self._port = port or chroma.get("port") or 8000
            self._ssl = bool(ssl if ssl is not None else chroma.get("ssl", False))
        else:
            if self.path.exists() and not self.path.is_dir():
                raise InputError(f"--index {str(self.path)!r} is a file; pass a folder")
            if not create:
                raise IndexNotFoundError(
                    f"no ctxkit index at {str(self.path)!r}: build one with "
                    f"`ctxkit ingest PATH... --index {self.path}`"
                )
            if self.path.exists() and any(self.path.iterdir()):
                raise InputError(
                    f"{str(self.path)!r} is a non-empty folder without a ctxkit index; "
                    "pass an empty or new folder as --index"
                )
            settings = {k: (v if v is not None else _DEFAULTS[k]) for k, v in given.items()}
            if settings["chunk_unit"] not in ("words", "chars"):
                raise ConfigError(f"chunk_unit must be 'words' or 'chars', got {settings['chunk_unit']!r}")
            chunk_text("probe", settings["chunk_size"], settings["chunk_overlap"], settings["chunk_unit"])
            self._host, self._port, self._ssl = host, port or 8000, bool(ssl)
            self.manifest = {
                "format": "ctxkit-index",
                "version": FORMAT_VERSION,
                **settings,
                "distance": "cosine",
                "chroma": {"mode": "server", "host": host, "port": self._port, "ssl": self._ssl}
                if host
                else {"mode": "embedded", "path": "chroma"},
                "bm25": {"stemmer": "english", "stopwords": "en", "k1": 1.5, "b": 0.75},
                "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            }
            from ... import __version__

            self.manifest["ctxkit_version"] = __version__
            self.path.mkdir(parents=True, exist_ok=True)
            manifest_path.write_text(json.dumps(self.manifest, indent=2) + "\n", encoding="utf-8")
        self._db: sqlite3.Connection | None = None
        self._client: Any = None
        self._collection: Any = None
        self._ef: Any = None

    # -- settings ---------------------------------------------------------------------------------
    @property
    def collection_name(self) -> str:
        """The Chroma collection's name."""
        return str(self.manifest["collection"])

    @property
    def embedding_model(self) -> str:
        """The embedder the index was built with (queries must use the same)."""
        return str(self.manifest["embedding_model"])

    @property
    def server_mode(self) -> bool:
        """True when the vectors live in a Chroma server."""
        return self._host is not None

    @classmethod
    def open(cls, path: str | Path, **kwargs: Any) -> Index:
        """Open an existing index (raises :class:`IndexNotFoundError` when there is none)."""
        return cls(path, create=False, **kwargs)

    @staticmethod
    def exists(path: str | Path) -> bool:
        """True when ``path`` holds a ctxkit index."""
        return (Path(path).expanduser() / MANIFEST).exists()

    # -- SQLite chunk store -----------------------------------------------------------------------
    @property
    def db(self) -> sqlite3.Connection:
        """The SQLite chunk store (opened, and its tables created, on first use)."""
        if self._db is None:
            db = sqlite3.connect(self.path / "chunks.sqlite", check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(
                """
                CREATE TABLE IF NOT EXISTS documents (
                    doc_id TEXT PRIMARY KEY, hash TEXT NOT NULL, n_chunks INTEGER NOT NULL,
                    title TEXT, source TEXT);
                CREATE TABLE IF NOT EXISTS chunks (
                    id TEXT PRIMARY KEY, doc_id TEXT NOT NULL, chunk_index INTEGER NOT NULL,
                    text TEXT NOT NULL, metadata TEXT NOT NULL);
                CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
                CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
                """
            )
            db.commit()
            self._db = db
        return self._db

    @property
    def generation(self) -> int:
        """Counter bumped by every write (BM25 compares it to know when to rebuild)."""
        row = self.db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        return int(row[0]) if row else 0

    def count_chunks(self) -> int:
        """Chunks in the chunk store."""
        return int(self.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])

    def count_documents(self) -> int:
        """Documents in the chunk store."""
        return int(self.db.execute("SELECT COUNT(*) FROM documents").fetchone()[0])

    def get_chunks(self, ids: list[str]) -> dict[str, tuple[str, str, int, dict[str, Any]]]:
        """``id -> (text, doc_id, chunk_index, metadata)`` for the given chunk ids."""
        out: dict[str, tuple[str, str, int, dict[str, Any]]] = {}
        for i in range(0, len(ids), 900):
            part = ids[i : i + 900]
            q = f"SELECT id, text, doc_id, chunk_index, metadata FROM chunks WHERE id IN ({','.join('?' * len(part))})"
            for cid, text, doc_id, idx, meta in self.db.execute(q, part):
                out[cid] = (text, doc_id, idx, json.loads(meta))
        return out

    def iter_chunks(self) -> Iterator[tuple[str, str]]:
        """``(id, text)`` of every chunk, in a stable order."""
        yield from self.db.execute("SELECT id, text FROM chunks ORDER BY doc_id, chunk_index")

    # -- Chroma ------------------------------------------------------------------------------------
    def embedding_function(self) -> Any:
        """ctxkit's chromadb embedding function for this index's model."""
        if self._ef is None:
            from .embedding_function import CtxkitEmbeddingFunction

            self._ef = CtxkitEmbeddingFunction(model=self.embedding_model, device=self.device)
        return self._ef

    @property
    def client(self) -> Any:
        """The chromadb client (embedded ``path/chroma`` or the server)."""
        if self._client is None:
            self._client = chroma_client(
                path=None if self.server_mode else self.path / "chroma",
                host=self._host,
                port=self._port,
                ssl=self._ssl,
            )
        return self._client

    @property
    def collection(self) -> Any:
        """The Chroma collection (created on first use, cosine space)."""
        if self._collection is None:
            self._collection = self.client.get_or_create_collection(
                self.collection_name,
                embedding_function=self.embedding_function(),
                configuration={"hnsw": {"space": "cosine"}},
                metadata={"ctxkit:embedding_model": self.embedding_model},
            )
        return self._collection

    # -- writing -----------------------------------------------------------------------------------
    def _hash(self, doc: Document) -> str:
        h = hashlib.sha256()
        for part in (doc.title, doc.text, json.dumps(sanitize_meta(doc.metadata), sort_keys=True)):
            h.update(part.encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
        s = self.manifest
        h.update(f"{s['chunk_size']}/{s['chunk_overlap']}/{s['chunk_unit']}".encode())
        return h.hexdigest()

    def chunk_document(self, doc: Document) -> list[str]:
        """The chunk texts of ``doc`` (the title prepended to each chunk that does not start with it)."""
        s = self.manifest
        pieces = chunk_text(doc.text, s["chunk_size"], s["chunk_overlap"], s["chunk_unit"])
        title = doc.title.strip()
        if not title:
            return pieces
        # No second copy when the chunk already opens with the title (a markdown heading).
        return [
            p if p.startswith("#") and p.lstrip("# ").startswith(title) else f"{title}\n{p}" for p in pieces
        ]

    def add(
        self,
        documents: Iterable[Document | dict[str, Any]],
        *,
        batch_size: int = 256,
        show_progress: bool = False,
        total: int | None = None,
        rebuild_bm25: bool = True,
        on_duplicate: OnDuplicate = "error",
        on_warning: Callable[[str], None] | None = None,
    ) -> IngestReport:
        """Chunk, embed and write ``documents`` to Chroma and the chunk store, then rebuild BM25.

        Documents are consumed lazily in batches of ``batch_size``; each batch is committed before
        the next is read, so an exception part-way (e.g. from the document iterator) leaves every
        earlier batch written; running the same ingest again completes it. Same id + same text ->
        skipped; same id + new text -> replaced (an index keeps one document per id).

        Args:
            documents: :class:`Document` objects or dicts with ``id``/``_id``, ``text``,
                optional ``title`` and ``metadata``.
            batch_size: Documents per write batch.
            show_progress: Show a tqdm progress bar (it counts chunks as they are embedded, so a
                single huge document shows progress too, and the documents read).
            total: Number of documents, shown beside the bar.
            rebuild_bm25: Rebuild the BM25 index at the end (skip when adding many small batches
                and call :meth:`rebuild_bm25` once).
            on_duplicate: The same id twice in ``documents`` would silently keep one record:
                ``"error"`` (default) raises :class:`~ctxkit.errors.DuplicateDocumentError` before
                the batch holding the second one is written; ``"keep_last"`` keeps the last
                record, warns, and lists the id in ``report.duplicates``.
            on_warning: Called with each warning (default: logged by ``logging``).

        Returns:
            An :class:`IngestReport`.

        Raises:
            DuplicateDocumentError: a repeated id with ``on_duplicate="error"``.
        """
        from tqdm.auto import tqdm

        if batch_size < 1:
            raise ConfigError(f"Index.add: batch_size must be >= 1, got {batch_size}")
        if on_duplicate not in ("error", "keep_last"):
            raise ConfigError(f"Index.add: on_duplicate must be 'error' or 'keep_last', got {on_duplicate!r}")
        warn = on_warning or log.warning
        t0 = time.perf_counter()
        report = IngestReport()
        _ = self.collection  # create it now: an index with no documents yet is still a valid index
        bar = tqdm(unit="chunk", desc="ingest", disable=not show_progress)
        seen: dict[str, str] = {}  # id -> where it came from, over the whole call
        try:
            batch: list[Document] = []
            for raw in documents:
                doc = as_document(raw)
                where = str(doc.metadata.get("source", "") or "the documents given")
                if doc.id in seen:
                    places = seen[doc.id] if seen[doc.id] == where else f"{seen[doc.id]}, then {where}"
                    if on_duplicate == "error":
                        raise DuplicateDocumentError(
                            f"document id {doc.id!r} appears twice (in {places}); an index keeps one "
                            "document per id, so one record would be lost. Give every document its own "
                            "id, or keep the last record of each id with on_duplicate='keep_last' (CLI: "
                            f"--on-duplicate keep-last). {report.written} documents of this ingest were "
                            "written before the duplicate was found; a rerun skips them",
                            doc_id=doc.id, sources=(seen[doc.id], where), written=report.written,
                        )
                    report.duplicates.append(doc.id)
                    warn(f"duplicate document id {doc.id!r} (in {places}): keeping the last one")
                seen[doc.id] = where
                batch.append(doc)
                if len(batch) >= batch_size:
                    self._write_batch(batch, report, bar)
                    batch = []
                    bar.set_postfix(docs=report.documents if total is None else f"{report.documents}/{total}")
            if batch:
                self._write_batch(batch, report, bar)
                bar.set_postfix(docs=report.documents if total is None else f"{report.documents}/{total}")
        finally:
            bar.close()
            report.seconds = time.perf_counter() - t0
        if rebuild_bm25 and (report.written or not self.bm25_is_current()):
            self.rebuild_bm25(show_progress=show_progress)
        report.seconds = time.perf_counter() - t0
        return report

    def _write_batch(self, docs: list[Document], report: IngestReport, bar: Any = None) -> None:
        report.documents += len(docs)
        latest: dict[str, Document] = {}
        for d in docs:  # the same id twice in one batch (on_duplicate="keep_last"): the last one wins
            latest[d.id] = d
        ids = list(latest)
        known: dict[str, tuple[str, int]] = {}
        for i in range(0, len(ids), 900):
            part = ids[i : i + 900]
            q = f"SELECT doc_id, hash, n_chunks FROM documents WHERE doc_id IN ({','.join('?' * len(part))})"
            for doc_id, h, n in self.db.execute(q, part):
                known[doc_id] = (h, n)
        todo: list[tuple[Document, str, list[str]]] = []
        for doc in latest.values():
            h = self._hash(doc)
            if doc.id in known and known[doc.id][0] == h:
                report.unchanged += 1
                continue
            todo.append((doc, h, self.chunk_document(doc)))
        if not todo:
            return
        chunk_ids: list[str] = []
        texts: list[str] = []
        metas: list[dict[str, Any]] = []
        stale: list[str] = []
        for doc, _h, chunks in todo:
            base = sanitize_meta(doc.metadata)
            for i, text in enumerate(chunks):
                chunk_ids.append(f"{doc.id}#{i}")
                texts.append(text)
                metas.append({**base, "doc_id": doc.id, "chunk_index": i, "title": doc.title})
            old_n = known.get(doc.id, ("", 0))[1]
            stale.extend(f"{doc.id}#{i}" for i in range(len(chunks), old_n))
        # 1) Chroma first: if we stop after this, SQLite still says "not written" and a re-run redoes it.
        if texts:
            encoder = self.embedding_function().embedder
            parts = []
            for i in range(0, len(texts), EMBED_STEP):  # progress per slice, not per document
                parts.append(encoder.encode(texts[i : i + EMBED_STEP]))
                if bar is not None:
                    bar.update(len(texts[i : i + EMBED_STEP]))
            embeddings = _concat(parts)
            step = max(1, min(self.client.get_max_batch_size(), 5000) - 1)
            for i in range(0, len(texts), step):
                self.collection.upsert(
                    ids=chunk_ids[i : i + step],
                    embeddings=embeddings[i : i + step],
                    documents=texts[i : i + step],
                    metadatas=metas[i : i + step],
                )
        if stale:
            self.collection.delete(ids=stale)
        # 2) then the chunk store, in one transaction.
        with self.db:
            for doc, h, chunks in todo:
                self.db.execute("DELETE FROM chunks WHERE doc_id = ?", (doc.id,))
                self.db.execute(
                    "INSERT OR REPLACE INTO documents(doc_id, hash, n_chunks, title, source) VALUES (?,?,?,?,?)",
                    (doc.id, h, len(chunks), doc.title, str(doc.metadata.get("source", ""))),
                )
            self.db.executemany(
                "INSERT OR REPLACE INTO chunks(id, doc_id, chunk_index, text, metadata) VALUES (?,?,?,?,?)",
                [
                    (cid, m["doc_id"], m["chunk_index"], t, json.dumps(m, ensure_ascii=False))
                    for cid, t, m in zip(chunk_ids, texts, metas, strict=True)
                ],
            )
            self._bump()
        report.written += len(todo)
        report.chunks_written += len(texts)
        report.chunks_deleted += len(stale)

    def _bump(self) -> None:
        self.db.execute(
            "INSERT INTO meta(key, value) VALUES ('generation', '1') ON CONFLICT(key) DO "
            "UPDATE SET value = CAST(value AS INTEGER) + 1"
        )

    def delete(self, doc_ids: Iterable[str]) -> int:
        """Remove documents (all their chunks) from Chroma, the chunk store and BM25."""
        ids = list(doc_ids)
        removed = 0
        for doc_id in ids:
            row = self.db.execute("SELECT n_chunks FROM documents WHERE doc_id=?", (doc_id,)).fetchone()
            if row is None:
                continue
            self.collection.delete(ids=[f"{doc_id}#{i}" for i in range(row[0])])
            with self.db:
                self.db.execute("DELETE FROM chunks WHERE doc_id=?", (doc_id,))
                self.db.execute("DELETE FROM documents WHERE doc_id=?", (doc_id,))
                self._bump()
            removed += 1
        if removed:
            self.rebuild_bm25()
        return removed

    # -- BM25 --------------------------------------------------------------------------------------
    @property
    def bm25_dir(self) -> Path:
        """The folder of the saved BM25 index."""
        return self.path / "bm25"

    def bm25_is_current(self) -> bool:
        """True when the saved BM25 index covers the chunk store's current generation."""
        saved = saved_generation(self.bm25_dir)
        return saved is not None and saved == self.generation

    def rebuild_bm25(self, show_progress: bool = False) -> None:
        """Rebuild the BM25 index from every chunk (BM25 statistics are global) and save it."""
        generation = self.generation
        rows = list(self.iter_chunks())
        save_bm25(
            self.bm25_dir, [r[0] for r in rows], [r[1] for r in rows], self.manifest.get("bm25", {}),
            generation, show_progress=show_progress,
        )

    def load_bm25(self) -> tuple[list[str], int, Any]:
        """The saved BM25 index: ``(chunk ids, generation it covers, bm25s.BM25 or None if empty)``.

        Raises:
            IndexNotFoundError: no BM25 index was saved (no ingest finished yet).
        """
        return load_bm25(self.bm25_dir, self.path)

    def close(self) -> None:
        """Close the SQLite connection (Chroma clients close with the process)."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def __repr__(self) -> str:
        mode = f"server {self._host}:{self._port}" if self.server_mode else "embedded"
        return f"Index({str(self.path)!r}, collection={self.collection_name!r}, {mode})"


def _concat(parts: list[Any]) -> Any:
    """One array of the encoder's output slices (numpy arrays, tensors or lists)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if hasattr(first, "detach"):  # torch
        import torch

        return torch.cat(parts)
    if hasattr(first, "shape"):
        import numpy as np

        return np.concatenate(parts)
    return [row for part in parts for row in part]
