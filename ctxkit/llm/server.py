"""A small OpenAI-compatible chat-completions server for any ctxkit generator.

It serves ``POST /v1/chat/completions`` and ``POST /v1/completions`` (non-streaming),
``GET /v1/models`` and ``GET /health`` with the standard request/response shapes, so
:class:`~ctxkit.llm.OpenAIGenerator` (or any OpenAI client) can talk to it. With a
:class:`~ctxkit.llm.TransformersGenerator`, ``/v1/completions`` returns log-probabilities the way
vLLM does: ``logprobs`` (with ``echo`` for the prompt tokens too) and ``prompt_logprobs``, computed
by the served model, so :meth:`OpenAIGenerator.score` works against it. Concurrent requests are grouped into batches (``max_batch_size``, waiting
at most ``batch_wait_s`` for company) and run by ONE worker thread, so a batched
:class:`~ctxkit.llm.TransformersGenerator` serves many clients at batched speed.

It is also the test server for HTTP clients: ``fail_first`` makes the first N requests fail with
``fail_status`` (429/503, with ``Retry-After``), ``delay_s`` slows every request down, and the
server counts requests and the peak number of concurrent requests. ``context_window`` makes it
refuse over-long prompts with the OpenAI-style "maximum context length" 400 (as vLLM and llama.cpp
do) instead of letting the generator shorten them, and ``echo_logprobs=False`` makes it refuse
``echo`` with ``logprobs`` (as OpenAI's own API does). For production traffic use a
real inference server (vLLM, TGI, llama.cpp) and keep :class:`OpenAIGenerator` as the client.

Example:
    ctxkit serve --model default --port 8000
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from .._lazy import require
from ..errors import ConfigError
from .base import Generation, Message, SamplingSettings

__all__ = ["OpenAICompatibleServer", "serve"]

log = logging.getLogger(__name__)


class _BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


def _settings_from_body(body: dict[str, Any], defaults: SamplingSettings) -> SamplingSettings:
    fields: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        fields["max_new_tokens"] = max_tokens
    for key in ("temperature", "top_p", "top_k", "seed", "repetition_penalty"):
        if body.get(key) is not None:
            fields[key] = body[key]
    stop = body.get("stop")
    if stop is not None:
        fields["stop"] = [stop] if isinstance(stop, str) else stop
    try:
        return SamplingSettings(**{**defaults.model_dump(), **fields})
    except ValueError as exc:
        raise _BadRequest(f"invalid sampling parameters: {exc}") from None


class _Job:
    """Work for the worker thread other than a chat request (a completion)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.future: Future[Any] = Future()

    def run(self) -> None:
        try:
            self.future.set_result(self.fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
            self.future.set_exception(exc)


def _too_long(window: int, n_prompt: int, n_new: int, where: str) -> _BadRequest:
    return _BadRequest(
        f"This model's maximum context length is {window} tokens. However, you requested "
        f"{n_prompt + n_new} tokens ({n_prompt} in the {where}, {n_new} in the completion). "
        f"Please reduce the length of the {where} or completion.",
        code="context_length_exceeded", param="messages" if where == "messages" else "prompt",
    )


def _token_strings(tok: Any, seq: list[int], window: int = 8) -> list[str]:
    """The text each token of ``seq`` adds, so that the pieces spell the decoded sequence.

    Each token's text is what decoding it after the ``window`` tokens before it adds to their
    decoding (a token alone can decode differently: a leading space dropped). A token that ends
    inside a multi-byte character gets ``""`` and the token completing the character carries all
    of it (as incremental detokenizers do), so the text offsets stay exact. Linear in the sequence
    length (decoding every prefix is quadratic: seconds for a long prompt).
    """
    out: list[str] = []
    pending = 0  # first token whose text is not out yet (it ended inside a character)
    for j in range(len(seq)):
        s = max(0, pending - window)
        base, cur = tok.decode(seq[s:pending]), tok.decode(seq[s: j + 1])
        if cur.endswith("\ufffd") and j + 1 < len(seq) and j - pending < 3:
            out.append("")  # a character still incomplete (UTF-8: at most 4 bytes)
            continue
        out.append(cur[len(base):] if cur.startswith(base) else tok.decode(seq[pending: j + 1]))
        pending = j + 1
    return out


def _messages_from_body(body: dict[str, Any]) -> list[Message]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _BadRequest("'messages' must be a non-empty list of {role, content} objects", param="messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise _BadRequest(f"messages[{i}] must be an object", param="messages")
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if m.get("role") not in ("system", "user", "assistant") or not isinstance(content, str):
            raise _BadRequest(
                f"messages[{i}] needs role system/user/assistant and string content, got {m!r}", param="messages"
            )
        out.append(Message(role=m["role"], content=content))
    return out


class OpenAICompatibleServer:
    """Serve a ctxkit generator over HTTP with the OpenAI chat-completions API.

    Args:
        generator: Any ctxkit generator (``generate(batch, settings) -> list[Generation]``).
        host: Interface to bind (loopback by default).
        port: Port; ``0`` picks a free one (read it back from :attr:`port`).
        model_name: The model id reported by the API (default: the generator's model name).
        max_batch_size: Most requests sent to the generator in one call.
        batch_wait_s: How long the worker waits for more requests before running a batch.
        api_key: If set, requests must send ``Authorization: Bearer <api_key>`` (else 401).
        fail_first: Testing aid: the first N chat requests fail with ``fail_status``.
        fail_status: Status of those failures (429 or 5xx).
        retry_after: ``Retry-After`` seconds sent with those failures (``None``: no header).
        delay_s: Testing aid: every chat request waits this long before it is answered.
        context_window: Refuse a request whose prompt plus ``max_tokens`` exceeds this many
            tokens with the OpenAI-style ``context_length_exceeded`` 400, as vLLM and llama.cpp
            do (``None``: chat prompts are left to the generator, which shortens their context).
        echo_logprobs: Answer ``echo`` with ``logprobs`` on ``/v1/completions`` (``False``: a
            400, as OpenAI's own API gives).
    """

    def __init__(
        self,
        generator: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        model_name: str | None = None,
        max_batch_size: int = 16,
        batch_wait_s: float = 0.005,
        api_key: str | None = None,
        fail_first: int = 0,
        fail_status: int = 503,
        retry_after: float | None = None,
        delay_s: float = 0.0,
        context_window: int | None = None,
        echo_logprobs: bool = True,
    ) -> None:
        if not callable(getattr(generator, "generate", None)):
            raise ConfigError("OpenAICompatibleServer needs a generator with a generate(batch) method")
        if max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if fail_first < 0 or delay_s < 0 or batch_wait_s < 0:
            raise ConfigError("fail_first, delay_s and batch_wait_s must be >= 0")
        if context_window is not None and context_window < 2:
            raise ConfigError(f"context_window must be >= 2 or None, got {context_window}")
        self.generator = generator
        self.model_name = model_name or str(getattr(generator, "model_name", "ctxkit"))
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.api_key = api_key
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.retry_after = retry_after
        self.delay_s = delay_s
        self.context_window = context_window
        self.echo_logprobs = echo_logprobs
        self.defaults: SamplingSettings = getattr(generator, "default_settings", SamplingSettings())
        self.n_requests = 0
        self.n_failed_on_purpose = 0
        self.max_concurrent = 0
        self.batch_sizes: list[int] = []
        self.bodies: collections.deque[dict[str, Any]] = collections.deque(maxlen=64)
        """The JSON bodies of the last 64 POST requests (what clients really sent)."""
        self._active = 0
        self._stats_lock = threading.Lock()
        self._queue: queue.Queue[tuple[list[Message], SamplingSettings, Future[Generation]] | _Job | None] = (
            queue.Queue()
        )
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._httpd.server_address[1])

    @property
    def host(self) -> str:
        """The bound host."""
        return str(self._httpd.server_address[0])

    @property
    def url(self) -> str:
        """Base URL of the API, e.g. ``http://127.0.0.1:8000/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> Self:
        """Serve in background threads; returns ``self``."""
        if self._threads:
            return self
        for target, name in ((self._worker, "ctxkit-gen-worker"), (self._httpd.serve_forever, "ctxkit-http")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted."""
        worker = threading.Thread(target=self._worker, name="ctxkit-gen-worker", daemon=True)
        worker.start()
        self._threads.append(worker)
        try:
            self._httpd.serve_forever()
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop serving and release the port."""
        if any(t.name == "ctxkit-http" for t in self._threads):
            self._httpd.shutdown()
        self._httpd.server_close()
        self._queue.put(None)
        self._threads.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- batching worker -------------------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            if isinstance(first, _Job):
                first.run()
                continue
            items = [first]
            jobs: list[_Job] = []
            deadline = time.monotonic() + self.batch_wait_s
            while len(items) < self.max_batch_size:
                left = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=max(left, 0)) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                if isinstance(nxt, _Job):
                    jobs.append(nxt)
                    continue
                items.append(nxt)
            # One generator call per distinct sampling setting in the batch.
            groups: dict[str, list[tuple[list[Message], SamplingSettings, Future[Generation]]]] = {}
            for it in items:
                groups.setdefault(it[1].model_dump_json(), []).append(it)
            for group in groups.values():
                self.batch_sizes.append(len(group))
                try:
                    gens = self.generator.generate([g[0] for g in group], group[0][1])
                except Exception as exc:  # noqa: BLE001 - reported to each waiting request
                    for g in group:
                        g[2].set_exception(exc)
                    continue
                for g, gen in zip(group, gens, strict=True):
                    g[2].set_result(gen)
            for job in jobs:
                job.run()

    # -- HTTP ------------------------------------------------------------------------------------
    def _chat(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("stream"):
            raise _BadRequest("streaming is not supported by this server; send stream=false", param="stream")
        if body.get("n", 1) != 1:
            raise _BadRequest("only n=1 is supported", param="n")
        messages = _messages_from_body(body)
        settings = _settings_from_body(body, self.defaults)
        if self.context_window is not None:
            gen = self._model_generator("a context window")
            n_prompt = len(gen._encode(gen.render(messages)))
            if n_prompt + settings.max_new_tokens > self.context_window:
                raise _too_long(self.context_window, n_prompt, settings.max_new_tokens, "messages")
        fut: Future[Generation] = Future()
        self._queue.put((messages, settings, fut))
        gen = fut.result()
        if gen.error is not None:
            if "prompt too long" in gen.error:
                raise _BadRequest(gen.error, code="context_length_exceeded", param="messages")
            raise _BadRequest(f"generation failed: {gen.error}", status=500, code="generation_error")
        n_prompt, n_out = gen.n_prompt_tokens or 0, gen.n_tokens or 0
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": gen.text},
                "finish_reason": gen.finish_reason,
                "logprobs": None,
            }],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out},
        }

    def _model_generator(self, what: str) -> Any:
        gen = self.generator
        if not (hasattr(type(gen), "tokenizer") and hasattr(type(gen), "model") and hasattr(gen, "_encode")):
            raise _BadRequest(f"{what} needs a model in this server's process (serve a TransformersGenerator)",
                              status=501, code="not_supported")
        return gen

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("stream"):
            raise _BadRequest("streaming is not supported by this server; send stream=false", param="stream")
        if body.get("n", 1) != 1:
            raise _BadRequest("only n=1 is supported", param="n")
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise _BadRequest("'prompt' must be one non-empty string", param="prompt")
        echo = bool(body.get("echo"))
        logprobs, prompt_logprobs = body.get("logprobs"), body.get("prompt_logprobs")
        for name, value in (("logprobs", logprobs), ("prompt_logprobs", prompt_logprobs)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 20):
                raise _BadRequest(f"'{name}' must be an integer from 0 to 20", param=name)
        if echo and logprobs is not None and not self.echo_logprobs:
            raise _BadRequest("echo is not supported with logprobs by this server", param="echo")
        n_new = body.get("max_completion_tokens", body.get("max_tokens", 16))
        if not isinstance(n_new, int) or isinstance(n_new, bool) or n_new < 0:
            raise _BadRequest("'max_tokens' must be an integer >= 0", param="max_tokens")
        settings = _settings_from_body({**body, "max_completion_tokens": max(n_new, 1)}, self.defaults)
        gen = self._model_generator("/v1/completions")
        job = _Job(lambda: self._complete(gen, prompt, n_new, settings, echo, logprobs, prompt_logprobs))
        self._queue.put(job)
        return job.future.result()

    def _complete(self, gen: Any, prompt: str, n_new: int, settings: SamplingSettings, echo: bool,
                  logprobs: int | None, prompt_logprobs: int | None) -> dict[str, Any]:
        """One completion with vLLM-style log-probabilities, computed by the served model."""
        torch = require("torch")
        tok, model = gen.tokenizer, gen.model
        ids = tok(prompt, add_special_tokens=True)["input_ids"]
        if self.context_window is not None and len(ids) + n_new > self.context_window:
            raise _too_long(self.context_window, len(ids), n_new, "prompt")
        text, finish, new_ids = "", "length", []
        if n_new > 0:
            out = gen._generate_chunk([ids], settings.model_copy(update={"max_new_tokens": n_new}), [])[0]
            text, finish = out.text, out.finish_reason
            new_ids = tok(text, add_special_tokens=False)["input_ids"] if text else []
        want_lp = logprobs is not None or prompt_logprobs is not None
        choice: dict[str, Any] = {"index": 0, "text": (prompt + text) if echo else text,
                                  "logprobs": None, "finish_reason": finish}
        if want_lp:
            seq = ids + new_ids
            with gen._lock, torch.inference_mode():
                logits = model(input_ids=torch.tensor([seq], device=model.device)).logits[0, :-1].float()
            lse = torch.logsumexp(logits, dim=-1)
            target = torch.tensor(seq[1:], device=logits.device)
            token_lp = (logits.gather(-1, target[:, None]).squeeze(-1) - lse).tolist()
            ranks = (logits > logits.gather(-1, target[:, None])).sum(-1).add(1).tolist()
            k = max(logprobs or 0, prompt_logprobs or 0)
            top_v, top_i = (torch.topk(logits, k, dim=-1) if k else (None, None))
            lps: list[float | None] = [None, *token_lp]  # position 0 has nothing before it

            def top(pos: int) -> list[tuple[int, float]]:
                if top_v is None or pos == 0:
                    return []
                return [(int(i), float(v - lse[pos - 1])) for v, i in zip(top_v[pos - 1], top_i[pos - 1], strict=True)]

            strs = _token_strings(tok, seq)
            if logprobs is not None:
                first = 0 if echo else len(ids)
                offsets, pos = [], 0
                for j in range(len(seq)):
                    offsets.append(pos)
                    pos += len(strs[j])
                base = offsets[first] if first < len(seq) else pos
                choice["logprobs"] = {
                    "tokens": strs[first:],
                    "token_logprobs": lps[first:],
                    "text_offset": [o - base + (0 if echo else len(prompt)) for o in offsets[first:]],
                    "top_logprobs": [
                        None if j == 0 else {
                            **{tok.decode([i]): v for i, v in top(j)[:logprobs]}, strs[j]: lps[j]}
                        for j in range(first, len(seq))
                    ],
                }
            if prompt_logprobs is not None:
                plp: list[dict[str, Any] | None] = [None]
                for j in range(1, len(ids)):
                    entry = {str(i): {"logprob": v, "rank": r + 1, "decoded_token": tok.decode([i])}
                             for r, (i, v) in enumerate(top(j)[:prompt_logprobs])}
                    entry[str(ids[j])] = {"logprob": lps[j], "rank": ranks[j - 1], "decoded_token": strs[j]}
                    plp.append(entry)
                choice["prompt_logprobs"] = plp
        return {
            "id": f"cmpl-{uuid.uuid4().hex[:24]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [choice],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": len(new_ids),
                      "total_tokens": len(ids) + len(new_ids)},
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "ctxkit-openai/0.1"

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("%s " + fmt, self.address_string(), *args)

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str, code: str | None = None, param: str | None = None,
                       headers: dict[str, str] | None = None) -> None:
                kind = "invalid_request_error" if status < 500 else "server_error"
                self._send(status, {"error": {"message": message, "type": kind, "param": param, "code": code}}, headers)

            def _authorised(self) -> bool:
                if server.api_key is None:
                    return True
                if self.headers.get("Authorization", "") == f"Bearer {server.api_key}":
                    return True
                self._error(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                            code="invalid_api_key")
                return False

            def do_GET(self) -> None:
                path = self.path.split("?")[0].rstrip("/")
                if path in ("/health", "/v1/health"):
                    self._send(200, {"status": "ok"})
                elif path == "/v1/models":
                    if self._authorised():
                        self._send(200, {"object": "list", "data": [
                            {"id": server.model_name, "object": "model", "created": 0, "owned_by": "ctxkit"}]})
                else:
                    self._error(404, f"no route GET {path}", code="not_found")

            def do_POST(self) -> None:
                path = self.path.split("?")[0].rstrip("/")
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                routes = {"/v1/chat/completions": server._chat, "/chat/completions": server._chat,
                          "/v1/completions": server._completion, "/completions": server._completion}
                if path not in routes:
                    self._error(404, f"no route POST {path}; use /v1/chat/completions or /v1/completions",
                                code="not_found")
                    return
                if not self._authorised():
                    return
                with server._stats_lock:
                    server.n_requests += 1
                    server._active += 1
                    server.max_concurrent = max(server.max_concurrent, server._active)
                    fail = server.n_failed_on_purpose < server.fail_first
                    if fail:
                        server.n_failed_on_purpose += 1
                try:
                    if server.delay_s:
                        time.sleep(server.delay_s)
                    if fail:
                        hdr = {"Retry-After": f"{server.retry_after:g}"} if server.retry_after is not None else None
                        self._error(server.fail_status, f"simulated failure ({server.fail_status})",
                                    code="overloaded", headers=hdr)
                        return
                    try:
                        body = json.loads(raw or b"null")
                    except json.JSONDecodeError as exc:
                        self._error(400, f"request body is not valid JSON: {exc}", code="invalid_json")
                        return
                    if not isinstance(body, dict):
                        self._error(400, "request body must be a JSON object", code="invalid_json")
                        return
                    server.bodies.append(body)
                    try:
                        self._send(200, routes[path](body))
                    except _BadRequest as exc:
                        self._error(exc.status, str(exc), code=exc.code, param=exc.param)
                    except Exception as exc:
                        log.exception("completion failed")
                        self._error(500, f"{type(exc).__name__}: {exc}", code="internal_error")
                finally:
                    with server._stats_lock:
                        server._active -= 1

        return Handler


def serve(generator: Any, *, host: str = "127.0.0.1", port: int = 8000, **kwargs: Any) -> None:
    """Serve ``generator`` with the OpenAI chat-completions API until interrupted (blocking)."""
    srv = OpenAICompatibleServer(generator, host=host, port=port, **kwargs)
    print(f"ctxkit: serving {srv.model_name!r} at {srv.url} (POST /chat/completions, /completions); Ctrl-C to stop",
          flush=True)
    srv.serve_forever()
