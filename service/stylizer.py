"""POST /stylize without the HTTP: checks, image decoding, the style cache, the engine.

Preprocessing is `models.images` (the functions `adain stylize` uses), so the service returns
the CLI's pixels for the same inputs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import torch
from PIL import Image, ImageOps
from starlette.concurrency import run_in_threadpool
from torch import Tensor

from models import images
from models.model import Masks, StyleMix, masks_from_binary, normalise_weights
from service import metrics
from service.cache import StatsCache, stats_key
from service.engine import (
    Engine,
    EngineBusyError,
    EngineClosedError,
    EngineOutOfMemoryError,
    StyleStats,
    StylizeJob,
)
from service.errors import ApiError
from service.imaging import ImageLimits, OutputFormat, check_prepared_size, encode_image, open_image

MAX_STYLES = 8
T = TypeVar("T")


@dataclass(frozen=True)
class StyleInput:
    """The bytes of one style image and the form field they came from (for error messages)."""

    data: bytes
    field: str


@dataclass(frozen=True)
class StylizeParams:
    alpha: float = 1.0
    weights: list[float] | None = None
    preserve_color: bool = False
    content_size: int = 512
    style_size: int = 512
    crop: bool = False
    output_format: OutputFormat = OutputFormat.png
    quality: int = 90


@dataclass(frozen=True)
class StylizeOutput:
    image: bytes
    media_type: str
    cache: list[str]  # "hit", "miss" or "bypass", one per style in order
    styles_ms: float  # network time for the styles' statistics (0 when all were cached)
    stylize_ms: float  # network time for the content's batch
    batch_size: int


def check_counts(n_styles: int, n_masks: int, weights: list[float] | None) -> Tensor:
    """422 for 0 or more than 8 styles, a mask count that fits no form, a weights count that
    is not one per style; returns the normalised weights."""
    if not 1 <= n_styles <= MAX_STYLES:
        raise ApiError(
            422, f"got {n_styles} styles; send 1 to {MAX_STYLES} (style files and style_ids "
            "together)", "style",
        )
    if n_masks and n_masks != n_styles and not (n_masks == 1 and n_styles == 2):
        raise ApiError(
            422, f"got {n_masks} masks for {n_styles} styles: send one per style, or one binary "
            "mask for exactly two styles", "mask",
        )
    try:
        return normalise_weights(weights, n_styles)
    except ValueError as exc:
        raise ApiError(422, f"weights: {exc}", "weights") from None


def prepare_content(data: bytes, size: int, crop: bool, limits: ImageLimits
                    ) -> tuple[Tensor, tuple[int, int]]:
    """The content tensor and the upright size (width, height) of the uploaded image."""
    upright = images.to_rgb(open_image(data, "content", limits))
    check_prepared_size(upright.size, size, crop, "content_size", limits)
    return images.prepare(upright, size, crop), upright.size


def prepare_style(style: StyleInput, size: int, crop: bool, limits: ImageLimits) -> Tensor:
    image = open_image(style.data, style.field, limits)
    check_prepared_size(image.size, size, crop, "style_size", limits)
    return images.prepare(image, size, crop)


def prepare_masks(
    masks: list[bytes], n_styles: int, content_size: tuple[int, int], grid: tuple[int, int],
    limits: ImageLimits,
) -> Masks:
    """Masks on the content tensor's grid, one per style or the reference's one binary mask for
    two styles; each upload must have the content's size."""
    prepared = []
    for index, data in enumerate(masks):
        field = f"mask[{index}]"
        upright: Image.Image = ImageOps.exif_transpose(open_image(data, field, limits))
        if upright.size != content_size:
            raise ApiError(
                422, f"{field}: {upright.size[0]} x {upright.size[1]}, but masks must have the "
                f"content image's size {content_size[0]} x {content_size[1]}", field,
            )
        prepared.append(images.prepare_mask(upright, grid))
    if len(prepared) == 1 and n_styles == 2:
        return masks_from_binary(prepared[0])
    return Masks(torch.stack(prepared))


async def on_engine(call: Awaitable[T]) -> T:
    """Engine failures as 503s: the client may retry; the server keeps serving."""
    try:
        return await call
    except EngineBusyError as exc:
        raise ApiError(503, f"server busy: {exc}; retry shortly", None,
                       {"Retry-After": "1"}) from None
    except EngineClosedError as exc:
        raise ApiError(503, str(exc), None, {"Retry-After": "5"}) from None
    except EngineOutOfMemoryError as exc:
        raise ApiError(
            503, f"{exc}; retry later or send a smaller content_size", "content_size",
            {"Retry-After": "5"},
        ) from None


class Stylizer:
    def __init__(self, engine: Engine, cache: StatsCache, limits: ImageLimits,
                 weights_id: str) -> None:
        self.engine = engine
        self.cache = cache
        self.limits = limits
        self.weights_id = weights_id

    async def stylize(
        self, content: bytes, styles: list[StyleInput], masks: list[bytes], params: StylizeParams
    ) -> StylizeOutput:
        weights = check_counts(len(styles), len(masks), params.weights)
        content_tensor, upright_size = await run_in_threadpool(
            prepare_content, content, params.content_size, params.crop, self.limits
        )
        grid = (content_tensor.shape[-2], content_tensor.shape[-1])
        mask_tensor = (
            await run_in_threadpool(
                prepare_masks, masks, len(styles), upright_size, grid, self.limits
            )
            if masks else None
        )
        stats, cache_results, styles_ms = [], [], 0.0
        for style in styles:
            style_stats, result, ms = await self.style_statistics(
                style, params, content_tensor if params.preserve_color else None
            )
            stats.append(style_stats)
            cache_results.append(result)
            styles_ms += ms
        mix = StyleMix(
            torch.cat([s.mean for s in stats]),
            torch.cat([s.std for s in stats]),
            weights,
            mask_tensor,
            params.alpha,
        )
        job = StylizeJob(content_tensor, mix)
        stylized = await on_engine(self.engine.stylize(job))
        encoded = await run_in_threadpool(
            encode_image, stylized.value, params.output_format, params.quality
        )
        return StylizeOutput(
            encoded, params.output_format.media_type, cache_results, styles_ms,
            stylized.compute_ms, stylized.batch_size,
        )

    async def style_statistics(
        self, style: StyleInput, params: StylizeParams, recolour_to: Tensor | None
    ) -> tuple[StyleStats, str, float]:
        """(statistics, "hit" | "miss" | "bypass", network ms). Colour preservation recolours
        the style to each content, so those statistics are neither looked up nor stored."""
        key = None
        if recolour_to is None:
            digest = hashlib.sha256(style.data).hexdigest()
            key = stats_key(digest, params.style_size, params.crop, self.weights_id)
            cached = await self.cache.get(key)
            if cached is not None:
                metrics.STYLE_CACHE.labels("hit").inc()
                return cached, "hit", 0.0
        tensor = await run_in_threadpool(
            prepare_style, style, params.style_size, params.crop, self.limits
        )
        computed = await on_engine(self.engine.style_statistics(tensor, recolour_to))
        if key is not None:
            await self.cache.put(key, computed.value)
        result = "miss" if key is not None else "bypass"
        metrics.STYLE_CACHE.labels(result).inc()
        return computed.value, result, computed.compute_ms
