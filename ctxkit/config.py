"""Build stages and pipelines from dicts / YAML; the stage registry.

A stage spec is a dict with a ``type`` key and the stage's settings::

    stages:
      - type: chroma
        path: ./index
        k: 100
      - type: cross_encoder
        model: ./models/ms-marco-MiniLM-L-6-v2
        k: 20

``type`` is a registered name (built-in, registered with :func:`register_stage`, or published by
another package under the entry-point group ``ctxkit.stages``) or an import path
``"package.module:ClassName"``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["register_stage", "build_stage", "load_pipeline", "available_stages", "stage_type_name"]

ENTRY_POINT_GROUP = "ctxkit.stages"

# Built-in stages: registered name -> "module:Class". Modules are imported only when used.
_BUILTIN: dict[str, str] = {
    # retrievers (matching)
    "chroma": "ctxkit.retrievers.chroma:ChromaRetriever",
    "bm25": "ctxkit.retrievers.bm25:BM25Retriever",
    "hybrid": "ctxkit.retrievers.hybrid:HybridRetriever",
    "generate": "ctxkit.llm.stage:GenerateAnswer",
    # FaithfulRAG and LLM-free conflict records
    "conflict_check": "ctxkit.faithfulness.conflicts:ConflictCheck",
    "self_knowledge": "ctxkit.faithfulness.faithfulrag:SelfKnowledge",
    "self_context": "ctxkit.faithfulness.faithfulrag:SelfContext",
    "fact_extraction": "ctxkit.faithfulness.faithfulrag:FactExtraction",
    "self_facts": "ctxkit.faithfulness.faithfulrag:SelfFacts",
    "fact_aligner": "ctxkit.faithfulness.faithfulrag:FactAligner",
    "self_think_answer": "ctxkit.faithfulness.faithfulrag:SelfThinkAnswer",
    "faithful_rag": "ctxkit.faithfulness.faithfulrag:FaithfulRAG",
    # Pistis-RAG cascade (pre-ranking, ranking, arrangement, reasoning & aggregating)
    "bi_encoder": "ctxkit.rankers.prerank:BiEncoderPreRanker",
    "cross_encoder": "ctxkit.rankers.prerank:CrossEncoderPreRanker",
    "feedback_ranker": "ctxkit.rankers.listwise:FeedbackRanker",
    "arrange": "ctxkit.rankers.arrange:Arranger",
    "record_feedback": "ctxkit.rankers.record:RecordFeedback",
    "reason_aggregate": "ctxkit.rankers.aggregate:ReasonAggregate",
    "rw_steering": "ctxkit.faithfulness.steering:SteeringFilter",
}

_RUNTIME: dict[str, type] = {}


def register_stage(name: str, cls: type) -> None:
    """Register ``cls`` under ``name`` for config files (overrides built-ins of that name)."""
    if not name or not isinstance(name, str):
        raise ConfigError("register_stage: name must be a non-empty string")
    _RUNTIME[name] = cls


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_stages() -> list[str]:
    """All stage type names usable in a config."""
    return sorted(set(_BUILTIN) | set(_RUNTIME) | set(_entry_points()))


def _import_path(path: str) -> type:
    module, _, attr = path.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import stage {path!r}: {exc}") from exc
    return obj


def resolve_stage_type(name: str) -> type:
    """The class registered under ``name`` (or found at the import path ``name``)."""
    if name in _RUNTIME:
        return _RUNTIME[name]
    if name in _BUILTIN:
        return _import_path(_BUILTIN[name])
    eps = _entry_points()
    if name in eps:
        try:
            return eps[name].load()
        except Exception as exc:  # a broken plugin must not look like a missing one
            raise ConfigError(f"stage {name!r} from entry point {eps[name].value!r} failed to load: {exc}") from exc
    if ":" in name:
        return _import_path(name)
    raise ConfigError(
        f"unknown stage type {name!r}; known types: {', '.join(available_stages())} "
        "(or use an import path 'package.module:ClassName')"
    )


def stage_type_name(cls: type) -> str:
    """The name under which ``cls`` is written into configs."""
    for name, c in _RUNTIME.items():
        if c is cls:
            return name
    target = f"{cls.__module__}:{cls.__qualname__}"
    for name, path in _BUILTIN.items():
        if path == target:
            return name
    registered = getattr(cls, "stage_type", None)
    if registered and registered in _entry_points():
        return registered
    return target


def build_stage(spec: Mapping[str, Any]) -> Any:
    """Build one stage from ``{"type": ..., **settings}``."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"a stage spec must be a mapping with a 'type' key, got {spec!r}")
    spec = dict(spec)
    type_name = spec.pop("type", None)
    if not type_name:
        raise ConfigError(f"stage spec {spec!r} has no 'type' key; known types: {', '.join(available_stages())}")
    cls = resolve_stage_type(str(type_name))
    try:
        return cls(**spec)
    except ConfigError as exc:
        raise ConfigError(f"stage {type_name!r}: {exc}") from None
    except TypeError as exc:
        raise ConfigError(f"stage {type_name!r}: {exc}") from None


def load_pipeline(source: str | os.PathLike[str] | Mapping[str, Any]) -> Any:
    """Build a :class:`~ctxkit.Pipeline` from a YAML file path, a YAML string or a dict.

    Raises:
        ConfigError: unknown stage types or keys, invalid values (the message names the stage and
            field), or a malformed file.
    """
    from .pipeline import Pipeline

    if isinstance(source, Mapping):
        cfg: Any = dict(source)
    else:
        import yaml

        text = str(source)
        path = Path(text)
        try:
            is_file = "\n" not in text and path.is_file()
        except OSError:
            is_file = False
        if is_file:
            text = path.read_text(encoding="utf-8")
        elif isinstance(source, os.PathLike) or text.endswith((".yaml", ".yml")):
            raise ConfigError(f"pipeline config file {text!r} does not exist")
        try:
            cfg = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"pipeline config is not valid YAML: {exc}") from exc
    if not isinstance(cfg, dict) or not isinstance(cfg.get("stages"), list):
        raise ConfigError("a pipeline config needs a top-level 'stages' list of stage specs")
    unknown = set(cfg) - {"stages", "batch_size"}
    if unknown:
        raise ConfigError(f"unknown pipeline keys {sorted(unknown)}; allowed: 'stages', 'batch_size'")
    stages = [build_stage(s) for s in cfg["stages"]]
    return Pipeline(stages, batch_size=cfg.get("batch_size"))
