"""Typed errors raised by ctxkit. Each message says what went wrong and what to do."""

from __future__ import annotations

__all__ = [
    "CtxkitError",
    "ConfigError",
    "ModelNotAvailableError",
    "MissingDependencyError",
    "IndexNotFoundError",
    "InputError",
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
