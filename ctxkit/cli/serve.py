"""``ctxkit serve-pipeline`` (HTTP + MCP service) and ``ctxkit mcp`` (MCP server, stdio or HTTP)."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

__all__ = ["add_commands"]

TOKEN_ENV = "CTXKIT_SERVE_TOKEN"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="pipeline config (YAML file), as for ctxkit.load_pipeline")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (default: %(default)s)")
    p.add_argument("--token", default=None,
                   help=f"require 'Authorization: Bearer TOKEN' (default: ${TOKEN_ENV} when set; else no token)")
    p.add_argument("--allow-root", action="append", default=[], metavar="DIR",
                   help="a folder whose files ingest may read (repeatable; default: none, documents only)")
    p.add_argument("--index", default=None, help="index folder ingest writes to (default: the retrievers' index)")
    p.add_argument("--batch-window-ms", type=float, default=5.0,
                   help="wait this long for more requests to batch with (default: %(default)s)")
    p.add_argument("--max-batch-size", type=int, default=32, help="queries per pipeline batch (default: %(default)s)")
    p.add_argument("--unbatched", action="store_true", help="run requests one at a time (no cross-request batching)")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds (default: %(default)s)")
    p.add_argument("--max-body-bytes", type=int, default=2_000_000, help="largest request body (default: %(default)s)")
    p.add_argument("--max-queries", type=int, default=64, help="queries per request (default: %(default)s)")
    p.add_argument("--no-warm-up", action="store_true", help="load models on first use instead of at start-up")
    p.add_argument("--quiet", action="store_true", help="log warnings only (default: every request at INFO)")


def add_commands(sub: Any) -> None:
    """Register ``serve-pipeline`` and ``mcp`` on the ``ctxkit`` command line."""
    p = sub.add_parser(
        "serve-pipeline",
        help="serve a pipeline over HTTP (and MCP at /mcp), batching concurrent requests",
        description="Load the pipeline once (models warm) and serve it at http://HOST:PORT: POST /v1/query, "
        "/v1/answer (stream: SSE), /v1/check, /v1/feedback, /v1/ingest; GET /health, /ready, /v1/info; "
        "OpenAPI at /docs; MCP (Streamable HTTP) at /mcp. Requests arriving within --batch-window-ms run "
        "through the pipeline as one batch. SIGTERM/Ctrl-C finish in-flight requests, then close the stores.",
    )
    _common(p)
    p.add_argument("--no-mcp", action="store_true", help="do not serve MCP at /mcp")
    p.set_defaults(func=_serve)

    m = sub.add_parser(
        "mcp",
        help="serve a pipeline as Model Context Protocol tools (stdio or HTTP)",
        description="An MCP server whose tools (query, check_passages, answer, feedback, ingest, "
        "pipeline_info) run the pipeline. --transport stdio (default) is what an agent host starts; "
        "--transport http serves Streamable HTTP at http://HOST:PORT/mcp.",
    )
    _common(m)
    m.add_argument("--transport", choices=["stdio", "http"], default="stdio", help="(default: %(default)s)")
    m.set_defaults(func=_mcp)


def _service(args: argparse.Namespace) -> Any:
    from ctxkit.serve import Service, ServiceSettings

    kwargs: dict[str, Any] = {
        "batch_window_ms": args.batch_window_ms, "max_batch_size": args.max_batch_size,
        "request_timeout_s": args.timeout, "max_body_bytes": args.max_body_bytes,
        "max_queries_per_request": args.max_queries, "token": args.token or os.environ.get(TOKEN_ENV) or None,
        "allowed_roots": args.allow_root, "index": args.index, "warm_up": not args.no_warm_up,
    }
    try:
        settings = ServiceSettings.unbatched(**kwargs) if args.unbatched else ServiceSettings(**kwargs)
    except ValueError as exc:
        from ctxkit.errors import ConfigError, format_validation_error

        raise ConfigError(format_validation_error("service", exc) if hasattr(exc, "errors") else str(exc)) from None
    return Service.from_config(args.config, settings)


def _log_level(args: argparse.Namespace) -> None:
    if not args.quiet:
        logging.getLogger("ctxkit.serve").setLevel(logging.INFO)


def _serve(args: argparse.Namespace) -> int:
    _log_level(args)
    svc = _service(args)
    svc.serve(args.host, args.port, log_level="warning", mcp=not args.no_mcp)
    return 0


def _mcp(args: argparse.Namespace) -> int:
    _log_level(args)
    svc = _service(args)
    if args.transport == "stdio":
        from ctxkit.serve import run_stdio

        run_stdio(svc)
        return 0
    from ctxkit._lazy import require
    from ctxkit.serve.service import bind_socket

    uvicorn = require("uvicorn")
    sock = bind_socket(args.host, args.port)
    app = svc.build_app(host=args.host, mcp=True, api=False)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", log_config=None,
                                           timeout_graceful_shutdown=svc.settings.graceful_timeout_s))
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"ctxkit: serving MCP at http://{host}:{sock.getsockname()[1]}/mcp; Ctrl-C to stop", flush=True)
    server.run(sockets=[sock])
    return 0
