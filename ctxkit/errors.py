"""Typed errors raised by ctxkit. Each message says what went wrong and what to do."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = [
    "CapabilityError",
    "ConfigError",
    "CtxkitError",
    "DuplicateDocumentError",
    "IndexNotFoundError",
    "InputError",
    "MissingDependencyError",
    "ModelNotAvailableError",
    "NothingIndexedError",
    "format_validation_error",
]


class CtxkitError(Exception):
    """Base class of every error ctxkit raises on purpose."""


class ConfigError(CtxkitError, ValueError):
    """A stage or pipeline configuration is invalid (unknown stage, wrong field or value)."""


class InputError(CtxkitError, ValueError):
    """Bad user input: an empty query, an unreadable file, an unknown option."""


class ModelNotAvailableError(CtxkitError, OSError):
    """A model cannot be found locally and cannot be downloaded (offline)."""


class MissingDependencyError(CtxkitError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class CapabilityError(CtxkitError, NotImplementedError):
    """A backend cannot do what was asked (score continuations, run logits processors...).

    Raised up front, before any work, by the callers that need the capability; the message says
    what is missing and what to use instead.

    Attributes:
        capability: What was needed, e.g. ``"scoring"`` or ``"logits_processors"``.
        backend: The generator (or server) that lacks it.
    """

    def __init__(self, message: str, *, capability: str = "", backend: str = "") -> None:
        super().__init__(message)
        self.capability = capability
        self.backend = backend


class IndexNotFoundError(CtxkitError, FileNotFoundError):
    """An index path does not exist or holds no ctxkit index."""


class DuplicateDocumentError(InputError):
    """One ingest holds the same document id twice (the default ``on_duplicate="error"``).

    Attributes:
        doc_id: The repeated id.
        sources: Where the two documents came from (their ``source`` metadata, when known).
        written: Documents written by this ingest before the duplicate was found.
    """

    def __init__(self, message: str, *, doc_id: str = "", sources: tuple[str, ...] = (), written: int = 0) -> None:
        super().__init__(message)
        self.doc_id = doc_id
        self.sources = sources
        self.written = written


class NothingIndexedError(InputError):
    """An ingest read no document at all: an empty folder, or every file skipped.

    Attributes:
        report: The :class:`~ctxkit.retrievers.IngestReport` (its ``skipped`` list says why).
    """

    def __init__(self, message: str, *, report: object = None) -> None:
        super().__init__(message)
        self.report = report


def format_validation_error(owner: str, exc: ValidationError) -> str:
    """One line per wrong field of a pydantic :class:`~pydantic.ValidationError`, for a
    :class:`ConfigError` about the settings of ``owner`` (a stage or component name)."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<settings>"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown field {loc!r}")
        else:
            parts.append(f"field {loc!r}: {err['msg']} (got {err.get('input')!r})")
    return f"invalid settings for stage {owner}: " + "; ".join(parts)
