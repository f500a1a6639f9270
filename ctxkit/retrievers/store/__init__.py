"""The store behind the retrievers: an index folder and everything that writes it.

One concept per module:

- :mod:`~ctxkit.retrievers.store.documents`: :class:`Document`, what goes in.
- :mod:`~ctxkit.retrievers.store.loaders`: ``.md`` / ``.txt`` / BEIR ``.jsonl`` files to documents.
- :mod:`~ctxkit.retrievers.store.index`: :class:`Index`, the folder (manifest, SQLite chunk
  store, Chroma collection, BM25 rebuilds).
- :mod:`~ctxkit.retrievers.store.bm25_index`: the BM25 statistics, built and saved from the chunk store.
- :mod:`~ctxkit.retrievers.store.clients`: Chroma clients shared per process.
- :mod:`~ctxkit.retrievers.store.embedding_function`: ctxkit's embedder as a Chroma embedding
  function (imports chromadb).
- :mod:`~ctxkit.retrievers.store.report`: :class:`IngestReport`.
- :mod:`~ctxkit.retrievers.store.ingest`: ``ingest()``, files and documents into a folder.

The retriever stages (:mod:`ctxkit.retrievers.chroma`, ``.bm25``, ``.hybrid``) only query the
store. Public names are exported from :mod:`ctxkit.retrievers`; importing this package loads
nothing (no chromadb, no bm25s).
"""
