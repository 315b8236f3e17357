"""The inference engine: one worker thread owns the networks; callers await asyncio futures.

Work items (one image to stylize, or one style's statistics; not the video jobs of
`service.jobs`) wait in a bounded queue (full -> `EngineBusyError`, a 503). Stylize items whose
content tensors have the same shape are batched into one `Pipeline.stylize_batch` call: one
encoder pass and one decoder pass for the batch, each item with its own styles and controls.
A CUDA out-of-memory error splits the batch in halves and retries; a single item that still does
not fit fails alone with `EngineOutOfMemoryError`. An item whose caller has gone (its awaiting
task was canceled: the client disconnected, the server gave up on it) is dropped before it is
computed, and its place in the queue is free at once.

In-process use (benchmarks, tests), without HTTP:

    engine = Engine(pipeline, max_batch_size=8, max_wait_ms=5, queue_size=32)
    engine.start()
    stats = await engine.style_statistics(style)          # style: (1, 3, H, W) in [0, 1]
    mix = StyleMix(stats.value.mean, stats.value.std, torch.ones(1), alpha=1.0)
    result = await engine.stylize(StylizeItem(content, mix))
    await engine.close()                                  # finishes the queued items first
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import torch
from torch import Tensor

from models.errors import DomainError
from models.model import StyleMix

# The defaults of ADAIN_MAX_BATCH_SIZE (on CUDA; 1 on CPU), ADAIN_MAX_WAIT_MS, ADAIN_QUEUE_SIZE.
CUDA_BATCH_SIZE = 8
MAX_WAIT_MS = 5.0
QUEUE_SIZE = 32

log = logging.getLogger("service.engine")


class StyleNetwork(Protocol):
    """What the engine needs of `models.pipeline.Pipeline`."""

    def style_statistics(
        self, styles: Tensor, recolour_to: Tensor | None = None
    ) -> tuple[Tensor, Tensor]: ...

    def stylize_batch(self, contents: Tensor, mixes: Sequence[StyleMix]) -> Tensor: ...


@dataclass(frozen=True)
class StyleStats:
    """relu4_1 channel mean and std of one style, (1, C, 1, 1) float32 on the CPU."""

    mean: Tensor
    std: Tensor


@dataclass(frozen=True)
class StylizeItem:
    """One output image: content (1, 3, H, W) in [0, 1] and what it takes from its styles."""

    kind: ClassVar[str] = "stylize"
    content: Tensor
    mix: StyleMix
    model: str | None = None  # one of the engine's networks by name; None: its default


@dataclass(frozen=True)
class StatisticsItem:
    """One style's statistics: style (1, 3, H, W) in [0, 1], recoloured to `recolour_to`'s
    colours first (CORAL, for colour preservation) when that is given."""

    kind: ClassVar[str] = "stats"
    style: Tensor
    recolour_to: Tensor | None = None
    model: str | None = None  # as StylizeItem's: each network has its own statistics


Item = StylizeItem | StatisticsItem
R = TypeVar("R")


@dataclass(frozen=True)
class Timed(Generic[R]):
    value: R
    compute_ms: float  # time the networks spent on the batch this item was part of
    batch_size: int


class EngineBusyError(DomainError):
    """The queue is full: the caller should retry shortly."""


class EngineClosedError(DomainError):
    """The engine is shutting down and takes no new items."""


class EngineOutOfMemoryError(DomainError):
    """The device ran out of memory for this item even alone."""


@dataclass(eq=False)
class _Entry(Generic[R]):
    """An item in the queue and the future its caller awaits.

    `claimed` (the worker took it to compute) and `abandoned` (its caller went away first) are
    set under the engine's lock, so that exactly one of them happens.
    """

    item: Item
    future: asyncio.Future[Timed[R]]
    loop: asyncio.AbstractEventLoop
    claimed: bool = False
    abandoned: bool = False

    def batch_key(self) -> tuple[object, ...] | None:
        """Items with equal keys can share a batch (the same network, the same shape); None:
        never batched."""
        if isinstance(self.item, StylizeItem):
            return (self.item.model, *self.item.content.shape)
        return None

    def settle(self, outcome: Timed[R] | BaseException) -> None:
        """Hand the caller its result or its error, on its event loop."""
        settle = (self.future.set_exception if isinstance(outcome, BaseException)
                  else self.future.set_result)
        self.loop.call_soon_threadsafe(self._unless_gone, settle, outcome)

    def _unless_gone(self, settle: Callable[[Any], None], outcome: object) -> None:
        """On the loop: a caller that went away meanwhile (canceled) is owed nothing."""
        if not self.future.done():
            settle(outcome)



def cpu_threads() -> int:
    """The cores this process may use (cgroup/affinity aware), not the host's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Engine:
    """`net`: one network, or several by name (the service's models, `ADAIN_MODELS`): one
    worker owns them all, so that they never compete for the cores; an item names its network
    (`StylizeItem.model`), None meaning the first."""

    def __init__(
        self,
        net: StyleNetwork | Mapping[str, StyleNetwork],
        device: torch.device | str = "cpu",
        *,
        max_batch_size: int = CUDA_BATCH_SIZE,
        max_wait_ms: float = MAX_WAIT_MS,
        queue_size: int = QUEUE_SIZE,
        on_batch: Callable[[str, int, float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.nets = dict(net) if isinstance(net, Mapping) else {"default": net}
        self.default_model = next(iter(self.nets))
        self.device = torch.device(device)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.queue_size = queue_size
        self.on_batch = on_batch  # (item kind, batch size, seconds): for metrics
        self.on_depth = on_depth  # items waiting or running: for metrics
        self.on_drop = on_drop  # items dropped because their caller had gone: for metrics
        # None is the stop signal `close` queues: the items before it are served first.
        self._queue: queue.Queue[_Entry[Any] | None] = queue.Queue()
        self._depth = 0
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="adain-engine", daemon=True)

    # --- the asyncio side -------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    async def close(self) -> None:
        """Take no new items, finish the queued ones, stop the worker."""
        with self._lock:
            self._closed = True
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)

    @property
    def depth(self) -> int:
        return self._depth

    async def style_statistics(self, style: Tensor, recolour_to: Tensor | None = None,
                               model: str | None = None) -> Timed[StyleStats]:
        """Statistics of one style (1, 3, H, W); see `StatisticsItem`."""
        return await self._submit(StatisticsItem(style, recolour_to, model))

    async def stylize(self, item: StylizeItem) -> Timed[Tensor]:
        """The stylized image (1, 3, H, W) in [0, 1], float32 on the CPU."""
        return await self._submit(item)

    async def _submit(self, item: Item) -> Timed[Any]:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._closed:
                raise EngineClosedError("the server is shutting down")
            if self._depth >= self.queue_size:
                raise EngineBusyError(
                    f"server busy: {self._depth} jobs queued (ADAIN_QUEUE_SIZE="
                    f"{self.queue_size}); retry shortly"
                )
            self._depth += 1
            depth = self._depth
        self._report_depth(depth)
        entry: _Entry[Any] = _Entry(item, loop.create_future(), loop)
        entry.future.add_done_callback(lambda future: self._abandon(entry, future))
        self._queue.put(entry)
        return await entry.future

    def _abandon(self, entry: _Entry[Any], future: asyncio.Future[Timed[Any]]) -> None:
        """On the loop, when the future is done: a canceled one that the worker has not taken
        yet leaves the queue's count now; the worker drops it when it comes to it."""
        if not future.cancelled():
            return
        with self._lock:
            if entry.claimed:  # being computed: the result is thrown away
                return
            entry.abandoned = True
            self._depth -= 1
            depth = self._depth
        self._report_depth(depth)

    def _report_depth(self, depth: int) -> None:
        if self.on_depth:
            self.on_depth(depth)

    # --- the worker thread ------------------------------------------------------------------

    def _run(self) -> None:
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_threads())
        held: deque[_Entry[Any] | None] = deque()  # taken while batching, another batch key
        with torch.inference_mode():
            while True:
                first = held.popleft() if held else self._queue.get()
                if first is None:
                    if held:  # items picked up while batching still get served
                        self._queue.put(None)
                        continue
                    return
                batch = self._claim(self._collect(first, held))
                if batch:
                    outcomes = self._execute(batch)
                    # Counted done before the callers hear of it: a caller that sends its next
                    # item at once finds the queue's room already back.
                    self._finished(len(batch))
                    for entry, outcome in outcomes:
                        entry.settle(outcome)

    def _collect(self, first: _Entry[Any], held: deque[_Entry[Any] | None]) -> list[_Entry[Any]]:
        """`first` plus items of the same batch key arriving within max_wait_ms."""
        key = first.batch_key()
        if key is None or self.max_batch_size == 1:
            return [first]
        batch = [first]
        for entry in list(held):
            if len(batch) < self.max_batch_size and entry is not None and entry.batch_key() == key:
                held.remove(entry)
                batch.append(entry)
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            # Once the window has passed, only what already waits joins (timeout 0).
            remaining = deadline - time.perf_counter()
            try:
                entry = self._queue.get(timeout=max(remaining, 0.0))
            except queue.Empty:
                break
            if entry is not None and entry.batch_key() == key:
                batch.append(entry)
            else:
                held.append(entry)
        return batch

    def _claim(self, batch: list[_Entry[Any]]) -> list[_Entry[Any]]:
        """The entries whose callers still wait, now the worker's; the others are dropped."""
        with self._lock:
            live = [entry for entry in batch if not entry.abandoned]
            for entry in live:
                entry.claimed = True
        dropped = len(batch) - len(live)
        if dropped:
            # The log lines keep their published wording ("job"), as the metrics their names.
            log.info("dropped %d queued job(s): the caller has gone", dropped,
                     extra={"dropped": dropped, "kind": batch[0].item.kind})
            if self.on_drop:
                self.on_drop(dropped)
        return live

    def _finished(self, count: int) -> None:
        with self._lock:
            self._depth -= count
            depth = self._depth
        self._report_depth(depth)

    def _execute(
        self, batch: list[_Entry[Any]]
    ) -> list[tuple[_Entry[Any], Timed[Any] | BaseException]]:
        """Each entry with its result or its error; nothing is handed to the callers here."""
        start = time.perf_counter()
        try:
            results = self._compute([entry.item for entry in batch])
        except torch.cuda.OutOfMemoryError:
            self._release_memory()
            if len(batch) == 1:
                log.warning("out of device memory for one job; it fails alone")
                return [(batch[0], EngineOutOfMemoryError(
                    "out of device memory for the image; retry later or send a smaller "
                    "content_size", "content_size"))]
            # Smaller batches may fit: retry each half on its own.
            log.warning("out of device memory for a batch of %d; splitting it", len(batch))
            half = len(batch) // 2
            return self._execute(batch[:half]) + self._execute(batch[half:])
        except Exception as exc:  # one bad item must not stop the worker
            log.exception("inference failed")
            return [(entry, exc) for entry in batch]
        seconds = time.perf_counter() - start
        if self.on_batch:
            self.on_batch(batch[0].item.kind, len(batch), seconds)
        return [(entry, Timed(result, seconds * 1000, len(batch)))
                for entry, result in zip(batch, results, strict=True)]

    def _compute(self, items: list[Item]) -> list[object]:
        """One result per item: a batch of stylize items, or one statistics item."""
        if isinstance(items[0], StatisticsItem):
            return [self._statistics(items[0])]
        stylize_items = [item for item in items if isinstance(item, StylizeItem)]
        # One item (every one on CPU): its own tensor, not a copy (an 8K content is hundreds of MB).
        contents = (
            torch.cat([item.content for item in stylize_items]) if len(stylize_items) > 1
            else stylize_items[0].content
        ).to(self.device)
        net = self.network(stylize_items[0].model)
        out = net.stylize_batch(contents, [item.mix for item in stylize_items])
        return [image[None].cpu() for image in out]

    def network(self, model: str | None) -> StyleNetwork:
        """The network an item names (the route has checked the name: see `models`)."""
        return self.nets[model or self.default_model]

    @property
    def models(self) -> list[str]:
        return list(self.nets)

    def _release_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _statistics(self, item: StatisticsItem) -> StyleStats:
        recolour_to = None if item.recolour_to is None else item.recolour_to.to(self.device)
        net = self.network(item.model)
        mean, std = net.style_statistics(item.style.to(self.device), recolour_to)
        return StyleStats(mean.float().cpu(), std.float().cpu())
