"""The HTTP face of a :class:`~ctxkit.serve.Service`: FastAPI routes, errors as JSON, MCP mount.

Routes (all bodies are the typed models of :mod:`ctxkit.serve.schemas`; ``/openapi.json`` and
``/docs`` describe them):

* ``GET /health`` (liveness, counters) and ``GET /ready`` (200 once the models are warm, 503
  before and while stopping): open, for load balancers;
* ``POST /v1/query``: one query or a batch through the pipeline: passages with every stage's
  score, conflicts, flags, trace (and the answer when the pipeline generates one);
* ``POST /v1/answer``: the generator's answer; ``"stream": true`` sends Server-Sent Events
  (``token`` events, then ``done`` with the whole result, or ``error``);
* ``POST /v1/check``: the pipeline's checks (ranking, conflicts, steering) on passages the
  caller already has;
* ``POST /v1/feedback``: feedback on a shown list (``list_id`` from a result);
* ``POST /v1/ingest``: documents, or files under the allowed roots, into the index;
* ``GET /v1/info``: stages and settings;
* ``/mcp``: the same operations as MCP tools (Streamable HTTP, stateless, JSON responses).

Every error is ``{"error": {"code", "message", "details"?}}`` with a 4xx/5xx status; a bad JSON
body is 400, a body that does not match the schema 422 (the validation messages), never a
traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from .._lazy import require
from ..errors import CtxkitError
from .errors import ServiceError, error_status
from .schemas import (
    AnswerRequest,
    CheckRequest,
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    HealthResponse,
    IngestRequest,
    IngestResponse,
    QueryRequest,
    QueryResponse,
    QueryResult,
)
from .security import Guard

__all__ = ["create_app"]

log = logging.getLogger("ctxkit.serve")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 422, 500, 503, 504)
}


def _safe(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (lone surrogates) written as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _short(value: Any, n: int = 200) -> Any:
    """A request value echoed in a validation error: short and always encodable."""
    if isinstance(value, bytes | bytearray):
        value = bytes(value[: n + 1]).decode("utf-8", "replace")
    if isinstance(value, list | dict):
        value = json.dumps(value, default=str)
    if isinstance(value, str):
        value = _safe(value)
        return value if len(value) <= n else value[:n] + f"... ({len(value)} characters)"
    return value


def _error_response(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None,
                    headers: dict[str, str] | None = None) -> Any:
    from fastapi.responses import JSONResponse

    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def create_app(service: Any, *, host: str = "127.0.0.1", mcp: bool = True, api: bool = True) -> Any:
    """The ASGI app for ``service`` (FastAPI, wrapped in the :class:`~ctxkit.serve.security.Guard`).

    Args:
        service: The :class:`~ctxkit.serve.Service`.
        host: The interface it will listen on (the MCP endpoint's DNS-rebinding protection
            allows loopback host names when this is a loopback address).
        mcp: Mount the MCP server at ``/mcp``.
        api: Serve the ``/v1`` HTTP API (``False``: health, readiness and MCP only).
    """
    fastapi = require("fastapi")
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from .. import __version__
    from .service import to_result

    mcp_server = None
    if mcp:
        from .mcp import build_mcp_server

        mcp_server = build_mcp_server(service)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        await service.startup()
        try:
            if mcp_server is not None:
                async with mcp_server.session_manager.run():
                    yield
            else:
                yield
        finally:
            await service.shutdown()

    app = FastAPI(
        title=f"ctxkit: {service.name}", version=__version__, lifespan=lifespan,
        description="A ctxkit pipeline as a service: retrieval, ranking, conflict checks, steering, "
                    "answers, feedback and ingest. Concurrent requests run through the pipeline in batches.",
    )

    # -- errors ----------------------------------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Any:
        errors = exc.errors()
        if any(e.get("loc") == ("body",) and isinstance(e.get("input"), bytes | bytearray) for e in errors):
            return _error_response(400, "invalid_json", "the request body is not a JSON object "
                                   "(send JSON with 'Content-Type: application/json')")
        if any(e.get("type") == "json_invalid" for e in errors):
            msg = next((e.get("ctx", {}).get("error") or e.get("msg") for e in errors if e.get("type") == "json_invalid"), "")
            return _error_response(400, "invalid_json", f"the request body is not valid JSON: {msg}")
        details = [{"loc": [_safe(str(p)) for p in e.get("loc", ())], "msg": _safe(e.get("msg", "")), "type": e.get("type", ""),
                    "input": _short(e.get("input"))} for e in errors]
        message = "; ".join(f"{'.'.join(d['loc'][1:] or d['loc'])}: {d['msg']}" for d in details)
        return _error_response(422, "validation_error", message, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Any:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    async def _typed(request: Request, exc: Exception) -> Any:
        status, code, message = error_status(exc)
        if status >= 500 and not isinstance(exc, ServiceError):
            log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error_response(status, code, message)

    # ctxkit's typed errors are answered here; anything else too (Starlette then re-raises it
    # to the server: the Guard drops it, the response is sent and the traceback logged once)
    app.add_exception_handler(CtxkitError, _typed)
    app.add_exception_handler(Exception, _typed)

    # -- health ----------------------------------------------------------------------------------
    @app.get("/health", response_model=HealthResponse, tags=["health"])
    async def health() -> Any:
        """Liveness: the process answers; counters of requests and batches."""
        return service.health()

    @app.get("/ready", tags=["health"], responses={503: {"model": ErrorResponse}})
    async def ready() -> Any:
        """Readiness: 200 once the models are warm; 503 while starting or stopping."""
        if not service.ready:
            return _error_response(503, "not_ready", "the service is starting or stopping")
        return {"ready": True}

    if api:
        v1 = fastapi.APIRouter(prefix="/v1", responses=_ERRORS)

        @v1.get("/info", tags=["pipeline"])
        async def info() -> Any:
            """The stages this service runs, what it can do, and its public settings."""
            return service.info()

        @v1.post("/query", response_model=QueryResponse, tags=["pipeline"])
        async def query(body: QueryRequest) -> Any:
            """Run one query, or a batch, through the pipeline.

            Each result has the passages (best first) with every stage's score, conflicts, flags,
            the trace, and the answer when the pipeline generates one. A query that fails has
            ``error`` set; the others are unaffected. A single query that fails gets an error status.
            """
            queries = body.all_queries
            out = await service.query(queries, body.metadata)
            if len(out) == 1 and isinstance(out[0], BaseException):
                raise out[0]
            return {"results": [to_result(r, q, body.top_k) for r, q in zip(out, queries, strict=True)]}

        @v1.post("/answer", response_model=QueryResult, tags=["pipeline"],
                 responses={200: {"content": {"text/event-stream": {}}}})
        async def answer(body: AnswerRequest) -> Any:
            """Answer a question with the pipeline's generator (``stream``: Server-Sent Events)."""
            if not body.stream:
                return to_result(await service.answer(body.query, body.metadata), top_k=body.top_k)
            service.require_generator()
            service.validate_query(body.query)

            async def events() -> AsyncIterator[bytes]:
                try:
                    async for kind, data in service.stream_answer(body.query, body.metadata):
                        yield f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()
                except Exception as exc:  # noqa: BLE001 - the status is sent already: report in the stream
                    status, code, message = error_status(exc)
                    payload = {"code": code, "message": message, "status": status}
                    yield f"event: error\ndata: {json.dumps(payload)}\n\n".encode()

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        @v1.post("/check", response_model=QueryResult, tags=["pipeline"])
        async def check(body: CheckRequest) -> Any:
            """Run the pipeline's checks (ranking, conflicts, steering) on the passages sent."""
            from ..types import Passage

            passages = [Passage(id=p.id, text=p.text, metadata=dict(p.metadata)) for p in body.passages]
            return to_result(await service.check(body.query, passages, body.metadata))

        @v1.post("/feedback", response_model=FeedbackResponse, tags=["feedback"])
        async def feedback(body: FeedbackRequest) -> Any:
            """Record feedback (``like``, ``dislike``, ``copy``, ``regenerate`` or a number) on a shown list."""
            reward = await service.feedback(body.list_id, body.event)
            return {"list_id": body.list_id, "reward": reward}

        @v1.post("/ingest", response_model=IngestResponse, tags=["index"])
        async def ingest(body: IngestRequest) -> Any:
            """Add documents (or files under the service's allowed roots) to the index."""
            docs = [d.model_dump() for d in body.documents] if body.documents is not None else None
            report = await service.ingest(documents=docs, paths=body.paths)
            return {
                "documents": report.documents, "written": report.written, "unchanged": report.unchanged,
                "chunks_written": report.chunks_written, "chunks_deleted": report.chunks_deleted,
                "files": report.files, "skipped": [tuple(s) for s in report.skipped], "seconds": report.seconds,
            }

        app.include_router(v1)

    if mcp_server is not None:
        inner = mcp_server.streamable_http_app(streamable_http_path="/mcp", stateless_http=True, json_response=True,
                                               host=host)
        for route in inner.routes:
            app.router.routes.append(route)

    return Guard(app, service=service)
