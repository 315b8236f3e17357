"""The one place failures become HTTP: every error answers JSON `{"detail": ..., "field": ...}`.

The library and the service raise domain errors (`models.errors.DomainError` subclasses: what
went wrong, which input is at fault); `HTTP_ERRORS` gives each class its status code, and a
Retry-After for the temporary ones. FastAPI's own validation and routing errors get the same
shape.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from models.errors import DomainError, InvalidInputError
from service.engine import EngineBusyError, EngineClosedError, EngineOutOfMemoryError
from service.imaging import DecodeBudgetError, ImageTooLargeError, UnsupportedImageError
from service.limits import BodyTimeoutError
from service.live import LiveBusyError, LiveIdleError
from service.registry import (
    RedisUnavailableError,
    StorageFullError,
    StorageUnavailableError,
    StyleNotFoundError,
)
from service.security import (
    AuthenticationError,
    CrossOriginError,
    PermissionDeniedError,
    RateLimitedError,
)


@dataclass(frozen=True)
class HttpStatus:
    status_code: int
    retry_after_s: int | None = None  # a temporary failure: when the client may try again
    headers: tuple[tuple[str, str], ...] = ()


# 4xx: the client's input is at fault; 503 + Retry-After: try again later, the input was fine
# (a store's fault included: it heals without a restart); 507: the styles' disk is full.
HTTP_ERRORS: dict[type[DomainError], HttpStatus] = {
    InvalidInputError: HttpStatus(422),
    UnsupportedImageError: HttpStatus(415),
    ImageTooLargeError: HttpStatus(413),
    StyleNotFoundError: HttpStatus(404),
    AuthenticationError: HttpStatus(401, headers=(("WWW-Authenticate", 'Bearer realm="adain"'),)),
    PermissionDeniedError: HttpStatus(403),
    CrossOriginError: HttpStatus(403),
    BodyTimeoutError: HttpStatus(408, headers=(("Connection", "close"),)),
    RateLimitedError: HttpStatus(429, retry_after_s=60),
    EngineBusyError: HttpStatus(503, retry_after_s=1),
    DecodeBudgetError: HttpStatus(503, retry_after_s=1),
    EngineClosedError: HttpStatus(503, retry_after_s=5),
    EngineOutOfMemoryError: HttpStatus(503, retry_after_s=5),
    RedisUnavailableError: HttpStatus(503, retry_after_s=2),
    StorageUnavailableError: HttpStatus(503, retry_after_s=10),
    StorageFullError: HttpStatus(507, retry_after_s=60),
    LiveIdleError: HttpStatus(408, headers=(("Connection", "close"),)),
    LiveBusyError: HttpStatus(503, retry_after_s=5),
}
# A WebSocket closed for an error (the live feed): close code 4000 + the error's HTTP status.
WEBSOCKET_CLOSE_BASE = 4000


def error_response(
    status_code: int, detail: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"detail": detail, "field": field}, status_code, headers=headers)


def http_status(error: DomainError) -> HttpStatus:
    """The table's entry for the error's class, or for the nearest mapped class it derives from."""
    for cls in type(error).__mro__:
        if cls in HTTP_ERRORS:
            return HTTP_ERRORS[cls]
    raise LookupError(f"{type(error).__name__} has no HTTP status in HTTP_ERRORS")


def domain_error_response(error: DomainError) -> JSONResponse:
    status = http_status(error)
    headers = dict(status.headers)
    # A rate limit knows when its window ends; the table's value is the longest wait.
    retry_after = getattr(error, "retry_after_s", None) or status.retry_after_s
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return error_response(status.status_code, error.detail, error.field, headers or None)


def websocket_error(error: DomainError) -> tuple[dict[str, object], int]:
    """A domain error on a WebSocket: its JSON message (the HTTP error body with the status and
    the retry hint) and the close code for when the stream ends with it."""
    status = http_status(error)
    message: dict[str, object] = {
        "detail": error.detail,
        "field": error.field,
        "status": status.status_code,
    }
    retry_after = getattr(error, "retry_after_s", None) or status.retry_after_s
    if retry_after is not None:
        message["retry_after_s"] = retry_after
    return message, WEBSOCKET_CLOSE_BASE + status.status_code


async def refuse_handshake(scope: Scope, receive: Receive, send: Send, error: DomainError) -> None:
    """Answers a WebSocket handshake with the error's HTTP status and JSON body (the ASGI
    denial response; uvicorn has it), or refuses it with a bare 403 where the server has not."""
    if "websocket.http.response" in scope.get("extensions", {}):
        await domain_error_response(error)(scope, receive, send)
    else:
        await send({"type": "websocket.close", "code": websocket_error(error)[1]})


async def domain_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    return domain_error_response(exc)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    # loc is e.g. ("body", "alpha") or ("path", "style_id"): the last string is the field name.
    fields = [next((p for p in reversed(e["loc"]) if isinstance(p, str)), None) for e in errors]
    messages = [
        f"{field}: {error['msg']}" if field else error["msg"]
        for field, error in zip(fields, errors, strict=True)
    ]
    return error_response(422, "; ".join(messages), fields[0] if fields else None)


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail), None, exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, domain_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)
    # Unexpected exceptions become a 500 JSON in `service.logs.RequestContext`, with the log.
