"""FastAPI dependencies: the objects the lifespan built, typed for the routes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis

from media.imaging import ImageLimits
from service.engine import Engine
from service.idempotency import IdempotencyStore
from service.jobs.local import LocalRunner
from service.registry import StyleRegistry
from service.security import RateLimiter
from service.settings import Settings
from service.stylizer import Stylizer
from service.webhooks import WebhookSender


@dataclass
class Services:
    """Everything loaded once per process by `service.main.lifespan`."""

    settings: Settings
    engine: Engine
    stylizer: Stylizer
    registry: StyleRegistry
    limits: ImageLimits
    redis: Redis | None
    rate_limiter: RateLimiter
    jobs: LocalRunner
    idempotency: IdempotencyStore
    webhooks: WebhookSender | None  # None: ADAIN_WEBHOOK_SECRET not set
    ready: bool = False  # networks loaded and warmed up


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_stylizer(request: Request) -> Stylizer:
    return get_services(request).stylizer


def get_registry(request: Request) -> StyleRegistry:
    return get_services(request).registry


def get_limits(request: Request) -> ImageLimits:
    return get_services(request).limits


ServicesDep = Annotated[Services, Depends(get_services)]
StylizerDep = Annotated[Stylizer, Depends(get_stylizer)]
RegistryDep = Annotated[StyleRegistry, Depends(get_registry)]
LimitsDep = Annotated[ImageLimits, Depends(get_limits)]
