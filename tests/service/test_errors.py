"""Bad input: a JSON error naming the field and the limit, and the server keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from devkit.images import encode, random_image
from devkit.server import RunningServer
from service.logs import RequestContext
from tests.service.conftest import SHARED_LIMITS

CONTENT = encode(random_image(48, 32, seed=11))
STYLE = encode(random_image(40, 40, seed=12))
SMALL = {"content_size": "32", "style_size": "32"}
MAX_UPLOAD = int(SHARED_LIMITS["ADAIN_MAX_UPLOAD_BYTES"])


def post(server: RunningServer, data: dict[str, str | list[str]] | None = None,
         files: list[tuple[str, tuple[str, bytes]]] | None = None) -> httpx.Response:
    if files is None:
        files = [("content", ("c.png", CONTENT)), ("style", ("s.png", STYLE))]
    return httpx.post(f"{server.url}/stylize", data={**SMALL, **(data or {})}, files=files,
                      timeout=60)


def assert_error(response: httpx.Response, status: int, field: str | None,
                 *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["field"] == field, body
    for word in words:
        assert word in body["detail"], body


@pytest.fixture(autouse=True)
def still_serving(server: RunningServer) -> None:
    """After every test here the same server still stylizes."""
    yield
    assert post(server).status_code == 200


@pytest.mark.parametrize(("data", "field", "words"), [
    ({"alpha": "1.5"}, "alpha", ["less than or equal to 1"]),
    ({"alpha": "-0.1"}, "alpha", ["greater than or equal to 0"]),
    ({"alpha": "nan"}, "alpha", []),
    ({"alpha": "strong"}, "alpha", ["number"]),
    ({"weights": "1,2"}, "weights", ["one weight per style (1)", "got 2"]),
    ({"weights": "a"}, "weights", ["numbers"]),
    ({"weights": "-1"}, "weights", ["non-negative"]),
    ({"quality": "0"}, "quality", []),
    ({"quality": "101"}, "quality", []),
    ({"format": "bmp"}, "format", ["png"]),
    ({"content_size": "-1"}, "content_size", []),
    ({"crop": "maybe"}, "crop", []),
    ({"content_size": "512"}, "content_size", ["768 x 512", SHARED_LIMITS[
        "ADAIN_MAX_OUTPUT_PIXELS"], "ADAIN_MAX_OUTPUT_PIXELS"]),
    ({"style_size": "1000"}, "style_size", ["ADAIN_MAX_OUTPUT_PIXELS"]),
    ({"content_size": "8"}, "content_size", ["12 x 8", "at least 9 pixels"]),
])
def test_bad_values_are_422_naming_the_field(server: RunningServer, data: dict[str, str],
                                             field: str, words: list[str]) -> None:
    assert_error(post(server, data), 422, field, *words)


def test_style_count_must_be_1_to_8(server: RunningServer) -> None:
    assert_error(post(server, files=[("content", ("c.png", CONTENT))]), 422, "style", "0 styles")
    nine = [("style", (f"s{i}.png", STYLE)) for i in range(9)]
    assert_error(post(server, files=[("content", ("c.png", CONTENT)), *nine]), 422, "style",
                 "9 styles", "1 to 8")


def test_masks_of_another_size_or_count(server: RunningServer) -> None:
    two_styles = [("content", ("c.png", CONTENT)), ("style", ("a.png", STYLE)),
                  ("style", ("b.png", STYLE))]
    wrong_size = encode(Image.new("L", (47, 32), 255))
    assert_error(post(server, files=[*two_styles, ("mask", ("m.png", wrong_size))]), 422,
                 "mask[0]", "47 x 32", "48 x 32")
    right = encode(Image.new("L", (48, 32), 255))
    three = [("mask", (f"m{i}.png", right)) for i in range(3)]
    assert_error(post(server, files=[*two_styles, *three]), 422, "mask", "3 masks for 2 styles")


def test_unsupported_images_are_415_naming_the_field(server: RunningServer) -> None:
    gif = encode(random_image(40, 40, seed=1), "GIF")
    truncated = CONTENT[: len(CONTENT) // 2]
    cases = [
        ([("content", ("c.txt", b"not an image")), ("style", ("s.png", STYLE))], "content"),
        ([("content", ("c.png", CONTENT)), ("style", ("s.gif", gif))], "style[0]"),
        ([("content", ("c.png", truncated)), ("style", ("s.png", STYLE))], "content"),
        ([("content", ("c.png", CONTENT)), ("style", ("a.png", STYLE)),
          ("style", ("b.png", b""))], "style[1]"),
    ]
    for files, field in cases:
        assert_error(post(server, files=files), 415, field, field)


def test_too_many_pixels_is_413_before_decoding(server: RunningServer) -> None:
    limit = SHARED_LIMITS["ADAIN_MAX_IMAGE_PIXELS"]
    big = encode(Image.new("RGB", (600, 400)))  # a tiny file, 240 000 pixels once decoded
    assert len(big) < 20_000
    assert_error(post(server, files=[("content", ("c.png", big)), ("style", ("s.png", STYLE))]),
                 413, "content", "600 x 400", limit, "ADAIN_MAX_IMAGE_PIXELS")
    # Far beyond Pillow's own bomb limit (twice ours): refused as well, same answer.
    bomb = encode(Image.new("1", (5000, 5000)))
    assert_error(post(server, files=[("content", ("c.png", CONTENT)), ("style", ("s.png", bomb))]),
                 413, "style[0]", "ADAIN_MAX_IMAGE_PIXELS")
    registered = httpx.post(f"{server.url}/styles", files={"file": ("big.png", big)}, timeout=30)
    assert_error(registered, 413, "file", "600 x 400")


def test_body_larger_than_the_limit_is_413(server: RunningServer) -> None:
    noise = np.random.default_rng(0).bytes(MAX_UPLOAD + 1000)
    declared = post(server, files=[("content", ("c.png", noise)), ("style", ("s.png", STYLE))])
    assert_error(declared, 413, None, str(MAX_UPLOAD), "ADAIN_MAX_UPLOAD_BYTES")

    # A valid multipart body sent chunked, without Content-Length: counted as it streams in.
    form = httpx.Request("POST", server.url, files={"content": ("c.png", noise)})
    body = form.read()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    streamed = httpx.post(f"{server.url}/stylize", content=chunks(), timeout=60,
                          headers={"content-type": form.headers["content-type"]})
    assert "content-length" not in streamed.request.headers
    assert_error(streamed, 413, None, "ADAIN_MAX_UPLOAD_BYTES")
    too_big_style = httpx.post(f"{server.url}/styles", files={"file": ("n.png", noise)},
                               timeout=60)
    assert_error(too_big_style, 413, None, "ADAIN_MAX_UPLOAD_BYTES")


def test_unknown_style_ids_are_404(server: RunningServer) -> None:
    unknown = "0" * 64
    files = [("content", ("c.png", CONTENT))]
    assert_error(post(server, {"style_id": unknown}, files), 404, "style_id", unknown)
    assert_error(post(server, {"style_id": "../../etc/passwd"}, files), 404, "style_id")
    assert_error(httpx.get(f"{server.url}/styles/{unknown}"), 404, "style_id")
    assert_error(httpx.delete(f"{server.url}/styles/{unknown}"), 404, "style_id")


def test_missing_fields_routes_and_methods_are_json(server: RunningServer) -> None:
    assert_error(httpx.post(f"{server.url}/stylize", data=SMALL, timeout=30), 422, "content")
    assert_error(httpx.get(f"{server.url}/no-such-page"), 404, None, "Not Found")
    assert_error(httpx.get(f"{server.url}/stylize"), 405, None)


def test_unexpected_exceptions_become_500_json() -> None:
    """The request middleware answers an exception with JSON and logs it (in-process ASGI)."""
    async def broken(request: Request) -> Response:
        raise RuntimeError("bug")

    app = Starlette(routes=[Route("/broken", broken)], middleware=[Middleware(RequestContext)])

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/broken", headers={"x-request-id": "abc"})

    response = asyncio.run(call())
    assert_error(response, 500, None, "internal server error")
    assert response.headers["x-request-id"] == "abc"
