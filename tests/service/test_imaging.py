"""The decode budget and the header read it is taken from, without a server."""

from __future__ import annotations

import asyncio
import time

import pytest

from devkit.images import encode, random_image
from service.imaging import DecodeBudgetError, PixelBudget, header_pixels


def test_header_pixels_reads_the_size_without_decoding() -> None:
    assert header_pixels(encode(random_image(40, 30, seed=1))) == 1200
    assert header_pixels(encode(random_image(40, 30, seed=1), "JPEG")) == 1200
    assert header_pixels(b"not an image") == 0


def test_a_hold_takes_its_share_and_gives_it_back() -> None:
    budget = PixelBudget(1000, wait_s=0)

    async def run() -> None:
        async with budget.hold(600, "content"):
            assert budget.free == 400
            async with budget.hold(400, "style[0]"):
                assert budget.free == 0
        assert budget.free == 1000

    asyncio.run(run())


def test_over_budget_waits_for_a_release() -> None:
    budget = PixelBudget(1000, wait_s=5)
    order: list[str] = []

    async def first() -> None:
        async with budget.hold(800, "content"):
            await asyncio.sleep(0.05)
            order.append("first done")

    async def second() -> None:
        await asyncio.sleep(0.01)
        async with budget.hold(800, "content"):
            order.append("second decoding")

    async def run() -> None:
        await asyncio.gather(first(), second())

    asyncio.run(run())
    assert order == ["first done", "second decoding"]
    assert budget.free == 1000


def test_over_budget_after_the_wait_is_a_temporary_error() -> None:
    budget = PixelBudget(1000, wait_s=0.05)

    async def run() -> float:
        async with budget.hold(800, "content"):
            start = time.perf_counter()
            with pytest.raises(DecodeBudgetError, match="ADAIN_DECODE_PIXEL_BUDGET") as error:
                async with budget.hold(300, "style[0]"):
                    pass
            assert error.value.field == "style[0]"
            return time.perf_counter() - start

    waited = asyncio.run(run())
    assert waited >= 0.04
    assert budget.free == 1000


def test_an_image_larger_than_the_budget_takes_all_of_it_alone() -> None:
    budget = PixelBudget(1000, wait_s=0)

    async def run() -> None:
        async with budget.hold(5000, "content"):
            assert budget.free == 0
            with pytest.raises(DecodeBudgetError):
                async with budget.hold(1, "style[0]"):
                    pass
        async with budget.hold(5000, "content"):
            pass

    asyncio.run(run())
    assert budget.free == 1000
