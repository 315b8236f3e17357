"""The FastAPI app. Run: `uvicorn service.main:create_app --factory` or `adain serve`."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from PIL import Image
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from models import images
from models.config import ModelName
from models.model import StyleMix
from models.pipeline import build_pipeline
from service import metrics
from service.cache import (
    MemoryStatsCache,
    RedisStatsCache,
    StatsCache,
    encoder_fingerprint,
    lite_fingerprint,
)
from service.caps import OpenCounts
from service.deps import Services
from service.engine import Engine, StylizeItem
from service.errors import install_error_handlers
from service.gallery import register_presets
from service.hardening import AllowedHosts, HostGuard, SecurityHeaders
from service.idempotency import MemoryIdempotencyStore, RedisIdempotencyStore
from service.imaging import PixelBudget
from service.jobs.local import LocalRunner
from service.jobs.store import job_store
from service.limits import BodySizeLimit
from service.live import LiveSessions
from service.logs import RequestContext, configure_logging
from service.openapi import install_openapi, operation_id
from service.registry import DiskRegistry, RedisRegistry, StyleRegistry
from service.routes import docs, jobs, live, ops, page, styles, stylize
from service.routes.page import STATIC_DIR
from service.security import Keys, OriginGuard, RateLimiter
from service.settings import Settings
from service.stylizer import Stylizer
from service.webhooks import WebhookSender

log = logging.getLogger("service.main")

# (width, height) of the warm-up passes. torch.compile's dynamic shapes still compile one graph
# for small inputs and one for large (a guard on the convolutions' input size, docs/benchmarks.md):
# both are paid here, before /readyz turns 200; only the tiniest images compile later.
WARMUP_SIZES = ((128, 96), (64, 48))
# The response headers other origins' pages may read (CORS).
EXPOSED_HEADERS = ("X-Style-Cache", "X-Inference-Time-Ms", "X-Batch-Size", "Server-Timing",
                   "Retry-After", "X-Request-ID", "X-Adain-Model")
# A stalled Redis fails a call within 2 s (503 for the registry, a skipped cache) instead of
# the client's defaults (5 s timeouts, 10 retries); one retry reconnects a pooled connection
# that a Redis restart has closed.
REDIS_TIMEOUT_S = 1.0
REDIS_RETRIES = 1


def connect_redis(url: str) -> Redis:
    """A client that reconnects by itself: a Redis restarted or back from an outage is used
    again without restarting the service."""
    return Redis.from_url(
        url,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), REDIS_RETRIES),
    )


async def start_services(settings: Settings) -> Services:
    """Load the networks (errors here stop the server: a replica without weights is useless),
    start the engine, connect the caches and the registry (an unreachable Redis or styles
    folder does not: /readyz says 503 until Redis answers, the registry 503 until its store
    does)."""
    pipelines = {
        model.value: await asyncio.to_thread(build_pipeline, settings.pipeline_config(model))
        for model in settings.model_list  # the default first: the engine's default
    }
    pipeline = pipelines[settings.model.value]
    device = pipeline.device
    engine = Engine(
        pipelines, device,
        max_batch_size=settings.batch_size_for(device.type),
        max_wait_ms=settings.max_wait_ms,
        queue_size=settings.queue_size,
        on_batch=metrics.record_batch,
        on_depth=metrics.QUEUE_DEPTH.set,
        on_drop=metrics.ITEMS_DROPPED.inc,
    )
    engine.start()
    fingerprints = {
        model: await asyncio.to_thread(
            lite_fingerprint if model == ModelName.lite else encoder_fingerprint,
            settings.lite_path if model == ModelName.lite else settings.encoder_path,
            pipelines[model].dtype, device,
        )
        for model in pipelines
    }
    redis: Redis | None = None
    cache: StatsCache
    registry: StyleRegistry
    if settings.redis_url:
        redis = connect_redis(settings.redis_url)
        try:
            await redis.ping()
        except (RedisError, OSError) as exc:
            log.warning(
                "redis unreachable at start; /readyz is 503 until it answers",
                extra={"error": repr(exc)},
            )
        cache = RedisStatsCache(redis, settings.cache_ttl_s)
        registry = RedisRegistry(redis)
    else:
        cache = MemoryStatsCache(settings.cache_size)
        registry = DiskRegistry(settings.styles_dir)
    limits = settings.image_limits()
    budget = PixelBudget(settings.decode_pixel_budget, settings.decode_wait_s)
    stylizer = Stylizer(engine, cache, limits, fingerprints, budget)
    log.info("networks loaded", extra={"device": str(device), "dtype": str(pipeline.dtype),
                                       "compiled": pipeline.compiled, "redis": bool(redis),
                                       "models": list(pipelines), "default": settings.model})
    rate_limiter = RateLimiter(settings.rate_limit, redis)
    idempotency = MemoryIdempotencyStore() if redis is None else RedisIdempotencyStore(redis)
    jobs = local_jobs(settings, engine)
    webhooks = (
        WebhookSender(jobs.store, settings.webhook_secret, settings.webhook_allow_private,
                      settings.webhook_retry_s, settings.webhook_retry_for_s)
        if settings.webhook_secret else None
    )
    return Services(settings, engine, stylizer, registry, limits, redis, rate_limiter,
                    jobs, idempotency, webhooks)


def local_jobs(settings: Settings, engine: Engine) -> LocalRunner:
    """Video jobs in this process, through its engine, in the jobs' store; with Redis, handed
    to the workers' queue (docs/jobs.md)."""
    store = job_store(settings)
    job_settings = settings.clip_settings()
    if settings.redis_url:
        from service.jobs.queue import QueueRunner
        from service.jobs.worker import queue_config

        return QueueRunner(store, engine, job_settings, queue_config(settings),
                           settings.serve_runs_jobs)
    return LocalRunner(store, engine, job_settings)


async def warm_up(services: Services) -> None:
    """Real forward passes through the engine (first CUDA calls are slow; `torch.compile`
    compiles then), then ready."""
    if services.settings.warmup:
        start = time.perf_counter()
        try:
            for size, model in itertools.product(WARMUP_SIZES, services.engine.models):
                grey = images.prepare(Image.new("RGB", size, (128, 128, 128)))
                stats = await services.engine.style_statistics(grey, model=model)
                mix = StyleMix(stats.value.mean, stats.value.std, torch.ones(1))
                await services.engine.stylize(StylizeItem(grey, mix, model))
        except Exception:
            log.exception("warm-up failed; /readyz stays 503")
            return
        log.info("warmed up", extra={"ms": round((time.perf_counter() - start) * 1000, 1)})
    services.ready = True


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    services = await start_services(app.state.settings)
    app.state.services = services
    if app.state.settings.presets:
        await register_presets(services.registry)
    warming = asyncio.create_task(warm_up(services))
    await services.jobs.start()
    deliveries = [asyncio.create_task(services.webhooks.run())] if services.webhooks else []
    try:
        yield
    finally:
        for task in deliveries:  # a delivery due meanwhile is sent after the next start
            task.cancel()
        await asyncio.gather(*deliveries, return_exceptions=True)
        # uvicorn has finished the in-flight requests; jobs stop at a checkpoint between two
        # frames (taken up again at the next start); the engine finishes its queue.
        await services.jobs.close()
        await services.engine.close()
        await asyncio.gather(warming, return_exceptions=True)
        if services.redis is not None:
            await services.redis.aclose()
        if services.webhooks is not None:
            services.webhooks.close()
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
        # /docs is served locally (routes/docs.py); no redirect echoes the client's Host.
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
        # Text fields are small: one past the limit is refused as it streams in (400).
        form_limits={"max_part_size": settings.max_field_bytes},
    )
    app.state.settings = settings
    app.state.keys = Keys(settings.user_keys, settings.admin_key_list)
    app.state.live_sessions = LiveSessions(
        settings.live_max_sessions, settings.live_max_sessions_per_key
    )
    app.state.event_streams = OpenCounts(
        settings.max_event_streams_per_key,
        "job event streams",
        "ADAIN_MAX_EVENT_STREAMS_PER_KEY",
        retry_after_s=5,
    )
    install_error_handlers(app)
    install_openapi(app)
    # Each middleware added wraps the ones before: security headers, RequestContext, Host,
    # CORS, OriginGuard, body.
    hosts = AllowedHosts(settings.allowed_host_list)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes,
                       timeout_s=settings.body_timeout_s,
                       per_path={"/jobs": (settings.max_video_bytes, "ADAIN_MAX_VIDEO_BYTES")})
    app.add_middleware(OriginGuard, allowed=settings.cors_origin_list, hosts=hosts)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "X-Request-ID"],
            expose_headers=list(EXPOSED_HEADERS),
            max_age=600,
        )
    app.add_middleware(HostGuard, allowed=hosts)
    app.add_middleware(RequestContext)  # sees every response, errors of the middleware too
    app.add_middleware(SecurityHeaders)  # outermost: on those errors as well
    for module in (stylize, styles, jobs, live, ops, page, docs):
        app.include_router(module.router)
    app.mount(docs.ASSETS_PATH, docs.docs_assets(), name="docs-assets")
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
