"""A generator for any OpenAI-compatible ``/v1/chat/completions`` server (vLLM, TGI, llama.cpp...).

Async-first over ``httpx``: at most ``max_concurrency`` requests in flight, per-request timeouts,
retries with exponential backoff and jitter on 429 / 5xx / connection errors (honouring
``Retry-After``), and a clear per-item error on other 4xx answers (the server's own message is
kept). The sync :meth:`OpenAIGenerator.generate` works with or without a running event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import os
import random
import time
from typing import Any

from .._lazy import require
from ..errors import ConfigError, CtxkitError, InputError
from .base import BaseGenerator, Generation, Message, SamplingSettings, as_messages

__all__ = ["RETRY_STATUSES", "OpenAIGenerator", "OpenAIHTTPError"]

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


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


class OpenAIGenerator(BaseGenerator):
    """Chat completions over HTTP from an OpenAI-compatible server.

    Args:
        model: The model id the server expects (``"model"`` in the request body).
        base_url: API root, e.g. ``http://localhost:8000/v1`` (``/chat/completions`` is appended).
        api_key: Bearer token; default: the environment variable named by ``api_key_env``.
        api_key_env: Environment variable that holds the key (never written to configs).
        settings: Default :class:`SamplingSettings`.
        max_concurrency: Most requests in flight at once (an ``asyncio.Semaphore``).
        timeout: Seconds per request attempt (connect + read).
        max_retries: Retries after the first attempt on 429/5xx/connection errors/timeouts.
        backoff_base: First backoff in seconds; doubles per retry, with jitter.
        backoff_max: Longest wait between attempts (also caps ``Retry-After``).
        extra_body: Extra JSON fields sent with every request (e.g. ``{"top_k": 20}`` for vLLM).
        headers: Extra HTTP headers.
        transport: An ``httpx.AsyncBaseTransport`` (testing seam, proxies, custom TLS).
        show_progress: Show a progress bar over requests.
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
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        extra_body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        transport: Any = None,
        show_progress: bool = False,
    ) -> None:
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
        self.model_name = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self._api_key = api_key
        self.max_concurrency = max_concurrency
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.extra_body = dict(extra_body or {})
        self.headers = dict(headers or {})
        self.transport = transport
        self.show_progress = show_progress

    @property
    def api_key(self) -> str | None:
        """The key in use (explicit, else from ``api_key_env``)."""
        return self._api_key or os.environ.get(self.api_key_env) or None

    def to_spec(self) -> dict[str, Any]:
        """A config spec (the API key itself is never included)."""
        spec: dict[str, Any] = {"backend": "openai", "model": self.model_name, "base_url": self.base_url}
        defaults = {"api_key_env": "OPENAI_API_KEY", "max_concurrency": 8, "timeout": 60.0, "max_retries": 4,
                    "backoff_base": 0.5, "backoff_max": 30.0}
        for key, default in defaults.items():
            if getattr(self, key) != default:
                spec[key] = getattr(self, key)
        if self.extra_body:
            spec["extra_body"] = self.extra_body
        if self.headers:
            spec["headers"] = self.headers
        if self.default_settings != SamplingSettings():
            spec["settings"] = self.default_settings.model_dump(exclude_defaults=True)
        return spec

    # -- request building ------------------------------------------------------------------------
    def _body(self, messages: list[Message], s: SamplingSettings) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_name,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": s.max_new_tokens,
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
    async def _one(self, client: Any, sem: asyncio.Semaphore, messages: list[Message], s: SamplingSettings) -> Generation:
        httpx = require("httpx")
        url = f"{self.base_url}/chat/completions"
        body = self._body(messages, s)
        attempts = 0
        while True:
            retry_after: float | None = None
            async with sem:
                try:
                    resp = await client.post(url, json=body)
                except httpx.TimeoutException as exc:
                    err = OpenAIHTTPError(f"request timed out after {self.timeout:g}s ({type(exc).__name__})")
                except httpx.TransportError as exc:
                    err = OpenAIHTTPError(f"cannot reach {url}: {type(exc).__name__}: {exc}")
                else:
                    if resp.status_code == 200:
                        return self._parse(resp, attempts)
                    msg = _server_message(resp)
                    err = OpenAIHTTPError(f"HTTP {resp.status_code} from {url}: {msg}", resp.status_code, msg)
                    if resp.status_code not in RETRY_STATUSES:
                        return self._failed(err, attempts)
                    retry_after = _retry_after(resp)
            if attempts >= self.max_retries:
                if attempts:
                    err = OpenAIHTTPError(f"{err} (gave up after {attempts + 1} attempts)", err.status, err.server_message)
                return self._failed(err, attempts)
            await asyncio.sleep(self._backoff(attempts, retry_after))
            attempts += 1

    @staticmethod
    def _failed(err: OpenAIHTTPError, retries: int) -> Generation:
        info: dict[str, Any] = {"error_type": type(err).__name__, "retries": retries}
        if err.status is not None:
            info["status"] = err.status
        return Generation(error=str(err), finish_reason="error", info=info)

    @staticmethod
    def _parse(resp: Any, retries: int) -> Generation:
        try:
            data = resp.json()
            choice = data["choices"][0]
            content = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            err = OpenAIHTTPError(f"malformed chat-completions response ({type(exc).__name__}: {exc}): {resp.text[:300]}")
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

    # -- public API ------------------------------------------------------------------------------
    async def agenerate(
        self, batch: list[list[Message]] | list[Any], settings: SamplingSettings | None = None, **overrides: Any
    ) -> list[Generation]:
        """Send every conversation concurrently (at most ``max_concurrency`` in flight).

        Returns:
            One :class:`Generation` per conversation, in input order; failures are per item.
        """
        httpx = require("httpx")
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
        self, batch: list[list[Message]] | list[Any], settings: SamplingSettings | None = None, **overrides: Any
    ) -> list[Generation]:
        """Sync :meth:`agenerate`; safe to call from inside a running event loop (uses a thread)."""
        coro = self.agenerate(batch, settings, **overrides)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctxkit-openai") as ex:
            return ex.submit(asyncio.run, coro).result()

    def score(self, batch: list[list[Message]], continuations: list[str]) -> list[float]:
        """Not available: chat-completions endpoints do not return the log-probabilities of given text.

        Raises:
            NotImplementedError: always; use :class:`~ctxkit.llm.TransformersGenerator` to score.
        """
        raise NotImplementedError(
            "OpenAIGenerator cannot score given continuations: /v1/chat/completions returns log-probs "
            "only for generated tokens. Use TransformersGenerator(...).score for likelihoods."
        )

    def __repr__(self) -> str:
        return f"OpenAIGenerator(model={self.model_name!r}, base_url={self.base_url!r}, max_concurrency={self.max_concurrency})"
