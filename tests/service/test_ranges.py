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

from service.ranges import serves_range

SIZE = 10


@pytest.mark.parametrize(
    "header",
    ["bytes=0-3", "bytes=5-", "bytes=-4", "bytes=0-1,4-5", "bytes=9-", "bytes=12-", "bytes=x", "y"],
)
def test_it_says_what_file_response_does(header: str, tmp_path: Path) -> None:
    """For each header, `serves_range` is true exactly when Starlette answers 206."""
    file = tmp_path / "data.bin"
    file.write_bytes(bytes(range(SIZE)))
    app = Starlette(routes=[Route("/", lambda request: FileResponse(file))])

    async def call() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (await client.get("/", headers={"Range": header})).status_code

    status = asyncio.run(call())
    assert status in (206, 416, 400), status
    assert serves_range(header, SIZE) is (status == 206)


def test_the_private_parser_is_there() -> None:
    assert callable(getattr(FileResponse, "_parse_range_header", None)), (
        "Starlette no longer has FileResponse._parse_range_header: service/ranges.py needs "
        "another way to check a Range header"
    )
