"""ctxkit: context engineering for retrieval-augmented generation.

``import ctxkit`` is light: torch, transformers, chromadb, langchain and llama_index are imported
only by the stages that need them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Pipeline",
    "Stage",
    "BaseStage",
    "Passage",
    "ContextState",
    "Trace",
    "StageRecord",
    "Conflict",
    "load_pipeline",
    "build_stage",
    "register_stage",
    "available_stages",
    "CtxkitError",
    "ConfigError",
    "InputError",
    "ModelNotAvailableError",
    "MissingDependencyError",
    "IndexNotFoundError",
]

_LAZY = {
    "Pipeline": "ctxkit.pipeline",
    "Stage": "ctxkit.pipeline",
    "BaseStage": "ctxkit.pipeline",
    "Passage": "ctxkit.types",
    "ContextState": "ctxkit.types",
    "Trace": "ctxkit.types",
    "StageRecord": "ctxkit.types",
    "Conflict": "ctxkit.types",
    "load_pipeline": "ctxkit.config",
    "build_stage": "ctxkit.config",
    "register_stage": "ctxkit.config",
    "available_stages": "ctxkit.config",
    "CtxkitError": "ctxkit.errors",
    "ConfigError": "ctxkit.errors",
    "InputError": "ctxkit.errors",
    "ModelNotAvailableError": "ctxkit.errors",
    "MissingDependencyError": "ctxkit.errors",
    "IndexNotFoundError": "ctxkit.errors",
}

if TYPE_CHECKING:
    from .config import available_stages, build_stage, load_pipeline, register_stage
    from .errors import (
        ConfigError,
        CtxkitError,
        IndexNotFoundError,
        InputError,
        MissingDependencyError,
        ModelNotAvailableError,
    )
    from .pipeline import BaseStage, Pipeline, Stage
    from .types import Conflict, ContextState, Passage, StageRecord, Trace


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ctxkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
