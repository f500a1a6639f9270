"""Matching: Chroma (embedded or server), BM25 and hybrid fusion retrievers, chunking, ingest.

The store (:mod:`ctxkit.retrievers.store`: documents, loaders, the index folder with its chunk
store, Chroma collection and BM25 statistics, ``ingest()``) is apart from the thin retriever
stages that query it (:mod:`.chroma`, :mod:`.bm25`, :mod:`.hybrid` on :mod:`.base`);
:mod:`.chunking` is plain text splitting, used by the store and by the faithfulness methods.

Everything is imported lazily: ``import ctxkit.retrievers`` loads neither chromadb nor bm25s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

__all__ = [
    "BM25Retriever",
    "BaseRetriever",
    "ChromaRetriever",
    "Document",
    "HybridRetriever",
    "Index",
    "IngestReport",
    "chunk_text",
    "fuse",
    "ingest",
    "load_documents",
    "split_sentences",
]

_LAZY = {
    "split_sentences": "ctxkit.retrievers.chunking",
    "chunk_text": "ctxkit.retrievers.chunking",
    "Document": "ctxkit.retrievers.store.documents",
    "Index": "ctxkit.retrievers.store.index",
    "IngestReport": "ctxkit.retrievers.store.report",
    "ingest": "ctxkit.retrievers.store.ingest",
    "load_documents": "ctxkit.retrievers.store.loaders",
    "BaseRetriever": "ctxkit.retrievers.base",
    "ChromaRetriever": "ctxkit.retrievers.chroma",
    "BM25Retriever": "ctxkit.retrievers.bm25",
    "HybridRetriever": "ctxkit.retrievers.hybrid",
    "fuse": "ctxkit.retrievers.hybrid",
}

if TYPE_CHECKING:
    from .base import BaseRetriever
    from .bm25 import BM25Retriever
    from .chroma import ChromaRetriever
    from .chunking import chunk_text, split_sentences
    from .hybrid import HybridRetriever, fuse
    from .store.documents import Document
    from .store.index import Index
    from .store.ingest import ingest
    from .store.loaders import load_documents
    from .store.report import IngestReport


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
