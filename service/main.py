"""The FastAPI app. Run: `uvicorn service.main:create_app --factory` or `adain serve`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from PIL import Image
from redis.asyncio import Redis

from models import images
from models.model import StyleMix
from models.weights import load_model, pick_device
from service import metrics
from service.cache import MemoryStatsCache, RedisStatsCache, StatsCache, encoder_fingerprint
from service.deps import Services
from service.engine import Engine, StylizeJob
from service.errors import install_error_handlers
from service.imaging import ImageLimits, PixelBudget
from service.limits import BodySizeLimit
from service.logs import RequestContext, configure_logging
from service.openapi import install_openapi, operation_id
from service.registry import DiskRegistry, RedisRegistry, StyleRegistry
from service.routes import ops, page, styles, stylize
from service.routes.page import STATIC_DIR
from service.settings import Settings
from service.stylizer import Stylizer

log = logging.getLogger("service.main")

WARMUP_SIZE = 64


async def start_services(settings: Settings) -> Services:
    """Load the networks (errors here stop the server: a replica without weights is useless),
    start the engine, connect the caches and the registry."""
    device = pick_device(settings.device)
    net = await asyncio.to_thread(
        load_model, settings.encoder_path, settings.decoder_path, device, settings.half
    )
    net.tile_size = settings.tile_size
    engine = Engine(
        net, device,
        max_batch_size=settings.batch_size_for(device.type),
        max_wait_ms=settings.max_wait_ms,
        queue_size=settings.queue_size,
        on_batch=metrics.record_batch,
        on_depth=metrics.QUEUE_DEPTH.set,
        on_drop=metrics.JOBS_DROPPED.inc,
    )
    engine.start()
    fingerprint = await asyncio.to_thread(
        encoder_fingerprint, settings.encoder_path, net.dtype, device
    )
    redis: Redis | None = None
    cache: StatsCache
    registry: StyleRegistry
    if settings.redis_url:
        redis = Redis.from_url(settings.redis_url)
        await redis.ping()
        cache = RedisStatsCache(redis, settings.cache_ttl_s)
        registry = RedisRegistry(redis)
    else:
        cache = MemoryStatsCache(settings.cache_size)
        registry = DiskRegistry(settings.styles_dir)
    limits = ImageLimits(settings.max_image_pixels, settings.max_output_pixels)
    budget = PixelBudget(settings.decode_pixel_budget, settings.decode_wait_s)
    stylizer = Stylizer(engine, cache, limits, fingerprint, budget)
    log.info("networks loaded", extra={"device": str(device), "dtype": str(net.dtype),
                                       "redis": bool(redis)})
    return Services(settings, engine, stylizer, registry, limits, redis)


async def warm_up(services: Services) -> None:
    """One real forward pass through the engine (first CUDA calls are slow), then ready."""
    if services.settings.warmup:
        grey = images.prepare(Image.new("RGB", (WARMUP_SIZE, WARMUP_SIZE), (128, 128, 128)))
        try:
            stats = await services.engine.style_statistics(grey)
            job = StylizeJob(grey, StyleMix(stats.value.mean, stats.value.std, torch.ones(1)))
            result = await services.engine.stylize(job)
        except Exception:
            log.exception("warm-up failed; /readyz stays 503")
            return
        log.info("warmed up", extra={"ms": round(result.compute_ms, 1)})
    services.ready = True


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    services = await start_services(app.state.settings)
    app.state.services = services
    warming = asyncio.create_task(warm_up(services))
    try:
        yield
    finally:
        # uvicorn has finished the in-flight requests; the engine finishes its queue.
        await services.engine.close()
        await asyncio.gather(warming, return_exceptions=True)
        if services.redis is not None:
            await services.redis.aclose()
        log.info("stopped")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level)
    # Pillow's own decompression-bomb guard, at our limit (it raises at twice the limit).
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    app = FastAPI(
        title="adain-serve",
        summary="Real-time arbitrary style transfer (AdaIN, Huang & Belongie 2017)",
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    install_error_handlers(app)
    install_openapi(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(RequestContext)  # added last: outermost, so it sees every response
    for module in (stylize, styles, ops, page):
        app.include_router(module.router)
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
