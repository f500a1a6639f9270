"""Where ``ctxkit quickstart`` finds its corpus: ctxkit's own documentation pages.

The pages have one source, the repository's ``docs/`` folder. Building a wheel copies them into
the package (``ctxkit/cli/tour_docs/``, done by ``setup.py`` with :func:`copy_tour`), so that an
installed ctxkit runs the same tour as a source checkout, which reads ``docs/`` itself.

This module imports nothing outside the standard library: ``setup.py`` loads it by path while
building, before ctxkit's dependencies exist.
"""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["TOUR_DIR_NAME", "TOUR_SUFFIXES", "checkout_docs", "copy_tour", "find_tour_docs", "packaged_docs", "tour_files"]

TOUR_DIR_NAME = "tour_docs"
"""The folder, next to this module in an installed package, that holds the shipped pages."""

TOUR_SUFFIXES = (".md", ".markdown", ".txt", ".jsonl")
"""The files of ``docs/`` that are shipped: the ones ``ctxkit ingest`` reads (a test keeps this
equal to :data:`ctxkit.retrievers.store.loaders.SUPPORTED_SUFFIXES`)."""


def tour_files(docs: Path) -> list[Path]:
    """The pages under ``docs`` that the tour indexes, relative to ``docs``, sorted (hidden
    files and folders excluded, as the loaders do)."""
    return sorted(
        f.relative_to(docs)
        for f in docs.rglob("*")
        if f.is_file()
        and f.suffix.lower() in TOUR_SUFFIXES
        and not any(part.startswith(".") for part in f.relative_to(docs).parts)
    )


def copy_tour(docs: Path, target: Path) -> list[Path]:
    """Copy the tour's pages from ``docs`` into ``target`` (replaced); returns the copied files.

    Raises:
        FileNotFoundError: ``docs`` is missing or holds no page (a wheel without its tour).
    """
    files = tour_files(docs) if docs.is_dir() else []
    if not files:
        raise FileNotFoundError(
            f"no documentation pages in {docs}: the quickstart tour ships them; build the wheel "
            "from a checkout or an sdist that includes docs/"
        )
    if target.exists():
        shutil.rmtree(target)
    for rel in files:
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(docs / rel, dest)
    return [target / rel for rel in files]


def packaged_docs() -> Path:
    """Where an installed wheel keeps the pages (``ctxkit/cli/tour_docs``)."""
    return Path(__file__).resolve().parent / TOUR_DIR_NAME


def checkout_docs() -> Path:
    """The ``docs/`` folder of a source checkout (or an editable install) of ctxkit."""
    return Path(__file__).resolve().parents[2] / "docs"


def find_tour_docs() -> Path | None:
    """The tour's pages: the packaged copy when installed from a wheel, else the checkout's
    ``docs/``; ``None`` when neither exists."""
    for candidate in (packaged_docs(), checkout_docs()):
        if candidate.is_dir() and tour_files(candidate):
            return candidate
    return None
