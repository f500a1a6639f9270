"""LangChain integration: ctxkit pipelines as retrievers, compressors and Runnables; ctxkit
generators as chat models.

Needs the ``langchain`` extra (``langchain-core>=1.0``)::

    from ctxkit.integrations.langchain import CtxkitRetriever
    retriever = CtxkitRetriever(pipeline=pipe, k=5)
    docs = retriever.invoke("Who discovered penicillin?")
    docs[0].metadata["scores"]   # every stage's score, e.g. {"hybrid": 0.03, "cascade": 2.1}

Every returned :class:`~langchain_core.documents.Document` carries ``id`` (the passage id) and
metadata ``scores`` (all stages, in order), ``score`` (the last stage's), ``rank``, ``doc_id``
and, when a faithfulness / steering stage found something, ``conflicts`` and ``flags``.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal

from .._lazy import require

require("langchain_core")

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForLLMRun,
    CallbackManagerForRetrieverRun,
    Callbacks,
)
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, LLMResult
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import get_config_list
from pydantic import ConfigDict, Field, field_validator

from ..errors import ConfigError, CtxkitError, InputError
from ..llm.base import Generation, Message, SamplingSettings
from ..types import ContextState
from . import _common

__all__ = [
    "CtxkitChatModel",
    "CtxkitCompressor",
    "CtxkitEmbeddings",
    "CtxkitRetriever",
    "CtxkitRunnable",
    "as_runnable",
    "documents_to_passages",
    "format_documents",
    "state_to_documents",
]

Output = Literal["state", "documents", "context"]


# -- conversions -------------------------------------------------------------------------------
def state_to_documents(
    state: ContextState, k: int | None = None, score_stage: str | None = None
) -> list[Document]:
    """The state's passages (best first, at most ``k``) as LangChain documents with all scores.

    ``metadata["score"]`` is ``score_stage``'s score when given, else the last stage's.
    """
    passages = state.passages if k is None else state.passages[:k]
    return [
        Document(
            id=p.id,
            page_content=p.text,
            metadata={**p.metadata, **_common.passage_annotations(state, p, rank, score_stage)},
        )
        for rank, p in enumerate(passages)
    ]


def documents_to_passages(documents: Sequence[Document]) -> list[Any]:
    """LangChain documents as ctxkit passages; scores from an earlier ctxkit run are restored."""
    seen: set[str] = set()
    out = []
    for i, doc in enumerate(documents):
        if not isinstance(doc, Document):
            raise InputError(f"item {i} is a {type(doc).__name__}, not a LangChain Document")
        out.append(
            _common.make_passage(
                id=doc.id, text=doc.page_content, metadata=doc.metadata, index=i, seen=seen
            )
        )
    return out


def format_documents(documents: Sequence[Document], *, conflicts: bool = True) -> str:
    """Number the documents into a context block for a prompt.

    With ``conflicts=True``, each document that a faithfulness stage found in conflict with a
    belief is annotated (``[conflict: context says X, belief says Y]``) so the model can weigh it;
    documents flagged by a steering stage are marked ``[flagged: ...]``.
    """
    lines = []
    for i, doc in enumerate(documents, 1):
        line = f"[{i}] {doc.page_content}"
        if conflicts:
            for c in doc.metadata.get(_common.CONFLICTS_KEY, []):
                said = c.get("chunk_span") or c.get("chunk", "")
                believed = c.get("belief_span") or c.get("belief", "")
                line += f"\n    [conflict ({c.get('kind', 'other')}): context says {said!r}, belief says {believed!r}]"
            flags = doc.metadata.get(_common.FLAGS_KEY)
            if flags:
                line += f"\n    [flagged: {', '.join(flags)}]"
        lines.append(line)
    return "\n".join(lines)


def _output(state: ContextState, output: Output, k: int | None, score_stage: str | None) -> Any:
    if output == "state":
        return state
    docs = state_to_documents(state, k, score_stage)
    return docs if output == "documents" else format_documents(docs)


# -- retriever ---------------------------------------------------------------------------------
class CtxkitRetriever(_common.ValidatedInit, BaseRetriever):
    """A LangChain retriever over any ctxkit pipeline (retrieval, ranking, faithfulness...).

    Args:
        pipeline: A :class:`~ctxkit.Pipeline`, a list of stages, one stage, a config dict or a
            YAML path.
        k: Documents to return at most (``None``: all the pipeline kept). Override per call with
            ``retriever.invoke(query, k=3)``. The pipeline's own stages bound how many candidates
            exist, so ``k`` larger than the last stage's ``k`` returns fewer documents.
        score_stage: Stage whose score goes into ``metadata["score"]`` (default: the last
            stage that scored the passage; e.g. pick the ranker when a conflict check runs last).

    Per call, ``state_metadata={...}`` becomes the query state's metadata (e.g. ``{"beliefs":
    [...]}`` for a conflict check, ``{"where": {...}}`` for a retrieval filter).

    The async path (``ainvoke``) awaits :meth:`ctxkit.Pipeline.arun`, whose stages never block
    the event loop.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    pipeline: Any
    k: int | None = None
    score_stage: str | None = None

    @field_validator("pipeline", mode="before")
    @classmethod
    def _pipeline(cls, value: Any) -> Any:
        return _common.to_pipeline(value)

    @field_validator("k")
    @classmethod
    def _k(cls, value: Any) -> int | None:
        return _common.check_k(value)

    def _k_for(self, kwargs: dict[str, Any]) -> int | None:
        unknown = set(kwargs) - {"k", "state_metadata"}
        if unknown:
            raise InputError(
                f"CtxkitRetriever: unknown options {sorted(unknown)}; use k= or state_metadata="
            )
        return _common.check_k(kwargs["k"]) if "k" in kwargs else self.k

    @staticmethod
    def _meta(kwargs: dict[str, Any]) -> dict[str, Any]:
        meta = kwargs.get("state_metadata") or {}
        if not isinstance(meta, dict):
            raise InputError(f"state_metadata must be a dict, got {type(meta).__name__}")
        return meta

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        k = self._k_for(kwargs)
        text = _common.query_text(query)
        state = _take_state(text) or self.pipeline.run(text, **self._meta(kwargs))
        return state_to_documents(state, k, self.score_stage)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        k = self._k_for(kwargs)
        text = _common.query_text(query)
        state = _take_state(text) or await self.pipeline.arun(text, **self._meta(kwargs))
        return state_to_documents(state, k, self.score_stage)

    # Batch-first: all queries go through each stage together; LangChain's own batch (callbacks,
    # tracing, per-input configs) then hands each invoke its precomputed state.
    def batch(
        self,
        inputs: list[str],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Run all queries through the pipeline at once (one pass per stage)."""
        if len(inputs) < 2 or _STATES.get() is not None:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        queries = [_common.query_text(q) for q in inputs]
        self._k_for(kwargs)
        states = self.pipeline.batch(queries, **self._meta(kwargs))
        token = _STATES.set(_by_query(queries, states))
        try:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        finally:
            _STATES.reset(token)

    async def abatch(
        self,
        inputs: list[str],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Async :meth:`batch` (awaits ``Pipeline.abatch``)."""
        if len(inputs) < 2 or _STATES.get() is not None:
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        queries = [_common.query_text(q) for q in inputs]
        self._k_for(kwargs)
        states = await self.pipeline.abatch(queries, **self._meta(kwargs))
        token = _STATES.set(_by_query(queries, states))
        try:
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        finally:
            _STATES.reset(token)


_STATES: contextvars.ContextVar[dict[str, list[ContextState]] | None] = contextvars.ContextVar(
    "ctxkit_states", default=None
)


def _by_query(queries: list[str], states: list[ContextState]) -> dict[str, list[ContextState]]:
    out: dict[str, list[ContextState]] = {}
    for q, s in zip(queries, states, strict=True):
        out.setdefault(q, []).append(s)
    return out


def _take_state(query: str) -> ContextState | None:
    pending = _STATES.get()
    if pending:
        queue = pending.get(query)
        if queue:
            return queue.pop(0)
    return None


# -- document compressor -----------------------------------------------------------------------
class CtxkitCompressor(_common.ValidatedInit, BaseDocumentCompressor):
    """Runs ctxkit stages (rankers, conflict detection, steering filters) on LangChain documents.

    Use it in a ``ContextualCompressionRetriever`` or call :meth:`compress_documents` directly.
    Scores already in ``metadata["scores"]`` (e.g. from a :class:`CtxkitRetriever`) are kept,
    and the stages add theirs.

    Args:
        pipeline: The stages to run (a Pipeline, a list of stages, one stage, a config).
        k: Documents to return at most (``None``: all the stages kept).
        score_stage: Stage whose score goes into ``metadata["score"]`` (default: the last).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    pipeline: Any
    k: int | None = None
    score_stage: str | None = None

    @field_validator("pipeline", mode="before")
    @classmethod
    def _pipeline(cls, value: Any) -> Any:
        return _common.to_pipeline(value)

    @field_validator("k")
    @classmethod
    def _k(cls, value: Any) -> int | None:
        return _common.check_k(value)

    def _state(self, documents: Sequence[Document], query: str) -> ContextState:
        return ContextState(query=_common.query_text(query), passages=documents_to_passages(documents))

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Run the stages on ``documents`` for ``query``; returns them re-ranked / filtered."""
        if not documents:
            return []
        state = self.pipeline.run(self._state(documents, query))
        return state_to_documents(state, self.k, self.score_stage)

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Async :meth:`compress_documents` (awaits ``Pipeline.arun``)."""
        if not documents:
            return []
        state = await self.pipeline.arun(self._state(documents, query))
        return state_to_documents(state, self.k, self.score_stage)


# -- pipeline as a Runnable --------------------------------------------------------------------
class CtxkitRunnable(Runnable[Any, Any]):
    """A ctxkit pipeline as an LCEL ``Runnable``; ``batch`` runs all queries through each stage
    at once (one model call per stage, not one per query).

    Input: a query string, a ``ContextState``, or a dict with ``query``/``question``/``input``
    (its other keys become the state's metadata, e.g. ``beliefs`` for a conflict check).
    Output (``output=``): ``"state"`` (the :class:`~ctxkit.ContextState`), ``"documents"``
    (LangChain documents with scores) or ``"context"`` (a numbered context string for a prompt,
    conflicts annotated).
    """

    def __init__(
        self,
        pipeline: Any,
        *,
        output: Output = "documents",
        k: int | None = None,
        score_stage: str | None = None,
    ) -> None:
        if output not in ("state", "documents", "context"):
            raise ConfigError(f"output must be 'state', 'documents' or 'context', got {output!r}")
        self.pipeline = _common.to_pipeline(pipeline)
        self.output: Output = output
        self.k = _common.check_k(k, ConfigError)
        self.score_stage = score_stage

    @property
    def InputType(self) -> Any:
        return str

    @staticmethod
    def _query(value: Any) -> str | ContextState:
        if isinstance(value, ContextState):
            return value
        query = _common.query_text(value)
        if isinstance(value, dict):  # the other keys become state metadata (e.g. "beliefs")
            meta = {k: v for k, v in value.items() if k not in ("query", "question", "input")}
            return ContextState(query=query, metadata=meta)
        return query

    def _run_batch(self, inputs: list[Any]) -> list[Any]:
        states = self.pipeline.batch([self._query(v) for v in inputs])
        return [_output(s, self.output, self.k, self.score_stage) for s in states]

    async def _arun_batch(self, inputs: list[Any]) -> list[Any]:
        states = await self.pipeline.abatch([self._query(v) for v in inputs])
        return [_output(s, self.output, self.k, self.score_stage) for s in states]

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(lambda x: self._run_batch([x])[0], input, config)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        async def one(x: Any) -> Any:
            return (await self._arun_batch([x]))[0]

        return await self._acall_with_config(one, input, config)

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        if not inputs:
            return []
        return self._batch_with_config(
            self._run_batch, inputs, get_config_list(config, len(inputs)),
            return_exceptions=return_exceptions,
        )

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        if not inputs:
            return []
        return await self._abatch_with_config(
            self._arun_batch, inputs, get_config_list(config, len(inputs)),
            return_exceptions=return_exceptions,
        )

    def __repr__(self) -> str:
        return f"CtxkitRunnable({self.pipeline!r}, output={self.output!r}, k={self.k!r})"


def as_runnable(
    pipeline: Any, *, output: Output = "documents", k: int | None = None, score_stage: str | None = None
) -> CtxkitRunnable:
    """A ctxkit pipeline as an LCEL Runnable (see :class:`CtxkitRunnable`)."""
    return CtxkitRunnable(pipeline, output=output, k=k, score_stage=score_stage)


# -- chat model --------------------------------------------------------------------------------
# Batched results computed ahead by ``generate``/``agenerate``, consumed by ``_generate``.
_PRECOMPUTED: contextvars.ContextVar[dict[str, list[Generation]] | None] = contextvars.ContextVar(
    "ctxkit_precomputed", default=None
)


def _to_ctxkit_messages(messages: Sequence[BaseMessage]) -> list[Message]:
    if not messages:
        raise InputError("the conversation is empty: pass at least one message")
    return [_common.to_message(m.type, m.text) for m in messages]


def _key(messages: list[Message], settings: SamplingSettings | None) -> str:
    return json.dumps(
        [[m.role, m.content] for m in messages] + [settings.model_dump() if settings else None],
        sort_keys=True,
    )


class CtxkitChatModel(_common.ValidatedInit, BaseChatModel):
    """Any ctxkit generator (:class:`~ctxkit.llm.base.Generator`) as a LangChain chat model.

    ``generate`` / ``batch`` send the whole batch of conversations to the generator in one call
    (so a transformers backend pads and decodes them together); ``ainvoke`` / ``abatch`` use the
    generator's ``agenerate``, which never blocks the event loop.

    Args:
        generator: A ctxkit generator, e.g. ``TransformersGenerator("default")``.
        max_new_tokens: Overrides the generator's default (also settable per call:
            ``model.invoke(msgs, max_new_tokens=32)``; ``max_tokens`` is accepted too).
        temperature: Overrides the generator's default (0 = greedy).
        seed: Sampling seed.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    generator: Any
    max_new_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0)
    seed: int | None = None

    @field_validator("generator")
    @classmethod
    def _generator(cls, value: Any) -> Any:
        if not callable(getattr(value, "generate", None)):
            raise InputError(
                f"generator must be a ctxkit generator with generate(batch, settings), "
                f"got {type(value).__name__}"
            )
        return value

    @property
    def _llm_type(self) -> str:
        return "ctxkit"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "generator": type(self.generator).__name__,
            "model": _common.model_name(self.generator),
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "ctxkit"
        params["ls_model_name"] = kwargs.get("model") or _common.model_name(self.generator)
        max_new = kwargs.get("max_new_tokens") or kwargs.get("max_tokens") or self.max_new_tokens
        if max_new:
            params["ls_max_tokens"] = max_new
        return params

    def _settings(self, stop: list[str] | None, kwargs: dict[str, Any]) -> SamplingSettings | None:
        kw = dict(kwargs)
        max_new = kw.pop("max_new_tokens", None) or kw.pop("max_tokens", None) or self.max_new_tokens
        temperature = kw.pop("temperature", None)
        seed = kw.pop("seed", None)
        kw.pop("max_tokens", None)
        if kw:
            raise InputError(
                f"CtxkitChatModel: unsupported options {sorted(kw)} "
                "(supported: max_new_tokens/max_tokens, temperature, seed, stop)"
            )
        return _common.sampling(
            _common.default_settings(self.generator),
            max_new_tokens=max_new,
            temperature=temperature if temperature is not None else self.temperature,
            seed=seed if seed is not None else self.seed,
            stop=stop,
        )

    def _parts(self, gen: Generation) -> tuple[dict[str, Any], Any]:
        if not gen.ok:
            raise CtxkitError(f"the ctxkit generator failed on this conversation: {gen.error}")
        meta: dict[str, Any] = {
            "finish_reason": gen.finish_reason,
            "model_name": _common.model_name(self.generator),
            "model_provider": "ctxkit",
            **gen.info,
        }
        usage = None
        if gen.n_prompt_tokens is not None and gen.n_tokens is not None:
            usage = {
                "input_tokens": gen.n_prompt_tokens,
                "output_tokens": gen.n_tokens,
                "total_tokens": gen.n_prompt_tokens + gen.n_tokens,
            }
        return meta, usage

    def _chunk(self, gen: Generation) -> ChatGenerationChunk:
        meta, usage = self._parts(gen)
        msg = AIMessageChunk(
            content=gen.text, response_metadata=meta, usage_metadata=usage, chunk_position="last"
        )
        return ChatGenerationChunk(message=msg, generation_info={"finish_reason": gen.finish_reason})

    def _result(self, gen: Generation) -> ChatResult:
        meta, usage = self._parts(gen)
        msg = AIMessage(content=gen.text, response_metadata=meta, usage_metadata=usage)
        return ChatResult(
            generations=[ChatGeneration(message=msg, generation_info={"finish_reason": gen.finish_reason})]
        )

    def _take(self, conv: list[Message], settings: SamplingSettings | None) -> Generation | None:
        pre = _PRECOMPUTED.get()
        if pre:
            queue = pre.get(_key(conv, settings))
            if queue:
                return queue.pop(0)
        return None

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        conv = _to_ctxkit_messages(messages)
        settings = self._settings(stop, kwargs)
        gen = self._take(conv, settings) or self.generator.generate([conv], settings)[0]
        return self._result(gen)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """Not token streaming (ctxkit generators work in batches): one chunk with the answer."""
        conv = _to_ctxkit_messages(messages)
        chunk = self._chunk(self.generator.generate([conv], self._settings(stop, kwargs))[0])
        if run_manager:
            run_manager.on_llm_new_token(chunk.text, chunk=chunk)
        yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        """Async :meth:`_stream`: one chunk, generated without blocking the event loop."""
        result = await self._agenerate(messages, stop=stop, **kwargs)
        msg = result.generations[0].message
        chunk = ChatGenerationChunk(
            message=AIMessageChunk(
                content=msg.content, response_metadata=msg.response_metadata,
                usage_metadata=getattr(msg, "usage_metadata", None), chunk_position="last",
            ),
            generation_info=result.generations[0].generation_info,
        )
        if run_manager:
            await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
        yield chunk

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        conv = _to_ctxkit_messages(messages)
        settings = self._settings(stop, kwargs)
        gen = self._take(conv, settings)
        if gen is None:
            agenerate = getattr(self.generator, "agenerate", None)
            if agenerate is not None:
                gen = (await agenerate([conv], settings))[0]
            else:
                import asyncio

                gen = (await asyncio.to_thread(self.generator.generate, [conv], settings))[0]
        return self._result(gen)

    # Batched paths: generate everything in one generator call, then let LangChain's own
    # generate() (callbacks, caching, tracing) consume the precomputed results.
    def _precompute(
        self, messages: list[list[BaseMessage]], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[list[list[Message]], SamplingSettings | None]:
        convs = [_to_ctxkit_messages(m) for m in messages]
        return convs, self._settings(stop, {k: v for k, v in kwargs.items() if k in _GEN_KW})

    def generate(
        self,
        messages: list[list[BaseMessage]],
        stop: list[str] | None = None,
        callbacks: Callbacks = None,
        **kwargs: Any,
    ) -> LLMResult:
        if len(messages) < 2 or _PRECOMPUTED.get():
            return super().generate(messages, stop=stop, callbacks=callbacks, **kwargs)
        convs, settings = self._precompute(messages, stop, kwargs)
        gens = self.generator.generate(convs, settings)
        token = _PRECOMPUTED.set(_group(convs, settings, gens))
        try:
            return super().generate(messages, stop=stop, callbacks=callbacks, **kwargs)
        finally:
            _PRECOMPUTED.reset(token)

    async def agenerate(
        self,
        messages: list[list[BaseMessage]],
        stop: list[str] | None = None,
        callbacks: Callbacks = None,
        **kwargs: Any,
    ) -> LLMResult:
        if len(messages) < 2 or _PRECOMPUTED.get():
            return await super().agenerate(messages, stop=stop, callbacks=callbacks, **kwargs)
        convs, settings = self._precompute(messages, stop, kwargs)
        agenerate = getattr(self.generator, "agenerate", None)
        if agenerate is not None:
            gens = await agenerate(convs, settings)
        else:
            import asyncio

            gens = await asyncio.to_thread(self.generator.generate, convs, settings)
        token = _PRECOMPUTED.set(_group(convs, settings, gens))
        try:
            return await super().agenerate(messages, stop=stop, callbacks=callbacks, **kwargs)
        finally:
            _PRECOMPUTED.reset(token)

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """All inputs in one generator call (LangChain's default would call invoke per input)."""
        if len(inputs) < 2 or return_exceptions or isinstance(config, list):
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        cfg = config or {}
        messages = [self._convert_input(i).to_messages() for i in inputs]
        result = self.generate(
            messages, stop=kwargs.pop("stop", None), callbacks=cfg.get("callbacks"),
            tags=cfg.get("tags"), metadata=cfg.get("metadata"), **kwargs,
        )
        return [g[0].message for g in result.generations]  # type: ignore[attr-defined]

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Async :meth:`batch`: one ``agenerate`` call for all inputs."""
        if len(inputs) < 2 or return_exceptions or isinstance(config, list):
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        cfg = config or {}
        messages = [self._convert_input(i).to_messages() for i in inputs]
        result = await self.agenerate(
            messages, stop=kwargs.pop("stop", None), callbacks=cfg.get("callbacks"),
            tags=cfg.get("tags"), metadata=cfg.get("metadata"), **kwargs,
        )
        return [g[0].message for g in result.generations]  # type: ignore[attr-defined]


_GEN_KW = {"max_new_tokens", "max_tokens", "temperature", "seed"}


def _group(
    convs: list[list[Message]], settings: SamplingSettings | None, gens: list[Generation]
) -> dict[str, list[Generation]]:
    if len(gens) != len(convs):
        raise CtxkitError(f"the generator returned {len(gens)} results for {len(convs)} conversations")
    out: dict[str, list[Generation]] = {}
    for conv, gen in zip(convs, gens, strict=True):
        out.setdefault(_key(conv, settings), []).append(gen)
    return out


class CtxkitEmbeddings(Embeddings):
    """ctxkit's embedder (all-MiniLM-L6-v2 offline by default) as LangChain ``Embeddings``.

    Args:
        model: ``"default"`` (all-MiniLM-L6-v2, packaged offline), a local path or a hub id.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
    """

    def __init__(self, model: str = "default", device: str = "auto") -> None:
        self.model = model
        self.device = device
        self._embedder: Any = None

    def _enc(self, texts: list[str]) -> list[list[float]]:
        if self._embedder is None:
            from ..models import get_embedder

            self._embedder = get_embedder(self.model, device=self.device)
        return [list(map(float, v)) for v in self._embedder.encode(list(texts))]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed texts in batches (one encoder pass per ``batch_size`` texts)."""
        return self._enc(texts) if texts else []

    def embed_query(self, text: str) -> list[float]:
        """Embed one query."""
        return self._enc([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async :meth:`embed_documents` (in a worker thread)."""
        import asyncio

        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Async :meth:`embed_query` (in a worker thread)."""
        import asyncio

        return await asyncio.to_thread(self.embed_query, text)
