"""Operations: liveness, readiness, the models loaded, Prometheus metrics."""

from __future__ import annotations

import os

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from service.deps import ServicesDep
from service.errors import NotReadyError
from service.openapi import METRICS_RESPONSES, READYZ_RESPONSES
from service.registry import RedisUnavailableError

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str | int]:
    """The process is alive and serving HTTP (pid: which replica/process answered)."""
    return {"status": "ok", "pid": os.getpid()}


@router.get("/readyz", response_model=None, responses=READYZ_RESPONSES)
async def readyz(services: ServicesDep) -> dict[str, str]:
    """200 once the networks are loaded and warmed up (and Redis answers, when configured)."""
    if not services.ready:
        raise NotReadyError("the networks are still loading or warming up")
    if services.redis is not None:
        try:
            await services.redis.ping()
        except (RedisError, OSError) as exc:
            raise RedisUnavailableError(f"redis unreachable: {exc}") from None
    return {"status": "ready"}


class LoadedModels(BaseModel):
    models: list[str] = Field(description="The networks loaded (ADAIN_MODELS): full and/or lite.")
    default: str = Field(description="The one a request naming no `model` gets (ADAIN_MODEL).")


@router.get("/models", response_model=LoadedModels)
async def loaded_models(services: ServicesDep) -> LoadedModels:
    """The models the `model` field of /stylize, /jobs and the live settings may name."""
    engine = services.engine
    return LoadedModels(models=engine.models, default=engine.default_model)


@router.get("/metrics", response_class=Response, responses=METRICS_RESPONSES)
async def prometheus_metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
