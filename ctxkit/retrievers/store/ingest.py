"""``ingest()``: files, folders and documents into an index folder in one call."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .documents import Document
from .index import Index
from .loaders import LoadLog, load_documents
from .report import IngestReport

__all__ = ["ingest"]


def ingest(
    paths_or_docs: str | Path | Iterable[str | Path | Document | dict[str, Any]],
    index: str | Path | Index,
    *,
    show_progress: bool = False,
    batch_size: int = 256,
    **settings: Any,
) -> IngestReport:
    """Ingest files, folders or documents into the index folder ``index`` (created if needed).

    Args:
        paths_or_docs: A path, or an iterable of paths (files/folders: ``.md``, ``.txt``,
            ``.jsonl``), :class:`Document` objects or document dicts.
        index: An index folder or an open :class:`Index`.
        show_progress: Show progress bars.
        batch_size: Documents per write batch.
        **settings: Index settings for a new index (``embedding_model``, ``chunk_size``,
            ``chunk_overlap``, ``chunk_unit``, ``collection``, ``host``, ``port``, ``device``).

    Returns:
        An :class:`IngestReport` (unreadable files are listed in ``skipped``, never raised).

    Example:
        >>> report = ingest(["docs/", "notes.txt"], index="./index")
        >>> print(report.summary())
    """
    idx = index if isinstance(index, Index) else Index(index, **settings)
    if isinstance(paths_or_docs, str | Path):
        paths_or_docs = [paths_or_docs]
    items = list(paths_or_docs) if not isinstance(paths_or_docs, Iterator) else paths_or_docs
    load_log = LoadLog()

    def docs() -> Iterator[Document | dict[str, Any]]:
        pending: list[str | Path] = []
        for item in items:
            if isinstance(item, str | Path):
                pending.append(item)
                continue
            if pending:
                yield from load_documents(pending, load_log)
                pending = []
            yield item
        if pending:
            yield from load_documents(pending, load_log)

    report = idx.add(docs(), show_progress=show_progress, batch_size=batch_size)
    report.skipped.extend(load_log.skipped)
    report.files = load_log.files
    return report
