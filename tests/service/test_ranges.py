"""`service.ranges` leans on Starlette's private Range parser: these checks fail by name when a
Starlette release renames or changes it, and pin what it accepts against a real FileResponse."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import FileResponse
from starlette.routing import Route

from service.ranges import byte_ranges

SIZE = 10


@pytest.mark.parametrize(
    "header",
    ["bytes=0-3", "bytes=5-", "bytes=-4", "bytes=0-1,4-5", "bytes=9-", "bytes=12-", "bytes=x", "y"],
)
def test_it_says_what_file_response_does(header: str, tmp_path: Path) -> None:
    """For each header, `byte_ranges` gives ranges exactly when Starlette answers 206, and
    the bytes Starlette sends for one range are the bytes of the range it gives."""
    file = tmp_path / "data.bin"
    file.write_bytes(bytes(range(SIZE)))
    app = Starlette(routes=[Route("/", lambda request: FileResponse(file))])

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/", headers={"Range": header})

    response = asyncio.run(call())
    assert response.status_code in (206, 416, 400), response.status_code
    ranges = byte_ranges(header, SIZE)
    assert (ranges is not None) is (response.status_code == 206)
    if ranges is not None and len(ranges) == 1:
        start, end = ranges[0]
        assert response.content == bytes(range(SIZE))[start:end]


def test_the_private_parser_is_there() -> None:
    assert callable(getattr(FileResponse, "_parse_range_header", None)), (
        "Starlette no longer has FileResponse._parse_range_header: service/ranges.py needs "
        "another way to check a Range header"
    )
