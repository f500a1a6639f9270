"""Matching: Chroma (embedded or server), BM25 and hybrid fusion retrievers, chunking, ingest.

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
    "Document": "ctxkit.retrievers.index",
    "Index": "ctxkit.retrievers.index",
    "IngestReport": "ctxkit.retrievers.index",
    "ingest": "ctxkit.retrievers.index",
    "load_documents": "ctxkit.retrievers.loaders",
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
    from .index import Document, Index, IngestReport, ingest
    from .loaders import load_documents


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
