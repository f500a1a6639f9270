"""Read documents from files and folders: ``.md``, ``.txt`` and BEIR-style ``.jsonl``."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import InputError
from .documents import Document

__all__ = ["SUPPORTED_SUFFIXES", "LoadLog", "doc_id_for_path", "iter_files", "load_documents"]

log = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".md", ".markdown", ".txt", ".jsonl")


@dataclass
class LoadLog:
    """What the loader skipped, and why (filled while iterating).

    Attributes:
        files: Files read successfully.
        skipped: ``(path, reason)`` for every file or line that was skipped.
        on_warning: Called once with each warning (default: logged by ``logging``); a CLI passes
            its printer here so that each warning is shown once.
    """

    files: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    on_warning: Callable[[str], None] | None = None

    def skip(self, where: str, reason: str) -> None:
        """Record a skipped file or line and warn about it (once)."""
        self.skipped.append((where, reason))
        (self.on_warning or log.warning)(f"skipped {where}: {reason}")


def doc_id_for_path(path: Path) -> str:
    """Document id of a file: its path relative to the working directory (POSIX style) when the
    file lies below it, else its absolute path. Stable across re-runs from the same place."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def iter_files(paths: Iterable[str | os.PathLike[str]], log_: LoadLog | None = None) -> Iterator[Path]:
    """Supported files under ``paths`` (files as given, folders recursively, sorted), each once
    (a file named twice, or inside a folder also given, is read once).

    Raises:
        InputError: a path does not exist.
    """
    seen: set[Path] = set()

    def first_time(f: Path) -> bool:
        key = f.resolve()
        if key in seen:
            return False
        seen.add(key)
        return True

    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            raise InputError(f"no such file or folder: {str(raw)!r}")
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in SUPPORTED_SUFFIXES and not any(
                    part.startswith(".") for part in f.relative_to(p).parts
                ) and first_time(f):
                    yield f
        elif p.suffix.lower() in SUPPORTED_SUFFIXES:
            if first_time(p):
                yield p
        elif log_ is not None:
            log_.skip(str(p), f"unsupported file type {p.suffix or '(none)'!r}; use .md, .txt or .jsonl")


def _markdown_title(text: str) -> str:
    m = re.search(r"^\s{0,3}#\s+(.+?)\s*#*\s*$", text, flags=re.MULTILINE)
    return m.group(1).strip() if m else ""


def load_documents(paths: Iterable[str | os.PathLike[str]], log_: LoadLog | None = None) -> Iterator[Document]:
    """Yield :class:`Document` objects from files and folders, lazily.

    ``.md``/``.txt`` files give one document each (id: see :func:`doc_id_for_path`; title: the
    first markdown heading or the file name). ``.jsonl`` files hold BEIR-style lines
    ``{"_id", "title", "text"}`` (``id`` is accepted too); other keys go to metadata. Files that
    are not UTF-8 or cannot be read, and JSON lines that are malformed, are skipped with a
    warning and recorded in ``log_`` — they never stop the run.

    Args:
        paths: Files and/or folders.
        log_: Collects counts and skipped items.
    """
    log_ = log_ if log_ is not None else LoadLog()
    for f in iter_files(paths, log_):
        try:
            if f.suffix.lower() == ".jsonl":
                yield from _read_jsonl(f, log_)
                log_.files += 1
                continue
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            log_.skip(str(f), "not valid UTF-8 text")
            continue
        except OSError as exc:
            log_.skip(str(f), f"cannot read ({exc.strerror or exc})")
            continue
        log_.files += 1
        if not text.strip():
            log_.skip(str(f), "empty file")
            continue
        title = _markdown_title(text) if f.suffix.lower() in (".md", ".markdown") else ""
        yield Document(
            id=doc_id_for_path(f), text=text, title=title or f.stem, metadata={"source": str(f)}
        )


def _read_jsonl(f: Path, log_: LoadLog) -> Iterator[Document]:
    with f.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            where = f"{f}:{lineno}"
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                log_.skip(where, "not valid UTF-8")
                continue
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                log_.skip(where, f"invalid JSON ({exc.msg})")
                continue
            if not isinstance(row, dict):
                log_.skip(where, "a line must be a JSON object")
                continue
            doc_id = row.get("_id", row.get("id"))
            text = row.get("text")
            if doc_id is None or not isinstance(text, str) or not text.strip():
                log_.skip(where, 'needs "_id" and a non-empty "text"')
                continue
            meta = {k: v for k, v in row.get("metadata", {}).items()} if isinstance(row.get("metadata"), dict) else {}
            meta.update({k: v for k, v in row.items() if k not in ("_id", "id", "title", "text", "metadata")})
            meta["source"] = str(f)
            yield Document(id=str(doc_id), text=text, title=str(row.get("title") or ""), metadata=meta)
