"""The service's share of decoding: uploads decoded at once across requests are bounded by a
pixel budget (ADAIN_DECODE_PIXEL_BUDGET), in the thread pool. The checks themselves are
`media.imaging`'s."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from starlette.concurrency import run_in_threadpool

from models.errors import DomainError

T = TypeVar("T")


class DecodeBudgetError(DomainError):
    """Decoding the upload now would exceed ADAIN_DECODE_PIXEL_BUDGET: retry shortly."""


class PixelBudget:
    """Pixels of uploads being decoded at once, across requests: each decode (in the thread
    pool, outside the engine's queue) takes a share of it from the header before it starts.

    A request that finds too little free waits up to `wait_s`, then fails with
    `DecodeBudgetError` (503). One image larger than the whole budget takes all of it, alone.
    Used from the event loop only.
    """

    def __init__(self, pixels: int, wait_s: float) -> None:
        self.total = pixels
        self.free = pixels
        self.wait_s = wait_s
        self._released = asyncio.Event()

    async def decode(self, pixels: int, field: str, function: Callable[..., T], *args: object) -> T:
        """`function(*args)` in the thread pool while holding `pixels` of the budget."""
        share = await self._take(min(pixels, self.total), field)
        thread = asyncio.ensure_future(run_in_threadpool(function, *args))

        def finished(task: asyncio.Future[T]) -> None:
            self.free += share
            self._released.set()
            if not task.cancelled():
                task.exception()  # a canceled caller no longer hears of it: marked as seen

        # A canceled request stops waiting, but its decode runs on in its thread and keeps its
        # memory until it ends: the share goes back then, not when the caller leaves.
        thread.add_done_callback(finished)
        return await asyncio.shield(thread)

    async def _take(self, share: int, field: str) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while self.free < share:
            self._released.clear()
            try:
                await asyncio.wait_for(self._released.wait(), deadline - loop.time())
            except TimeoutError:
                raise DecodeBudgetError(
                    f"{field}: server busy decoding other uploads ({self.total - self.free} of "
                    f"{self.total} pixels, ADAIN_DECODE_PIXEL_BUDGET); retry shortly",
                    field,
                ) from None
        self.free -= share
        return share
