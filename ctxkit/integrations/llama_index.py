"""LlamaIndex integration: ctxkit pipelines as a retriever and a node postprocessor, ctxkit
generators as an LLM. Needs the ``llamaindex`` extra (``llama-index-core`` 0.14 only)::

    from llama_index.core.query_engine import RetrieverQueryEngine
    from ctxkit.integrations.llama_index import CtxkitLlamaRetriever, CtxkitLLM

    engine = RetrieverQueryEngine.from_args(
        CtxkitLlamaRetriever(pipeline=pipe, k=5), llm=CtxkitLLM(generator=gen)
    )
    response = engine.query("Who discovered penicillin?")

Every node carries ctxkit's annotations in its metadata: ``scores`` (all stages, in order),
``score``, ``rank``, ``doc_id`` and, when found, ``conflicts`` / ``flags``. These keys are excluded
from the text LlamaIndex shows to LLMs and embedders, so prompts stay clean.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from .._lazy import require

require("llama_index.core")

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.callbacks import CallbackManager
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import (
    MetadataMode,
    NodeWithScore,
    QueryBundle,
    TextNode,
)
from pydantic import ConfigDict, Field, PrivateAttr, field_validator

from ..errors import ConfigError, CtxkitError, InputError
from ..llm.base import Generation, Message, SamplingSettings
from ..types import ContextState, Passage
from . import _common

__all__ = [
    "CtxkitEmbedding",
    "CtxkitLLM",
    "CtxkitLlamaRetriever",
    "CtxkitNodePostprocessor",
    "nodes_to_passages",
    "state_to_nodes",
]


def _annotate(node: TextNode, extra: dict[str, Any]) -> None:
    node.metadata = {**node.metadata, **extra}
    for attr in ("excluded_llm_metadata_keys", "excluded_embed_metadata_keys"):
        keys = list(getattr(node, attr))
        keys += [k for k in extra if k not in keys]
        setattr(node, attr, keys)


def state_to_nodes(
    state: ContextState, k: int | None = None, score_stage: str | None = None
) -> list[NodeWithScore]:
    """The state's passages (best first, at most ``k``) as ``NodeWithScore`` with all scores.

    The node score is ``score_stage``'s score when given, else the last stage's.
    """
    passages = state.passages if k is None else state.passages[:k]
    out = []
    for rank, p in enumerate(passages):
        node = TextNode(id_=p.id, text=p.text, metadata=dict(p.metadata))
        if p.doc_id is not None:
            node.metadata["doc_id"] = p.doc_id
        _annotate(node, _common.passage_annotations(state, p, rank, score_stage))
        out.append(NodeWithScore(node=node, score=_common.main_score(p, score_stage)))
    return out


def nodes_to_passages(nodes: Sequence[NodeWithScore]) -> list[Passage]:
    """LlamaIndex nodes as ctxkit passages; a node's score becomes the ``input`` score unless
    earlier ctxkit scores are in its metadata."""
    seen: set[str] = set()
    out = []
    for i, nws in enumerate(nodes):
        if not isinstance(nws, NodeWithScore):
            raise InputError(f"item {i} is a {type(nws).__name__}, not a NodeWithScore")
        meta = dict(nws.node.metadata)
        if _common.SCORES_KEY not in meta and nws.score is not None:
            meta[_common.SCORE_KEY] = nws.score
        out.append(
            _common.make_passage(
                id=nws.node.node_id,
                text=nws.node.get_content(metadata_mode=MetadataMode.NONE),
                metadata=meta,
                index=i,
                seen=seen,
            )
        )
    return out


class CtxkitLlamaRetriever(BaseRetriever):
    """A LlamaIndex retriever over any ctxkit pipeline.

    Args:
        pipeline: A :class:`~ctxkit.Pipeline`, a list of stages, one stage, a config dict or a
            YAML path.
        k: Nodes to return at most (``None``: everything the pipeline kept).
        score_stage: Stage whose score becomes the node score (default: the last stage's).
        callback_manager: LlamaIndex callback manager.

    ``aretrieve`` awaits :meth:`ctxkit.Pipeline.arun` (model work runs in worker threads, the
    event loop is never blocked).
    """

    def __init__(
        self,
        pipeline: Any,
        k: int | None = None,
        score_stage: str | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        self.pipeline = _common.to_pipeline(pipeline)
        self.k = _common.check_k(k, ConfigError)
        self.score_stage = score_stage
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        state = self.pipeline.run(_common.query_text(query_bundle.query_str))
        return state_to_nodes(state, self.k, self.score_stage)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        state = await self.pipeline.arun(_common.query_text(query_bundle.query_str))
        return state_to_nodes(state, self.k, self.score_stage)

    def retrieve_states(self, queries: Sequence[str]) -> list[ContextState]:
        """Batch-first: run all ``queries`` through the pipeline at once (full states)."""
        return self.pipeline.batch(list(queries))


class CtxkitNodePostprocessor(_common.ValidatedInit, BaseNodePostprocessor):
    """Runs ctxkit stages (rankers, conflict detection, steering filters) on ``NodeWithScore``.

    Node objects (and their relationships) are kept; the stages' scores are added to each node's
    metadata (``scores``), the node score becomes the last stage's score, and nodes come back in
    the stages' order (filtered ones dropped).

    Args:
        pipeline: The stages to run (a Pipeline, a list of stages, one stage, a config).
        k: Nodes to return at most (``None``: all the stages kept).
        score_stage: Stage whose score becomes the node score (default: the last stage's).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    pipeline: Any = Field(description="the ctxkit stages to run")
    k: int | None = Field(default=None, description="nodes to return at most")
    score_stage: str | None = Field(default=None, description="stage whose score is the node score")

    @field_validator("pipeline", mode="before")
    @classmethod
    def _pipeline(cls, value: Any) -> Any:
        return _common.to_pipeline(value)

    @field_validator("k")
    @classmethod
    def _k(cls, value: Any) -> int | None:
        return _common.check_k(value)

    @classmethod
    def class_name(cls) -> str:
        return "CtxkitNodePostprocessor"

    def _state(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None) -> ContextState:
        if query_bundle is None:
            raise InputError("CtxkitNodePostprocessor needs the query: pass query_str= or query_bundle=")
        return ContextState(query=query_bundle.query_str, passages=nodes_to_passages(nodes))

    def _back(self, nodes: list[NodeWithScore], state: ContextState) -> list[NodeWithScore]:
        by_id = {p.id: n for p, n in zip(nodes_to_passages(nodes), nodes, strict=True)}
        passages = state.passages if self.k is None else state.passages[: self.k]
        out = []
        for rank, p in enumerate(passages):
            orig = by_id.get(p.id)
            if orig is None:  # a stage added a passage: make a fresh node for it
                out.extend(state_to_nodes(ContextState(query=state.query, passages=[p]), None, self.score_stage))
                continue
            node = orig.node.model_copy()
            if isinstance(node, TextNode) and node.text != p.text:
                node.set_content(p.text)
            _annotate(node, _common.passage_annotations(state, p, rank, self.score_stage))
            out.append(NodeWithScore(node=node, score=_common.main_score(p, self.score_stage)))
        return out

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if not nodes:
            return []
        state = self.pipeline.run(self._state(nodes, query_bundle))
        return self._back(nodes, state)

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if not nodes:
            return []
        state = await self.pipeline.arun(self._state(nodes, query_bundle))
        return self._back(nodes, state)


def _chat_messages(messages: Sequence[ChatMessage]) -> list[Message]:
    if not messages:
        raise InputError("the conversation is empty: pass at least one message")
    out = []
    for m in messages:
        role = m.role.value if isinstance(m.role, MessageRole) else str(m.role)
        role = {"chatbot": "assistant", "model": "assistant"}.get(role, role)
        out.append(_common.to_message(role, m.content or ""))
    return out


class CtxkitLLM(_common.ValidatedInit, CustomLLM):
    """Any ctxkit generator as a LlamaIndex LLM (chat and completion, sync and async).

    Args:
        generator: A ctxkit generator, e.g. ``TransformersGenerator("default")``.
        max_new_tokens: Overrides the generator's default (per call: ``max_new_tokens=``).
        temperature: Overrides the generator's default (0 = greedy).
        context_window: What LlamaIndex assumes when packing context into prompts.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    generator: Any = Field(description="a ctxkit generator")
    max_new_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0)
    context_window: int = Field(default=2048, ge=16)

    @field_validator("generator")
    @classmethod
    def _generator(cls, value: Any) -> Any:
        if not callable(getattr(value, "generate", None)):
            raise InputError(
                f"generator must be a ctxkit generator with generate(batch, settings), "
                f"got {type(value).__name__}"
            )
        return value

    @classmethod
    def class_name(cls) -> str:
        return "CtxkitLLM"

    @property
    def metadata(self) -> LLMMetadata:
        base = _common.default_settings(self.generator)
        num_output = self.max_new_tokens or (base.max_new_tokens if base else 256)
        return LLMMetadata(
            context_window=self.context_window,
            num_output=num_output,
            is_chat_model=True,
            model_name=_common.model_name(self.generator),
        )

    def _settings(self, kwargs: dict[str, Any]) -> SamplingSettings | None:
        kw = dict(kwargs)
        kw.pop("formatted", None)
        max_new = kw.pop("max_new_tokens", None) or kw.pop("max_tokens", None) or self.max_new_tokens
        temperature = kw.pop("temperature", None)
        return _common.sampling(
            _common.default_settings(self.generator),
            max_new_tokens=max_new,
            temperature=temperature if temperature is not None else self.temperature,
            seed=kw.pop("seed", None),
            stop=kw.pop("stop", None),
        )

    @staticmethod
    def _check(gen: Generation) -> Generation:
        if not gen.ok:
            raise CtxkitError(f"the ctxkit generator failed: {gen.error}")
        return gen

    def _run(self, conv: list[Message], kwargs: dict[str, Any]) -> Generation:
        return self._check(self.generator.generate([conv], self._settings(kwargs))[0])

    async def _arun(self, conv: list[Message], kwargs: dict[str, Any]) -> Generation:
        settings = self._settings(kwargs)
        agenerate = getattr(self.generator, "agenerate", None)
        if agenerate is not None:
            gens = await agenerate([conv], settings)
        else:
            gens = await asyncio.to_thread(self.generator.generate, [conv], settings)
        return self._check(gens[0])

    @staticmethod
    def _raw(gen: Generation) -> dict[str, Any]:
        return {
            "finish_reason": gen.finish_reason,
            "n_prompt_tokens": gen.n_prompt_tokens,
            "n_tokens": gen.n_tokens,
        }

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        gen = self._run([Message(role="user", content=prompt)], kwargs)
        return CompletionResponse(text=gen.text, raw=self._raw(gen))

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        gen = await self._arun([Message(role="user", content=prompt)], kwargs)
        return CompletionResponse(text=gen.text, raw=self._raw(gen))

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        """Not token streaming: yields the whole completion once (ctxkit generators batch)."""
        resp = self.complete(prompt, formatted=formatted, **kwargs)

        def gen() -> CompletionResponseGen:
            yield CompletionResponse(text=resp.text, delta=resp.text, raw=resp.raw)

        return gen()

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        gen = self._run(_chat_messages(messages), kwargs)
        return ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=gen.text), raw=self._raw(gen)
        )

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        gen = await self._arun(_chat_messages(messages), kwargs)
        return ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=gen.text), raw=self._raw(gen)
        )

    def generate_batch(self, prompts: Sequence[str], **kwargs: Any) -> list[str]:
        """Batch-first helper: all ``prompts`` in one generator call (failed items give "")."""
        convs = [[Message(role="user", content=p)] for p in prompts]
        return [g.text for g in self.generator.generate(convs, self._settings(kwargs))]


class CtxkitEmbedding(_common.ValidatedInit, BaseEmbedding):
    """ctxkit's embedder (all-MiniLM-L6-v2 offline by default) as a LlamaIndex embedding model,
    so a ``VectorStoreIndex`` can be built and queried without any hosted service.

    Args:
        model: ``"default"`` (all-MiniLM-L6-v2, packaged offline), a local path or a hub id.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    model: str = Field(default="default", description="embedding model")
    device: str = Field(default="auto", description="device")
    _embedder: Any = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "CtxkitEmbedding"

    def _enc(self, texts: list[str]) -> list[list[float]]:
        if self._embedder is None:
            from ..models import get_embedder

            self._embedder = get_embedder(self.model, device=self.device)
        return [list(map(float, v)) for v in self._embedder.encode(list(texts))]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._enc([query])[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._enc([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._enc(texts)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return (await asyncio.to_thread(self._enc, [query]))[0]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._enc, texts)
