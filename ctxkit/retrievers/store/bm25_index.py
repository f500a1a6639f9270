"""The store's BM25 index on ``bm25s``: tokenising, building the statistics, saving and loading.

BM25 statistics are global (document frequencies over every chunk), so the store rebuilds them
from the whole chunk store after each write; :class:`~ctxkit.retrievers.BM25Retriever` only
loads what is saved here and queries it. A saved folder holds the bm25s index plus two files:
``ctxkit_ids.json`` (the chunk id of every bm25s row) and ``ctxkit_state.json`` (the chunk
store generation it covers).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ..._lazy import require
from ...errors import IndexNotFoundError

__all__ = ["IDS_FILE", "STATE_FILE", "build_bm25", "load_bm25", "save_bm25", "saved_generation", "tokenize"]

log = logging.getLogger(__name__)

IDS_FILE = "ctxkit_ids.json"
STATE_FILE = "ctxkit_state.json"


def _stemmer(language: str | None) -> Any:
    if not language:
        return None
    try:
        import Stemmer
    except ImportError:  # PyStemmer is in the bm25 extra; without it BM25 still works, unstemmed
        log.warning("PyStemmer is not installed: BM25 runs without stemming (pip install 'ctxkit[bm25]')")
        return None
    return Stemmer.Stemmer(language).stemWords


def tokenize(texts: list[str], settings: dict[str, Any], show_progress: bool = False) -> Any:
    """bm25s tokens for ``texts`` with the index's stemmer and stop words."""
    bm25s = require("bm25s")
    return bm25s.tokenize(
        texts,
        stopwords=settings.get("stopwords", "en"),
        stemmer=_stemmer(settings.get("stemmer", "english")),
        show_progress=show_progress,
    )


def build_bm25(texts: list[str], settings: dict[str, Any], show_progress: bool = False) -> Any:
    """A ``bm25s.BM25`` indexed over ``texts``."""
    bm25s = require("bm25s")
    # bm25s logs every index build at DEBUG on its own handler; keep it quiet unless asked.
    logging.getLogger("bm25s").setLevel(max(logging.getLogger().level, logging.INFO))
    model = bm25s.BM25(k1=settings.get("k1", 1.5), b=settings.get("b", 0.75))
    model.index(tokenize(texts, settings, show_progress), show_progress=show_progress)
    return model


def save_bm25(
    directory: Path,
    ids: list[str],
    texts: list[str],
    settings: dict[str, Any],
    generation: int,
    show_progress: bool = False,
) -> None:
    """Build BM25 over ``texts`` and replace ``directory`` with it.

    The new index is written to ``<directory>.tmp`` and swapped in by renames, so a reader never
    sees a half-written folder.

    Args:
        directory: The BM25 folder of the index.
        ids: Chunk id of every text.
        texts: Every chunk's text.
        settings: The manifest's ``bm25`` settings (``k1``, ``b``, ``stemmer``, ``stopwords``).
        generation: The chunk store generation these chunks come from.
        show_progress: Show bm25s progress bars.
    """
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        _rmtree(tmp)
    tmp.mkdir()
    if ids:
        model = build_bm25(texts, settings, show_progress=show_progress)
        model.save(str(tmp), show_progress=False)
    (tmp / IDS_FILE).write_text(json.dumps(ids), encoding="utf-8")
    (tmp / STATE_FILE).write_text(json.dumps({"generation": generation, "n": len(ids)}))
    old = directory.with_name(directory.name + ".old")
    if old.exists():
        _rmtree(old)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    if old.exists():
        _rmtree(old)


def saved_generation(directory: Path) -> int | None:
    """The chunk store generation the BM25 folder covers (``None`` when missing or unreadable)."""
    state = directory / STATE_FILE
    if not state.exists():
        return None
    try:
        return int(json.loads(state.read_text())["generation"])
    except (OSError, ValueError, KeyError):
        return None


def load_bm25(directory: Path, index_path: Path) -> tuple[list[str], int, Any]:
    """The saved BM25 index.

    Args:
        directory: The BM25 folder.
        index_path: The index folder (named in the error message).

    Returns:
        ``(chunk ids, generation, bm25s.BM25 or None when the index holds no chunk)``.

    Raises:
        IndexNotFoundError: nothing was saved in ``directory``.
    """
    ids_file = directory / IDS_FILE
    if not ids_file.exists():
        raise IndexNotFoundError(f"no BM25 data in {str(directory)!r}: run `ctxkit ingest ... --index {index_path}`")
    ids = json.loads(ids_file.read_text(encoding="utf-8"))
    generation = json.loads((directory / STATE_FILE).read_text())["generation"]
    if ids:
        bm25s = require("bm25s")
        model = bm25s.BM25.load(str(directory), show_progress=False)
    else:
        model = None
    return ids, generation, model


def _rmtree(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True)
