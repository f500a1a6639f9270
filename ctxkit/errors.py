"""Typed errors raised by ctxkit. Each message says what went wrong and what to do."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = [
    "ConfigError",
    "CtxkitError",
    "IndexNotFoundError",
    "InputError",
    "MissingDependencyError",
    "ModelNotAvailableError",
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


class IndexNotFoundError(CtxkitError, FileNotFoundError):
    """An index path does not exist or holds no ctxkit index."""


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
