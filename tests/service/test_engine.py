"""The inference engine in-process: batching, the bounded queue, OOM splitting, draining."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from prometheus_client import REGISTRY
from torch import Tensor

from devkit.images import random_image
from models import images
from models.model import StyleMix
from models.pipeline import Pipeline
from models.weights import load_model
from service import metrics
from service.engine import (
    Engine,
    EngineBusyError,
    EngineClosedError,
    EngineOutOfMemoryError,
    StylizeItem,
    Timed,
)

SLOW_WINDOW_MS = 1000.0  # long enough that jobs submitted together always share the window
# The engine's thread runs torch with its own thread count, and a batch, another CPU (AMX or not)
# or another thread count picks other oneDNN kernels that sum in another order: results agree up
# to float rounding, far below one level of an 8-bit image (1/255 = 4e-3).
FLOAT_ROUNDING = {"rtol": 1e-4, "atol": 1e-4}


@pytest.fixture(scope="module")
def net(reference_weights: tuple[Path, Path]) -> Pipeline:
    return Pipeline(load_model(*reference_weights))


def job_for(net: Pipeline, seed: int, size: tuple[int, int] = (40, 32)) -> StylizeItem:
    content = images.prepare(random_image(*size, seed=seed))
    style = images.prepare(random_image(32, 32, seed=100 + seed))
    with torch.inference_mode():
        mean, std = net.style_statistics(style)
    return StylizeItem(content, StyleMix(mean, std, torch.ones(1), alpha=0.5 + seed / 100))


def expected(net: Pipeline, job: StylizeItem) -> Tensor:
    """The library's stylize path for this one image alone."""
    with torch.inference_mode():
        return net.stylize_batch(job.content, [job.mix])


def assert_result(net: Pipeline, job: StylizeItem, result: Timed[Tensor]) -> None:
    """The library's result, alone or in a batch, up to float rounding."""
    torch.testing.assert_close(result.value, expected(net, job), **FLOAT_ROUNDING)


class OutOfMemoryOnBatches:
    """The one allowed mock (there is no GPU here): the real network, except that stylizing
    more than `max_batch` images, or an image `oom_height` pixels high, raises CUDA's OOM."""

    def __init__(self, net: Pipeline, max_batch: int = 1, oom_height: int | None = None
                 ) -> None:
        self.net = net
        self.max_batch = max_batch
        self.oom_height = oom_height
        self.encoded_batches: list[int] = []

    def stylize_batch(self, contents: Tensor, mixes: Sequence[StyleMix]) -> Tensor:
        if contents.shape[0] > self.max_batch or contents.shape[-2] == self.oom_height:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        self.encoded_batches.append(contents.shape[0])
        return self.net.stylize_batch(contents, mixes)

    def style_statistics(self, styles: Tensor, recolour_to: Tensor | None = None
                         ) -> tuple[Tensor, Tensor]:
        return self.net.style_statistics(styles, recolour_to)


async def run_all(engine: Engine, jobs: list[StylizeItem]) -> list[object]:
    engine.start()
    try:
        return await asyncio.gather(*(engine.stylize(j) for j in jobs), return_exceptions=True)
    finally:
        await engine.close()


def test_same_shapes_share_one_batch_with_per_item_controls(net: Pipeline) -> None:
    jobs = [job_for(net, seed) for seed in range(4)]
    engine = Engine(net, max_batch_size=8, max_wait_ms=SLOW_WINDOW_MS)
    results = asyncio.run(run_all(engine, jobs))
    assert [r.batch_size for r in results] == [4, 4, 4, 4]
    for job, result in zip(jobs, results, strict=True):
        assert_result(net, job, result)
    # Different alphas per item really were applied per item.
    assert not torch.equal(results[0].value, results[1].value)


def test_batches_respect_shape_and_max_batch_size(net: Pipeline) -> None:
    jobs = [job_for(net, s) for s in range(3)] + [job_for(net, 9, size=(48, 32))]
    engine = Engine(net, max_batch_size=2, max_wait_ms=SLOW_WINDOW_MS)
    results = asyncio.run(run_all(engine, jobs))
    assert sorted(r.batch_size for r in results) == [1, 1, 2, 2]
    assert results[3].batch_size == 1  # the other shape is never mixed in
    assert tuple(results[3].value.shape[-2:]) == (32, 48)


def test_out_of_memory_splits_the_batch_and_every_job_succeeds(net: Pipeline) -> None:
    jobs = [job_for(net, seed) for seed in range(4)]
    wrapper = OutOfMemoryOnBatches(net, max_batch=1)
    engine = Engine(wrapper, max_batch_size=8, max_wait_ms=SLOW_WINDOW_MS)
    results = asyncio.run(run_all(engine, jobs))
    assert wrapper.encoded_batches == [1, 1, 1, 1]  # 4 -> 2 + 2 -> 1 + 1 + 1 + 1
    for job, result in zip(jobs, results, strict=True):
        assert_result(net, job, result)


def test_out_of_memory_for_one_image_fails_only_that_request(net: Pipeline) -> None:
    jobs = [job_for(net, 0), job_for(net, 1, size=(40, 64)), job_for(net, 2)]
    wrapper = OutOfMemoryOnBatches(net, max_batch=8, oom_height=64)
    engine = Engine(wrapper, max_batch_size=8, max_wait_ms=SLOW_WINDOW_MS)

    async def scenario() -> tuple[list[object], object]:
        results = await run_all(engine, jobs)
        # A fresh engine on the same wrapper still serves: nothing was left broken.
        again = Engine(wrapper, max_batch_size=8, max_wait_ms=0)
        return results, (await run_all(again, [jobs[0]]))[0]

    results, after = asyncio.run(scenario())
    assert isinstance(results[1], EngineOutOfMemoryError)
    assert results[1].field == "content_size" and "smaller content_size" in str(results[1])
    assert_result(net, jobs[0], results[0])
    assert_result(net, jobs[2], results[2])
    assert_result(net, jobs[0], after)


def test_full_queue_refuses_and_close_drains(net: Pipeline) -> None:
    jobs = [job_for(net, seed) for seed in range(3)]
    engine = Engine(net, max_batch_size=8, max_wait_ms=SLOW_WINDOW_MS, queue_size=2)

    async def scenario() -> tuple[list[object], BaseException | None]:
        engine.start()
        pending = [asyncio.ensure_future(engine.stylize(j)) for j in jobs]
        await asyncio.sleep(0)  # every submission ran up to its await
        await engine.close()  # returns after the admitted jobs finished
        try:
            await engine.stylize(jobs[0])
        except EngineClosedError as exc:
            refused: BaseException | None = exc
        else:
            refused = None
        return await asyncio.gather(*pending, return_exceptions=True), refused

    results, refused = asyncio.run(scenario())
    assert isinstance(results[2], EngineBusyError)
    assert "ADAIN_QUEUE_SIZE=2" in str(results[2])
    assert_result(net, jobs[0], results[0])
    assert_result(net, jobs[1], results[1])
    assert isinstance(refused, EngineClosedError)
    assert engine.depth == 0


def test_a_queue_of_one_takes_jobs_back_to_back(net: Pipeline) -> None:
    """A job is counted done before its caller hears of it: the caller's next job, sent at
    once, finds room in a queue of one (no spurious 503)."""

    class LateBookkeeping(Engine):
        """The worker thread descheduled between computing and counting the job done."""

        def _finished(self, count: int) -> None:
            time.sleep(0.2)
            super()._finished(count)

    jobs = [job_for(net, seed) for seed in range(3)]
    engine = LateBookkeeping(net, queue_size=1)

    async def scenario() -> list[Timed[Tensor]]:
        engine.start()
        try:
            return [await engine.stylize(job) for job in jobs]
        finally:
            await engine.close()

    for job, result in zip(jobs, asyncio.run(scenario()), strict=True):
        assert_result(net, job, result)
    assert engine.depth == 0


def test_style_statistics_with_colour_preservation(net: Pipeline) -> None:
    style = images.prepare(random_image(32, 32, seed=5))
    content = images.prepare(random_image(32, 32, seed=6))
    engine = Engine(net)

    async def scenario() -> tuple[object, object]:
        engine.start()
        try:
            return (await engine.style_statistics(style),
                    await engine.style_statistics(style, recolour_to=content))
        finally:
            await engine.close()

    plain, recoloured = asyncio.run(scenario())
    with torch.inference_mode():
        mean, std = net.style_statistics(style)
    torch.testing.assert_close(plain.value.mean, mean, **FLOAT_ROUNDING)
    torch.testing.assert_close(plain.value.std, std, **FLOAT_ROUNDING)
    assert (recoloured.value.mean - mean).abs().max() > 100 * FLOAT_ROUNDING["atol"]


class Gated:
    """The real network, except that stylizing waits until the test opens the gate, so that a
    job is certainly running while the test queues others; records the content widths it
    stylized, which tell the jobs apart."""

    def __init__(self, net: Pipeline) -> None:
        self.net = net
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.widths: list[int] = []

    def stylize_batch(self, contents: Tensor, mixes: Sequence[StyleMix]) -> Tensor:
        self.entered.set()
        self.gate.wait(60)
        self.widths += [contents.shape[-1]] * contents.shape[0]
        return self.net.stylize_batch(contents, mixes)

    def style_statistics(self, styles: Tensor, recolour_to: Tensor | None = None
                         ) -> tuple[Tensor, Tensor]:
        return self.net.style_statistics(styles, recolour_to)


def dropped_total() -> float:
    return REGISTRY.get_sample_value("adain_jobs_dropped_total") or 0.0


def test_a_job_whose_caller_has_gone_is_dropped_before_it_is_computed(net: Pipeline
                                                                      ) -> None:
    jobs = [job_for(net, seed, size=(40 + 8 * seed, 32)) for seed in range(3)]  # 40, 48, 56
    gated = Gated(net)
    engine = Engine(gated, max_batch_size=1, on_drop=metrics.ITEMS_DROPPED.inc)
    before = dropped_total()

    async def scenario() -> tuple[list[object], bool, list[int]]:
        engine.start()
        try:
            running = asyncio.ensure_future(engine.stylize(jobs[0]))
            await asyncio.to_thread(gated.entered.wait, 60)  # the first job is computing
            gone = asyncio.ensure_future(engine.stylize(jobs[1]))
            last = asyncio.ensure_future(engine.stylize(jobs[2]))
            while engine.depth < 3:  # both submitted: queued behind the first
                await asyncio.sleep(0)
            depths = [engine.depth]
            gone.cancel()  # what the server does to a request whose client disconnected
            await asyncio.wait({gone})
            depths.append(engine.depth)  # its place in the queue is free at once
            gated.gate.set()
            return await asyncio.gather(running, last), gone.cancelled(), depths
        finally:
            gated.gate.set()
            await engine.close()

    (first, last), cancelled, depths = asyncio.run(scenario())
    assert cancelled
    assert gated.widths == [40, 56]  # the network never saw the abandoned job
    assert_result(net, jobs[0], first)
    assert_result(net, jobs[2], last)
    assert depths == [3, 2] and engine.depth == 0
    assert dropped_total() == before + 1
