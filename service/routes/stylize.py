"""POST /stylize: a content image, 1 to 8 styles and the paper's controls -> the image."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from media.controls import bounds, check_controls
from media.defaults import DEFAULT_SIZE, MAX_STYLES
from media.imaging import OutputFormat, StyleInput
from models.model import parse_mix_weights
from service.deps import RegistryDep, StylizerDep
from service.forms import FormFieldsDep
from service.openapi import STYLIZE_RESPONSES
from service.registry import StyleRegistry, style_image
from service.security import Caller, UserDep
from service.stylizer import StylizeRequest

router = APIRouter(tags=["stylize"])

# nginx's status for "the client closed the connection before the answer": access logs only.
CLIENT_CLOSED_REQUEST = 499
T = TypeVar("T")


async def read_styles(style: list[UploadFile] | None, style_id: list[str] | None,
                      registry: StyleRegistry, caller: Caller) -> list[StyleInput]:
    """The uploaded style files, then the registered styles (by id or name), in the order sent
    (POST /stylize, POST /jobs); an unknown one is a 404 naming `style_id`."""
    styles = [StyleInput(await f.read(), f"style[{i}]") for i, f in enumerate(style or [])]
    for index, reference in enumerate(style_id or []):
        data = await style_image(registry, reference, caller.owner, f"style_id[{index}]")
        styles.append(StyleInput(data, f"style_id[{index}]"))
    return styles


async def disconnected(request: Request) -> None:
    """Returns once the client has closed its connection. The form has been read by then, so
    the next ASGI message is the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T | None:
    """`work`'s result, or None when the client goes away first: `work` is canceled then, and
    with it the engine jobs it awaits, which are dropped instead of computed for no one."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():  # the client has gone, or this request was canceled itself
            task.cancel()
            await asyncio.wait({task})
    return None if task.cancelled() else task.result()


@router.post("/stylize", response_class=Response, responses=STYLIZE_RESPONSES)
async def stylize(
    request: Request,
    caller: UserDep,
    known_fields: FormFieldsDep,
    stylizer: StylizerDep,
    registry: RegistryDep,
    content: Annotated[UploadFile, File(description="Content image: PNG, JPEG or WebP.")],
    style: Annotated[list[UploadFile] | None, File(
        description="Style images (repeatable). They come first, in the order sent.")] = None,
    style_id: Annotated[list[str] | None, Form(
        description="Ids or names of registered styles (repeatable), after the style files."
    )] = None,
    alpha: Annotated[float, Form(description="Content-style trade-off.",
                                 json_schema_extra=bounds("alpha"))] = 1.0,
    weights: Annotated[list[str] | None, Form(
        description="One weight per style: repeated fields or '1,2,1'.")] = None,
    mask: Annotated[list[UploadFile] | None, File(
        description="One mask per style, or one binary mask for two styles (white = first); "
        "the content image's size. Coverage: luminance x alpha (16-bit: value / 65535); "
        "pixels no mask covers take the unmasked mix.")] = None,
    preserve_color: Annotated[bool, Form(description="Keep the content's colours.")] = False,
    content_size: Annotated[int, Form(description="Shorter side; 0 keeps it.",
                                      json_schema_extra=bounds("content_size"))] = DEFAULT_SIZE,
    style_size: Annotated[int, Form(description="Shorter side; 0 keeps it.",
                                    json_schema_extra=bounds("style_size"))] = DEFAULT_SIZE,
    crop: Annotated[bool, Form(description="Centre-crop to a square of the size.")] = False,
    output_format: Annotated[OutputFormat, Form(alias="format", description="Output format."
                                                )] = OutputFormat.png,
    quality: Annotated[int, Form(ge=1, le=100, description="JPEG/WebP quality.")] = 90,
    model: Annotated[str | None, Form(
        description="full or lite, among the models the service loaded (ADAIN_MODELS); "
        "default ADAIN_MODEL. The answer names it in X-Adain-Model.")] = None,
) -> Response:
    """Stylize `content` with the styles: uploaded `style` files first in the order sent, then
    the registered `style_id`s in the order sent; `weights` and `mask` follow that order."""
    # Counts and the model first: reading 1000 registered style ids before refusing them
    # costs memory. Weights off the event loop: bounded (ADAIN_MAX_FIELD_BYTES) but not free.
    mix_weights = await run_in_threadpool(parse_mix_weights, weights or [], MAX_STYLES)
    controls = check_controls(
        styles=len(style or []) + len(style_id or []),
        masks=len(mask or []),
        weights=mix_weights,
        models=stylizer.models,
        alpha=alpha,
        preserve_color=preserve_color,
        content_size=content_size,
        style_size=style_size,
        crop=crop,
        model=model,
    )
    styles = await read_styles(style, style_id, registry, caller)
    checked = StylizeRequest(
        content=await content.read(),
        styles=tuple(styles),
        controls=controls,
        masks=tuple([await m.read() for m in mask or []]),
        output_format=output_format,
        quality=quality,
    )
    result = await unless_disconnected(request, stylizer.stylize(checked))
    if result is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)  # no one reads it; the log does
    total_ms = result.styles_ms + result.stylize_ms
    return Response(
        result.image,
        media_type=result.media_type,
        headers={
            "X-Inference-Time-Ms": f"{total_ms:.1f}",
            "X-Style-Cache": ",".join(result.cache),
            "X-Batch-Size": str(result.batch_size),
            "X-Adain-Model": result.model,
            "Server-Timing": f"styles;dur={result.styles_ms:.1f}, "
                             f"stylize;dur={result.stylize_ms:.1f}",
        },
    )
