"""The one table from domain errors to HTTP (`service.errors.HTTP_ERRORS`), through the app's real
handlers in-process: each error class gives its status, `{"detail", "field"}` and Retry-After.
The real server's answers to real bad requests are in test_errors.py and test_hostile.py."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI

import service.main  # noqa: F401  (imports every module that defines a domain error)
from models.errors import DomainError, InvalidInputError
from service.engine import EngineBusyError, EngineClosedError, EngineOutOfMemoryError
from service.errors import HTTP_ERRORS, install_error_handlers, websocket_error
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

# (error, status, Retry-After): the messages and fields are those the code raises.
CASES: list[tuple[DomainError, int, str | None]] = [
    (AuthenticationError("the API key is not valid"), 401, None),
    (PermissionDeniedError("this API key may not do this: an admin key is needed "
                           "(ADAIN_ADMIN_KEYS)"), 403, None),
    (CrossOriginError("requests from the page at 'http://evil.example' are not allowed"),
     403, None),
    (BodyTimeoutError("the request body did not arrive within 60 s (ADAIN_BODY_TIMEOUT_S)"),
     408, None),
    (RateLimitedError("more than 3 requests in a minute (ADAIN_RATE_LIMIT)", 17), 429, "17"),
    (InvalidInputError("got 9 styles; send 1 to 8 (style files and style_ids together)",
                       "style"), 422, None),
    (UnsupportedImageError("content: a GIF image; send PNG, JPEG or WebP", "content"), 415, None),
    (ImageTooLargeError("style[0]: too many pixels; the limit is 200000 pixels "
                        "(ADAIN_MAX_IMAGE_PIXELS)", "style[0]"), 413, None),
    (StyleNotFoundError("style_id[0]: no style with id 'abc'", "style_id"), 404, None),
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
    (LiveIdleError("no message for 30 s (ADAIN_LIVE_IDLE_TIMEOUT_S); the stream is closed"),
     408, None),
    (LiveBusyError("4 live streams are open, the limit of this server "
                   "(ADAIN_LIVE_MAX_SESSIONS); retry later"), 503, "5"),
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
    if status == 408:  # the rest of the body is not read: the connection cannot be reused
        assert response.headers["connection"] == "close"


def test_every_domain_error_class_is_in_the_table() -> None:
    """A new error class without a status would be a 500: the table lists them all."""
    assert all_subclasses(DomainError) == set(HTTP_ERRORS)
    assert {type(error) for error, _, _ in CASES} == set(HTTP_ERRORS)


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
