"""Bearer-token auth for the endpoints that change something; reads stay open (the server binds to loopback).

Without a token in the settings (``HPO_API_TOKEN`` unset), nothing is checked. The token is compared in
constant time and never logged.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hpo_service.api.deps import SettingsDep

MISSING = "this server needs a token: send 'Authorization: Bearer <token>' with the server's HPO_API_TOKEN"
MISMATCH = "the token does not match the server's HPO_API_TOKEN"
_bearer = HTTPBearer(auto_error=False, description="Needed on mutating endpoints when HPO_API_TOKEN is set.")


def require_token(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Pass if no token is set or the request's bearer token is the server's; else a 401 that says which of
    the two went wrong (no token sent, or one that does not match), never the token."""
    expected = settings.api_token
    if not expected:
        return
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        reason = MISMATCH if given else MISSING
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, reason, headers={"WWW-Authenticate": "Bearer"})
