"""Chroma clients, one per path or server per process (telemetry off)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..._lazy import require
from ...errors import ConfigError, IndexNotFoundError

__all__ = ["chroma_client"]

_CLIENTS: dict[tuple[Any, ...], Any] = {}


def chroma_client(
    path: str | Path | None = None, host: str | None = None, port: int = 8000, ssl: bool = False,
    headers: dict[str, str] | None = None,
) -> Any:
    """A chromadb client: embedded ``PersistentClient(path)`` or ``HttpClient(host, port)``.

    Telemetry is off. Clients are shared per process (Chroma wants one client per path).
    """
    chromadb = require("chromadb")
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    if host:
        key: tuple[Any, ...] = ("http", host, port, ssl, json.dumps(headers, sort_keys=True))
        if key not in _CLIENTS:
            try:
                _CLIENTS[key] = chromadb.HttpClient(host=host, port=port, ssl=ssl, headers=headers, settings=settings)
            except Exception as exc:  # chromadb raises plain ValueError/ConnectionError here
                raise IndexNotFoundError(
                    f"cannot reach the Chroma server at {host}:{port} ({exc}); start it with "
                    f"`chroma run --path DIR --host {host} --port {port}`"
                ) from exc
        return _CLIENTS[key]
    if path is None:
        raise ConfigError("chroma_client: pass a path (embedded) or a host (server mode)")
    p = str(Path(path).expanduser().resolve())
    key = ("path", p)
    if key not in _CLIENTS:
        _CLIENTS[key] = chromadb.PersistentClient(path=p, settings=settings)
    return _CLIENTS[key]
