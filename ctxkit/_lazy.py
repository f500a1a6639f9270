"""Lazy optional imports that fail with an install hint instead of a bare ImportError."""

from __future__ import annotations

import importlib
from types import ModuleType

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
