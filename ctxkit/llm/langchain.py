"""Any LangChain chat model (``BaseChatModel``) as a ctxkit generator."""

from __future__ import annotations

from typing import Any

from .._lazy import require
from ..errors import ConfigError, InputError
from .base import BaseGenerator, Generation, Message, SamplingSettings, as_messages

__all__ = ["LangChainGenerator"]


class LangChainGenerator(BaseGenerator):
    """Wrap a LangChain ``BaseChatModel`` (ChatOpenAI, ChatOllama, ChatHuggingFace...).

    The whole batch goes through ``model.batch`` / ``model.abatch`` with ``return_exceptions=True``,
    so one failing conversation becomes an error on that item only. Stop strings are passed as
    ``stop=`` and also applied to the returned text. Other sampling settings (temperature,
    max tokens) belong to the chat model itself: configure them when you build it.

    Args:
        chat_model: A LangChain ``BaseChatModel`` instance.
        settings: Default :class:`SamplingSettings` (only ``stop`` is forwarded).
        max_concurrency: LangChain's ``max_concurrency`` for the batch (``None``: its default).
        invoke_kwargs: Extra keyword arguments for every call (provider specific).
    """

    def __init__(
        self,
        chat_model: Any,
        *,
        settings: SamplingSettings | dict[str, Any] | None = None,
        max_concurrency: int | None = None,
        invoke_kwargs: dict[str, Any] | None = None,
    ) -> None:
        lc = require("langchain_core.language_models")
        if not isinstance(chat_model, lc.BaseChatModel):
            raise ConfigError(
                f"LangChainGenerator needs a langchain_core BaseChatModel, got {type(chat_model).__name__}"
            )
        if max_concurrency is not None and max_concurrency < 1:
            raise ConfigError(f"LangChainGenerator: max_concurrency must be >= 1, got {max_concurrency}")
        try:
            super().__init__(settings)
        except ValueError as exc:
            raise ConfigError(f"LangChainGenerator: invalid sampling settings: {exc}") from None
        self.chat_model = chat_model
        self.max_concurrency = max_concurrency
        self.invoke_kwargs = dict(invoke_kwargs or {})
        self.model_name = str(getattr(chat_model, "model_name", None) or getattr(chat_model, "model", None)
                              or type(chat_model).__name__)

    def _inputs(self, batch: list[Any]) -> tuple[list[Any], list[Generation | None]]:
        msgs_mod = require("langchain_core.messages")
        kinds = {"system": msgs_mod.SystemMessage, "user": msgs_mod.HumanMessage, "assistant": msgs_mod.AIMessage}
        inputs: list[Any] = []
        failed: list[Generation | None] = []
        for conv in batch:
            try:
                inputs.append([kinds[m.role](content=m.content) for m in as_messages(conv)])
                failed.append(None)
            except (ValueError, TypeError) as exc:
                inputs.append(None)
                failed.append(Generation(error=f"invalid conversation: {exc}", finish_reason="error"))
        return inputs, failed

    def _prepare(self, batch: Any, settings: Any, overrides: dict[str, Any]) -> tuple[SamplingSettings, list[Any], list[Generation | None], dict[str, Any], dict[str, Any]]:
        if isinstance(batch, str):
            raise InputError("generate expects a list of conversations; wrap a single prompt in a list")
        if isinstance(settings, dict):
            overrides, settings = {**settings, **overrides}, None
        try:
            s = self._settings(settings, overrides)
        except ValueError as exc:
            raise InputError(f"invalid sampling settings: {exc}") from None
        inputs, failed = self._inputs(batch)
        config: dict[str, Any] = {}
        if self.max_concurrency is not None:
            config["max_concurrency"] = self.max_concurrency
        kwargs = dict(self.invoke_kwargs)
        if s.stop:
            kwargs["stop"] = list(s.stop)
        return s, inputs, failed, config, kwargs

    def generate(
        self, batch: list[list[Message]] | list[Any], settings: SamplingSettings | None = None, **overrides: Any
    ) -> list[Generation]:
        """One ``model.batch`` call for the whole batch; per-item errors."""
        s, inputs, failed, config, kwargs = self._prepare(batch, settings, overrides)
        todo = [x for x in inputs if x is not None]
        outs = self.chat_model.batch(todo, config or None, return_exceptions=True, **kwargs) if todo else []
        return self._collect(failed, outs, s)

    async def agenerate(
        self, batch: list[list[Message]] | list[Any], settings: SamplingSettings | None = None, **overrides: Any
    ) -> list[Generation]:
        """Async: one ``model.abatch`` call."""
        s, inputs, failed, config, kwargs = self._prepare(batch, settings, overrides)
        todo = [x for x in inputs if x is not None]
        outs = await self.chat_model.abatch(todo, config or None, return_exceptions=True, **kwargs) if todo else []
        return self._collect(failed, outs, s)

    @staticmethod
    def _collect(failed: list[Generation | None], outs: list[Any], s: SamplingSettings) -> list[Generation]:
        it = iter(outs)
        results = []
        for f in failed:
            if f is not None:
                results.append(f)
                continue
            out = next(it)
            if isinstance(out, BaseException):
                results.append(Generation(error=f"{type(out).__name__}: {out}", finish_reason="error",
                                          info={"error_type": type(out).__name__}))
                continue
            text = out.text if isinstance(getattr(out, "text", None), str) else str(getattr(out, "content", out))
            meta = getattr(out, "response_metadata", None) or {}
            reason = meta.get("finish_reason") or meta.get("stop_reason") or "stop"
            hits = [i for i in (text.find(x) for x in s.stop) if i >= 0]
            if hits:
                text, reason = text[: min(hits)], "stop"
            usage = getattr(out, "usage_metadata", None) or {}
            results.append(Generation(
                text=text.strip(),
                finish_reason="length" if reason in ("length", "max_tokens") else "stop",
                n_prompt_tokens=usage.get("input_tokens"),
                n_tokens=usage.get("output_tokens"),
            ))
        return results

    def __repr__(self) -> str:
        return f"LangChainGenerator({type(self.chat_model).__name__})"
