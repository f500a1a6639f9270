"""The service core: one warm pipeline, batched requests, feedback, ingest, lifecycle.

:class:`Service` holds what the HTTP routes (:mod:`ctxkit.serve.app`) and the MCP tools
(:mod:`ctxkit.serve.mcp`) share: the pipeline (models loaded once), the batchers that run
concurrent requests through it together, feedback recording, ingest restricted to allowed roots,
and start-up / graceful shutdown. All pipeline work runs in ONE worker thread (batches, then
ingests, in arrival order), so the stages never run concurrently and the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._lazy import require
from ..errors import InputError
from ..pipeline import Pipeline
from ..types import ContextState, Passage, StageRecord
from .batching import MicroBatcher
from .errors import ServiceError
from .schemas import QueryResult
from .settings import ServiceSettings

__all__ = ["RunningService", "Service"]

log = logging.getLogger("ctxkit.serve")


@dataclass
class _Job:
    query: str
    metadata: dict[str, Any] = field(default_factory=dict)
    passages: list[Passage] | None = None

    def state(self) -> ContextState:
        return ContextState(
            query=self.query, metadata=copy.deepcopy(self.metadata),
            passages=[p.model_copy(deep=True) for p in self.passages] if self.passages else [],
        )


def _is_retriever(stage: Any) -> bool:
    return callable(getattr(stage, "retrieve", None)) and callable(getattr(stage, "_retrieve", None))


def _index_paths(stages: Sequence[Any]) -> set[str]:
    out: set[str] = set()
    for s in stages:
        nested = getattr(s, "retrievers", None)
        if isinstance(nested, list | tuple):
            out |= _index_paths(nested)
        path = getattr(s, "path", None)
        if _is_retriever(s) and isinstance(path, str) and path:
            out.add(str(Path(path).expanduser().resolve()))
    return out


def _within(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


class Service:
    """A pipeline served to many clients: batched queries, answers, checks, feedback, ingest.

    Args:
        pipeline: The pipeline (its models load once, at start-up).
        settings: Batching, limits, token, allowed ingest roots (:class:`ServiceSettings`).
        name: Name reported by the API and the MCP server.

    Example:
        >>> svc = Service.from_config("pipeline.yaml", ServiceSettings(token="s3cret-token"))
        >>> svc.serve(port=8080)                       # blocking; Ctrl-C / SIGTERM stop it
        >>> with svc.run_in_thread() as running:      # or in the background, on a free port
        ...     print(running.url)
    """

    def __init__(self, pipeline: Pipeline, settings: ServiceSettings | None = None, *, name: str = "ctxkit") -> None:
        if not isinstance(pipeline, Pipeline):
            raise InputError(f"Service needs a ctxkit Pipeline, got {type(pipeline).__name__}")
        self.pipeline = pipeline
        self.settings = settings or ServiceSettings()
        self.name = name
        self.ready = False
        self.stopping = False
        self.in_flight = 0
        self._executor: ThreadPoolExecutor | None = None
        self._index: Any = None
        stages = list(pipeline.stages)
        from ..llm.stage import GenerateAnswer

        self.can_answer = any(getattr(type(s), "model_fields", {}).get("generator") is not None for s in stages)
        self.can_stream = bool(stages) and isinstance(stages[-1], GenerateAnswer)
        self._context_pipe = Pipeline(stages[:-1]) if self.can_stream else None
        check_stages = [s for s in stages if not _is_retriever(s) and not isinstance(s, GenerateAnswer)]
        self._check_pipe = Pipeline(check_stages) if check_stages else None
        self._batchers: dict[str, MicroBatcher[_Job, Any]] = {}

    @classmethod
    def from_config(
        cls, source: str | os.PathLike[str] | Mapping[str, Any], settings: ServiceSettings | None = None, **kwargs: Any
    ) -> Service:
        """A service over ``ctxkit.load_pipeline(source)`` (YAML file, YAML string or dict)."""
        from ..config import load_pipeline

        return cls(load_pipeline(source), settings, **kwargs)

    # -- lifecycle -------------------------------------------------------------------------------
    async def startup(self) -> None:
        """Start the batchers and warm the models (readiness waits for this)."""
        if self._executor is not None:
            return
        self.stopping = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ctxkit-pipeline")
        window, size = self.settings.batch_window_ms / 1000.0, self.settings.max_batch_size
        pipes = {"query": self.pipeline, "context": self._context_pipe, "check": self._check_pipe}
        for name, pipe in pipes.items():
            if pipe is not None:
                b = MicroBatcher(self._runner(pipe), window_s=window, max_batch=size, executor=self._executor, name=name)
                await b.start()
                self._batchers[name] = b
        log.info("starting: %d stages [%s]; batching window %.1f ms, at most %d queries per batch",
                 len(self.pipeline.stages), ", ".join(s.name for s in self.pipeline.stages),
                 self.settings.batch_window_ms, size)
        if self.settings.warm_up:
            t0 = time.perf_counter()
            await asyncio.get_running_loop().run_in_executor(self._executor, self.pipeline.warm_up)
            log.info("models warm in %.1f s", time.perf_counter() - t0)
        self.ready = True
        log.info("ready")

    async def shutdown(self) -> None:
        """Finish what is queued, then close the feedback stores and the index."""
        if self._executor is None:
            return
        self.ready, self.stopping = False, True
        log.info("stopping: finishing %d queued or running requests", self.in_flight)
        for b in self._batchers.values():
            await b.close()
        self._batchers.clear()
        executor, self._executor = self._executor, None
        await asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)
        closed = 0
        for s in self.pipeline.stages:
            store = getattr(s, "feedback_store", None) if getattr(s, "_warm", False) else None
            if store is not None and callable(getattr(store, "close_all", None)):
                store.close_all()
                closed += 1
        if self._index is not None:
            self._index.close()
            self._index = None
        log.info("stopped: closed %d feedback store(s) and the index", closed)

    # -- operations (shared by HTTP and MCP) -----------------------------------------------------
    def _runner(self, pipe: Pipeline) -> Any:
        def run(jobs: list[_Job]) -> list[ContextState | BaseException]:
            try:
                return pipe.batch([j.state() for j in jobs])
            except Exception as exc:  # noqa: BLE001 - isolate the query that broke the batch
                if len(jobs) == 1:
                    log.warning("query failed: %s: %s", type(exc).__name__, exc)
                    return [exc]
                log.warning("a batch of %d failed (%s: %s): running its queries one by one",
                            len(jobs), type(exc).__name__, exc)
                out: list[ContextState | BaseException] = []
                for j in jobs:
                    try:
                        out.append(pipe.batch([j.state()])[0])
                    except Exception as exc1:  # noqa: BLE001
                        out.append(exc1)
                return out

        return run

    def _batcher(self, name: str) -> MicroBatcher[_Job, Any]:
        if self.stopping:
            raise ServiceError(503, "shutting_down", "the service is shutting down; retry on another replica")
        b = self._batchers.get(name)
        if b is None:
            raise ServiceError(503, "not_started", "the service is not started")
        return b

    async def _submit(self, name: str, jobs: list[_Job]) -> list[ContextState | BaseException]:
        batcher = self._batcher(name)
        try:
            return await asyncio.wait_for(
                asyncio.gather(*(batcher.submit(j) for j in jobs), return_exceptions=True),
                self.settings.request_timeout_s,
            )
        except TimeoutError:
            raise ServiceError(504, "timeout", f"no result within {self.settings.request_timeout_s:g} s") from None

    def validate_query(self, q: str) -> None:
        """Raise a 422 :class:`ServiceError` for an empty or over-long query."""
        if not q.strip():
            raise ServiceError(422, "invalid_input", "a query is empty: send a non-empty question")
        if len(q) > self.settings.max_query_chars:
            raise ServiceError(422, "query_too_long",
                               f"a query has {len(q)} characters; this service accepts at most {self.settings.max_query_chars}")

    async def query(self, queries: Sequence[str], metadata: Mapping[str, Any] | None = None) -> list[ContextState | BaseException]:
        """Run queries through the whole pipeline (batched with other requests).

        Returns:
            One state per query, or the exception that query raised (the others are unaffected).
        """
        if len(queries) > self.settings.max_queries_per_request:
            raise ServiceError(422, "too_many_queries",
                               f"{len(queries)} queries in one request; at most {self.settings.max_queries_per_request}")
        for q in queries:
            self.validate_query(q)
        return await self._submit("query", [_Job(q, dict(metadata or {})) for q in queries])

    async def answer(self, query: str, metadata: Mapping[str, Any] | None = None) -> ContextState:
        """The pipeline's answer to one question (needs a generator stage)."""
        self.require_generator()
        return _raise_or(await self.query([query], metadata))

    def require_generator(self) -> None:
        """Raise a 409 :class:`ServiceError` when the pipeline generates no answer."""
        if not self.can_answer:
            raise ServiceError(409, "no_generator",
                               "this pipeline generates no answer: add a 'generate' stage to its config, "
                               "or use /v1/query for passages")

    async def stream_answer(
        self, query: str, metadata: Mapping[str, Any] | None = None
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Answer one question, yielding ``("token", {"text"})`` events, then ``("done", result)``.

        The context stages run batched with other requests; the generator streams when it can
        (``stream()``, e.g. :class:`~ctxkit.llm.TransformersGenerator`), else the whole answer
        comes as one token event. A failure ends the stream with ``("error", {...})``.
        """
        self.require_generator()
        self.validate_query(query)
        if not self.can_stream:
            state = await self.answer(query, metadata)
            yield "token", {"text": state.answer or ""}
            yield "done", to_result(state).model_dump(mode="json")
            return
        state = _raise_or(await self._submit("context", [_Job(query, dict(metadata or {}))]))
        stage: Any = self.pipeline.stages[-1]
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def put(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))

        def work() -> None:
            try:
                stage._ensure_warm()
                msgs = stage.build_messages(state)
                gen = stage.generator_obj
                overrides = stage.sampling.model_dump(exclude_unset=True) if stage.sampling is not None else {}
                if callable(getattr(gen, "stream", None)):
                    for piece in gen.stream(msgs, None, **overrides):
                        put("token", piece)
                else:
                    out = gen.generate([msgs], None, **overrides)[0]
                    if out.error is not None:
                        raise RuntimeError(out.error)
                    put("token", out.text)
                put("end", None)
            except Exception as exc:  # noqa: BLE001 - reported to the client as an error event
                put("error", exc)

        t0 = time.perf_counter()
        task = loop.run_in_executor(None, work)
        pieces: list[str] = []
        try:
            while True:
                kind, value = await asyncio.wait_for(events.get(), self.settings.request_timeout_s)
                if kind == "token":
                    pieces.append(value)
                    yield "token", {"text": value}
                elif kind == "error":
                    status, code, message = _status(value)
                    yield "error", {"code": code, "message": message, "status": status}
                    return
                else:
                    break
        except TimeoutError:
            yield "error", {"code": "timeout", "message": "the generator stopped sending tokens", "status": 504}
            return
        finally:
            if task.done():
                task.result()
        state.answer = "".join(pieces).strip()
        n = len(state.passages)
        state.trace.stages.append(StageRecord(stage=stage.name, seconds=time.perf_counter() - t0, n_in=n, n_out=n,
                                              info={"streamed": True, "batch_size": 1}))
        yield "done", to_result(state).model_dump(mode="json")

    async def check(self, query: str, passages: Sequence[Passage], metadata: Mapping[str, Any] | None = None) -> ContextState:
        """Run the pipeline's non-matching, non-generating stages on the caller's passages."""
        if self._check_pipe is None:
            raise ServiceError(409, "nothing_to_check", "this pipeline has no stage besides matching and generation")
        self.validate_query(query)
        if len(passages) > self.settings.max_passages_per_check:
            raise ServiceError(422, "too_many_passages",
                               f"{len(passages)} passages; at most {self.settings.max_passages_per_check} per check")
        ids = [p.id for p in passages]
        if len(set(ids)) != len(ids):
            raise ServiceError(422, "duplicate_passage_ids", "passage ids must be unique within a request")
        return _raise_or(await self._submit("check", [_Job(query, dict(metadata or {}), list(passages))]))

    async def feedback(self, list_id: str, event: str | float) -> float:
        """Attach feedback to a shown list (committed before this returns)."""
        if self.stopping:
            raise ServiceError(503, "shutting_down", "the service is shutting down; retry on another replica")
        reward = await asyncio.wait_for(asyncio.to_thread(self.pipeline.feedback, list_id, event),
                                        self.settings.request_timeout_s)
        log.info("feedback %r on list %s (reward %.3g)", event, list_id, reward)
        return reward

    # -- ingest ----------------------------------------------------------------------------------
    @property
    def index_path(self) -> str | None:
        """The index folder ingest writes to (``None``: ingest is not available)."""
        if self.settings.index:
            return str(Path(self.settings.index).expanduser().resolve())
        paths = _index_paths(self.pipeline.stages)
        return next(iter(paths)) if len(paths) == 1 else None

    def allowed_files(self, paths: Sequence[str]) -> list[Path]:
        """The files to read for ``paths``, all inside the allowed roots (else 403/422, nothing read).

        Relative paths are taken from the first allowed root. Symbolic links are followed
        before the check, so a link cannot lead outside; files below a folder that resolve
        outside are left out.
        """
        roots = self.settings.allowed_roots
        if not roots:
            raise ServiceError(403, "paths_not_allowed",
                               "this service reads no files: send 'documents', or start it with --allow-root DIR")
        out: list[Path] = []
        for raw in paths:
            p = Path(raw).expanduser()
            if not p.is_absolute():
                p = roots[0] / p
            try:
                real = p.resolve()
            except (OSError, RuntimeError):
                raise ServiceError(422, "bad_path", f"cannot resolve the path {raw!r}") from None
            if not _within(real, roots):
                log.warning("refused ingest path %r: outside the allowed roots", raw)
                raise ServiceError(403, "path_not_allowed", f"the path {raw!r} is outside the service's allowed roots")
            if not real.exists():
                raise ServiceError(422, "no_such_path", f"no such file or folder: {raw!r}")
            if real.is_dir():
                for f in sorted(real.rglob("*")):
                    rel = f.relative_to(real).parts
                    if any(part.startswith(".") for part in rel):
                        continue
                    rf = f.resolve()
                    if rf.is_file() and _within(rf, roots):
                        out.append(rf)
            else:
                out.append(real)
        return out

    async def ingest(self, documents: Sequence[Mapping[str, Any]] | None = None, paths: Sequence[str] | None = None) -> Any:
        """Write documents (or the files at ``paths``) into the index; returns the ingest report.

        Everything is checked before anything is written; a rejected request leaves the index
        as it was. Ingest runs in the pipeline's worker thread, between batches.
        """
        if self.stopping:
            raise ServiceError(503, "shutting_down", "the service is shutting down")
        target = self.index_path
        if target is None:
            raise ServiceError(409, "no_index", "this service has no single index to ingest into: start it with --index DIR")
        items: list[Any]
        if documents is not None:
            if len(documents) > self.settings.max_documents_per_request:
                raise ServiceError(422, "too_many_documents",
                                   f"{len(documents)} documents; at most {self.settings.max_documents_per_request} per request")
            for d in documents:
                if len(d.get("text", "")) > self.settings.max_document_chars:
                    raise ServiceError(422, "document_too_long",
                                       f"document {d.get('id')!r} is longer than {self.settings.max_document_chars} characters")
            items = [dict(d) for d in documents]
        else:
            items = self.allowed_files(paths or [])
            if not items:
                raise ServiceError(422, "no_files", "no readable files under the given paths")
        if self._executor is None:
            raise ServiceError(503, "not_started", "the service is not started")

        def run() -> Any:
            retrievers = require_retrievers()
            if self._index is None:
                self._index = retrievers.Index.open(target)
            return retrievers.ingest(items, index=self._index, batch_size=max(1, len(items)))

        report = await asyncio.get_running_loop().run_in_executor(self._executor, run)
        log.info("ingest: %s", report.summary() if callable(getattr(report, "summary", None)) else report)
        return report

    # -- status ----------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """Liveness, readiness and batching counters."""
        q = self._batchers.get("query")
        stats = q.stats if q is not None else None
        return {
            "status": "stopping" if self.stopping else ("ok" if self.ready else "starting"),
            "ready": self.ready,
            "in_flight": self.in_flight,
            "batches": stats.batches if stats else 0,
            "queries": stats.items if stats else 0,
            "max_batch_seen": stats.max_batch_seen if stats else 0,
        }

    def info(self) -> dict[str, Any]:
        """What this service runs: stages, capabilities and (public) settings."""
        return {
            "name": self.name,
            "stages": [{"name": s.name, "type": s.to_config().get("type")} for s in self.pipeline.stages],
            "can_answer": self.can_answer,
            "can_stream": self.can_stream,
            "can_check": self._check_pipe is not None,
            "index": self.index_path,
            "settings": self.settings.model_dump(mode="json", exclude={"token"}) | {"auth": self.settings.token is not None},
        }

    # -- running ---------------------------------------------------------------------------------
    def build_app(self, *, host: str = "127.0.0.1", mcp: bool = True, api: bool = True) -> Any:
        """The ASGI app serving this service (see :func:`ctxkit.serve.create_app`)."""
        from .app import create_app

        return create_app(self, host=host, mcp=mcp, api=api)

    def _server(self, host: str, log_level: str, mcp: bool) -> Any:
        uvicorn = require("uvicorn")
        config = uvicorn.Config(
            self.build_app(host=host, mcp=mcp), log_level=log_level, access_log=False, lifespan="on",
            timeout_graceful_shutdown=self.settings.graceful_timeout_s, log_config=None,
        )
        return uvicorn.Server(config)

    def serve(self, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info", mcp: bool = True) -> None:
        """Serve until SIGINT/SIGTERM (blocking); in-flight requests finish before it returns."""
        sock = bind_socket(host, port)
        server = self._server(host, log_level, mcp)
        url = f"http://{_url_host(host)}:{sock.getsockname()[1]}"
        print(f"ctxkit: serving the pipeline at {url} (API docs {url}/docs"
              f"{f', MCP {url}/mcp' if mcp else ''}); Ctrl-C to stop", flush=True)
        server.run(sockets=[sock])

    @contextlib.contextmanager
    def run_in_thread(
        self, host: str = "127.0.0.1", port: int = 0, *, mcp: bool = True, ready_timeout: float = 300.0
    ) -> Iterator[RunningService]:
        """Serve in a background thread while the ``with`` block runs (port 0: a free one).

        Yields once the service is ready (models warm); stops it gracefully at the end.
        """
        sock = bind_socket(host, port)
        server = self._server(host, "warning", mcp)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="ctxkit-service", daemon=True)
        thread.start()
        deadline = time.monotonic() + ready_timeout
        while not (server.started and self.ready):
            if not thread.is_alive():
                raise RuntimeError("the service stopped during start-up (see the log)")
            if time.monotonic() > deadline:
                server.should_exit = True
                raise TimeoutError(f"the service was not ready within {ready_timeout:g} s")
            time.sleep(0.01)  # polling the started flag, with a deadline
        try:
            yield RunningService(url=f"http://{_url_host(host)}:{sock.getsockname()[1]}", service=self)
        finally:
            server.should_exit = True
            thread.join(self.settings.graceful_timeout_s + 30)


@dataclass
class RunningService:
    """A service running in the background: its base URL (``http://127.0.0.1:PORT``)."""

    url: str
    service: Service


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one), ready for uvicorn."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def require_retrievers() -> Any:
    """``ctxkit.retrievers`` (its public names: ``Index``, ``ingest``)."""
    from ctxkit import retrievers

    return retrievers


def _status(exc: BaseException) -> tuple[int, str, str]:
    from .errors import error_status

    return error_status(exc)


def _raise_or(results: list[ContextState | BaseException]) -> ContextState:
    res = results[0]
    if isinstance(res, BaseException):
        raise res
    return res


def to_result(item: ContextState | BaseException, query: str | None = None, top_k: int | None = None) -> QueryResult:
    """A state (or a query's exception) as the API's :class:`QueryResult`."""
    if isinstance(item, BaseException):
        return QueryResult(query=query or "", error=_status(item)[2])
    passages = item.passages if top_k is None else item.passages[:top_k]
    return QueryResult(
        query=item.query, list_id=item.trace.list_id, passages=passages, conflicts=item.conflicts, flags=item.flags,
        facts=item.facts, prompt=item.prompt, answer=item.answer, trace=item.trace,
    )
