"""Answer only requests addressed to a host this server is reachable as (against DNS rebinding).

A page on ``rebind.example`` whose name is made to resolve to 127.0.0.1 is, to the browser, on the same origin
as this server: its requests pass the cross-origin guard, and without a token they could write. They still
name ``rebind.example`` in ``Host``, so, as Django's ``ALLOWED_HOSTS`` and Starlette's
``TrustedHostMiddleware`` do, a request is served only if its ``Host`` (without the port) is a loopback name,
the address the server was started on, or one the operator allowed (``hpo serve --allowed-host``, or
``HPO_ALLOWED_HOSTS``): a name, ``*.domain`` for its subdomains, or ``*`` for any.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})  # listening on every interface names no host
_HOST_HEADER = re.compile(r"(?:\[(?P<ipv6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9_.-]+))(?::\d*)?")
_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")


class HostPatternError(ValueError):
    """An allowed host that is neither a host name, an IP address, ``*.domain`` nor ``*``."""


def host_pattern(value: str) -> str:
    """``value`` as an allowed-host pattern: lower case, an IPv6 address without brackets, in its short form."""
    pattern = value.strip().lower()
    if pattern.startswith("[") and pattern.endswith("]"):
        pattern = pattern[1:-1]
    if ":" in pattern:
        ipv6 = _ipv6(pattern)
        if ipv6 is not None:
            return ipv6
    elif pattern == "*" or _NAME.fullmatch(pattern.rstrip(".").removeprefix("*.")):
        return pattern.rstrip(".")
    raise HostPatternError(f"allowed host {value!r} is not a host name, an IP address, '*.domain' or '*'")


def allowed_hosts(bind_host: str | None, configured: Iterable[str]) -> tuple[str, ...]:
    """The hosts a server bound to ``bind_host`` answers as: loopback, that address unless it is a wildcard,
    and the ``configured`` patterns."""
    hosts = [*LOOPBACK_HOSTS]
    if bind_host is not None and bind_host.strip("[]") not in WILDCARD_BINDS:
        hosts.append(bind_host)
    hosts += configured
    return tuple(dict.fromkeys(host_pattern(host) for host in hosts))


def host_of(header: str | None) -> str | None:
    """The host a ``Host`` header names, as ``host_pattern`` writes it, without the port; None if the header
    is missing or malformed."""
    match = _HOST_HEADER.fullmatch((header or "").lower())
    if match is None:
        return None
    if match["ipv6"] is not None:
        return _ipv6(match["ipv6"])
    name = match["name"].rstrip(".")
    return name if _NAME.fullmatch(name) else None


def matches(host: str, patterns: Iterable[str]) -> bool:
    """Whether ``host`` is one of ``patterns``: equal to one, a subdomain of a ``*.domain``, or any for ``*``."""
    return any(
        pattern == "*" or host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:]))
        for pattern in patterns
    )


class TrustedHosts:
    """ASGI middleware: a 400 for an HTTP or WebSocket request whose ``Host`` is not among ``patterns``."""

    def __init__(self, app: ASGIApp, patterns: Iterable[str]) -> None:
        self.app, self.patterns = app, tuple(patterns)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and "*" not in self.patterns:
            host = host_of(Headers(scope=scope).get("host"))
            if host is None or not matches(host, self.patterns):
                detail = "invalid host header: this server does not answer as that host (see --allowed-host)"
                await JSONResponse({"detail": detail}, status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _ipv6(value: str) -> str | None:
    try:
        return str(ipaddress.IPv6Address(value))
    except ValueError:
        return None
