"""Refuse cross-origin writes (CSRF): a page on another origin can make a browser POST a form or text/plain
body without a CORS preflight, which would change a search whenever no API token is set.

Browsers name the page's origin in ``Origin`` on every cross-origin POST (and mark it ``Sec-Fetch-Site:
cross-site``); the CLI and other HTTP clients send neither, so they pass. A write from another origin is let
through only when that origin is one of the server's configured CORS origins.
"""

from __future__ import annotations

import json

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class SameOriginWrites:
    def __init__(self, app: ASGIApp, allowed_origins: list[str] | None = None) -> None:
        self.app, self.allowed_origins = app, frozenset(allowed_origins or ())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WRITE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:
            if headers.get("sec-fetch-site") == "cross-site":
                await _refuse(send, "cross-site request refused; allow its origin with --cors-origin")
                return
        elif origin != f"{scope['scheme']}://{headers.get('host', '')}" and origin not in self.allowed_origins:
            await _refuse(send, f"cross-origin request from {origin} refused; allow it with --cors-origin")
            return
        await self.app(scope, receive, send)


async def _refuse(send: Send, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": body})
