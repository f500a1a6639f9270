"""The pipeline as Model Context Protocol tools (official MCP Python SDK, ``mcp>=2``).

Tools (each a thin call into the shared :class:`~ctxkit.serve.Service`, so MCP requests are
batched with HTTP requests):

* ``query``: retrieval, ranking, conflict checks and steering for a question;
* ``check_passages``: the pipeline's checks (conflicts, steering, ranking) on passages the agent
  already has (when the pipeline has such stages);
* ``answer``: the pipeline's answer (when it has a generator);
* ``feedback``: like / dislike / copy / regenerate or a number on a shown list;
* ``ingest``: documents, or files under the allowed roots, into the index (when it has one);
* ``pipeline_info``: the stages and settings.

Transports: stdio (:func:`run_stdio`; an agent host starts ``ctxkit mcp CONFIG``) and
Streamable HTTP (mounted at ``/mcp`` by :func:`ctxkit.serve.create_app`; ``ctxkit mcp CONFIG
--transport http`` or ``ctxkit serve-pipeline``). A failing call returns an MCP tool error with
the same message as the HTTP API.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from pydantic import Field

from .._lazy import require
from .errors import error_status
from .schemas import DocumentIn, PassageIn, QueryText

__all__ = ["build_mcp_server", "run_stdio"]

log = logging.getLogger("ctxkit.serve")

_INSTRUCTIONS = (
    "ctxkit runs a retrieval-augmented-generation pipeline. Call `query` with a question to get ranked "
    "passages (each with every stage's score), conflicts between passages and known facts, and flags for "
    "inappropriate passages. Pass known facts as metadata={'beliefs': [...]} to check passages against them. "
    "Record what the user thought of a result with `feedback` (its list_id)."
)


def build_mcp_server(service: Any) -> Any:
    """An ``MCPServer`` whose tools call ``service`` (start the service before serving it)."""
    require("mcp")
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    from .. import __version__
    from ..types import Passage
    from .service import to_result

    # MCPServer() calls logging.basicConfig (a rich handler on the root logger) when the root has
    # no handler yet: an application's logging set-up is its own, so hand it a placeholder.
    root, placeholder = logging.getLogger(), logging.NullHandler()
    root.addHandler(placeholder)
    try:
        server = MCPServer(name=f"ctxkit-{service.name}", instructions=_INSTRUCTIONS, version=__version__,
                           log_level="WARNING")
    finally:
        root.removeHandler(placeholder)

    def fail(exc: BaseException) -> ToolError:
        status, code, message = error_status(exc)
        log.info("MCP tool call refused (%s %s): %s", status, code, message)
        return ToolError(f"{code}: {message}")

    async def query(
        query: QueryText,
        metadata: Annotated[dict[str, Any] | None, Field(description="per-query data, e.g. {'beliefs': [...]}")] = None,
        top_k: Annotated[int | None, Field(ge=1, le=1000, description="return at most this many passages")] = None,
    ) -> dict[str, Any]:
        """Retrieve and rank passages for a question, with conflicts and steering flags.

        Returns the passages (best first, each with every stage's score), conflicts with known facts,
        per-query flags, the trace, and the list_id to send feedback on.
        """
        try:
            out = (await service.query([query], metadata))[0]
            if isinstance(out, BaseException):
                raise out
        except Exception as exc:  # noqa: BLE001 - reported as a tool error
            raise fail(exc) from None
        return to_result(out, query, top_k).model_dump(mode="json")

    server.add_tool(query, name="query", structured_output=False)

    if service.can_answer:
        async def answer(
            query: QueryText,
            metadata: Annotated[dict[str, Any] | None, Field(description="per-query data")] = None,
        ) -> dict[str, Any]:
            """Answer a question from the retrieved context with the pipeline's generator."""
            try:
                state = await service.answer(query, metadata)
            except Exception as exc:  # noqa: BLE001
                raise fail(exc) from None
            return to_result(state).model_dump(mode="json")

        server.add_tool(answer, name="answer", structured_output=False)

    if service._check_pipe is not None:
        async def check_passages(
            query: QueryText,
            passages: Annotated[list[PassageIn], Field(min_length=1)],
            metadata: Annotated[dict[str, Any] | None, Field(description="e.g. {'beliefs': [...]}")] = None,
        ) -> dict[str, Any]:
            """Run the pipeline's checks (conflicts, steering, ranking) on passages you already have."""
            try:
                items = [Passage(id=p.id, text=p.text, metadata=dict(p.metadata)) for p in passages]
                state = await service.check(query, items, metadata)
            except Exception as exc:  # noqa: BLE001
                raise fail(exc) from None
            return to_result(state).model_dump(mode="json")

        server.add_tool(check_passages, name="check_passages", structured_output=False)

    async def feedback(
        list_id: Annotated[str, Field(min_length=1, max_length=512)],
        event: Annotated[str | float, Field(description="like, dislike, copy, regenerate, or a number")],
    ) -> dict[str, Any]:
        """Record what the user thought of a result (its list_id): it trains the ranker."""
        try:
            reward = await service.feedback(list_id, event)
        except Exception as exc:  # noqa: BLE001
            raise fail(exc) from None
        return {"list_id": list_id, "reward": reward}

    server.add_tool(feedback, name="feedback", structured_output=False)

    if service.index_path is not None:
        async def ingest(
            documents: Annotated[list[DocumentIn] | None, Field(description="documents {id, text, title?, metadata?}")] = None,
            paths: Annotated[list[str] | None, Field(description="files or folders under the allowed roots")] = None,
        ) -> dict[str, Any]:
            """Add documents (or files under the service's allowed roots) to the index."""
            if (documents is None) == (paths is None):
                raise ToolError("invalid_input: send exactly one of 'documents' or 'paths'")
            try:
                report = await service.ingest(
                    documents=[d.model_dump() for d in documents] if documents is not None else None, paths=paths
                )
            except Exception as exc:  # noqa: BLE001
                raise fail(exc) from None
            return {"documents": report.documents, "written": report.written, "unchanged": report.unchanged,
                    "chunks_written": report.chunks_written, "skipped": [list(s) for s in report.skipped]}

        server.add_tool(ingest, name="ingest", structured_output=False)

    async def pipeline_info() -> dict[str, Any]:
        """The stages of the pipeline, what this server can do, and its settings."""
        return service.info()

    server.add_tool(pipeline_info, name="pipeline_info", structured_output=False)
    return server


def run_stdio(service: Any) -> None:
    """Serve ``service`` as an MCP server over stdin/stdout until the host closes it (blocking).

    Logs go to stderr (stdout carries the protocol).
    """
    anyio = require("anyio")
    server = build_mcp_server(service)

    async def main() -> None:
        await service.startup()
        try:
            await server.run_stdio_async()
        finally:
            await service.shutdown()

    anyio.run(main)
