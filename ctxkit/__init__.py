"""ctxkit: context engineering for retrieval-augmented generation.

``import ctxkit`` is light: torch, transformers, chromadb, langchain and llama_index are imported
only by the stages that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

__all__ = [
    "BaseStage",
    "CapabilityError",
    "ConfigError",
    "Conflict",
    "ContextState",
    "CtxkitError",
    "IndexNotFoundError",
    "InputError",
    "MissingDependencyError",
    "ModelNotAvailableError",
    "Passage",
    "Pipeline",
    "Stage",
    "StageRecord",
    "Trace",
    "__version__",
    "available_stages",
    "build_stage",
    "load_pipeline",
    "register_stage",
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
    "build_stage": "ctxkit.registry",
    "register_stage": "ctxkit.registry",
    "available_stages": "ctxkit.registry",
    "CtxkitError": "ctxkit.errors",
    "CapabilityError": "ctxkit.errors",
    "ConfigError": "ctxkit.errors",
    "InputError": "ctxkit.errors",
    "ModelNotAvailableError": "ctxkit.errors",
    "MissingDependencyError": "ctxkit.errors",
    "IndexNotFoundError": "ctxkit.errors",
}

if TYPE_CHECKING:
    from .config import load_pipeline
    from .errors import (
        CapabilityError,
        ConfigError,
        CtxkitError,
        IndexNotFoundError,
        InputError,
        MissingDependencyError,
        ModelNotAvailableError,
    )
    from .pipeline import BaseStage, Pipeline, Stage
    from .registry import available_stages, build_stage, register_stage
    from .types import Conflict, ContextState, Passage, StageRecord, Trace


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
