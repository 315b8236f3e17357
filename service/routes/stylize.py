"""POST /stylize: a content image, 1 to 8 styles and the paper's controls -> the image."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile

from service.deps import RegistryDep, StylizerDep
from service.errors import ApiError
from service.imaging import OutputFormat
from service.openapi import STYLIZE_RESPONSES
from service.stylizer import StyleInput, StylizeParams, check_counts

router = APIRouter(tags=["stylize"])


def parse_weights(values: list[str]) -> list[float] | None:
    """Repeated `weights` fields, or one comma-separated field, or both: one float per style."""
    parts = [part.strip() for value in values for part in value.split(",") if part.strip()]
    if not parts:
        return None
    try:
        return [float(part) for part in parts]
    except ValueError:
        raise ApiError(422, f"weights: expected numbers, got {values!r}", "weights") from None


@router.post("/stylize", response_class=Response, responses=STYLIZE_RESPONSES)
async def stylize(
    stylizer: StylizerDep,
    registry: RegistryDep,
    content: Annotated[UploadFile, File(description="Content image: PNG, JPEG or WebP.")],
    style: Annotated[list[UploadFile] | None, File(
        description="Style images (repeatable). They come first, in the order sent.")] = None,
    style_id: Annotated[list[str] | None, Form(
        description="Ids of registered styles (repeatable), after the style files.")] = None,
    alpha: Annotated[float, Form(ge=0.0, le=1.0,
                                 description="Content-style trade-off.")] = 1.0,
    weights: Annotated[list[str] | None, Form(
        description="One weight per style: repeated fields or '1,2,1'.")] = None,
    mask: Annotated[list[UploadFile] | None, File(
        description="One mask per style, or one binary mask for two styles (white = first); "
        "the content image's size.")] = None,
    preserve_color: Annotated[bool, Form(description="Keep the content's colours.")] = False,
    content_size: Annotated[int, Form(ge=0, description="Shorter side; 0 keeps it.")] = 512,
    style_size: Annotated[int, Form(ge=0, description="Shorter side; 0 keeps it.")] = 512,
    crop: Annotated[bool, Form(description="Centre-crop to a square of the size.")] = False,
    output_format: Annotated[OutputFormat, Form(alias="format", description="Output format."
                                                )] = OutputFormat.png,
    quality: Annotated[int, Form(ge=1, le=100, description="JPEG/WebP quality.")] = 90,
) -> Response:
    """Stylize `content` with the styles: uploaded `style` files first in the order sent, then
    the registered `style_id`s in the order sent; `weights` and `mask` follow that order."""
    # Counts first: reading 1000 registered style ids before refusing them costs memory.
    parsed_weights = parse_weights(weights or [])
    check_counts(len(style or []) + len(style_id or []), len(mask or []), parsed_weights)
    styles = [StyleInput(await f.read(), f"style[{i}]") for i, f in enumerate(style or [])]
    for index, id_ in enumerate(style_id or []):
        data = await registry.image(id_)
        if data is None:
            raise ApiError(404, f"style_id[{index}]: no style with id {id_[:80]!r}", "style_id")
        styles.append(StyleInput(data, f"style_id[{index}]"))
    params = StylizeParams(
        alpha=alpha,
        weights=parsed_weights,
        preserve_color=preserve_color,
        content_size=content_size,
        style_size=style_size,
        crop=crop,
        output_format=output_format,
        quality=quality,
    )
    result = await stylizer.stylize(
        await content.read(), styles, [await m.read() for m in mask or []], params
    )
    total_ms = result.styles_ms + result.stylize_ms
    return Response(
        result.image,
        media_type=result.media_type,
        headers={
            "X-Inference-Time-Ms": f"{total_ms:.1f}",
            "X-Style-Cache": ",".join(result.cache),
            "X-Batch-Size": str(result.batch_size),
            "Server-Timing": f"styles;dur={result.styles_ms:.1f}, "
                             f"stylize;dur={result.stylize_ms:.1f}",
        },
    )
