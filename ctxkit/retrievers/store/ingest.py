"""``ingest()``: files, folders and documents into an index folder in one call."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ...errors import NothingIndexedError
from .documents import Document
from .index import Index, OnDuplicate
from .loaders import LoadLog, load_documents
from .report import IngestReport

__all__ = ["ingest"]


def ingest(
    paths_or_docs: str | Path | Iterable[str | Path | Document | dict[str, Any]],
    index: str | Path | Index,
    *,
    show_progress: bool = False,
    batch_size: int = 256,
    on_duplicate: OnDuplicate = "error",
    on_warning: Callable[[str], None] | None = None,
    **settings: Any,
) -> IngestReport:
    """Ingest files, folders or documents into the index folder ``index`` (created if needed).

    Args:
        paths_or_docs: A path, or an iterable of paths (files/folders: ``.md``, ``.txt``,
            ``.jsonl``), :class:`Document` objects or document dicts.
        index: An index folder or an open :class:`Index`.
        show_progress: Show a progress bar (chunks embedded, documents read).
        batch_size: Documents per write batch.
        on_duplicate: The same document id twice: ``"error"`` (default) raises
            :class:`~ctxkit.errors.DuplicateDocumentError`; ``"keep_last"`` keeps the last
            record, warns, and lists the id in ``report.duplicates``.
        on_warning: Called once with each warning (skipped file or line, duplicate id);
            default: logged by ``logging``.
        **settings: Index settings for a new index (``embedding_model``, ``chunk_size``,
            ``chunk_overlap``, ``chunk_unit``, ``collection``, ``host``, ``port``, ``device``).

    Returns:
        An :class:`IngestReport` (unreadable files and lines are listed in ``skipped`` and
        warned about, never raised).

    Raises:
        NothingIndexedError: no document at all was read (an empty folder, every file skipped,
            an empty list); ``exc.report.skipped`` says why.
        DuplicateDocumentError: a repeated id with ``on_duplicate="error"``.

    Example:
        >>> report = ingest(["docs/", "notes.txt"], index="./index")
        >>> print(report.summary())
    """
    idx = index if isinstance(index, Index) else Index(index, **settings)
    if isinstance(paths_or_docs, str | Path):
        paths_or_docs = [paths_or_docs]
    items = list(paths_or_docs) if not isinstance(paths_or_docs, Iterator) else paths_or_docs
    load_log = LoadLog(on_warning=on_warning)

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

    report = idx.add(docs(), show_progress=show_progress, batch_size=batch_size,
                     on_duplicate=on_duplicate, on_warning=on_warning)
    report.skipped.extend(load_log.skipped)
    report.files = load_log.files
    if report.documents == 0:
        if report.skipped:
            why = f"all {len(report.skipped)} files or lines were skipped (see the warnings)"
        elif report.files:
            why = f"{report.files} file(s) were read but hold no document"
        else:
            why = "no .md, .txt or .jsonl file was found and no document was given"
        raise NothingIndexedError(
            f"nothing was indexed into {str(idx.path)!r}: {why}; point ingest at files or folders "
            "holding .md, .txt or BEIR-style .jsonl documents",
            report=report,
        )
    return report
