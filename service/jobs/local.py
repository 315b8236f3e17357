"""The one-machine runner: video jobs run inside the service process, their frames sent through
the engine the process already holds (`service.engine`), one frame at a time. /stylize requests
queue in the same engine, so each waits behind at most the frame in progress, not a whole video.

Jobs left queued or running by the previous process (stopped, or killed) are taken up again at
start, from their last checkpoint. Expired jobs are removed in the background.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from torch import Tensor

from media.clip import ClipSettings
from models.model import StyleMix
from service.engine import Engine, EngineBusyError, EngineClosedError, StylizeItem, Timed
from service.jobs.run import run_job
from service.jobs.signals import JobInterrupted
from service.jobs.store import JobStatus, JobStore

log = logging.getLogger("service.jobs")

T = TypeVar("T")
BUSY_RETRY_S = 0.05  # the engine's queue is full of image requests: they go first


class EngineBackend:
    """`FrameBackend` for a job thread: each call is an item on the service's engine, awaited on
    the service's event loop."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.loop = loop

    def _call(self, submit: Callable[[], Coroutine[Any, Any, Timed[T]]]) -> T:
        while True:
            try:
                return asyncio.run_coroutine_threadsafe(submit(), self.loop).result().value
            except EngineBusyError:
                time.sleep(BUSY_RETRY_S)
            except EngineClosedError:
                raise JobInterrupted from None

    @property
    def models(self) -> list[str]:
        return self.engine.models

    def style_statistics(
        self, style: Tensor, recolour_to: Tensor | None, model: str | None
    ) -> tuple[Tensor, Tensor]:
        stats = self._call(lambda: self.engine.style_statistics(style, recolour_to, model))
        return stats.mean, stats.std

    def stylize(self, content: Tensor, mix: StyleMix, model: str | None) -> Tensor:
        return self._call(lambda: self.engine.stylize(StylizeItem(content, mix, model)))


class LocalRunner:
    def __init__(
        self, store: JobStore, engine: Engine, settings: ClipSettings, concurrency: int = 1
    ) -> None:
        self.store = store
        self.engine = engine
        self.settings = settings
        self.concurrency = concurrency
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        backend = EngineBackend(self.engine, asyncio.get_running_loop())
        unfinished = [r for r in await asyncio.to_thread(self.store.jobs) if not r.status.finished]
        for record in unfinished:
            self._queue.put_nowait(record.id)
        if unfinished:
            log.info("resuming jobs", extra={"jobs": len(unfinished)})
        self._tasks = [asyncio.create_task(self._work(backend)) for _ in range(self.concurrency)]
        self._tasks.append(asyncio.create_task(self._clean()))

    def submit(self, job_id: str) -> None:
        self._queue.put_nowait(job_id)

    async def close(self) -> None:
        """Stop between frames: running jobs checkpoint and stay `running` for the next start."""
        self._stopping = True
        for _ in range(self.concurrency):
            self._queue.put_nowait(None)
        workers, cleaner = self._tasks[:-1], self._tasks[-1:]
        for task in cleaner:
            task.cancel()
        await asyncio.gather(*workers, *cleaner, return_exceptions=True)

    async def _work(self, backend: EngineBackend) -> None:
        while True:
            job_id = await self._queue.get()
            if job_id is None or self._stopping:
                return
            try:
                await asyncio.to_thread(
                    run_job, job_id, self.store, backend, self.settings, lambda: self._stopping
                )
            except Exception:  # a broken job must not stop the runner
                log.exception("job runner error", extra={"job": job_id})

    async def _clean(self) -> None:
        interval = min(max(self.store.ttl_s / 4, 1.0), 600.0)
        while True:
            removed = await asyncio.to_thread(self.store.cleanup)
            if removed:
                log.info("expired jobs removed", extra={"jobs": len(removed)})
            await asyncio.sleep(interval)

    async def cancel(self, job_id: str, wait_s: float = 3.0) -> None:
        """Marks the job canceled; a queued one's files go now, a running one's when its thread
        sees it, between two frames (waited for up to `wait_s`)."""

        def cancel(record: Any) -> None:
            record.status = JobStatus.canceled

        before = await asyncio.to_thread(self.store.get, job_id)
        await asyncio.to_thread(self.store.update, job_id, cancel)
        if before is not None and before.status is JobStatus.queued:
            await asyncio.to_thread(self.store.remove_work, job_id)
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and await asyncio.to_thread(self.store.has_work, job_id):
            await asyncio.sleep(0.05)
