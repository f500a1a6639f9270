"""ctxkit.serve: a pipeline as a long-running service, over HTTP and the Model Context Protocol.

:class:`Service` loads a pipeline once (models warm), runs concurrent requests through it in
batches (:class:`MicroBatcher`), records feedback, ingests into the index (only from allowed
roots), and shuts down gracefully. :func:`create_app` is its FastAPI app (HTTP API + ``/mcp``);
:func:`build_mcp_server` its MCP tools. Needs ``pip install "ctxkit[serve]"``; nothing here
is imported until used.

Example:
    >>> from ctxkit.serve import Service, ServiceSettings
    >>> svc = Service.from_config("pipeline.yaml", ServiceSettings(token="change-me-please"))
    >>> svc.serve(host="0.0.0.0", port=8080)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

__all__ = [
    "MicroBatcher",
    "RunningService",
    "Service",
    "ServiceError",
    "ServiceSettings",
    "build_mcp_server",
    "create_app",
    "run_stdio",
]

_LAZY = {
    "MicroBatcher": "ctxkit.serve.batching",
    "RunningService": "ctxkit.serve.service",
    "Service": "ctxkit.serve.service",
    "ServiceError": "ctxkit.serve.errors",
    "ServiceSettings": "ctxkit.serve.settings",
    "build_mcp_server": "ctxkit.serve.mcp",
    "create_app": "ctxkit.serve.app",
    "run_stdio": "ctxkit.serve.mcp",
}

if TYPE_CHECKING:
    from .app import create_app
    from .batching import MicroBatcher
    from .errors import ServiceError
    from .mcp import build_mcp_server, run_stdio
    from .service import RunningService, Service
    from .settings import ServiceSettings


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
