"""Errors of the service and the HTTP status each ctxkit error maps to."""

from __future__ import annotations

from ..errors import (
    ConfigError,
    CtxkitError,
    IndexNotFoundError,
    InputError,
    MissingDependencyError,
)

__all__ = ["ServiceError", "error_status"]


class ServiceError(CtxkitError):
    """A request the service refuses or cannot serve, with its HTTP status and a stable code.

    Args:
        status: HTTP status (4xx: the request's fault; 5xx: the service's).
        code: Short machine-readable code, e.g. ``"path_not_allowed"``.
        message: What went wrong and what to do.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_status(exc: BaseException) -> tuple[int, str, str]:
    """``(status, code, message)`` for an exception raised while serving a request.

    Typed ctxkit errors keep their message (it says what to do); anything else is a 500 whose
    message names the exception, never a traceback (that goes to the service log).
    """
    from ..rankers.feedback import UnknownEventError, UnknownListError

    if isinstance(exc, ServiceError):
        return exc.status, exc.code, exc.message
    if isinstance(exc, UnknownListError):
        return 404, "unknown_list", str(exc)
    if isinstance(exc, UnknownEventError):
        return 422, "unknown_event", str(exc)
    if isinstance(exc, InputError):
        return 422, "invalid_input", str(exc)
    if isinstance(exc, IndexNotFoundError):
        return 409, "no_index", str(exc)
    if isinstance(exc, MissingDependencyError):
        return 501, "missing_dependency", str(exc)
    if isinstance(exc, ConfigError):
        return 409, "not_configured", str(exc)
    if isinstance(exc, TimeoutError):
        return 504, "timeout", str(exc) or "the request took longer than the service's request timeout"
    return 500, "internal_error", f"the pipeline failed on this request: {type(exc).__name__}: {exc}"
