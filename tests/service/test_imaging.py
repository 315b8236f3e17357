"""The decode budget and the header read it is taken from, without a server."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from devkit.images import encode, random_image
from service.imaging import DecodeBudgetError, PixelBudget, header_pixels


def test_header_pixels_reads_the_size_without_decoding() -> None:
    assert header_pixels(encode(random_image(40, 30, seed=1))) == 1200
    assert header_pixels(encode(random_image(40, 30, seed=1), "JPEG")) == 1200
    assert header_pixels(b"not an image") == 0


def blocked_decode(started: threading.Event, finish: threading.Event) -> Callable[[], str]:
    """A decode that runs until the test lets it finish."""

    def decode() -> str:
        started.set()
        assert finish.wait(10)
        return "decoded"

    return decode


def test_a_decode_takes_its_share_and_gives_it_back() -> None:
    budget = PixelBudget(1000, wait_s=0)

    async def run() -> tuple[int, int]:
        outer = await budget.decode(600, "content", lambda: budget.free)
        return outer, budget.free

    assert asyncio.run(run()) == (400, 1000)


def test_a_failed_decode_gives_its_share_back() -> None:
    budget = PixelBudget(1000, wait_s=0)

    def fails() -> None:
        raise ValueError("corrupt")

    with pytest.raises(ValueError, match="corrupt"):
        asyncio.run(budget.decode(600, "content", fails))
    assert budget.free == 1000


def test_over_budget_waits_for_a_release() -> None:
    budget = PixelBudget(1000, wait_s=5)
    order: list[str] = []

    def first() -> None:
        time.sleep(0.05)
        order.append("first done")

    async def second() -> None:
        await asyncio.sleep(0.01)
        await budget.decode(800, "content", order.append, "second decoding")

    async def run() -> None:
        await asyncio.gather(budget.decode(800, "content", first), second())

    asyncio.run(run())
    assert order == ["first done", "second decoding"]
    assert budget.free == 1000


def test_over_budget_after_the_wait_is_a_temporary_error() -> None:
    budget = PixelBudget(1000, wait_s=0.05)
    started, finish = threading.Event(), threading.Event()

    async def run() -> float:
        holder = asyncio.create_task(
            budget.decode(800, "content", blocked_decode(started, finish))
        )
        await asyncio.to_thread(started.wait, 10)
        start = time.perf_counter()
        with pytest.raises(DecodeBudgetError, match="ADAIN_DECODE_PIXEL_BUDGET") as error:
            await budget.decode(300, "style[0]", time.sleep, 0)
        assert error.value.field == "style[0]"
        waited = time.perf_counter() - start
        finish.set()
        assert await holder == "decoded"
        return waited

    assert asyncio.run(run()) >= 0.04
    assert budget.free == 1000


def test_an_image_larger_than_the_budget_takes_all_of_it_alone() -> None:
    budget = PixelBudget(1000, wait_s=0)

    async def run() -> None:
        assert await budget.decode(5000, "content", lambda: budget.free) == 0
        started, finish = threading.Event(), threading.Event()
        holder = asyncio.create_task(
            budget.decode(5000, "content", blocked_decode(started, finish))
        )
        await asyncio.to_thread(started.wait, 10)
        with pytest.raises(DecodeBudgetError):
            await budget.decode(1, "style[0]", time.sleep, 0)
        finish.set()
        await holder

    asyncio.run(run())
    assert budget.free == 1000


def test_a_cancelled_request_keeps_its_share_until_its_decode_ends() -> None:
    """The decode thread cannot be stopped and still holds the image's memory."""
    budget = PixelBudget(1000, wait_s=0)
    started, finish = threading.Event(), threading.Event()

    async def run() -> tuple[int, int]:
        caller = asyncio.create_task(
            budget.decode(800, "content", blocked_decode(started, finish))
        )
        await asyncio.to_thread(started.wait, 10)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        free_while_decoding = budget.free
        finish.set()
        async with asyncio.timeout(10):
            while budget.free != 1000:
                await asyncio.sleep(0.01)
        return free_while_decoding, budget.free

    assert asyncio.run(run()) == (200, 1000)
