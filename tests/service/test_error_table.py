"""The one table from domain errors to HTTP (`service.errors.HTTP_ERRORS`), through the app's real
handlers in-process: each error class gives its status, `{"detail", "field"}` and Retry-After.
The real server's answers to real bad requests are in test_errors.py and test_hostile.py."""

from __future__ import annotations

import ast
import asyncio

import httpx
import pytest
from fastapi import FastAPI

from devkit import REPO
from media.imaging import ImageTooLargeError, UnsupportedImageError
from media.video import UnsupportedVideoError, VideoTooLargeError
from models.errors import DomainError, InvalidInputError
from models.evaluate import PeerOutputError
from service.caps import CapReachedError
from service.engine import EngineBusyError, EngineClosedError, EngineOutOfMemoryError
from service.errors import (
    HTTP_ERRORS,
    HeadersTooLargeError,
    MalformedRequestError,
    MethodNotAllowedError,
    NotReadyError,
    RangeNotSatisfiableError,
    RequestLineTooLongError,
    RouteNotFoundError,
    TooManyConnectionsError,
    UnexpectedError,
    install_error_handlers,
    websocket_error,
)
from service.forms import UnsupportedFormError
from service.hardening import HostNotAllowedError
from service.idempotency import IdempotencyKeyInUseError, IdempotencyKeyReusedError
from service.imaging import DecodeBudgetError
from service.jobs.batch import BatchItemNotFoundError, BatchTooLargeError
from service.jobs.blobs import JobFilesUnavailableError
from service.jobs.store import JobNotDoneError, JobNotFoundError, JobStorageFullError
from service.limits import BodyTimeoutError, BodyTooLargeError
from service.live import LiveBusyError, LiveFailedError, LiveIdleError
from service.main import create_app  # imports every module that defines a domain error
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
from service.settings import Settings

# (error, status, Retry-After): the messages and fields are those the code raises.
CASES: list[tuple[DomainError, int, str | None]] = [
    (AuthenticationError("the API key is not valid"), 401, None),
    (PermissionDeniedError("this API key may not do this: an admin key is needed "
                           "(ADAIN_ADMIN_KEYS)"), 403, None),
    (CrossOriginError("requests from the page at 'http://evil.example' are not allowed"),
     403, None),
    (BodyTimeoutError("the request body did not arrive within 60 s (ADAIN_BODY_TIMEOUT_S)"),
     408, None),
    (BodyTooLargeError("request body larger than the limit of 1048576 bytes "
                       "(ADAIN_MAX_UPLOAD_BYTES)"), 413, None),
    (MalformedRequestError("There was an error parsing the body"), 400, None),
    (RouteNotFoundError("Not Found"), 404, None),
    (MethodNotAllowedError("Method Not Allowed", ["POST", "GET"]), 405, None),
    (UnexpectedError("internal server error"), 500, None),
    (UnsupportedVideoError("video: not a video FFmpeg can read", "video"), 415, None),
    (VideoTooLargeError("video: 9000 frames; the limit is 3000 (ADAIN_MAX_VIDEO_FRAMES)",
                        "video"), 413, None),
    (JobNotFoundError("job_id: no job with id 'abc'", "job_id"), 404, None),
    (BatchTooLargeError("content: 501 images; the limit is 500 per batch job "
                        "(ADAIN_MAX_BATCH_ITEMS)", "content"), 413, None),
    (BatchItemNotFoundError("item: no item '9': an index from 0 to 3 or an output name of the "
                            "manifest (GET /jobs/{id}/items)", "item"), 404, None),
    (JobNotDoneError("job_id: job abc is running; the result is there once it has succeeded",
                     "job_id"), 409, None),
    (RangeNotSatisfiableError("Range 'bytes=9-' does not fit the file of 4 bytes", 4), 416,
     None),
    (HostNotAllowedError("2 Host headers; send one"), 400, None),
    (RequestLineTooLongError("the request line is longer than 8192 bytes "
                             "(ADAIN_MAX_REQUEST_LINE_BYTES)"), 414, None),
    (HeadersTooLargeError("the request's headers are larger than 32768 bytes "
                          "(ADAIN_MAX_HEADER_BYTES)"), 431, None),
    (NotReadyError("the networks are still loading or warming up"), 503, "1"),
    (TooManyConnectionsError("the server holds its limit of connections and requests "
                             "(ADAIN_MAX_CONNECTIONS); retry shortly"), 503, "1"),
    (RateLimitedError("more than 3 requests in a minute (ADAIN_RATE_LIMIT)", 17), 429, "17"),
    (InvalidInputError("got 9 styles; send 1 to 8 (style files and style_ids together)",
                       "style"), 422, None),
    (UnsupportedImageError("content: a GIF image; send PNG, JPEG or WebP", "content"), 415, None),
    (ImageTooLargeError("style[0]: too many pixels; the limit is 200000 pixels "
                        "(ADAIN_MAX_IMAGE_PIXELS)", "style[0]"), 413, None),
    (StyleNotFoundError("style_id[0]: no style with id 'abc'", "style_id"), 404, None),
    (NameTakenError("name 'candy' is taken by another style (id 0123456789ab...): choose "
                    "another name, or use that style", "name"), 409, None),
    (AmbiguousNameError("2 styles of other owners are named 'wave': use the id of the one you "
                        "mean (GET /styles)", "style_id"), 422, None),
    (UnsupportedFormError("this endpoint takes multipart/form-data (curl -F field=value -F "
                          "file=@path), got a body of type application/json"), 415, None),
    (EngineBusyError("server busy: 2 jobs queued (ADAIN_QUEUE_SIZE=2); retry shortly"), 503, "1"),
    (DecodeBudgetError("content: server busy decoding other uploads (900000 of 1000000 "
                       "pixels, ADAIN_DECODE_PIXEL_BUDGET); retry shortly", "content"), 503, "1"),
    (EngineClosedError("the server is shutting down"), 503, "5"),
    (EngineOutOfMemoryError("out of device memory for the image; retry later or send a "
                            "smaller content_size", "content_size"), 503, "5"),
    (RedisUnavailableError("the style registry is unavailable: Redis does not answer "
                           "(ConnectionError); retry shortly"), 503, "2"),
    (StorageUnavailableError("the style registry cannot list the styles: Not a directory "
                             "(ADAIN_STYLES_DIR); retry later"), 503, "10"),
    (StorageFullError("the style registry cannot store the style: its disk is full "
                      "(ADAIN_STYLES_DIR)"), 507, "60"),
    (PeerOutputError("peer microast has no output for a.jpg x b.jpg"), 422, None),
    (LiveFailedError("internal server error"), 500, None),
    (LiveIdleError("no message for 30 s (ADAIN_LIVE_IDLE_TIMEOUT_S); the stream is closed"),
     408, None),
    (LiveBusyError("4 live streams are open, the limit of this server "
                   "(ADAIN_LIVE_MAX_SESSIONS); retry later"), 503, "5"),
    (CapReachedError("8 job event streams of this caller are open, the limit "
                     "(ADAIN_MAX_EVENT_STREAMS_PER_KEY); close one or retry later", 5), 429, "5"),
    (JobStorageFullError("the jobs' storage would hold 30 bytes with this upload, over the "
                         "limit of 20 (ADAIN_MAX_STORED_JOB_BYTES); retry once older jobs "
                         "expire"), 503, "60"),
    (JobFilesUnavailableError("the jobs' object store does not answer "
                              "(EndpointConnectionError); try again shortly"), 503, "5"),
    (IdempotencyKeyReusedError("Idempotency-Key: this key was used with another request body; "
                               "send a new key for a new request", "Idempotency-Key"), 422, None),
    (IdempotencyKeyInUseError("Idempotency-Key: the first request with this key is still being "
                              "processed; retry shortly to get its answer", "Idempotency-Key"),
     409, None),
    (AlreadyRegisteredError("name: this image is registered already as 'harbour' (id 0a...), "
                            "the name it keeps; use that name or the id instead of 'quay'",
                            "name"), 409, None),
]


def all_subclasses(cls: type[DomainError]) -> set[type[DomainError]]:
    direct = set(cls.__subclasses__())
    return direct.union(*(all_subclasses(sub) for sub in direct))


def answer(error: DomainError) -> httpx.Response:
    """What an app with the service's error handlers answers when a route raises `error`."""
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/fail")
    async def fail() -> None:
        raise error

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/fail")

    return asyncio.run(call())


@pytest.mark.parametrize(("error", "status", "retry_after"), CASES,
                         ids=[type(case[0]).__name__ for case in CASES])
def test_each_domain_error_has_its_status_body_and_retry_after(
    error: DomainError, status: int, retry_after: str | None
) -> None:
    response = answer(error)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": error.detail, "field": error.field}
    assert response.headers.get("retry-after") == retry_after
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    if status in (408, 413, 414, 431) and error.field is None:  # the rest is not read
        assert response.headers["connection"] == "close"
    if status == 405:
        assert response.headers["allow"] == "GET, POST"
    if status == 416:
        assert response.headers["content-range"] == "bytes */4"


def test_every_domain_error_class_is_in_the_table() -> None:
    """A new error class without a status would be a 500: the table lists them all."""
    assert all_subclasses(DomainError) == set(HTTP_ERRORS)
    assert {type(error) for error, _, _ in CASES} == set(HTTP_ERRORS)


def test_no_module_but_service_errors_builds_an_error_body() -> None:
    """Every error body and status comes from the table: no other module builds a JSON answer
    (JSONResponse, `error_response`, a dict with `detail` and `field` keys)."""
    offenders = set()
    for path in (REPO / "service").rglob("*.py"):
        if path == REPO / "service" / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", None)
            keys = node.keys if isinstance(node, ast.Dict) else []
            names = {key.value for key in keys if isinstance(key, ast.Constant)}
            if name in ("JSONResponse", "error_response") or {"detail", "field"} <= names:
                offenders.add(f"{path.relative_to(REPO)}:{node.lineno}")  # type: ignore[attr-defined]
    assert not offenders


def test_the_documented_error_statuses_come_from_the_table() -> None:
    """Each error status in /openapi.json is a table status, described by the meanings of the
    table's classes with that status."""
    app = create_app(Settings(warmup=False))
    meanings = {entry.status_code: set() for entry in HTTP_ERRORS.values()}
    for entry in HTTP_ERRORS.values():
        meanings[entry.status_code].add(entry.meaning)
    documented = 0
    for item in app.openapi()["paths"].values():
        for operation in item.values():
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                documented += 1
                described = response["description"]
                assert int(status) in meanings, status
                assert any(meaning in described for meaning in meanings[int(status)])
                leftover = described
                for meaning in meanings[int(status)]:
                    leftover = leftover.replace(meaning, "")
                assert not leftover.strip(), (status, leftover)
                retries = any(e.retry_after_s for e in HTTP_ERRORS.values()
                              if e.status_code == int(status) and e.meaning in described)
                assert ("Retry-After" in response.get("headers", {})) == retries
    assert documented > 10


@pytest.mark.parametrize(("error", "status", "retry_after"), CASES,
                         ids=[type(case[0]).__name__ for case in CASES])
def test_each_domain_error_on_a_websocket(
    error: DomainError, status: int, retry_after: str | None
) -> None:
    """The live feed's error message: the HTTP body, the status and the retry hint; the
    close code 4000 + the status."""
    message, close_code = websocket_error(error)
    expected: dict[str, object] = {"detail": error.detail, "field": error.field, "status": status}
    if retry_after is not None:
        expected["retry_after_s"] = int(retry_after)
    assert message == expected
    assert close_code == 4000 + status
