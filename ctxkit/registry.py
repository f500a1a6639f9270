"""Stage types: the names that configs use for stages, declared once, resolved lazily.

A name maps to ``"module:Class"``; the module is imported only when a config uses the name. Other
packages publish stages under the entry-point group ``ctxkit.stages``; an application registers
its own with :func:`register_stage`; a config may also name any class by its import path
``"package.module:ClassName"``. This module never imports :mod:`ctxkit.pipeline`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from .errors import ConfigError

__all__ = [
    "BUILTIN_STAGES",
    "ENTRY_POINT_GROUP",
    "available_stages",
    "build_stage",
    "builtin_name",
    "register_stage",
    "registered_name",
    "resolve_stage_type",
    "stage_type_name",
]

ENTRY_POINT_GROUP = "ctxkit.stages"

# The built-in stages: config name -> "module:Class" (the module that defines the class).
BUILTIN_STAGES: dict[str, str] = {
    # matching
    "chroma": "ctxkit.retrievers.chroma:ChromaRetriever",
    "bm25": "ctxkit.retrievers.bm25:BM25Retriever",
    "hybrid": "ctxkit.retrievers.hybrid:HybridRetriever",
    # Pistis-RAG cascade: pre-ranking, ranking, arrangement, reasoning & aggregating
    "bi_encoder": "ctxkit.rankers.prerank:BiEncoderPreRanker",
    "cross_encoder": "ctxkit.rankers.prerank:CrossEncoderPreRanker",
    "feedback_ranker": "ctxkit.rankers.listwise:FeedbackRanker",
    "arrange": "ctxkit.rankers.arrange:Arranger",
    "record_feedback": "ctxkit.rankers.record:RecordFeedback",
    "reason_aggregate": "ctxkit.rankers.aggregate:ReasonAggregate",
    # FaithfulRAG and LLM-free conflict records
    "conflict_check": "ctxkit.faithfulness.conflicts.stage:ConflictCheck",
    "self_knowledge": "ctxkit.faithfulness.faithfulrag.stages:SelfKnowledge",
    "self_context": "ctxkit.faithfulness.faithfulrag.stages:SelfContext",
    "fact_extraction": "ctxkit.faithfulness.faithfulrag.stages:FactExtraction",
    "self_facts": "ctxkit.faithfulness.faithfulrag.stages:SelfFacts",
    "fact_aligner": "ctxkit.faithfulness.faithfulrag.stages:FactAligner",
    "self_think_answer": "ctxkit.faithfulness.faithfulrag.stages:SelfThinkAnswer",
    "faithful_rag": "ctxkit.faithfulness.faithfulrag.stages:FaithfulRAG",
    # Rescorla-Wagner steering
    "rw_steering": "ctxkit.faithfulness.steering.stage:SteeringFilter",
    "isolate_aggregate": "ctxkit.faithfulness.steering.isolate:IsolateAggregate",
    # generation
    "generate": "ctxkit.llm.stage:GenerateAnswer",
}

_RUNTIME: dict[str, type] = {}


def register_stage(name: str, cls: type) -> None:
    """Register ``cls`` under ``name`` for config files (overrides a built-in of that name)."""
    if not name or not isinstance(name, str):
        raise ConfigError("register_stage: name must be a non-empty string")
    _RUNTIME[name] = cls


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_stages() -> list[str]:
    """All stage type names usable in a config."""
    return sorted(set(BUILTIN_STAGES) | set(_RUNTIME) | set(_entry_points()))


def _import_path(path: str) -> type:
    module, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import stage {path!r}: {exc}") from exc


def resolve_stage_type(name: str) -> type:
    """The class registered under ``name`` (or found at the import path ``name``)."""
    if name in _RUNTIME:
        return _RUNTIME[name]
    if name in BUILTIN_STAGES:
        return _import_path(BUILTIN_STAGES[name])
    eps = _entry_points()
    if name in eps:
        try:
            return eps[name].load()
        except Exception as exc:  # a broken plugin must not look like a missing one
            raise ConfigError(
                f"stage {name!r} from entry point {eps[name].value!r} failed to load: {exc}"
            ) from exc
    if ":" in name:
        return _import_path(name)
    raise ConfigError(
        f"unknown stage type {name!r}; known types: {', '.join(available_stages())} "
        "(or use an import path 'package.module:ClassName')"
    )


def builtin_name(cls: type) -> str | None:
    """The built-in stage name of ``cls``, if it is a built-in stage."""
    target = f"{cls.__module__}:{cls.__qualname__}"
    return next((name for name, path in BUILTIN_STAGES.items() if path == target), None)


def registered_name(cls: type) -> str | None:
    """The name ``cls`` is registered under at run time or as a built-in, if any."""
    runtime = next((name for name, c in _RUNTIME.items() if c is cls), None)
    return runtime or builtin_name(cls)


def stage_type_name(cls: type) -> str:
    """The ``type`` under which ``cls`` is written into configs (its import path if unregistered)."""
    name = registered_name(cls)
    if name:
        return name
    published = getattr(cls, "stage_type", None)
    if published and published in _entry_points():
        return published
    return f"{cls.__module__}:{cls.__qualname__}"


def build_stage(spec: Mapping[str, Any]) -> Any:
    """Build one stage from ``{"type": ..., **settings}``."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"a stage spec must be a mapping with a 'type' key, got {spec!r}")
    spec = dict(spec)
    type_name = spec.pop("type", None)
    if not type_name:
        raise ConfigError(
            f"stage spec {spec!r} has no 'type' key; known types: {', '.join(available_stages())}"
        )
    cls = resolve_stage_type(str(type_name))
    try:
        return cls(**spec)
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"stage {type_name!r}: {exc}") from None
