"""The batch-first :class:`Stage` protocol, the :class:`BaseStage` helper and :class:`Pipeline`."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from .errors import ConfigError, InputError, format_validation_error
from .registry import build_stage, builtin_name, stage_type_name
from .types import ContextState, Passage, StageRecord

__all__ = ["BaseStage", "Pipeline", "Stage"]


@runtime_checkable
class Stage(Protocol):
    """What the pipeline needs from a stage.

    A stage receives the whole batch (one :class:`ContextState` per query) so that it can do its
    model work for all queries at once, and returns the states (usually the same objects).
    """

    name: str

    def run(self, states: list[ContextState]) -> list[ContextState]: ...

    async def arun(self, states: list[ContextState]) -> list[ContextState]: ...

    def to_config(self) -> dict[str, Any]: ...


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class BaseStage(BaseModel):
    """Base class for ctxkit stages: pydantic-validated settings, lazy models, serialisation.

    Subclasses declare their settings as pydantic fields and implement :meth:`run`. Heavy models
    are created in :meth:`warm_up` (called on first use), never in ``__init__``. A wrong setting
    raises :class:`~ctxkit.errors.ConfigError` naming the stage and the field.

    Class attributes:
        stage_type: Name of a stage published by another package (entry-point group
            ``ctxkit.stages``); built-in stages are named in :mod:`ctxkit.registry`.
        nested_stage_fields: Fields that hold other stages (built from config dicts recursively).
    """

    model_config = ConfigDict(
        extra="forbid", arbitrary_types_allowed=True, validate_assignment=True, protected_namespaces=()
    )

    stage_type: ClassVar[str | None] = None
    nested_stage_fields: ClassVar[tuple[str, ...]] = ()

    name: str = ""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(type(self).__name__, exc)) from None
        if not self.name:
            object.__setattr__(self, "name", self.default_name())
        self._warm = False

    @model_validator(mode="before")
    @classmethod
    def _build_nested(cls, data: Any) -> Any:
        if isinstance(data, dict) and cls.nested_stage_fields:
            data = dict(data)
            for field in cls.nested_stage_fields:
                value = data.get(field)
                if isinstance(value, dict):
                    data[field] = build_stage(value)
                elif isinstance(value, list | tuple):
                    data[field] = [build_stage(v) if isinstance(v, dict) else v for v in value]
        return data

    @classmethod
    def default_name(cls) -> str:
        """Default stage name: the registered type, or the snake-cased class name."""
        return builtin_name(cls) or cls.stage_type or _snake(cls.__name__)

    # -- lifecycle -------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Load models and open connections. Called automatically before the first run."""

    def _ensure_warm(self) -> None:
        if not getattr(self, "_warm", False):
            self.warm_up()
            self._warm = True

    # -- running ---------------------------------------------------------------------------------
    def run(self, states: list[ContextState]) -> list[ContextState]:
        """Process a batch of states. Subclasses implement this."""
        raise NotImplementedError

    async def arun(self, states: list[ContextState]) -> list[ContextState]:
        """Async entry point. By default runs :meth:`run` in a worker thread (never blocks the loop)."""
        return await asyncio.to_thread(self.__call__, states)

    def __call__(self, states: list[ContextState]) -> list[ContextState]:
        self._ensure_warm()
        return self.run(states)

    # -- helpers for subclasses ------------------------------------------------------------------
    def set_score(self, passage: Passage, value: float) -> None:
        """Record this stage's score on ``passage`` (earlier stages' scores are kept)."""
        passage.scores[self.name] = float(value)

    # -- serialisation ---------------------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        """A dict that :func:`ctxkit.build_stage` turns back into an equal stage."""
        out: dict[str, Any] = {"type": stage_type_name(type(self))}
        for field in type(self).model_fields:
            value = getattr(self, field)
            if field == "name" and value == self.default_name():
                continue
            out[field] = _dump(value)
        return out

    def __repr__(self) -> str:
        cfg = self.to_config()
        cfg.pop("type")
        args = ", ".join(f"{k}={v!r}" for k, v in cfg.items())
        return f"{type(self).__name__}({args})"


def _dump(value: Any) -> Any:
    if isinstance(value, BaseStage):
        return value.to_config()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


class Pipeline:
    """An ordered list of stages that processes queries in batches.

    Args:
        stages: The stages, run in order. Names must be unique (duplicates get a ``_2`` suffix).
        batch_size: Queries processed together by each stage (``None``: the whole input).

    Example:
        >>> pipe = Pipeline([my_retriever, my_ranker])
        >>> state = pipe.run("Who discovered penicillin?")
        >>> states = pipe.batch(["q1", "q2"])
    """

    def __init__(self, stages: Sequence[Stage], *, batch_size: int | None = None) -> None:
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"Pipeline: batch_size must be >= 1 or None, got {batch_size}")
        self.stages: list[Stage] = list(stages)
        for s in self.stages:
            if not isinstance(s, Stage):
                raise ConfigError(
                    f"Pipeline: {s!r} is not a stage (needs name, run, arun and to_config)"
                )
        seen: dict[str, int] = {}
        for s in self.stages:
            if s.name in seen:
                seen[s.name] += 1
                s.name = f"{s.name}_{seen[s.name]}"
            else:
                seen[s.name] = 1
        self.batch_size = batch_size

    # -- running ---------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Load every stage's models now instead of on first use."""
        for s in self.stages:
            if hasattr(s, "_ensure_warm"):
                s._ensure_warm()
            elif hasattr(s, "warm_up"):
                s.warm_up()

    def run(self, query: str | ContextState, **metadata: Any) -> ContextState:
        """Run one query through the pipeline (a batch of one)."""
        return self.batch([query], **metadata)[0]

    def batch(self, queries: Iterable[str | ContextState], **metadata: Any) -> list[ContextState]:
        """Run many queries; each stage processes ``batch_size`` of them at once."""
        states = [self._to_state(q, metadata) for q in queries]
        out: list[ContextState] = []
        for chunk in self._chunks(states):
            for stage in self.stages:
                chunk = self._timed(stage, chunk)
            out.extend(chunk)
        return out

    async def arun(self, query: str | ContextState, **metadata: Any) -> ContextState:
        """Async :meth:`run`."""
        return (await self.abatch([query], **metadata))[0]

    async def abatch(
        self, queries: Iterable[str | ContextState], **metadata: Any
    ) -> list[ContextState]:
        """Async :meth:`batch`; stages' ``arun`` never block the event loop."""
        states = [self._to_state(q, metadata) for q in queries]
        out: list[ContextState] = []
        for chunk in self._chunks(states):
            for stage in self.stages:
                chunk = await self._atimed(stage, chunk)
            out.extend(chunk)
        return out

    def _chunks(self, states: list[ContextState]) -> Iterable[list[ContextState]]:
        size = self.batch_size or max(len(states), 1)
        for i in range(0, len(states), size):
            yield states[i : i + size]

    @staticmethod
    def _to_state(q: str | ContextState, metadata: dict[str, Any]) -> ContextState:
        if isinstance(q, ContextState):
            state = q
        elif isinstance(q, str):
            state = ContextState(query=q, metadata=dict(metadata))
        else:
            raise InputError(f"a query must be a string or a ContextState, got {type(q).__name__}")
        if not state.query.strip():
            raise InputError("the query is empty: pass a non-empty question")
        return state

    def _call(self, stage: Stage, states: list[ContextState]) -> list[ContextState]:
        if isinstance(stage, BaseStage):
            return stage(states)
        return stage.run(states)

    def _timed(self, stage: Stage, states: list[ContextState]) -> list[ContextState]:
        n_in = [len(s.passages) for s in states]
        t0 = time.perf_counter()
        result = self._call(stage, states)
        self._record(stage, states, result, n_in, time.perf_counter() - t0)
        return result

    async def _atimed(self, stage: Stage, states: list[ContextState]) -> list[ContextState]:
        n_in = [len(s.passages) for s in states]
        t0 = time.perf_counter()
        if isinstance(stage, BaseStage):
            await asyncio.to_thread(stage._ensure_warm)
        result = await stage.arun(states)
        self._record(stage, states, result, n_in, time.perf_counter() - t0)
        return result

    @staticmethod
    def _record(
        stage: Stage,
        states: list[ContextState],
        result: list[ContextState],
        n_in: list[int],
        seconds: float,
    ) -> None:
        if len(result) != len(states):
            raise RuntimeError(
                f"stage {stage.name!r} returned {len(result)} states for {len(states)} queries"
            )
        # The stage worked on the whole batch at once: each query is charged its share.
        share = seconds / max(len(result), 1)
        for state, before in zip(result, n_in, strict=True):
            state.trace.stages.append(
                StageRecord(
                    stage=stage.name,
                    seconds=share,
                    n_in=before,
                    n_out=len(state.passages),
                    info={"batch_seconds": seconds, "batch_size": len(result)},
                )
            )

    # -- composition and serialisation -----------------------------------------------------------
    def feedback(self, list_id: str, event: str | float) -> float:
        """Attach feedback (``"copy"``, ``"like"``, ``"dislike"``, ``"regenerate"`` or a number) to
        the list shown under ``list_id`` (``state.trace.list_id``); needs a stage with a
        ``feedback_store`` (e.g. ``record_feedback``). Returns the stored reward."""
        for s in reversed(self.stages):
            store = getattr(s, "feedback_store", None)
            if store is not None:
                return store.record_event(list_id, event)
        raise ConfigError("this pipeline records no feedback: add a 'record_feedback' stage after the last ranking stage")

    def __getitem__(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage named {name!r}; stages: {[s.name for s in self.stages]}")

    def to_config(self) -> dict[str, Any]:
        """Serialisable config; ``ctxkit.load_pipeline(pipe.to_config())`` rebuilds the pipeline."""
        cfg: dict[str, Any] = {"stages": [s.to_config() for s in self.stages]}
        if self.batch_size is not None:
            cfg["batch_size"] = self.batch_size
        return cfg

    def save(self, path: str) -> None:
        """Write :meth:`to_config` as YAML to ``path``."""
        import yaml

        with open(path, "w", encoding="utf-8") as fh:
            yaml.safe_dump(self.to_config(), fh, sort_keys=False)

    # -- framework adapters (imported lazily; need the langchain / llamaindex extras) ------------
    def as_retriever(self, k: int | None = None, *, framework: str = "langchain", **options: Any) -> Any:
        """This pipeline as a LangChain retriever (``framework="llamaindex"``: a LlamaIndex one).

        ``options`` go to the adapter (e.g. ``score_stage="cascade"``).
        """
        if framework == "llamaindex":
            from .integrations.llama_index import CtxkitLlamaRetriever

            return CtxkitLlamaRetriever(self, k=k, **options)
        if framework != "langchain":
            raise ConfigError(f"framework must be 'langchain' or 'llamaindex', got {framework!r}")
        from .integrations.langchain import CtxkitRetriever

        return CtxkitRetriever(pipeline=self, k=k, **options)

    def as_postprocessor(self, k: int | None = None, **options: Any) -> Any:
        """This pipeline's stages as a LlamaIndex node postprocessor."""
        from .integrations.llama_index import CtxkitNodePostprocessor

        return CtxkitNodePostprocessor(pipeline=self, k=k, **options)

    def as_compressor(self, k: int | None = None, **options: Any) -> Any:
        """This pipeline's stages as a LangChain document compressor."""
        from .integrations.langchain import CtxkitCompressor

        return CtxkitCompressor(pipeline=self, k=k, **options)

    def as_runnable(self, output: str = "documents", k: int | None = None, **options: Any) -> Any:
        """This pipeline as a LangChain LCEL Runnable (output: "documents", "context" or "state")."""
        from .integrations.langchain import as_runnable

        return as_runnable(self, output=output, k=k, **options)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return "Pipeline([" + ", ".join(repr(s) for s in self.stages) + "])"
