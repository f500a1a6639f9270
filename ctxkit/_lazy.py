"""Lazy imports: optional dependencies that fail with an install hint, and lazy package exports."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from .errors import MissingDependencyError

_EXTRA_OF = {
    "torch": "hf",
    "transformers": "hf",
    "sentence_transformers": "hf",
    "safetensors": "hf",
    "chromadb": "chroma",
    "bm25s": "bm25",
    "langchain_core": "langchain",
    "llama_index": "llamaindex",
    "scipy": "science",
    "matplotlib": "science",
    "sklearn": "science",
    "peft": "train",
    "httpx": "openai",
    "fastapi": "serve",
    "starlette": "serve",
    "uvicorn": "serve",
    "mcp": "serve",
    "psycopg": "postgres",
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = _EXTRA_OF.get(top, "all")
        raise MissingDependencyError(
            f"ctxkit needs the optional dependency {top!r} for this feature "
            f"({exc}). Install it with: pip install \"ctxkit[{extra}]\""
        ) from exc


def lazy_exports(
    package: str, table: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for a package whose public names load on first use.

    Args:
        package: The package's ``__name__``.
        table: Public name -> ``"module"`` or ``"module:attribute"`` (when the attribute has
            another name); the module is imported only when the name is first looked up.

    Example:
        >>> __getattr__, __dir__ = lazy_exports(__name__, {"Index": "ctxkit.retrievers.store"})
    """

    def __getattr__(name: str) -> Any:
        try:
            module, _, attr = table[name].partition(":")
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module), attr or name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(table)

    return __getattr__, __dir__
