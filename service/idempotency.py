"""Idempotent submission: an `Idempotency-Key` header on POST /jobs and POST /styles (the IETF
httpapi idempotency-key draft, docs/api.md).

The first request with a key is processed and its successful answer kept for
ADAIN_IDEMPOTENCY_TTL_S; a retry with the same key and the same body gets that answer again,
marked `Idempotent-Replayed: true`, instead of creating a second job. The same key with another
body is 422, the same key while its first request is still being processed 409. An error
answer is not kept: the key is free again, so that a retry after a 503 is processed anew.

Keys are per caller (an API key's identity; with keys off, the client's address) and per
endpoint. "The same body" is the parsed form: each field's name and value, each file part's
name, file name and bytes, in the order sent; the multipart boundary and the parts' headers
play no part. Entries live in Redis when ADAIN_REDIS_URL is set (shared by the replicas), in
the process otherwise.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Annotated, Any, ParamSpec, Protocol, TypeVar, get_type_hints

from fastapi import Depends, Header, Request, Response
from fastapi.encoders import jsonable_encoder
from redis.asyncio import Redis
from starlette.datastructures import FormData, UploadFile

from models.errors import DomainError, InvalidInputError
from service.registry import redis_faults
from service.security import Caller

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# How long a request may hold its key while it is processed: a process that died meanwhile
# frees the key after this instead of answering 409 until the day is over.
PENDING_TTL_S = 600
REDIS_PREFIX = "adain:idempotency:"
HASH_CHUNK = 1024 * 1024

P = ParamSpec("P")
T = TypeVar("T")


class IdempotencyKeyReusedError(DomainError):
    """The Idempotency-Key was used before with another body (422)."""


class IdempotencyKeyInUseError(DomainError):
    """The first request with this Idempotency-Key is still being processed (409)."""


@dataclass(frozen=True)
class Entry:
    """What is kept under a key: the body's fingerprint, and the answer once there is one
    (status None: the first request is still being processed)."""

    fingerprint: str
    status: int | None = None
    body: Any = None
    headers: dict[str, str] | None = None

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, raw: str | bytes) -> Entry:
        return cls(**json.loads(raw))


class IdempotencyStore(Protocol):
    async def claim(self, key: str, entry: Entry, ttl_s: float) -> Entry | None:
        """Takes `key` for `entry` (None) unless it is held already: then what it holds."""
        ...

    async def keep(self, key: str, entry: Entry, ttl_s: float) -> None: ...

    async def release(self, key: str) -> None: ...


class MemoryIdempotencyStore:
    """In this process (one event loop: each call runs without interruption)."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, Entry]] = {}

    def _drop_expired(self, now: float) -> None:
        for key in [k for k, (expires, _) in self._entries.items() if expires <= now]:
            del self._entries[key]

    async def claim(self, key: str, entry: Entry, ttl_s: float) -> Entry | None:
        now = time.monotonic()
        self._drop_expired(now)
        held = self._entries.get(key)
        if held is not None:
            return held[1]
        self._entries[key] = (now + ttl_s, entry)
        return None

    async def keep(self, key: str, entry: Entry, ttl_s: float) -> None:
        self._entries[key] = (time.monotonic() + ttl_s, entry)

    async def release(self, key: str) -> None:
        self._entries.pop(key, None)


class RedisIdempotencyStore:
    """In Redis, shared by the replicas: SET NX takes a key, so two replicas never both do."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def claim(self, key: str, entry: Entry, ttl_s: float) -> Entry | None:
        name = REDIS_PREFIX + key
        with redis_faults("idempotency claim"):
            while True:
                if await self.redis.set(name, entry.dumps(), nx=True, px=int(ttl_s * 1000)):
                    return None
                held = await self.redis.get(name)
                if held is not None:  # else it expired or was released meanwhile: again
                    return Entry.loads(held)

    async def keep(self, key: str, entry: Entry, ttl_s: float) -> None:
        with redis_faults("idempotency keep"):
            await self.redis.set(REDIS_PREFIX + key, entry.dumps(), px=int(ttl_s * 1000))

    async def release(self, key: str) -> None:
        with redis_faults("idempotency release"):
            await self.redis.delete(REDIS_PREFIX + key)


def parse_key(value: str) -> str:
    """The key of the header: a Structured Field string as the draft writes it ("..."), or,
    as many clients send it, the bare text; 1 to MAX_KEY_LENGTH printable ASCII characters."""
    key = value.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if not key or len(key) > MAX_KEY_LENGTH or not all(" " <= c <= "~" for c in key):
        raise InvalidInputError(
            f"{HEADER}: 1 to {MAX_KEY_LENGTH} printable ASCII characters, e.g. a UUID "
            'in quotes: Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"',
            HEADER,
        )
    return key


async def fingerprint(form: FormData) -> str:
    """sha256 of the form as parsed: names, values, file names and file bytes, in order, each
    length-prefixed so that no two forms give the same stream."""
    digest = hashlib.sha256()

    def add(kind: bytes, data: bytes) -> None:
        digest.update(kind + len(data).to_bytes(8, "big") + data)

    for name, value in form.multi_items():
        add(b"n", name.encode())
        if isinstance(value, UploadFile):
            add(b"f", (value.filename or "").encode())
            await value.seek(0)
            size = 0
            file_digest = hashlib.sha256()
            while chunk := await value.read(HASH_CHUNK):
                file_digest.update(chunk)
                size += len(chunk)
            await value.seek(0)  # the route reads it next
            add(b"b", size.to_bytes(8, "big") + file_digest.digest())
        else:
            add(b"v", value.encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class IdempotentRequest:
    key: str
    fingerprint: str
    endpoint: str  # "POST /jobs"
    store: IdempotencyStore
    ttl_s: float


async def idempotent_request(
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            description="Makes a retry safe: the same key and body within "
            "ADAIN_IDEMPOTENCY_TTL_S (a day) answer as the first request did, with "
            "`Idempotent-Replayed: true`; another body 422; while the first is processed 409.",
        ),
    ] = None,
) -> IdempotentRequest | None:
    if idempotency_key is None:
        return None
    key = parse_key(idempotency_key)
    form = await request.form()  # parsed once already for the route: this is the same form
    services = request.app.state.services
    return IdempotentRequest(
        key,
        await fingerprint(form),
        f"{request.method} {request.url.path}",
        services.idempotency,
        services.settings.idempotency_ttl_s,
    )


def store_key(caller: Caller, request: IdempotentRequest) -> str:
    """Per caller and endpoint; the key itself hashed (any text, bounded length)."""
    hashed = hashlib.sha256(request.key.encode()).hexdigest()
    return f"{caller.identity}:{request.endpoint}:{hashed}"


def replay(held: Entry, request: IdempotentRequest) -> Response:
    if held.fingerprint != request.fingerprint:
        raise IdempotencyKeyReusedError(
            f"{HEADER}: this key was used with another request body; send a new key for "
            "a new request",
            HEADER,
        )
    if held.status is None:
        raise IdempotencyKeyInUseError(
            f"{HEADER}: the first request with this key is still being processed; retry "
            "shortly to get its answer",
            HEADER,
        )
    headers = {**(held.headers or {}), REPLAYED_HEADER: "true"}
    # Written as FastAPI writes the first answer (its JSONResponse's separators).
    body = json.dumps(held.body, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(body, status_code=held.status, headers=headers, media_type="application/json")


def idempotent(
    status_code: int,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[..., Awaitable[T | Response]]]:
    """Makes a POST route idempotent under `Idempotency-Key`. The route must take `caller`
    (a `Caller`) and `response` (a `Response`) and answer `status_code` unless it sets
    `response.status_code`; its answer and the headers it set are what a replay gives."""

    def decorate(route: Callable[P, Awaitable[T]]) -> Callable[..., Awaitable[T | Response]]:
        @functools.wraps(route)
        async def wrapper(idempotency: IdempotentRequest | None, **kwargs: Any) -> T | Response:
            if idempotency is None:
                return await route(**kwargs)  # type: ignore[call-arg]
            caller: Caller = kwargs["caller"]
            response: Response = kwargs["response"]
            store = idempotency.store
            key = store_key(caller, idempotency)
            held = await store.claim(key, Entry(idempotency.fingerprint), PENDING_TTL_S)
            if held is not None:
                return replay(held, idempotency)
            try:
                answer = await route(**kwargs)  # type: ignore[call-arg]
            except BaseException:
                await store.release(key)
                raise
            headers = {k: v for k, v in response.headers.items() if k != "content-length"}
            entry = Entry(
                idempotency.fingerprint,
                response.status_code or status_code,
                jsonable_encoder(answer),
                headers,
            )
            await store.keep(key, entry, idempotency.ttl_s)
            return answer

        # FastAPI reads the wrapper's signature: the route's parameters, their annotations
        # resolved in the route's module, and the header's dependency.
        hints = get_type_hints(route, include_extras=True)
        signature = inspect.signature(route)
        parameters = [p.replace(annotation=hints[p.name]) for p in signature.parameters.values()]
        parameters.append(
            inspect.Parameter(
                "idempotency",
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[IdempotentRequest | None, Depends(idempotent_request)],
            )
        )
        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=parameters, return_annotation=hints.get("return", signature.empty)
        )
        return wrapper

    return decorate
