"""The decode budget and the header read it is taken from, and the PNG encoder, without a
server."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable

import cv2
import numpy as np
import pytest
from PIL import Image

from devkit.images import encode, random_image
from media.imaging import PNG_ROWS_PER_CHUNK, encode_png, header_pixels
from service.imaging import DecodeBudgetError, PixelBudget


@pytest.mark.parametrize(
    "height, width",
    [(1, 1), (2, 3), (PNG_ROWS_PER_CHUNK, 5), (PNG_ROWS_PER_CHUNK + 1, 17), (600, 257)],
)
def test_encode_png_is_lossless_for_two_decoders(height: int, width: int) -> None:
    """Noise, extremes and a smooth gradient (where the filter's arithmetic matters), across
    the encoder's row chunks: Pillow (which checks the chunks' CRCs) and OpenCV's libpng read
    back exactly the pixels."""
    rng = np.random.default_rng(height * 1000 + width)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels[: height // 3] = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
    pixels[-1:, :] = 255
    data = encode_png(pixels)
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "RGB" and image.size == (width, height)
        assert np.array_equal(np.asarray(image), pixels)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(decoded[..., ::-1], pixels)


def test_encode_png_compresses_a_photo_like_pillow() -> None:
    """The fixed filter must not cost much size: within 25% of Pillow's best-effort file on a
    smooth picture (the check fails for an unfiltered or undeflated stream)."""
    y, x = np.mgrid[0:384, 0:512]
    pixels = np.stack([x / 2, y / 1.5, (x + y) / 3.5], axis=-1).astype(np.uint8)
    pixels = np.clip(pixels + np.random.default_rng(1).integers(0, 6, pixels.shape), 0, 255)
    pixels = pixels.astype(np.uint8)
    ours = len(encode_png(pixels))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    assert ours < 1.25 * len(buffer.getvalue())
    assert ours < 0.6 * pixels.nbytes


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


def test_a_canceled_request_keeps_its_share_until_its_decode_ends() -> None:
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
