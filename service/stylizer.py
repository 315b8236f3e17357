"""POST /stylize without the HTTP: image decoding, the style cache, the engine.

The route checks the form once (`media.controls.check_controls`) and hands over a
`StylizeRequest`, which this module trusts. Decoding and preprocessing are `media.imaging` (what
video jobs and live mode use, on `models.images`: the functions `adain stylize` uses), so the
service returns the CLI's pixels for the same inputs. Failures are domain errors
(`models.errors`); `service.errors` turns them into HTTP answers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from torch import Tensor

from media.controls import StyleControls, check_model
from media.imaging import (
    ImageLimits,
    OutputFormat,
    StyleInput,
    encode_image,
    header_pixels,
    prepare_content,
    prepare_masks,
    prepare_style,
)
from service import metrics
from service.cache import StatsCache, stats_key
from service.engine import Engine, StyleStats, StylizeItem
from service.imaging import PixelBudget


@dataclass(frozen=True)
class StylizeRequest:
    """A POST /stylize form, parsed and checked once at the edge: the stylizer trusts it.

    styles: uploaded files first, then registered styles, in the order sent; controls: the
    paper's controls (`media.controls.check_controls`), one weight per style; masks: the
    files `controls.masks` counts.
    """

    content: bytes
    styles: tuple[StyleInput, ...]
    controls: StyleControls
    masks: tuple[bytes, ...] = ()
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
    model: str  # the model that answered


class Stylizer:
    """`encoder_fingerprint`: what each of the engine's networks' style statistics depend on,
    by model name (one string: the engine's only network), so that the cache keeps each
    model's statistics apart."""

    def __init__(
        self,
        engine: Engine,
        cache: StatsCache,
        limits: ImageLimits,
        encoder_fingerprint: str | Mapping[str, str],
        decode_budget: PixelBudget,
    ) -> None:
        self.engine = engine
        self.cache = cache
        self.limits = limits
        self.fingerprints = (
            dict(encoder_fingerprint)
            if isinstance(encoder_fingerprint, Mapping)
            else {engine.default_model: encoder_fingerprint}
        )
        self.decode_budget = decode_budget

    @property
    def models(self) -> list[str]:
        """The loaded models, the default first."""
        default = self.engine.default_model
        return [default, *(name for name in self.fingerprints if name != default)]

    def check_model(self, model: str | None) -> str:
        """The model a request names (None: the default) if it is loaded here; else a clear
        error naming the field (`media.controls.check_model`)."""
        return check_model(model, self.models)

    async def stylize(self, request: StylizeRequest) -> StylizeOutput:
        controls = request.controls
        model = controls.model or self.engine.default_model  # checked at the edge
        content, upright_size = await self.decode_budget.decode(
            header_pixels(request.content),
            "content",
            prepare_content,
            request.content,
            controls.content_size,
            controls.crop,
            request.output_format,
            self.limits,
        )
        grid = (content.shape[-2], content.shape[-1])
        masks = None
        if request.masks:
            masks = await self.decode_budget.decode(
                sum(map(header_pixels, request.masks)),
                "mask",
                prepare_masks,
                request.masks,
                len(request.styles),
                upright_size,
                grid,
                self.limits,
            )
        stats, cache_results, styles_ms = [], [], 0.0
        for style in request.styles:
            style_stats, result, ms = await self.style_statistics(
                style,
                controls.style_size,
                controls.crop,
                content if controls.preserve_color else None,
                model,
            )
            stats.append(style_stats)
            cache_results.append(result)
            styles_ms += ms
        mix = controls.mix([(s.mean, s.std) for s in stats], masks)
        stylized = await self.engine.stylize(StylizeItem(content, mix, model))
        encoded = await run_in_threadpool(
            encode_image, stylized.value, request.output_format, request.quality
        )
        return StylizeOutput(
            encoded,
            request.output_format.media_type,
            cache_results,
            styles_ms,
            stylized.compute_ms,
            stylized.batch_size,
            model,
        )

    async def style_statistics(
        self,
        style: StyleInput,
        size: int,
        crop: bool,
        recolour_to: Tensor | None = None,
        model: str | None = None,
    ) -> tuple[StyleStats, str, float]:
        """(statistics, "hit" | "miss" | "bypass", network ms) of the style prepared at `size`
        (and `crop`) through `model`'s encoder (default: the service's). Colour preservation
        recolours the style to each content, so those statistics are neither looked up nor
        stored."""
        model = model or self.engine.default_model
        key = None
        if recolour_to is None:
            digest = hashlib.sha256(style.data).hexdigest()
            key = stats_key(digest, size, crop, self.fingerprints[model])
            cached = await self.cache.get(key)
            if cached is not None:
                metrics.STYLE_CACHE.labels("hit").inc()
                return cached, "hit", 0.0
        tensor = await self.decode_budget.decode(
            header_pixels(style.data),
            style.field,
            prepare_style,
            style,
            size,
            crop,
            self.limits,
        )
        computed = await self.engine.style_statistics(tensor, recolour_to, model)
        if key is not None:
            await self.cache.put(key, computed.value)
        result = "miss" if key is not None else "bypass"
        metrics.STYLE_CACHE.labels(result).inc()
        return computed.value, result, computed.compute_ms
