"""The inference engine: one worker thread owns the networks; callers await asyncio futures.

Jobs wait in a bounded queue (full -> `EngineBusyError`, a 503). Stylize jobs whose content tensors
have the same shape are batched: one encoder pass and one decoder pass for the batch, the AdaIN
target and the alpha blend per item. A CUDA out-of-memory error splits the batch in halves and
retries; a single job that still does not fit fails alone with `EngineOutOfMemoryError`.

In-process use (benchmarks, tests), without HTTP:

    engine = Engine(net, max_batch_size=8, max_wait_ms=5, queue_size=32)
    engine.start()
    stats = await engine.style_statistics(style)          # style: (1, 3, H, W) in [0, 1]
    mix = StyleMix(stats.value.mean, stats.value.std, torch.ones(1), alpha=1.0)
    result = await engine.stylize(StylizeJob(content, mix))
    await engine.close()                                  # finishes the queued jobs first
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import torch
from torch import Tensor

from models.model import StyleMix, coral

log = logging.getLogger("service.engine")


class StyleNetwork(Protocol):
    """What the engine needs of `models.model.StyleTransfer`."""

    def style_statistics(self, styles: Tensor) -> tuple[Tensor, Tensor]: ...

    def stylize_batch(self, contents: Tensor, mixes: Sequence[StyleMix]) -> Tensor: ...


@dataclass(frozen=True)
class StyleStats:
    """relu4_1 channel mean and std of one style, (1, C, 1, 1) float32 on the CPU."""

    mean: Tensor
    std: Tensor


@dataclass(frozen=True)
class StylizeJob:
    """One output image: content (1, 3, H, W) in [0, 1] and what it takes from its styles."""

    content: Tensor
    mix: StyleMix


T = TypeVar("T")


@dataclass(frozen=True)
class Timed(Generic[T]):
    value: T
    compute_ms: float  # time the networks spent on the batch this job was part of
    batch_size: int


class EngineBusyError(Exception):
    """The queue is full: the caller should retry later (503 + Retry-After)."""


class EngineClosedError(Exception):
    """The engine is shutting down and takes no new jobs."""


class EngineOutOfMemoryError(Exception):
    """The device ran out of memory for this job even alone."""


@dataclass
class _Job:
    kind: str  # "stylize" or "stats"
    payload: Any
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    submitted: float = field(default_factory=time.perf_counter)

    def batch_key(self) -> tuple[object, ...] | None:
        """Jobs with equal keys can share a batch; None: never batched."""
        if self.kind != "stylize":
            return None
        return tuple(self.payload.content.shape)

    def resolve(self, value: object = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if self.future.done():  # the caller went away (cancelled)
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(value)

        self.loop.call_soon_threadsafe(settle)


_STOP = object()


def cpu_threads() -> int:
    """The cores this process may use (cgroup/affinity aware), not the host's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Engine:
    def __init__(
        self,
        net: StyleNetwork,
        device: torch.device | str = "cpu",
        *,
        max_batch_size: int = 8,
        max_wait_ms: float = 5.0,
        queue_size: int = 32,
        on_batch: Callable[[str, int, float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        self.net = net
        self.device = torch.device(device)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.queue_size = queue_size
        self.on_batch = on_batch  # (job kind, batch size, seconds): for metrics
        self.on_depth = on_depth  # jobs waiting or running: for metrics
        self._queue: queue.Queue[Any] = queue.Queue()
        self._depth = 0
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="adain-engine", daemon=True)

    # --- the asyncio side -------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    async def close(self) -> None:
        """Take no new jobs, finish the queued ones, stop the worker."""
        with self._lock:
            self._closed = True
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)

    @property
    def depth(self) -> int:
        return self._depth

    async def style_statistics(self, style: Tensor, recolour_to: Tensor | None = None
                               ) -> Timed[StyleStats]:
        """Statistics of one style (1, 3, H, W); recoloured to `recolour_to`'s colours first
        (CORAL, for colour preservation) when given."""
        return await self._submit("stats", (style, recolour_to))

    async def stylize(self, job: StylizeJob) -> Timed[Tensor]:
        """The stylized image (1, 3, H, W) in [0, 1], float32 on the CPU."""
        return await self._submit("stylize", job)

    async def _submit(self, kind: str, payload: object) -> Any:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._closed:
                raise EngineClosedError("the server is shutting down")
            if self._depth >= self.queue_size:
                raise EngineBusyError(
                    f"{self._depth} jobs queued (ADAIN_QUEUE_SIZE={self.queue_size})"
                )
            self._depth += 1
            depth = self._depth
        if self.on_depth:
            self.on_depth(depth)
        job = _Job(kind, payload, loop.create_future(), loop)
        self._queue.put(job)
        return await job.future

    # --- the worker thread ------------------------------------------------------------------

    def _run(self) -> None:
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_threads())
        held: deque[_Job] = deque()  # taken from the queue while batching, not batchable then
        with torch.inference_mode():
            while True:
                first = held.popleft() if held else self._queue.get()
                if first is _STOP:
                    if held:  # jobs picked up while batching still get served
                        self._queue.put(_STOP)
                        continue
                    return
                batch = self._collect(first, held)
                self._execute(batch)
                self._finished(len(batch))

    def _collect(self, first: _Job, held: deque[_Job]) -> list[_Job]:
        """`first` plus jobs of the same batch key arriving within max_wait_ms."""
        key = first.batch_key()
        if key is None or self.max_batch_size == 1:
            return [first]
        batch = [first]
        for job in list(held):
            if len(batch) < self.max_batch_size and job.batch_key() == key:
                held.remove(job)
                batch.append(job)
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            # Once the window has passed, only what already waits joins (timeout 0).
            remaining = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=max(remaining, 0.0))
            except queue.Empty:
                break
            if job is not _STOP and job.batch_key() == key:
                batch.append(job)
            else:
                held.append(job)
        return batch

    def _finished(self, count: int) -> None:
        with self._lock:
            self._depth -= count
            depth = self._depth
        if self.on_depth:
            self.on_depth(depth)

    def _execute(self, batch: list[_Job]) -> None:
        start = time.perf_counter()
        try:
            if batch[0].kind == "stylize":
                results: list[Any] = self._stylize_batch([job.payload for job in batch])
            else:
                results = [self._statistics(*batch[0].payload)]
        except torch.cuda.OutOfMemoryError:
            self._release_memory()
            if len(batch) == 1:
                log.warning("out of device memory for one job; it fails alone")
                batch[0].resolve(error=EngineOutOfMemoryError("out of device memory for the image"))
                return
            # Smaller batches may fit: retry each half on its own.
            log.warning("out of device memory for a batch of %d; splitting it", len(batch))
            half = len(batch) // 2
            self._execute(batch[:half])
            self._execute(batch[half:])
            return
        except Exception as exc:  # one bad job must not stop the worker
            log.exception("inference failed")
            for job in batch:
                job.resolve(error=exc)
            return
        seconds = time.perf_counter() - start
        if self.on_batch:
            self.on_batch(batch[0].kind, len(batch), seconds)
        for job, result in zip(batch, results, strict=True):
            job.resolve(Timed(result, seconds * 1000, len(batch)))

    def _release_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _statistics(self, style: Tensor, recolour_to: Tensor | None) -> StyleStats:
        style = style.to(self.device)
        if recolour_to is not None:
            style = coral(style[0], recolour_to.to(self.device)[0])[None]
        mean, std = self.net.style_statistics(style)
        return StyleStats(mean.float().cpu(), std.float().cpu())

    def _stylize_batch(self, jobs: list[StylizeJob]) -> list[Tensor]:
        contents = torch.cat([job.content for job in jobs]).to(self.device)
        out = self.net.stylize_batch(contents, [job.mix for job in jobs])
        return [image[None].cpu() for image in out]
