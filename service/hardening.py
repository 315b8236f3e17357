"""What a browser and the network may not do with the service (docs/security.md):

- `HostGuard`: only requests naming an allowed host are served. A page on another site cannot
  read this server's answers, unless its own name starts resolving to this server's address
  (DNS rebinding): its requests then carry `Host: attacker.example`, refused here. IP addresses
  are always allowed (a rebound name never appears as one), so `make serve` on a laptop, probes
  by pod IP and `curl 127.0.0.1` work without configuration.
- `SecurityHeaders`: the page and the docs cannot be framed by another site (clickjacking their
  Delete and Register buttons), run only their own scripts, and nothing is sniffed as HTML.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.errors import DomainError

# Scripts, styles and pictures from this origin only (the docs' assets are served locally);
# `blob:`/`data:` pictures: the page's previews and results, the docs' inline icons; `blob:`
# media: videos the page made or received.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)


class HostNotAllowedError(DomainError):
    """The Host header is missing, repeated, or not an allowed name (400): ADAIN_ALLOWED_HOSTS."""


def hostname_of(host: str) -> str | None:
    """`Example.COM:8000` -> `example.com`, `[::1]:80` -> `::1`; None if it is no host."""
    try:
        name = urlsplit(f"//{host}").hostname
    except ValueError:
        return None
    return name.rstrip(".") if name else None


def is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class AllowedHosts:
    """ADAIN_ALLOWED_HOSTS: names (`adain.example.com`), subdomain patterns (`*.example.com`),
    or `*` for any name. IP addresses are always allowed."""

    def __init__(self, names: list[str]) -> None:
        self.any = "*" in names
        self.exact = {name.rstrip(".") for name in names if not name.startswith("*")}
        self.suffixes = tuple(name[1:] for name in names if name.startswith("*."))

    def allows(self, hostname: str) -> bool:
        return (
            self.any
            or hostname in self.exact
            or hostname.endswith(self.suffixes)
            or is_ip_address(hostname)
        )


class HostGuard:
    """Pure ASGI middleware: exactly one Host header (HTTP/1.0 may leave it out), naming an
    allowed host, else `HostNotAllowedError` (400), before anything else reads the request."""

    def __init__(self, app: ASGIApp, allowed: AllowedHosts) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            error = self.check(scope)
            if error is not None and scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": error.detail})
                return
            if error is not None:
                raise error
        await self.app(scope, receive, send)

    def check(self, scope: Scope) -> HostNotAllowedError | None:
        hosts = [value for name, value in scope["headers"] if name == b"host"]
        if len(hosts) > 1:
            return HostNotAllowedError(f"{len(hosts)} Host headers; send one")
        if not hosts:
            if scope.get("http_version") == "1.0":
                return None
            return HostNotAllowedError("no Host header; HTTP/1.1 requests need one")
        host = hosts[0].decode("latin-1")
        hostname = hostname_of(host)
        if hostname is None or not self.allowed.allows(hostname):
            return HostNotAllowedError(
                f"this server does not answer to the host {host[:100]!r} "
                "(ADAIN_ALLOWED_HOSTS lists the names it does)"
            )
        return None


class SecurityHeaders:
    """Pure ASGI middleware: `SECURITY_HEADERS` on every response that does not set its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(n, v) for n, v in SECURITY_HEADERS if n not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
