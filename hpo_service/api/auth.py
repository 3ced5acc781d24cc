"""Bearer-token auth for the endpoints that change something; reads stay open (the server binds to loopback).

With ``HPO_API_TOKEN`` unset, nothing is checked. The token is compared in constant time and never logged.
"""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_bearer = HTTPBearer(auto_error=False, description="Needed on mutating endpoints when HPO_API_TOKEN is set.")


async def require_token(request: Request) -> None:
    expected: str | None = request.app.state.api_token
    if not expected:
        return
    credentials: HTTPAuthorizationCredentials | None = await _bearer(request)
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "this endpoint needs 'Authorization: Bearer <token>' with the server's HPO_API_TOKEN",
            headers={"WWW-Authenticate": "Bearer"},
        )
