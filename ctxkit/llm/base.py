"""The generator interface shared by every backend (transformers, OpenAI-compatible, LangChain).

A generator takes a *batch* of chat conversations and returns one :class:`Generation` per
conversation. A failure on one conversation is reported on that item (``error`` set, ``text``
empty) and never aborts the batch.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "CONTEXT_CLOSE",
    "CONTEXT_OPEN",
    "CONTEXT_SLOT",
    "Generation",
    "Generator",
    "Message",
    "Messages",
    "SamplingSettings",
    "as_messages",
    "require_scoring",
]

CONTEXT_OPEN = "<context>"
CONTEXT_CLOSE = "</context>"
CONTEXT_SLOT = f"{CONTEXT_OPEN}\n{{context}}\n{CONTEXT_CLOSE}"
"""The ``{context}`` slot of prompt templates: a token budget shortens only what lies between the
markers (never the instructions or the question), and CAD drops the whole block."""

Role = Literal["system", "user", "assistant"]


class Message(BaseModel):
    """One chat message."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str


Messages = list[Message]


def as_messages(conv: str | list[Message] | list[dict[str, str]]) -> list[Message]:
    """Normalise a plain prompt string or a list of dicts/Messages into ``list[Message]``."""
    if isinstance(conv, str):
        return [Message(role="user", content=conv)]
    return [m if isinstance(m, Message) else Message(**m) for m in conv]


class SamplingSettings(BaseModel):
    """Decoding settings, validated. ``temperature == 0`` means greedy decoding.

    Attributes:
        max_new_tokens: Tokens to generate at most.
        temperature: 0 for greedy; > 0 samples.
        top_p: Nucleus sampling mass (only when sampling).
        top_k: Top-k sampling (only when sampling); ``None`` disables it.
        seed: Seed for sampling; identical seeds give identical samples on the same backend.
        stop: Strings that end the generation (not included in the output).
        repetition_penalty: Divides the logits of tokens already in the prompt or the output
            (CTRL-style, as transformers and vLLM apply it); 1.0 is off. Around 1.1-1.3 keeps
            small models from looping on one word. Sent to OpenAI-compatible servers as
            ``repetition_penalty`` only when not 1.0 (vLLM and our server accept it; OpenAI
            itself does not; llama.cpp calls it ``repeat_penalty``: pass that in ``extra_body``).
    """

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(256, ge=1, le=32768)
    temperature: float = Field(0.0, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    repetition_penalty: float = Field(1.0, ge=1.0, le=3.0)

    @property
    def greedy(self) -> bool:
        """True when decoding is greedy."""
        return self.temperature == 0.0

    @model_validator(mode="after")
    def _check(self) -> SamplingSettings:
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        return self


class Generation(BaseModel):
    """The result for one conversation of a batch.

    Attributes:
        text: Generated text ("" when ``error`` is set).
        error: Why this item failed, or ``None``.
        finish_reason: ``"stop"``, ``"length"`` or ``"error"``.
        n_prompt_tokens: Prompt length in tokens, when known.
        n_tokens: Generated tokens, when known.
        info: Backend-specific extras (e.g. truncation applied, per-step processor stats).
    """

    model_config = ConfigDict(extra="forbid")

    text: str = ""
    error: str | None = None
    finish_reason: Literal["stop", "length", "error"] = "stop"
    n_prompt_tokens: int | None = None
    n_tokens: int | None = None
    info: dict[str, Any] = Field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the item did not fail."""
        return self.error is None


@runtime_checkable
class Generator(Protocol):
    """What every generator backend provides.

    ``score`` (log-likelihood of given continuations) is optional: backends that cannot compute
    it raise ``NotImplementedError``.
    """

    def generate(
        self, batch: list[list[Message]], settings: SamplingSettings | None = None, **overrides: Any
    ) -> list[Generation]: ...

    async def agenerate(
        self, batch: list[list[Message]], settings: SamplingSettings | None = None, **overrides: Any
    ) -> list[Generation]: ...

    def score(self, batch: list[list[Message]], continuations: list[str]) -> list[float]: ...


class BaseGenerator:
    """Helper base: settings merging, default async via a worker thread."""

    default_settings: SamplingSettings

    def __init__(self, settings: SamplingSettings | dict[str, Any] | None = None) -> None:
        self.default_settings = (
            settings if isinstance(settings, SamplingSettings) else SamplingSettings(**(settings or {}))
        )

    def _settings(self, settings: SamplingSettings | None, overrides: dict[str, Any]) -> SamplingSettings:
        base = settings or self.default_settings
        if overrides:
            return SamplingSettings(**{**base.model_dump(), **overrides})
        return base

    def generate(
        self, batch: list[list[Message]], settings: SamplingSettings | None = None, **overrides: Any
    ) -> list[Generation]:
        raise NotImplementedError

    async def agenerate(
        self, batch: list[list[Message]], settings: SamplingSettings | None = None, **overrides: Any
    ) -> list[Generation]:
        """Runs :meth:`generate` in a worker thread so the event loop keeps running."""
        return await asyncio.to_thread(self.generate, batch, settings, **overrides)

    def score(self, batch: list[list[Message]], continuations: list[str]) -> list[float]:
        """Sum of log-probabilities of each continuation given its conversation.

        Raises:
            CapabilityError: this backend cannot score (see :meth:`check_scoring`).
        """
        self.check_scoring()
        raise NotImplementedError(f"{type(self).__name__}.score is not implemented")

    def check_scoring(self, purpose: str | None = None) -> None:
        """Raise :class:`~ctxkit.errors.CapabilityError` unless :meth:`score` works here.

        Backends that implement ``score`` pass; an HTTP backend asks its server (once).

        Args:
            purpose: What needs the scores, named in the error (e.g. ``"option scoring"``).
        """
        if type(self).score is BaseGenerator.score:
            from ..errors import CapabilityError

            raise CapabilityError(
                f"{type(self).__name__} cannot score continuations (log-likelihoods)"
                + (f", which {purpose} needs" if purpose else "")
                + ". Use TransformersGenerator, or OpenAIGenerator against a server whose "
                "/v1/completions endpoint returns prompt log-probabilities (vLLM, ctxkit serve).",
                capability="scoring", backend=type(self).__name__,
            )

    def answer(self, state: Any, **stage_settings: Any) -> Any:
        """Answer a ``ContextState`` (or a list of them) from its query and passages.

        Uses :class:`~ctxkit.llm.GenerateAnswer` with ``stage_settings`` (template, system,
        max_passages, sampling...); sets ``state.prompt`` and ``state.answer`` and returns the
        answer (a list of answers for a list of states; ``None`` where generation failed).
        """
        from .stage import GenerateAnswer

        states = state if isinstance(state, list) else [state]
        GenerateAnswer(generator=self, **stage_settings)(states)
        answers = [s.answer for s in states]
        return answers if isinstance(state, list) else answers[0]

    def complete(self, prompts: list[str], **overrides: Any) -> list[str]:
        """Convenience: user prompts in, texts out (failed items give "")."""
        return [g.text for g in self.generate([as_messages(p) for p in prompts], **overrides)]


def require_scoring(generator: Any, purpose: str) -> None:
    """Check, before any work, that ``generator`` can score continuations.

    Callers that need log-likelihoods (LLM-preference labels, option scoring, the MMLU and
    TruthfulQA harnesses) call this up front instead of failing part-way.

    Args:
        generator: Any generator; one with ``check_scoring`` decides itself (an HTTP generator
            asks its server), another passes when it has a callable ``score``.
        purpose: What needs the scores, named in the error.

    Raises:
        CapabilityError: it cannot score; the message says why and what to use instead.
    """
    check = getattr(generator, "check_scoring", None)
    if callable(check):
        check(purpose)
        return
    if not callable(getattr(generator, "score", None)):
        from ..errors import CapabilityError

        raise CapabilityError(
            f"{purpose} needs a generator with score(batch, continuations); "
            f"{type(generator).__name__} has none. Use TransformersGenerator or OpenAIGenerator.",
            capability="scoring", backend=type(generator).__name__,
        )
