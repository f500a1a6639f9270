"""The service's guard: bearer token, request size limit, in-flight count and access log.

A plain ASGI middleware in front of every route (the HTTP API and the MCP endpoint alike):

* with a token set, requests under the protected prefixes (``/v1``, ``/mcp``) must send
  ``Authorization: Bearer <token>``; others get 401 and a warning in the log (method, path,
  client address; never the token sent);
* a body larger than ``max_body_bytes`` gets 413, whether it announces its length or not;
* every request is logged with its status and time; requests under the protected prefixes
  count as in flight until their response (streams included) is sent.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any

__all__ = ["Guard", "json_error"]

log = logging.getLogger("ctxkit.serve")

Scope = dict[str, Any]


class _TooLarge(BaseException):
    """The body went past the limit while it was being read."""


async def json_error(send: Any, status: int, code: str, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Send the service's error body (``{"error": {"code", "message"}}``) from ASGI."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    *(headers or [])],
    })
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: token check, body size limit, in-flight counting, access log.

    Args:
        app: The wrapped ASGI app.
        service: The :class:`~ctxkit.serve.Service` (its ``settings`` and ``in_flight``).
        protected: Path prefixes that need the token and count as in flight.
    """

    def __init__(self, app: Any, *, service: Any, protected: tuple[str, ...] = ("/v1", "/mcp")) -> None:
        self.app, self.service, self.protected = app, service, protected

    def _authorised(self, scope: Scope) -> bool:
        token = self.service.settings.token
        if token is None:
            return True
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, sent = value.decode("latin-1").partition(" ")
                return scheme.lower() == "bearer" and hmac.compare_digest(sent.strip().encode(), token.encode())
        return False

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        method, path = scope.get("method", ""), scope.get("path", "")
        client = "{}:{}".format(*scope["client"]) if scope.get("client") else "?"
        protected = path.startswith(self.protected)
        if protected and not self._authorised(scope):
            log.warning("refused %s %s from %s: missing or wrong bearer token (401)", method, path, client)
            await json_error(send, 401, "unauthorized", "send 'Authorization: Bearer <token>' with the service's token",
                             [(b"www-authenticate", b'Bearer realm="ctxkit"')])
            return
        limit = self.service.settings.max_body_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    await json_error(send, 400, "bad_request", "the Content-Length header is not a number")
                    return
                if length > limit:
                    log.warning("refused %s %s from %s: body of %d bytes (limit %d, 413)", method, path, client, length, limit)
                    await json_error(send, 413, "body_too_large", f"the request body has {length} bytes; the limit is {limit}")
                    return
        seen = {"bytes": 0, "status": 0}

        async def limited_receive() -> dict[str, Any]:
            msg = await receive()
            if msg.get("type") == "http.request":
                seen["bytes"] += len(msg.get("body", b""))
                if seen["bytes"] > limit:
                    raise _TooLarge
            return msg

        async def tracking_send(msg: dict[str, Any]) -> None:
            if msg.get("type") == "http.response.start":
                seen["status"] = int(msg["status"])
            await send(msg)

        if protected:
            self.service.in_flight += 1
        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            log.warning("refused %s %s from %s: body over %d bytes (413)", method, path, client, limit)
            if not seen["status"]:
                seen["status"] = 413
                await json_error(send, 413, "body_too_large", f"the request body is larger than {limit} bytes")
        except Exception as exc:  # noqa: BLE001 - answered (and logged) by the app's error handler
            if not seen["status"]:
                seen["status"] = 500
                await json_error(send, 500, "internal_error", f"{type(exc).__name__}: {exc}")
            log.debug("%s %s: %s re-raised after its error response", method, path, type(exc).__name__)
        finally:
            if protected:
                self.service.in_flight -= 1
            log.info("%s %s %s -> %s in %.1f ms", client, method, path, seen["status"] or "-",
                     1000 * (time.perf_counter() - t0))
