"""A generator for any OpenAI-compatible server (vLLM, TGI, llama.cpp, OpenAI...).

Async-first over ``httpx``: at most ``max_concurrency`` requests in flight, per-request timeouts,
retries with exponential backoff and jitter on 429 / 5xx / connection errors (honouring
``Retry-After``), and a clear per-item error on other 4xx answers (the server's own message is
kept). A request that timed out after it was sent is not sent again unless ``retry_timeouts``.
The sync :meth:`OpenAIGenerator.generate` works with or without a running event loop.

Prompt budgets: the context blocks of a conversation (between the ``<context>`` markers) are
shortened to fit the server's context window, measured with a tokenizer you name or estimated
from characters; a "maximum context length" 400 teaches the window, and the item is shortened
and sent again instead of failing.

Scoring: :meth:`OpenAIGenerator.score` reads the log-probabilities of given continuations from
``/v1/completions`` (``echo`` + ``logprobs``, or vLLM's ``prompt_logprobs``). Whether the server
can do that is asked once and checked against its own next-token log-probabilities
(:meth:`OpenAIGenerator.scoring_support`); a server that cannot gives a
:class:`~ctxkit.errors.CapabilityError` before any scoring starts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable, Sequence, Sized
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from .._lazy import require
from ..errors import CapabilityError, ConfigError, CtxkitError, InputError
from .base import (
    CONTEXT_CLOSE,
    CONTEXT_OPEN,
    BaseGenerator,
    Generation,
    Message,
    SamplingSettings,
    as_messages,
)
from .budget import (
    CharCounter,
    PromptTooLong,
    TokenCounter,
    TokenizerCounter,
    context_spans,
    encode_prompt,
    fit_context,
    load_tokenizer,
    render_chat,
)

__all__ = ["RETRY_STATUSES", "OpenAIGenerator", "OpenAIHTTPError", "ScoringSupport", "context_limit"]

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})

_T = TypeVar("_T")

# Model families that take ``max_completion_tokens`` and reject ``max_tokens`` (OpenAI o-series, gpt-5).
_COMPLETION_TOKENS_MODELS = re.compile(r"^(o\d+(?:$|[-_.])|gpt-5)", re.IGNORECASE)

# "maximum context length" in the 400 answers of OpenAI, vLLM, llama.cpp, TGI and ctxkit serve.
_LIMIT_PATTERNS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"maximum context length is (\d+)",
        r"context window of (\d+)",
        r"available context size \((\d+) tokens\)",
        r"max_new_tokens` must be <= (\d+)",
    )
]
_PROMPT_PATTERNS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"\((\d+) in the messages",
        r"(\d+) in your prompt",
        r"your (?:request|prompt) has (\d+) input tokens",
        r"requested tokens \((\d+)\)",
        r"request \((\d+) tokens\)",
        r"given: (\d+) `inputs` tokens",
        r"resulted in (\d+) tokens",
    )
]

_PROBE_PROMPT = "The capital of France is"
_MESSAGE_OVERHEAD_TOKENS = 4  # role markers around each message, for character estimates

IN_PROCESS_ONLY = (
    "CAAD, CAD and AdaCAD change the model's next-token logits inside every decoding step, which "
    "needs the model in this process; an OpenAI-compatible server only returns the text it sampled. "
    "Use TransformersGenerator(model, logits_processors=[...]) for them, or leave them out to "
    "generate over HTTP."
)


class OpenAIHTTPError(CtxkitError):
    """The server answered with an error status (after retries, if the status is retryable).

    Attributes:
        status: HTTP status code (``None`` for connection errors / timeouts).
        server_message: The server's error text, when it sent one.
    """

    def __init__(self, message: str, status: int | None = None, server_message: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.server_message = server_message


class _NoModelHere(CapabilityError, AttributeError):
    """``OpenAIGenerator.model``: there is no model in this process (also an ``AttributeError``,
    so ``getattr(gen, "model", None)`` stays ``None``)."""


@dataclass(frozen=True)
class ScoringSupport:
    """Whether (and how) a server returns the log-probabilities of prompt tokens.

    Attributes:
        method: ``"echo"`` (``echo`` + ``logprobs``), ``"prompt_logprobs"`` (vLLM), or ``None``
            when the server cannot score.
        reason: What was found, in words (the server's own message where it refused).
        verified: The server's prompt log-probability of a token matched its next-token
            log-probability of the same token (so tokens are paired with the right positions).
    """

    method: Literal["echo", "prompt_logprobs"] | None
    reason: str
    verified: bool = False

    @property
    def available(self) -> bool:
        """True when :meth:`OpenAIGenerator.score` can be used."""
        return self.method is not None


def _server_message(resp: Any) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:500]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err)[:500]
        return str(err)[:500]
    return str(data)[:500]


def _retry_after(resp: Any) -> float | None:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(when.timestamp() - time.time(), 0.0)


def context_limit(message: str | None) -> tuple[int, int | None] | None:
    """The context window (and the prompt tokens, when given) stated by a server's
    "maximum context length" error message, or ``None`` when the message is about something else.

    Example:
        >>> context_limit("This model's maximum context length is 2048 tokens. However, you "
        ...               "requested 2100 tokens (2000 in the messages, 100 in the completion).")
        (2048, 2000)
    """
    if not message:
        return None
    for pat in _LIMIT_PATTERNS:
        m = pat.search(message)
        if m:
            window = int(m.group(1))
            prompt = next((int(p.group(1)) for p in (q.search(message) for q in _PROMPT_PATTERNS) if p), None)
            return window, prompt
    return None


def _entries(method: str, data: Any) -> tuple[list[tuple[str, float | None]], int | None]:
    """(token text, log-prob) of every echoed token, and how many of them were generated.

    Raises:
        ValueError: the answer holds no prompt log-probabilities.
    """
    choice = data["choices"][0]
    usage = data.get("usage") or {}
    if method == "echo":
        lp = choice.get("logprobs")
        if not isinstance(lp, dict) or not lp.get("tokens") or lp.get("token_logprobs") is None:
            raise ValueError("the answer has no echoed logprobs")
        tokens, values = lp["tokens"], lp["token_logprobs"]
        if len(tokens) != len(values):
            raise ValueError("logprobs.tokens and logprobs.token_logprobs differ in length")
        n_gen = usage.get("completion_tokens")
        entries = [(str(t), None if v is None else float(v)) for t, v in zip(tokens, values, strict=True)]
        return entries, int(n_gen) if isinstance(n_gen, int) else None
    plp = choice.get("prompt_logprobs", data.get("prompt_logprobs"))
    if not isinstance(plp, list) or not plp:
        raise ValueError("the answer has no prompt_logprobs")
    out: list[tuple[str, float | None]] = []
    for pos in plp:
        if not pos:
            out.append(("", None))  # the first prompt token has no log-probability
            continue
        cands = list(pos.values())
        # the prompt token itself is always listed; next to the top-1 it has the larger rank
        best = cands[0] if len(cands) == 1 else max(cands, key=lambda c: c.get("rank") or 0)
        out.append((str(best.get("decoded_token") or ""), float(best["logprob"])))
    return out, 0


def _continuation_logprobs(
    entries: list[tuple[str, float | None]], prompt: str, continuation: str, n_generated: int | None
) -> list[float | None] | None:
    """The log-probs of the tokens that spell ``continuation`` at the end of ``prompt``."""
    full = prompt + continuation
    joined = "".join(t for t, _ in entries)
    at = joined.find(full)
    if at >= 0:  # the echoed tokens spell the text: take the tokens overlapping the continuation
        lo, hi = at + len(prompt), at + len(full)
        out, pos = [], 0
        empty: list[float | None] = []  # "" tokens waiting for the token after them
        for text, lp in entries:
            a, b = pos, pos + len(text)
            pos = b
            if not text:
                empty.append(lp)
                continue
            if b > lo and a < hi:
                # "" tokens just before are the first bytes of this token's character (an
                # incremental detokenizer echoes them empty): they belong to it, at the start of
                # the continuation only when the character is multi-byte (else: e.g. a special token
                # echoed as "" at the end of the prompt)
                if empty and (a > lo or not text[0].isascii()):
                    out.extend(empty)
                out.append(lp)
            empty = []
        return out or None
    # special tokens may be echoed as "": count back from the end of the prompt instead
    if n_generated is None:
        return None
    k, covered, back = len(entries) - n_generated, 0, []
    while k > 0 and covered < len(continuation):
        k -= 1
        back.append(entries[k][1])
        covered += len(entries[k][0])
    # "" tokens before a multi-byte first character are its first bytes (see above)
    first = entries[k][0] if back else ""
    while k > 0 and not entries[k - 1][0] and first and not first[0].isascii():
        k -= 1
        back.append(entries[k][1])
    return back[::-1] if covered >= len(continuation) else None


class OpenAIGenerator(BaseGenerator):
    """Chat completions (and continuation scores) over HTTP from an OpenAI-compatible server.

    Args:
        model: The model id the server expects (``"model"`` in the request body).
        base_url: API root, e.g. ``http://localhost:8000/v1`` (``/chat/completions`` is appended).
        api_key: Bearer token; default: the environment variable named by ``api_key_env``.
        api_key_env: Environment variable that holds the key (never written to configs).
        settings: Default :class:`SamplingSettings`.
        max_concurrency: Most requests in flight at once (an ``asyncio.Semaphore``).
        timeout: Seconds per request attempt (connect + read).
        max_retries: Retries after the first attempt on 429/5xx/connection errors.
        retry_timeouts: Also re-send a request that timed out after it was sent (off: the
            server may still be working on it; a connect timeout is always retried).
        backoff_base: First backoff in seconds; doubles per retry, with jitter.
        backoff_max: Longest wait between attempts (also caps ``Retry-After``).
        tokenizer: The served model's tokenizer (local path, ``.gguf``, hub id, ``"default"``
            or a tokenizer object), for token-accurate prompt budgets and for rendering the chat
            template of scored prompts. ``None``: budgets are estimated from characters.
        chat_template: With a tokenizer, render scored prompts with its chat template (``True``),
            this template string, or as plain text (``False``).
        context_window: The model's context size in tokens. ``None``: learned from the first
            "maximum context length" error of the server.
        max_input_tokens: Prompt budget in tokens (default: ``context_window - max_new_tokens``).
        chars_per_token: Characters per token assumed without a tokenizer (refined from the
            token counts a server states in its errors).
        context_markers: The (open, close) strings that delimit truncatable context.
        max_tokens_param: Request field for the generation length: ``"max_tokens"``,
            ``"max_completion_tokens"`` (OpenAI o-series and gpt-5 reject ``max_tokens``), or
            ``"auto"`` (by model name; a server that asks for the other one is answered once).
        scoring: How :meth:`score` reads prompt log-probabilities: ``"auto"`` (ask the server),
            ``"echo"``, ``"prompt_logprobs"`` or ``"off"``.
        extra_body: Extra JSON fields sent with every request (e.g. ``{"top_k": 20}`` for vLLM).
        headers: Extra HTTP headers.
        transport: An ``httpx.AsyncBaseTransport`` (testing seam, proxies, custom TLS).
        show_progress: Show a progress bar over requests.
        logits_processors: Not supported (CAAD/CAD need the model in-process); a non-empty
            list raises :class:`~ctxkit.errors.CapabilityError`.
    """

    def __init__(
        self,
        model: str = "default",
        *,
        base_url: str = "http://localhost:8000/v1",
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        settings: SamplingSettings | dict[str, Any] | None = None,
        max_concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 4,
        retry_timeouts: bool = False,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        tokenizer: str | Any | None = None,
        chat_template: bool | str = True,
        context_window: int | None = None,
        max_input_tokens: int | None = None,
        chars_per_token: float = 3.0,
        context_markers: tuple[str, str] = (CONTEXT_OPEN, CONTEXT_CLOSE),
        max_tokens_param: Literal["auto", "max_tokens", "max_completion_tokens"] = "auto",
        scoring: Literal["auto", "echo", "prompt_logprobs", "off"] = "auto",
        extra_body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        transport: Any = None,
        show_progress: bool = False,
        logits_processors: Sequence[Any] | None = None,
    ) -> None:
        if logits_processors:
            raise self._no_processors(logits_processors)
        try:
            super().__init__(settings)
        except ValueError as exc:
            raise ConfigError(f"OpenAIGenerator: invalid sampling settings: {exc}") from None
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"OpenAIGenerator: base_url must start with http:// or https://, got {base_url!r}")
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ConfigError(f"OpenAIGenerator: max_concurrency must be an int >= 1, got {max_concurrency!r}")
        if not timeout or timeout <= 0:
            raise ConfigError(f"OpenAIGenerator: timeout must be > 0 seconds, got {timeout!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"OpenAIGenerator: max_retries must be an int >= 0, got {max_retries!r}")
        if backoff_base < 0 or backoff_max < 0:
            raise ConfigError("OpenAIGenerator: backoff_base and backoff_max must be >= 0")
        for name, value in (("context_window", context_window), ("max_input_tokens", max_input_tokens)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"OpenAIGenerator: {name} must be an int >= 1 or None, got {value!r}")
        if not isinstance(chars_per_token, int | float) or not chars_per_token > 0:
            raise ConfigError(f"OpenAIGenerator: chars_per_token must be > 0, got {chars_per_token!r}")
        if (
            not isinstance(context_markers, tuple | list)
            or len(context_markers) != 2
            or not all(isinstance(m, str) and m for m in context_markers)
            or context_markers[0] == context_markers[1]
        ):
            raise ConfigError("OpenAIGenerator: context_markers must be two different non-empty strings")
        if max_tokens_param not in ("auto", "max_tokens", "max_completion_tokens"):
            raise ConfigError(
                "OpenAIGenerator: max_tokens_param must be 'auto', 'max_tokens' or 'max_completion_tokens', "
                f"got {max_tokens_param!r}"
            )
        if scoring not in ("auto", "echo", "prompt_logprobs", "off"):
            raise ConfigError(
                f"OpenAIGenerator: scoring must be 'auto', 'echo', 'prompt_logprobs' or 'off', got {scoring!r}"
            )
        self.model_name = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self._api_key = api_key
        self.max_concurrency = max_concurrency
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.retry_timeouts = bool(retry_timeouts)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.tokenizer_setting = tokenizer
        self.chat_template = chat_template
        self.context_window = context_window
        self.max_input_tokens = max_input_tokens
        self.chars_per_token = float(chars_per_token)
        self.context_markers = (context_markers[0], context_markers[1])
        self.max_tokens_param = max_tokens_param
        self.scoring = scoring
        self.extra_body = dict(extra_body or {})
        self.headers = dict(headers or {})
        self.transport = transport
        self.show_progress = show_progress
        self._tokenizer: Any = None if isinstance(tokenizer, str) else tokenizer
        self._lock = threading.Lock()
        # learned from the server's answers
        self._learned_window: int | None = None
        self._learned_cpt: float | None = None
        self._server_overhead = 0
        self._learned_max_tokens_param: str | None = None
        self._scoring_support: ScoringSupport | None = None

    # -- settings and what this backend cannot do ------------------------------------------------
    @property
    def api_key(self) -> str | None:
        """The key in use (explicit, else from ``api_key_env``)."""
        return self._api_key or os.environ.get(self.api_key_env) or None

    @property
    def tokenizer(self) -> Any:
        """The tokenizer named by ``tokenizer`` (loaded on first use), or ``None``."""
        if self._tokenizer is None and isinstance(self.tokenizer_setting, str):
            with self._lock:
                if self._tokenizer is None:
                    self._tokenizer = load_tokenizer(self.tokenizer_setting)
        return self._tokenizer

    @property
    def model(self) -> Any:
        """There is no model in this process: always raises.

        Raises:
            CapabilityError: logit-level methods (CAAD, CAD/AdaCAD, grounding spaces) need
                :class:`~ctxkit.llm.TransformersGenerator`.
        """
        raise _NoModelHere(
            f"OpenAIGenerator has no model in this process (the model runs behind {self.base_url}). "
            + IN_PROCESS_ONLY,
            capability="in_process_model", backend="OpenAIGenerator",
        )

    @property
    def logits_processors(self) -> list[Any]:
        """Always empty: logits processors need the model in-process."""
        return []

    @logits_processors.setter
    def logits_processors(self, value: Sequence[Any] | None) -> None:
        if value:
            raise self._no_processors(value)

    @staticmethod
    def _no_processors(procs: Sequence[Any]) -> CapabilityError:
        names = ", ".join(sorted({type(p).__name__ for p in procs}))
        return CapabilityError(
            f"OpenAIGenerator cannot run logits processors ({names}): " + IN_PROCESS_ONLY,
            capability="logits_processors", backend="OpenAIGenerator",
        )

    def warm_up(self) -> None:
        """Load the tokenizer, if one is named (the server is not contacted)."""
        _ = self.tokenizer

    def to_spec(self) -> dict[str, Any]:
        """A config spec (the API key itself is never included)."""
        spec: dict[str, Any] = {"backend": "openai", "model": self.model_name, "base_url": self.base_url}
        defaults = {"api_key_env": "OPENAI_API_KEY", "max_concurrency": 8, "timeout": 60.0, "max_retries": 4,
                    "retry_timeouts": False, "backoff_base": 0.5, "backoff_max": 30.0, "chat_template": True,
                    "context_window": None, "max_input_tokens": None, "chars_per_token": 3.0,
                    "max_tokens_param": "auto", "scoring": "auto"}
        for key, default in defaults.items():
            if getattr(self, key) != default:
                spec[key] = getattr(self, key)
        if isinstance(self.tokenizer_setting, str):
            spec["tokenizer"] = self.tokenizer_setting
        if self.context_markers != (CONTEXT_OPEN, CONTEXT_CLOSE):
            spec["context_markers"] = list(self.context_markers)
        if self.extra_body:
            spec["extra_body"] = self.extra_body
        if self.headers:
            spec["headers"] = self.headers
        if self.default_settings != SamplingSettings():
            spec["settings"] = self.default_settings.model_dump(exclude_defaults=True)
        return spec

    # -- prompt budgets --------------------------------------------------------------------------
    def _counter(self) -> TokenCounter:
        tok = self.tokenizer
        if tok is not None:
            return TokenizerCounter(tok)
        return CharCounter(self._learned_cpt or self.chars_per_token)

    def _measure(self, messages: list[Message]) -> Sized:
        """The prompt of ``messages`` in tokens (its ids, or a ``range`` as long as the estimate)."""
        tok = self.tokenizer
        if tok is not None:
            return encode_prompt(tok, render_chat(messages, tok, self.chat_template), self.chat_template)
        counter = CharCounter(self._learned_cpt or self.chars_per_token)
        return range(sum(counter.count(m.content) + _MESSAGE_OVERHEAD_TOKENS for m in messages))

    def _budget(self, reserved: int) -> int | None:
        """Prompt tokens allowed when ``reserved`` tokens are kept free, or ``None`` (unknown)."""
        window = self.context_window or self._learned_window
        budgets = []
        if self.max_input_tokens is not None:
            budgets.append(self.max_input_tokens)
        if window is not None:
            budgets.append(window - reserved - self._server_overhead)
        return max(min(budgets), 1) if budgets else None

    def _fit(self, messages: list[Message], budget: int | None) -> tuple[list[Message], int]:
        """``messages`` with their context shortened to ``budget`` tokens (unchanged without one)."""
        if budget is None:
            if not messages:
                raise InputError("empty conversation: give at least one message")
            for m in messages:
                context_spans(m.content, self.context_markers)
            return messages, 0
        _, msgs, removed = fit_context(
            messages, budget, encode=self._measure, counter=self._counter(), markers=self.context_markers,
            budget_hint="raise context_window or max_input_tokens",
        )
        return msgs, removed

    def _after_limit_error(
        self, messages: list[Message], message: str | None, reserved: int
    ) -> tuple[list[Message], int] | None:
        """Shorter ``messages`` after a "maximum context length" 400, or ``None`` (cannot)."""
        found = context_limit(message)
        if found is None:
            return None
        window, reported = found
        if self.context_window is None:
            self._learned_window = window
        measured = len(self._measure(messages))
        if reported:
            if self.tokenizer is not None:  # the server's template/BOS may count more than ours
                self._server_overhead = max(reported - measured, 0)
            else:  # calibrate the character estimate on the server's own count
                chars = sum(len(m.content) for m in messages)
                ratio = chars / max(reported - _MESSAGE_OVERHEAD_TOKENS * len(messages), 1)
                self._learned_cpt = min(max(0.9 * ratio, 0.5), 8.0)  # 10% margin: other prompts differ
                measured = len(self._measure(messages))
        budget = self._budget(reserved)
        if budget is None:
            return None
        if budget >= measured:  # our measure says it fits, the server disagrees: cut 15% more
            budget = max(int(measured * 0.85), 1)
        try:
            msgs, removed = self._fit(messages, budget)
        except PromptTooLong:
            return None
        return (msgs, removed) if removed else None

    def prepare(
        self, conversation: list[Message] | list[dict[str, str]] | str, *, max_new_tokens: int | None = None
    ) -> list[Message]:
        """The messages as they would be sent now: context shortened to the prompt budget known
        so far (``max_input_tokens``, ``context_window``, or the window a server stated).

        Raises:
            InputError: the prompt cannot fit even with all context removed.
        """
        n_new = max_new_tokens or self.default_settings.max_new_tokens
        try:
            return self._fit(as_messages(conversation), self._budget(n_new))[0]
        except PromptTooLong as exc:
            raise InputError(f"prompt too long: {exc}") from None

    # -- request building ------------------------------------------------------------------------
    def _max_tokens_key(self) -> str:
        if self.max_tokens_param != "auto":
            return self.max_tokens_param
        if self._learned_max_tokens_param:
            return self._learned_max_tokens_param
        name = self.model_name.rsplit("/", 1)[-1]
        return "max_completion_tokens" if _COMPLETION_TOKENS_MODELS.match(name) else "max_tokens"

    def _body(self, messages: list[Message], s: SamplingSettings, max_tokens_key: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_name,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            max_tokens_key or self._max_tokens_key(): s.max_new_tokens,
            "temperature": s.temperature,
            "stream": False,
        }
        if not s.greedy:
            body["top_p"] = s.top_p
            if s.top_k is not None:
                body["top_k"] = s.top_k
        if s.seed is not None:
            body["seed"] = s.seed
        if s.repetition_penalty != 1.0:
            body["repetition_penalty"] = s.repetition_penalty
        if s.stop:
            body["stop"] = list(s.stop)
        body.update(self.extra_body)
        return body

    def _client_kwargs(self) -> dict[str, Any]:
        httpx = require("httpx")
        headers = {"Content-Type": "application/json", **self.headers}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        kw: dict[str, Any] = {"headers": headers, "timeout": httpx.Timeout(self.timeout)}
        if self.transport is not None:
            kw["transport"] = self.transport
        else:
            kw["limits"] = httpx.Limits(max_connections=self.max_concurrency)
        return kw

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_max)
        cap = min(self.backoff_max, self.backoff_base * (2**attempt))
        return cap / 2 + random.uniform(0, cap / 2)  # "equal jitter": never zero, never in lockstep

    # -- one request with retries ----------------------------------------------------------------
    async def _post(
        self, client: Any, sem: asyncio.Semaphore, path: str, body: dict[str, Any]
    ) -> tuple[Any, OpenAIHTTPError | None, int]:
        """POST with retries; returns (JSON answer or None, error or None, retries made)."""
        httpx = require("httpx")
        url = f"{self.base_url}{path}"
        attempts = 0
        while True:
            retry_after: float | None = None
            async with sem:
                try:
                    resp = await client.post(url, json=body)
                except httpx.TimeoutException as exc:
                    err = OpenAIHTTPError(f"request timed out after {self.timeout:g}s ({type(exc).__name__})")
                    sent = not isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout)
                    if sent and not self.retry_timeouts:
                        return None, OpenAIHTTPError(
                            f"{err}; not re-sent, since the server may still be working on it "
                            "(set retry_timeouts=True to re-send timed-out requests)"
                        ), attempts
                except httpx.TransportError as exc:
                    err = OpenAIHTTPError(f"cannot reach {url}: {type(exc).__name__}: {exc}")
                else:
                    if resp.status_code == 200:
                        try:
                            return resp.json(), None, attempts
                        except ValueError:
                            return None, OpenAIHTTPError(f"malformed response (not JSON) from {url}: "
                                                         f"{resp.text[:300]}"), attempts
                    msg = _server_message(resp)
                    err = OpenAIHTTPError(f"HTTP {resp.status_code} from {url}: {msg}", resp.status_code, msg)
                    if resp.status_code not in RETRY_STATUSES:
                        return None, err, attempts
                    retry_after = _retry_after(resp)
            if attempts >= self.max_retries:
                if attempts:
                    err = OpenAIHTTPError(f"{err} (gave up after {attempts + 1} attempts)", err.status, err.server_message)
                return None, err, attempts
            await asyncio.sleep(self._backoff(attempts, retry_after))
            attempts += 1

    async def _one(self, client: Any, sem: asyncio.Semaphore, messages: list[Message], s: SamplingSettings) -> Generation:
        try:
            msgs, removed = self._fit(messages, self._budget(s.max_new_tokens))
        except PromptTooLong as exc:
            return Generation(error=f"prompt too long: {exc}", finish_reason="error",
                              info={"error_type": "PromptTooLong", "retries": 0})
        except InputError as exc:
            return Generation(error=str(exc), finish_reason="error", info={"error_type": "InputError", "retries": 0})
        key = self._max_tokens_key()
        retries = resent = 0
        for round_ in range(3):  # the request, then at most two corrected re-sends after a 400
            data, err, n = await self._post(client, sem, "/chat/completions", self._body(msgs, s, key))
            retries += n
            if err is None:
                break
            if err.status != 400 or round_ == 2:
                return self._failed(err, retries)
            msg = err.server_message or ""
            if key == "max_tokens" and "max_completion_tokens" in msg and self.max_tokens_param == "auto":
                key = self._learned_max_tokens_param = "max_completion_tokens"  # this family needs it
                continue
            shorter = self._after_limit_error(msgs, msg, s.max_new_tokens)
            if shorter is None:
                return self._failed(err, retries)
            msgs, more = shorter
            removed += more
            resent += 1
        gen = self._parse(data, retries)
        if removed and gen.ok:
            gen.info["truncated_context_tokens"] = removed
            gen.info["truncation"] = "tokenizer" if self.tokenizer is not None else "characters"
            if resent:
                gen.info["resent_after_context_limit"] = resent
        return gen

    @staticmethod
    def _failed(err: OpenAIHTTPError, retries: int) -> Generation:
        info: dict[str, Any] = {"error_type": type(err).__name__, "retries": retries}
        if err.status is not None:
            info["status"] = err.status
        return Generation(error=str(err), finish_reason="error", info=info)

    @staticmethod
    def _parse(data: Any, retries: int) -> Generation:
        try:
            choice = data["choices"][0]
            content = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            err = OpenAIHTTPError(
                f"malformed chat-completions response ({type(exc).__name__}: {exc}): {json.dumps(data)[:300]}"
            )
            return OpenAIGenerator._failed(err, retries)
        reason = choice.get("finish_reason") or "stop"
        usage = data.get("usage") or {}
        info: dict[str, Any] = {"retries": retries}
        if reason not in ("stop", "length"):
            info["finish_reason"] = reason
        return Generation(
            text=content.strip(),
            finish_reason="length" if reason == "length" else "stop",
            n_prompt_tokens=usage.get("prompt_tokens"),
            n_tokens=usage.get("completion_tokens"),
            info=info,
        )

    # -- generation ------------------------------------------------------------------------------
    async def agenerate(
        self,
        batch: list[list[Message]] | list[Any],
        settings: SamplingSettings | None = None,
        *,
        logits_processors: Sequence[Any] | None = None,
        **overrides: Any,
    ) -> list[Generation]:
        """Send every conversation concurrently (at most ``max_concurrency`` in flight).

        Returns:
            One :class:`Generation` per conversation, in input order; failures are per item.

        Raises:
            CapabilityError: ``logits_processors`` were given (they need the model in-process).
        """
        httpx = require("httpx")
        if logits_processors:
            raise self._no_processors(logits_processors)
        if isinstance(batch, str):
            raise InputError("generate expects a list of conversations; wrap a single prompt in a list")
        if isinstance(settings, dict):
            overrides, settings = {**settings, **overrides}, None
        try:
            s = self._settings(settings, overrides)
        except ValueError as exc:
            raise InputError(f"invalid sampling settings: {exc}") from None
        if not batch:
            return []
        convs: list[list[Message] | None] = []
        results: list[Generation | None] = [None] * len(batch)
        for i, conv in enumerate(batch):
            try:
                convs.append(as_messages(conv))
            except (ValueError, TypeError) as exc:
                convs.append(None)
                results[i] = Generation(error=f"invalid conversation: {exc}", finish_reason="error")
        sem = asyncio.Semaphore(self.max_concurrency)
        bar = None
        if self.show_progress and len(batch) > 1:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(batch), desc="generate", unit="request")

        async with httpx.AsyncClient(**self._client_kwargs()) as client:
            async def run(i: int, conv: list[Message]) -> None:
                results[i] = await self._one(client, sem, conv, s)
                if bar is not None:
                    bar.update(1)

            await asyncio.gather(*(run(i, c) for i, c in enumerate(convs) if c is not None))
        if bar is not None:
            bar.close()
        return [r if r is not None else Generation(error="not generated", finish_reason="error") for r in results]

    def generate(
        self,
        batch: list[list[Message]] | list[Any],
        settings: SamplingSettings | None = None,
        *,
        logits_processors: Sequence[Any] | None = None,
        **overrides: Any,
    ) -> list[Generation]:
        """Sync :meth:`agenerate`; safe to call from inside a running event loop (uses a thread)."""
        if logits_processors:
            raise self._no_processors(logits_processors)
        return self._sync(lambda: self.agenerate(batch, settings, **overrides))

    @staticmethod
    def _sync(make: Callable[[], Awaitable[_T]]) -> _T:
        async def main() -> _T:
            return await make()

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(main())
        with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctxkit-openai") as ex:
            return ex.submit(asyncio.run, main()).result()

    # -- scoring ---------------------------------------------------------------------------------
    def _score_prompt(self, messages: list[Message]) -> str:
        """The text sent for scoring: the rendered conversation, without a leading BOS token
        when the model's tokenizer adds one itself (the server then adds it, as for any prompt)."""
        tok = self.tokenizer
        text = render_chat(messages, tok, self.chat_template)
        if tok is not None:
            bos, bos_id = getattr(tok, "bos_token", None), getattr(tok, "bos_token_id", None)
            if bos and bos_id is not None and text.startswith(bos):
                ids = tok("x", add_special_tokens=True)["input_ids"]
                if ids and ids[0] == bos_id:
                    text = text[len(bos):]
        return text

    def _score_body(self, method: str, prompt: str, top: int = 1) -> dict[str, Any]:
        body: dict[str, Any] = {**self.extra_body, "model": self.model_name, "prompt": prompt, "max_tokens": 1,
                                "temperature": 0.0, "stream": False}
        if method == "echo":
            body.update(echo=True, logprobs=top)
        else:
            body["prompt_logprobs"] = top
        return body

    def scoring_support(self, *, refresh: bool = False) -> ScoringSupport:
        """Whether this server can score continuations, asked once and cached.

        The probe asks ``/v1/completions`` for the next-token log-probabilities of a short
        prompt, then for the prompt log-probabilities of that prompt plus one of those tokens
        (``echo`` + ``logprobs``, else ``prompt_logprobs``), and checks that both give the token
        the same log-probability. A server that is unreachable is asked again next time.
        """
        if self._scoring_support is not None and not refresh:
            return self._scoring_support
        return self._sync(self._aprobe)

    async def _aprobe(self) -> ScoringSupport:
        httpx = require("httpx")
        if self.scoring == "off":
            return ScoringSupport(None, "scoring is turned off (scoring='off')")
        sem = asyncio.Semaphore(1)
        reasons: list[str] = []
        definitive = True
        # the probe prompt has the shape of the prompts score() sends (servers may differ by shape:
        # llama-cpp-python pairs echoed tokens with the right positions only after a BOS token)
        probe = self._score_prompt([Message(role="user", content=_PROBE_PROMPT)])
        async with httpx.AsyncClient(**self._client_kwargs()) as client:
            ref = {**self.extra_body, "model": self.model_name, "prompt": probe, "max_tokens": 1,
                   "temperature": 0.0, "logprobs": 5, "stream": False}
            data, err, _ = await self._post(client, sem, "/completions", ref)
            if err is not None:
                what = "has no /v1/completions endpoint" if err.status in (404, 405) else "failed the completions probe"
                sup = ScoringSupport(None, f"the server {what}: {err}")
                if err.status is not None and err.status not in RETRY_STATUSES:  # a definite answer
                    self._scoring_support = sup
                return sup
            try:
                top = data["choices"][0]["logprobs"]["top_logprobs"][0]
                cands = sorted(((str(t), float(v)) for t, v in top.items()), key=lambda c: -c[1])
            except (KeyError, IndexError, TypeError, ValueError, AttributeError):
                sup = ScoringSupport(None, "the server's completions endpoint returns no log-probabilities "
                                           f"(asked with logprobs=5, got {json.dumps(data)[:200]})")
                self._scoring_support = sup
                return sup
            cands = [c for c in cands if c[0].strip() and "\ufffd" not in c[0] and math.isfinite(c[1])
                     and not (c[0].strip().startswith("<") and c[0].strip().endswith(">"))]
            cands.sort(key=lambda c: not c[0].startswith(" "))  # whole words re-tokenise the same way
            methods = ("echo", "prompt_logprobs") if self.scoring == "auto" else (self.scoring,)
            for method in methods:
                checked = False
                for cand, ref_lp in cands[:5]:
                    data, err, _ = await self._post(client, sem, "/completions",
                                                    self._score_body(method, probe + cand))
                    if err is not None:
                        reasons.append(f"{method}: {err}")
                        definitive = definitive and err.status is not None and err.status not in RETRY_STATUSES
                        break
                    try:
                        entries, n_gen = _entries(method, data)
                    except (KeyError, IndexError, TypeError, ValueError) as exc:
                        reasons.append(f"{method}: the server answered without prompt log-probabilities ({exc})")
                        break
                    got = _continuation_logprobs(entries, probe, cand, n_gen)
                    if not got or len(got) != 1 or got[0] is None:
                        continue  # the token merged with its neighbours here: try another one
                    checked = True
                    if abs(got[0] - ref_lp) <= 0.05 + 0.02 * abs(ref_lp):
                        sup = ScoringSupport(method, f"prompt log-probabilities via {method}, checked against the "
                                                     "server's next-token log-probabilities", verified=True)
                        self._scoring_support = sup
                        return sup
                    reasons.append(
                        f"{method}: the server gives {cand!r} a prompt log-probability of {got[0]:.3f} after "
                        f"{probe[-40:]!r} but a next-token log-probability of {ref_lp:.3f}; its prompt "
                        "log-probabilities belong to other positions, so scores from it would be wrong "
                        "(llama-cpp-python does this for prompts that do not start with the model's BOS "
                        "token: name the model's tokenizer, tokenizer=..., so prompts are sent in its chat "
                        "template)"
                    )
                    break
                else:
                    if not checked:  # nothing could be compared: usable, but say so
                        log.warning("%s: scoring via %s could not be verified (no probe token kept its "
                                    "tokenisation); scores may be wrong if the server misaligns them", self, method)
                        sup = ScoringSupport(method, f"prompt log-probabilities via {method} (not verified: no "
                                                     "probe token kept its tokenisation)")
                        self._scoring_support = sup
                        return sup
        sup = ScoringSupport(None, "; ".join(reasons) or "no way to read prompt log-probabilities")
        if definitive:
            self._scoring_support = sup
        return sup

    def check_scoring(self, purpose: str | None = None) -> None:
        """Raise :class:`~ctxkit.errors.CapabilityError` unless this server can score.

        Args:
            purpose: What needs the scores, named in the error.
        """
        sup = self.scoring_support()
        if not sup.available:
            raise self._cannot_score(sup, purpose)

    def _cannot_score(self, sup: ScoringSupport, purpose: str | None = None) -> CapabilityError:
        return CapabilityError(
            f"OpenAIGenerator cannot score continuations with the server at {self.base_url} "
            f"(model {self.model_name!r})" + (f", which {purpose} needs" if purpose else "") + f": {sup.reason}. "
            "Scoring needs /v1/completions with prompt log-probabilities (echo + logprobs, or vLLM's "
            "prompt_logprobs): use vLLM or `ctxkit serve`, or TransformersGenerator in this process.",
            capability="scoring", backend="OpenAIGenerator",
        )

    def score(
        self,
        batch: list[list[Message]] | list[Any],
        continuations: list[str],
        *,
        reduce: Literal["sum", "mean"] = "sum",
    ) -> list[float]:
        """Log-likelihood of each continuation after its conversation, from the server.

        The conversation is rendered as text (the tokenizer's chat template with the generation
        prompt, or the contents joined by blank lines without a tokenizer), the continuation is
        appended, and ``/v1/completions`` returns the log-probability of every prompt token.

        Args:
            batch: Conversations.
            continuations: One text per conversation.
            reduce: ``"sum"`` of token log-probs, or ``"mean"`` per continuation token.

        Returns:
            One float per pair; ``nan`` for a pair the server could not score (the reason is
            logged).

        Raises:
            CapabilityError: the server cannot return prompt log-probabilities (checked first).
            InputError: the lengths differ, or ``reduce`` is unknown.
        """
        return self._sync(lambda: self.ascore(batch, continuations, reduce=reduce))

    async def ascore(
        self,
        batch: list[list[Message]] | list[Any],
        continuations: list[str],
        *,
        reduce: Literal["sum", "mean"] = "sum",
    ) -> list[float]:
        """Async :meth:`score`."""
        httpx = require("httpx")
        if reduce not in ("sum", "mean"):
            raise InputError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
        if len(batch) != len(continuations):
            raise InputError(
                f"score needs one continuation per conversation: {len(batch)} conversations, "
                f"{len(continuations)} continuations"
            )
        sup = self._scoring_support
        if sup is None:
            sup = await self._aprobe()
        if sup.method is None:
            raise self._cannot_score(sup)
        sem = asyncio.Semaphore(self.max_concurrency)
        async with httpx.AsyncClient(**self._client_kwargs()) as client:
            return list(await asyncio.gather(*(
                self._score_one(client, sem, sup.method, i, conv, cont, reduce)
                for i, (conv, cont) in enumerate(zip(batch, continuations, strict=True))
            )))

    async def _score_one(
        self, client: Any, sem: asyncio.Semaphore, method: str, i: int, conv: Any, cont: str, reduce: str
    ) -> float:
        try:
            if not cont:
                raise InputError("empty continuation")
            messages = as_messages(conv)
            reserved = self._counter().count(cont) + 1
            msgs, _ = self._fit(messages, self._budget(reserved))
        except (InputError, PromptTooLong, ValueError, TypeError) as exc:
            log.warning("score: cannot score item %d: %s", i, exc)
            return math.nan
        for round_ in range(3):
            prompt = self._score_prompt(msgs)
            data, err, _ = await self._post(client, sem, "/completions", self._score_body(method, prompt + cont))
            if err is None:
                break
            shorter = self._after_limit_error(msgs, err.server_message, reserved) if err.status == 400 else None
            if shorter is None or round_ == 2:
                log.warning("score: cannot score item %d: %s", i, err)
                return math.nan
            msgs = shorter[0]
        try:
            entries, n_gen = _entries(method, data)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            log.warning("score: item %d: the server answered without prompt log-probabilities (%s)", i, exc)
            return math.nan
        got = _continuation_logprobs(entries, prompt, cont, n_gen)
        if not got or any(v is None or not math.isfinite(v) for v in got):
            log.warning("score: item %d: cannot find the continuation's tokens in the server's answer", i)
            return math.nan
        total = float(sum(v for v in got if v is not None))
        return total / len(got) if reduce == "mean" else total

    def __repr__(self) -> str:
        return f"OpenAIGenerator(model={self.model_name!r}, base_url={self.base_url!r}, max_concurrency={self.max_concurrency})"
