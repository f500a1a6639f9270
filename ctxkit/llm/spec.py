"""Generator specs: plain dicts in configs <-> generator objects.

A spec names a backend and its settings::

    {"backend": "transformers", "model": "default", "batch_size": 16}
    {"backend": "openai", "base_url": "http://localhost:8000/v1", "model": "my-model"}

:func:`build_generator` turns a spec into a generator; transformers generators built from equal
specs are shared within the process (one model load), see :func:`get_generator`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .base import Generator

__all__ = ["BACKENDS", "build_generator", "generator_spec", "get_generator"]

BACKENDS = ("transformers", "openai")

_SHARED: dict[str, Any] = {}
_LOCK = threading.Lock()


def get_generator(model: str = "default", **settings: Any) -> Any:
    """A process-wide shared :class:`~ctxkit.llm.TransformersGenerator` for these settings.

    Stages that use the same model share one loaded copy instead of loading it twice.
    """
    from .transformers import TransformersGenerator

    key = json.dumps({"model": model, **settings}, sort_keys=True, default=str)
    with _LOCK:
        if key not in _SHARED:
            _SHARED[key] = TransformersGenerator(model, **settings)
        return _SHARED[key]


def build_generator(spec: Mapping[str, Any] | Generator | str) -> Any:
    """Build a generator from a spec dict (or return a generator object unchanged).

    Args:
        spec: ``{"backend": "transformers" | "openai", **settings}``; a plain string is a
            transformers model name/path. ``backend`` defaults to ``"transformers"``.

    Raises:
        ConfigError: unknown backend or invalid settings (the message names them).
    """
    if isinstance(spec, str):
        spec = {"backend": "transformers", "model": spec}
    if not isinstance(spec, Mapping):
        if hasattr(spec, "generate"):
            return spec
        raise ConfigError(f"a generator must be a spec dict or a generator object, got {type(spec).__name__}")
    cfg = dict(spec)
    backend = cfg.pop("backend", "transformers")
    if backend == "transformers":
        try:
            return get_generator(**cfg)
        except TypeError as exc:
            raise ConfigError(f"generator spec {dict(spec)!r}: {exc}") from None
    if backend == "openai":
        from .openai import OpenAIGenerator

        try:
            return OpenAIGenerator(**cfg)
        except TypeError as exc:
            raise ConfigError(f"generator spec {dict(spec)!r}: {exc}") from None
    raise ConfigError(
        f"unknown generator backend {backend!r}; use one of {', '.join(BACKENDS)} "
        "(or pass a generator object, e.g. LangChainGenerator(chat_model))"
    )


def generator_spec(gen: Any) -> dict[str, Any] | None:
    """The spec of ``gen`` when it can be written to a config, else ``None``."""
    to_spec = getattr(gen, "to_spec", None)
    return to_spec() if callable(to_spec) else None
