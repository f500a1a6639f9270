"""Helpers shared by the LangChain and LlamaIndex integrations (no framework imports here)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError, InputError, format_validation_error
from ..llm.base import Message, SamplingSettings
from ..types import ContextState, Passage

# Keys ctxkit writes into a framework document's metadata. They are stripped again when a
# document comes back into ctxkit, so scores are never duplicated into passage metadata.
SCORES_KEY = "scores"
SCORE_KEY = "score"
RANK_KEY = "rank"
DOC_ID_KEY = "doc_id"
CONFLICTS_KEY = "conflicts"
FLAGS_KEY = "flags"
CTXKIT_KEYS = (SCORES_KEY, SCORE_KEY, RANK_KEY, CONFLICTS_KEY, FLAGS_KEY)


def to_pipeline(pipeline: Any) -> Any:
    """Accept a :class:`~ctxkit.Pipeline`, a list of stages, one stage, a config dict or a YAML path."""
    from ..config import load_pipeline
    from ..pipeline import Pipeline, Stage

    if isinstance(pipeline, Pipeline):
        return pipeline
    if isinstance(pipeline, Stage):
        return Pipeline([pipeline])
    if isinstance(pipeline, Mapping | str | os.PathLike):
        return load_pipeline(pipeline)
    if isinstance(pipeline, Sequence):
        return Pipeline(list(pipeline))
    raise ConfigError(
        f"expected a ctxkit Pipeline, a list of stages, a config dict or a YAML path, "
        f"got {type(pipeline).__name__}"
    )


class ValidatedInit:
    """Mixin for pydantic-based adapters: invalid settings raise :class:`ConfigError`."""

    def __init__(self, **data: Any) -> None:
        from pydantic import ValidationError

        try:
            super().__init__(**data)  # type: ignore[call-arg]
        except ValidationError as exc:
            raise ConfigError(format_validation_error(type(self).__name__, exc)) from None


def check_k(k: Any, error: type[Exception] = InputError) -> int | None:
    """Validate a number of results (``None`` means: everything the pipeline kept)."""
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise error(f"k must be a positive integer or None, got {k!r}")
    return k


def passage_annotations(
    state: ContextState, passage: Passage, rank: int, score_stage: str | None = None
) -> dict[str, Any]:
    """Everything ctxkit knows about ``passage``: all stage scores, rank, conflicts, flags.

    ``score`` is the score of ``score_stage`` when given (and present), else the last stage's.
    """
    meta: dict[str, Any] = {
        SCORES_KEY: dict(passage.scores),
        SCORE_KEY: main_score(passage, score_stage),
        RANK_KEY: rank,
    }
    if passage.doc_id is not None:
        meta[DOC_ID_KEY] = passage.doc_id
    conflicts = [c.model_dump() for c in state.conflicts if c.passage_id == passage.id]
    if conflicts:
        meta[CONFLICTS_KEY] = conflicts
    flags = passage_flags(state, passage.id)
    if flags:
        meta[FLAGS_KEY] = flags
    return meta


def main_score(passage: Passage, score_stage: str | None) -> float | None:
    """The score of ``score_stage`` if the passage has it, else the most recent stage's score."""
    if score_stage is not None and score_stage in passage.scores:
        return passage.scores[score_stage]
    return passage.score


def passage_flags(state: ContextState, passage_id: str) -> list[str]:
    """Names of the state's flags that mention ``passage_id`` (a list/set of ids or an id map)."""
    out = []
    for name, value in state.flags.items():
        if isinstance(value, Mapping):
            if value.get(passage_id):
                out.append(name)
        elif isinstance(value, list | tuple | set | frozenset):
            if passage_id in value:
                out.append(name)
        elif value == passage_id:
            out.append(name)
    return out


def make_passage(
    *, id: str | None, text: str, metadata: Mapping[str, Any] | None, index: int, seen: set[str]
) -> Passage:
    """Build a passage from a framework document, restoring earlier ctxkit scores."""
    if not isinstance(text, str):
        raise InputError(f"document {index} has no text content (got {type(text).__name__})")
    meta = dict(metadata or {})
    scores_in = meta.get(SCORES_KEY)
    scores = (
        {str(k): float(v) for k, v in scores_in.items() if isinstance(v, int | float)}
        if isinstance(scores_in, Mapping)
        else {}
    )
    if not scores and isinstance(meta.get(SCORE_KEY), int | float):
        scores = {"input": float(meta[SCORE_KEY])}
    for key in CTXKIT_KEYS:
        meta.pop(key, None)
    doc_id = meta.pop(DOC_ID_KEY, None)
    pid = str(id) if id else str(meta.get("id") or f"doc{index}")
    if pid in seen:
        pid = f"{pid}~{index}"
    seen.add(pid)
    return Passage(
        id=pid,
        text=text,
        doc_id=str(doc_id) if doc_id is not None else None,
        metadata=meta,
        scores=scores,
    )


def query_text(value: Any) -> str:
    """The query from a str or a dict with ``query`` / ``question`` / ``input``."""
    if isinstance(value, ContextState):
        return value.query
    if isinstance(value, Mapping):
        for key in ("query", "question", "input"):
            if isinstance(value.get(key), str):
                return value[key]
        raise InputError(
            f"a dict input needs a 'query', 'question' or 'input' string, got keys {sorted(value)}"
        )
    if isinstance(value, str):
        return value
    raise InputError(f"the query must be a string, got {type(value).__name__}")


ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "ai": "assistant",
    "assistant": "assistant",
    "system": "system",
    "developer": "system",
}


def to_message(role: str, content: str) -> Message:
    """A ctxkit :class:`~ctxkit.llm.base.Message` from a framework role name."""
    mapped = ROLE_ALIASES.get(str(role).lower())
    if mapped is None:
        raise InputError(
            f"message role {role!r} is not supported by ctxkit generators "
            "(use system, user/human or assistant/ai messages)"
        )
    return Message(role=mapped, content=content)


def sampling(
    base: SamplingSettings | None,
    *,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    stop: list[str] | None = None,
) -> SamplingSettings | None:
    """Merge per-call options into the generator settings (``None`` keeps the generator's)."""
    overrides: dict[str, Any] = {}
    if max_new_tokens is not None:
        overrides["max_new_tokens"] = max_new_tokens
    if temperature is not None:
        overrides["temperature"] = temperature
    if seed is not None:
        overrides["seed"] = seed
    if stop:
        overrides["stop"] = list(stop)
    if not overrides:
        return base
    data = base.model_dump() if base is not None else {}
    try:
        return SamplingSettings(**{**data, **overrides})
    except ValueError as exc:
        raise InputError(f"invalid generation settings {overrides}: {exc}") from None


def default_settings(generator: Any) -> SamplingSettings | None:
    """The generator's own default settings when it exposes them."""
    s = getattr(generator, "default_settings", None)
    return s if isinstance(s, SamplingSettings) else None


def model_name(generator: Any) -> str:
    """A readable name of the generator's model (for tracing / metadata)."""
    for attr in ("model_name", "model"):
        value = getattr(generator, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(generator).__name__
