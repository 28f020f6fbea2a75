"""Request body limits, enforced while the body arrives (an ASGI middleware)."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from skruntime.licensing.protocol import MAX_DEVICE_BODY

DEVICE_PATHS = frozenset({"/v1/licences", "/v1/usage"})
"""Device requests: anyone can send them, before the signature is checked."""
MAX_ADMIN_BODY = 1 << 20
"""Bytes an admin request may have: the largest (an application listing 1,000 model names of
200 characters) takes about 0.2 MiB. The body is read before the token is checked."""


class BodyLimit:
    """Answer 413 as soon as a request body is over its limit (:data:`MAX_DEVICE_BODY` for
    device requests, :data:`MAX_ADMIN_BODY` otherwise): a declared ``Content-Length`` is refused
    before any of the body is read, a chunked body once the limit is passed. Otherwise the
    framework would buffer the whole body first, so anyone could make the server hold as much
    memory as they send."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = MAX_DEVICE_BODY if scope["path"] in DEVICE_PATHS else MAX_ADMIN_BODY
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await _too_large(limit)(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            if len(body) > limit:
                await _too_large(limit)(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"the request body is over {limit} bytes"}, status_code=413)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body already read, then what the client sends next."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Any:
        return pending.pop() if pending else await receive()

    return replayed
