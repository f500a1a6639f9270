"""What an ingest did: :class:`IngestReport`, returned by :meth:`Index.add` and :func:`ingest`."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["IngestReport"]


@dataclass
class IngestReport:
    """What an ingest did.

    Attributes:
        documents: Documents seen.
        written: Documents (re)written because they were new or changed.
        unchanged: Documents skipped because the index already held the same text.
        duplicates: Ids met more than once in this ingest, once per extra occurrence (only with
            ``on_duplicate="keep_last"``: the last record of each id was kept).
        chunks_written: Chunks embedded and upserted.
        chunks_deleted: Stale chunks removed from changed documents.
        skipped: ``(where, reason)`` for every file or line that could not be read.
        files: Files read (filled by the CLI / :func:`ingest` when given paths).
        seconds: Wall time.
    """

    documents: int = 0
    written: int = 0
    unchanged: int = 0
    duplicates: list[str] = field(default_factory=list)
    chunks_written: int = 0
    chunks_deleted: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    files: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for humans."""
        dup = f", {len(self.duplicates)} duplicate ids (last kept)" if self.duplicates else ""
        return (
            f"{self.documents} documents ({self.written} written, {self.unchanged} unchanged{dup}), "
            f"{self.chunks_written} chunks written, {self.chunks_deleted} stale chunks deleted, "
            f"{len(self.skipped)} skipped, in {self.seconds:.1f}s"
        )
