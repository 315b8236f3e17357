"""Who may call: API keys and their roles, the browser's Origin, rate limits (docs/security.md).

Off by default (local use). `ADAIN_API_KEYS` / `ADAIN_ADMIN_KEYS` turn keys on; the routes take
`UserDep` (stylize, read the registry) or `AdminDep` (also register and delete styles), which
authenticate, check the role and count the request against `ADAIN_RATE_LIMIT`. `OriginGuard`
refuses state-changing requests from other sites' pages, keys or not. Failures are domain
errors: `service.errors.HTTP_ERRORS` gives their statuses.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from models.errors import DomainError
from service.hardening import AllowedHosts

log = logging.getLogger("service.security")

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
WINDOW_S = 60  # ADAIN_RATE_LIMIT counts requests per minute
DEFAULT_PORTS = {"http": 80, "https": 443}


class AuthenticationError(DomainError):
    """Keys are on and the request carries no valid key (401)."""


class PermissionDeniedError(DomainError):
    """The key is valid but its role may not do this (403)."""


class CrossOriginError(DomainError):
    """A state-changing request from a page of another, unlisted origin (403)."""


class RateLimitedError(DomainError):
    """Over ADAIN_RATE_LIMIT in this minute (429); `retry_after_s`: until the next minute."""

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class Role(IntEnum):
    user = 1  # stylize, read the registry
    admin = 2  # also register and delete styles


@dataclass(frozen=True)
class Caller:
    role: Role
    # Whom the rate limit counts: a digest of the key, or the client's address. Never the key.
    identity: str

    @property
    def owner(self) -> str | None:
        """Whose style names a request uses: its key's identity; with keys off everyone shares
        one set (the identity is then the client's address, which is no owner)."""
        return self.identity if self.identity.startswith("key:") else None


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class Keys:
    """The configured keys, kept as sha256 digests: compared in constant time, never logged."""

    def __init__(self, user_keys: list[str], admin_keys: list[str]) -> None:
        self.digests = [(digest(key), Role.user) for key in user_keys]
        self.digests += [(digest(key), Role.admin) for key in admin_keys]

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def role_of(self, key: str) -> Role | None:
        """The highest role of `key`. Every configured key is compared (hmac.compare_digest on
        equal-length digests), so the time taken says nothing about which keys exist."""
        given = digest(key)
        role: Role | None = None
        for known, known_role in self.digests:
            if hmac.compare_digest(given, known) and (role is None or known_role > role):
                role = known_role
        return role


def presented_key(request: HTTPConnection) -> str | None:
    """`Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.headers.get("x-api-key", "").strip() or None


def client_address(request: HTTPConnection) -> str:
    return f"address:{request.client.host if request.client else 'unknown'}"


def authenticate(request: HTTPConnection, given_key: str | None = None) -> Caller:
    """The caller of a request or WebSocket; `given_key`: one not sent in a header (a live
    stream's first message: browsers cannot set WebSocket headers)."""
    keys: Keys = request.app.state.keys
    if not keys.enabled:
        return Caller(Role.admin, client_address(request))
    key = given_key or presented_key(request)
    if key is None:
        raise AuthenticationError(
            "an API key is needed: send `Authorization: Bearer <key>` or `X-API-Key: <key>` "
            "(or `key` in a live stream's first message)"
        )
    role = keys.role_of(key)
    if role is None:
        raise AuthenticationError("the API key is not valid")
    return Caller(role, f"key:{digest(key).hex()[:32]}")


class RateLimiter:
    """Fixed one-minute windows per caller: in Redis (INCR + EXPIRE, shared by the replicas)
    when there is one, else in process. When Redis fails the process counts alone rather than
    refusing or failing the request."""

    def __init__(self, per_minute: int, redis: Redis | None) -> None:
        self.per_minute = per_minute
        self.redis = redis
        self.window = -1
        self.counts: dict[str, int] = {}
        self.redis_failing = False

    async def check(self, identity: str) -> None:
        if self.per_minute == 0:
            return
        now = time.time()
        window = int(now // WINDOW_S)
        count = await self.shared_count(identity, window) if self.redis is not None else None
        if count is None:
            count = self.local_count(identity, window)
        if count > self.per_minute:
            retry_after = max(1, math.ceil((window + 1) * WINDOW_S - now))
            raise RateLimitedError(
                f"more than {self.per_minute} requests in a minute (ADAIN_RATE_LIMIT); "
                f"retry in {retry_after} s",
                retry_after,
            )

    async def shared_count(self, identity: str, window: int) -> int | None:
        assert self.redis is not None
        key = f"adain:rate:{identity}:{window}"
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                count, _ = await pipe.incr(key).expire(key, WINDOW_S).execute()
        except (RedisError, OSError) as exc:
            if not self.redis_failing:  # once per outage, not once per request
                log.warning(
                    "rate limit: redis unreachable, counting in this process",
                    extra={"error": str(exc)},
                )
            self.redis_failing = True
            return None
        if self.redis_failing:
            log.info("rate limit: redis reachable again, counting there")
        self.redis_failing = False
        return int(count)

    def local_count(self, identity: str, window: int) -> int:
        if window != self.window:  # a new minute: the old counts are over
            self.window, self.counts = window, {}
        self.counts[identity] = self.counts.get(identity, 0) + 1
        return self.counts[identity]


async def admit(request: HTTPConnection, role: Role, given_key: str | None = None) -> Caller:
    limiter: RateLimiter = request.app.state.services.rate_limiter
    try:
        caller = authenticate(request, given_key)
    except AuthenticationError:
        # Refused requests count too, per address: guessing keys is rate limited as well.
        await limiter.check(client_address(request))
        raise
    await limiter.check(caller.identity)  # before the role: refused requests count too
    if caller.role < role:
        raise PermissionDeniedError(
            "this API key may not do this: an admin key is needed (ADAIN_ADMIN_KEYS)"
        )
    return caller


async def user(request: Request) -> Caller:
    return await admit(request, Role.user)


async def admin(request: Request) -> Caller:
    return await admit(request, Role.admin)


UserDep = Annotated[Caller, Depends(user)]
AdminDep = Annotated[Caller, Depends(admin)]


def origin_of(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) with the scheme's default port filled in; None if unreadable."""
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    return parts.scheme.lower(), parts.hostname.lower(), port


class OriginGuard:
    """Pure ASGI middleware: a POST, PUT, PATCH or DELETE, or a WebSocket handshake, whose
    `Origin` is neither the server's own (the scheme and Host of the request, an allowed host:
    ADAIN_ALLOWED_HOSTS) nor one of ADAIN_CORS_ORIGINS is refused with 403, before its body is
    read or the socket accepted. Requests without Origin (curl, SDKs, servers) pass: browsers
    send it on every cross-origin request and WebSocket, so another site's page cannot leave it
    out."""

    def __init__(self, app: ASGIApp, allowed: list[str], hosts: AllowedHosts) -> None:
        self.app = app
        self.allowed = {origin for origin in map(origin_of, allowed) if origin is not None}
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" or (
            scope["type"] == "http" and scope["method"] in STATE_CHANGING
        ):
            headers = dict(scope["headers"])
            origin = headers.get(b"origin")
            if origin is not None:
                host = headers.get(b"host", b"").decode("latin-1")
                # A WebSocket's own page is at http(s):// on the same host.
                scheme = {"ws": "http", "wss": "https"}.get(scope["scheme"], scope["scheme"])
                own = origin_of(f"{scheme}://{host}")
                given = origin_of(origin.decode("latin-1"))
                same_origin = given == own and given is not None and self.hosts.allows(given[1])
                if given is None or (not same_origin and given not in self.allowed):
                    raise CrossOriginError(
                        f"requests from the page at {origin.decode('latin-1')[:100]!r} are not "
                        "allowed (ADAIN_CORS_ORIGINS lists the other origins that are)"
                    )
        await self.app(scope, receive, send)
