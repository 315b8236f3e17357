"""The one place failures become HTTP: every error answers JSON `{"detail": ..., "field": ...}`.

The library and the service raise domain errors (`models.errors.DomainError` subclasses: what
went wrong, which input is at fault); `HTTP_ERRORS` gives each class its status code, what it
means (the OpenAPI document's descriptions, `service.openapi`), and a Retry-After for the
temporary ones. FastAPI's own validation and routing errors get the same shape, built here too:
no other module writes an error body.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from media.imaging import ImageTooLargeError, UnsupportedImageError
from media.video import UnsupportedVideoError, VideoTooLargeError
from models.errors import DomainError, InvalidInputError, error_body
from models.evaluate import PeerOutputError
from service.caps import CapReachedError
from service.engine import EngineBusyError, EngineClosedError, EngineOutOfMemoryError
from service.forms import UnsupportedFormError
from service.hardening import HostNotAllowedError
from service.idempotency import IdempotencyKeyInUseError, IdempotencyKeyReusedError
from service.imaging import DecodeBudgetError
from service.jobs.batch import BatchItemNotFoundError, BatchTooLargeError
from service.jobs.blobs import JobFilesUnavailableError
from service.jobs.store import JobNotDoneError, JobNotFoundError, JobStorageFullError
from service.limits import BodyTimeoutError, BodyTooLargeError
from service.live import LiveBusyError, LiveFailedError, LiveIdleError
from service.registry import (
    AlreadyRegisteredError,
    AmbiguousNameError,
    NameTakenError,
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


class MalformedRequestError(DomainError):
    """The request could not be parsed: a broken multipart body (400)."""


class RequestLineTooLongError(DomainError):
    """The request line (method, path, query) is longer than ADAIN_MAX_REQUEST_LINE_BYTES."""


class HeadersTooLargeError(DomainError):
    """The request's headers are larger than ADAIN_MAX_HEADER_BYTES (431)."""


class TooManyConnectionsError(DomainError):
    """The process holds ADAIN_MAX_CONNECTIONS connections and requests already (503)."""


class MethodNotAllowedError(DomainError):
    """The path exists, the method does not (405); `allow`: the methods the path has."""

    def __init__(self, detail: str, allow: Iterable[str]) -> None:
        super().__init__(detail)
        self.response_headers = {"Allow": ", ".join(sorted(allow))}


class RangeNotSatisfiableError(DomainError):
    """A Range header the file cannot answer (416); `Content-Range` gives the file's size."""

    def __init__(self, detail: str, size: int) -> None:
        super().__init__(detail)
        self.response_headers = {"Content-Range": f"bytes */{size}"}


class RouteNotFoundError(DomainError):
    """No route has this path (404)."""


class NotReadyError(DomainError):
    """The networks are still loading or warming up (503 from /readyz)."""


class UnexpectedError(DomainError):
    """A bug: an exception no handler expected (500, logged with the request id)."""


@dataclass(frozen=True)
class HttpStatus:
    status_code: int
    meaning: str  # for the client: when this status comes, what to do (the OpenAPI document)
    retry_after_s: int | None = None  # a temporary failure: when the client may try again
    headers: tuple[tuple[str, str], ...] = ()


CLOSE = (("Connection", "close"),)  # the rest of the request is not read: no reuse

# 4xx: the client's input is at fault; 503 + Retry-After: try again later, the input was fine
# (a store's fault included: it heals without a restart); 507: the styles' disk is full.
HTTP_ERRORS: dict[type[DomainError], HttpStatus] = {
    MalformedRequestError: HttpStatus(400, "The multipart body could not be parsed."),
    InvalidInputError: HttpStatus(
        422, "A field is missing, unknown, malformed or out of range (`field` names it)."
    ),
    UnsupportedImageError: HttpStatus(
        415, "An upload is not a PNG, JPEG or WebP image, or could not be decoded."
    ),
    UnsupportedFormError: HttpStatus(415, "The body is not multipart/form-data."),
    PeerOutputError: HttpStatus(
        422, "Another method's outputs do not match the evaluated pairs (`adain eval --peer`)."
    ),
    ImageTooLargeError: HttpStatus(
        413,
        "An image has more pixels than ADAIN_MAX_IMAGE_PIXELS "
        "(checked from its header, before decoding).",
    ),
    BodyTooLargeError: HttpStatus(
        413,
        "The request body is larger than ADAIN_MAX_UPLOAD_BYTES; the connection is closed.",
        headers=CLOSE,
    ),
    HostNotAllowedError: HttpStatus(
        400,
        "The Host header is missing, repeated, or not a name the server answers to "
        "(ADAIN_ALLOWED_HOSTS).",
    ),
    RequestLineTooLongError: HttpStatus(
        414,
        "The request line is longer than ADAIN_MAX_REQUEST_LINE_BYTES; the connection is closed.",
        headers=CLOSE,
    ),
    HeadersTooLargeError: HttpStatus(
        431,
        "The request's headers are larger than ADAIN_MAX_HEADER_BYTES; the connection is closed.",
        headers=CLOSE,
    ),
    TooManyConnectionsError: HttpStatus(
        503,
        "The server holds ADAIN_MAX_CONNECTIONS connections and requests; the health probes "
        "are answered still.",
        retry_after_s=1,
    ),
    StyleNotFoundError: HttpStatus(404, "No style with that id or name."),
    IdempotencyKeyReusedError: HttpStatus(
        422, "The Idempotency-Key was used before with another request body."
    ),
    IdempotencyKeyInUseError: HttpStatus(
        409, "The first request with this Idempotency-Key is still being processed."
    ),
    NameTakenError: HttpStatus(409, "Another style of the same owner has this name."),
    AlreadyRegisteredError: HttpStatus(
        409, "The image is registered already under another name, which it keeps."
    ),
    AmbiguousNameError: HttpStatus(
        422, "Styles of several owners have this name: use the id."
    ),
    UnsupportedVideoError: HttpStatus(
        415, "An upload is not a video the server can decode (container, codec)."
    ),
    VideoTooLargeError: HttpStatus(
        413, "A video over the limits on its size, frames or duration (`detail` names the setting)."
    ),
    BatchTooLargeError: HttpStatus(
        413,
        "A batch job over ADAIN_MAX_BATCH_ITEMS images, or a ZIP that would unpack to more than "
        "ADAIN_MAX_BATCH_BYTES (refused from its directory, before unpacking).",
    ),
    JobNotFoundError: HttpStatus(404, "No job with that id, or the job of another API key."),
    BatchItemNotFoundError: HttpStatus(
        404,
        "No such item in the batch job (an index from 0 or an output name of its manifest), "
        "the item failed (`detail` says why), or the job is a video job.",
    ),
    JobNotDoneError: HttpStatus(
        409,
        "The job has no result: still queued or running, failed or canceled "
        "(`GET /jobs/{id}` says which).",
    ),
    RangeNotSatisfiableError: HttpStatus(416, "The Range is not one the file can answer."),
    RouteNotFoundError: HttpStatus(404, "No such path."),
    MethodNotAllowedError: HttpStatus(
        405, "The path does not take this method: `Allow` lists those it does."
    ),
    AuthenticationError: HttpStatus(
        401,
        "API keys are on (ADAIN_API_KEYS) and the request carries no valid key "
        "(`Authorization: Bearer <key>` or `X-API-Key: <key>`).",
        headers=(("WWW-Authenticate", 'Bearer realm="adain"'),),
    ),
    PermissionDeniedError: HttpStatus(
        403, "The key may not do this (an admin key is needed: ADAIN_ADMIN_KEYS)."
    ),
    CrossOriginError: HttpStatus(403, "The browser's Origin is not allowed."),
    BodyTimeoutError: HttpStatus(
        408,
        "The request body did not arrive in full within "
        "ADAIN_BODY_TIMEOUT_S; the connection is closed.",
        headers=CLOSE,
    ),
    RateLimitedError: HttpStatus(
        429,
        "Too many requests from this key or address: retry after Retry-After seconds.",
        retry_after_s=60,
    ),
    UnexpectedError: HttpStatus(500, "An unexpected error; it is logged with the request id."),
    EngineBusyError: HttpStatus(503, "The queue is full.", retry_after_s=1),
    DecodeBudgetError: HttpStatus(503, "Too many uploads are being decoded.", retry_after_s=1),
    EngineClosedError: HttpStatus(503, "The server is shutting down.", retry_after_s=5),
    EngineOutOfMemoryError: HttpStatus(503, "Out of device memory.", retry_after_s=5),
    NotReadyError: HttpStatus(
        503, "The networks are still loading or warming up.", retry_after_s=1
    ),
    RedisUnavailableError: HttpStatus(503, "Redis is unreachable.", retry_after_s=2),
    StorageUnavailableError: HttpStatus(
        503, "The styles' storage is unavailable.", retry_after_s=10
    ),
    StorageFullError: HttpStatus(
        507, "The style storage (disk or Redis) is full; nothing stored was lost.", retry_after_s=60
    ),
    LiveIdleError: HttpStatus(
        408, "A live stream sent nothing for ADAIN_LIVE_IDLE_TIMEOUT_S; it is closed.",
        headers=CLOSE,
    ),
    LiveFailedError: HttpStatus(500, "A live stream broke on an unexpected error; it is logged."),
    LiveBusyError: HttpStatus(
        503, "ADAIN_LIVE_MAX_SESSIONS live streams are open.", retry_after_s=5
    ),
    CapReachedError: HttpStatus(
        429,
        "This key or address holds as many job event streams, queued jobs or live streams "
        "as its cap allows (`detail` names the setting): close one, or retry after "
        "Retry-After seconds.",
        retry_after_s=30,
    ),
    JobFilesUnavailableError: HttpStatus(
        503, "The jobs' object store does not answer; nothing submitted was lost.",
        retry_after_s=5,
    ),
    JobStorageFullError: HttpStatus(
        503,
        "The jobs' storage holds ADAIN_MAX_STORED_JOB_BYTES: retry once older jobs expire "
        "or are deleted.",
        retry_after_s=60,
    ),
}
# A WebSocket closed for an error (the live feed): close code 4000 + the error's HTTP status.
WEBSOCKET_CLOSE_BASE = 4000


def statuses(*classes: type[DomainError]) -> list[HttpStatus]:
    """The table's entries of `classes` (every entry when none are given)."""
    return [HTTP_ERRORS[cls] for cls in classes or HTTP_ERRORS]


# An error's detail may quote the client's input: never more than this many characters of it.
MAX_DETAIL_CHARS = 500


def error_response(
    status_code: int, detail: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    if len(detail) > MAX_DETAIL_CHARS:
        detail = detail[: MAX_DETAIL_CHARS - 3] + "..."
    body = error_body(detail, field[:MAX_DETAIL_CHARS] if field else field)
    return JSONResponse(body, status_code, headers=headers)


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
    headers.update(getattr(error, "response_headers", {}))
    return error_response(status.status_code, error.detail, error.field, headers or None)


def raw_error_response(error: DomainError) -> bytes:
    """The whole HTTP/1.1 response for `error`, for the connection layer (`service.server`),
    which answers before there is a request for the app."""
    response = domain_error_response(error)
    phrase = HTTPStatus(response.status_code).phrase
    lines = [f"HTTP/1.1 {response.status_code} {phrase}".encode()]
    lines += [name + b": " + value for name, value in response.raw_headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + bytes(response.body)


def unexpected_error_response() -> JSONResponse:
    return domain_error_response(UnexpectedError("internal server error"))


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


# Starlette's own HTTPExceptions: the routing's 404 and 405, the form parser's 400.
FRAMEWORK_ERRORS: dict[int, type[DomainError]] = {
    400: MalformedRequestError,
    404: RouteNotFoundError,
}


# The multipart parser's limits, named by the setting that sets them.
FORM_LIMIT_SETTINGS = {"Part exceeded maximum size": "ADAIN_MAX_FIELD_BYTES"}


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    detail = str(exc.detail)
    cls = FRAMEWORK_ERRORS.get(exc.status_code)
    if cls is None:  # a status no route raises; kept as Starlette chose it
        return error_response(exc.status_code, detail, None, exc.headers)
    for start, setting in FORM_LIMIT_SETTINGS.items():
        if detail.startswith(start):
            detail = f"{detail.rstrip('.')} per text field ({setting})"
    return domain_error_response(cls(detail))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, domain_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)
    # Unexpected exceptions become a 500 JSON in `service.logs.RequestContext`, with the log.
