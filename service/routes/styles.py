"""The style registry: register a style image once, use it by id or name in POST /stylize."""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Callable
from dataclasses import replace
from pathlib import PurePath
from typing import Annotated, TypeVar

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile, status
from PIL import Image, ImageOps
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from media.imaging import ImageLimits, header_pixels, open_image
from models import images
from models.errors import InvalidInputError
from service.deps import LimitsDep, RegistryDep, StylizerDep
from service.forms import FormFieldsDep
from service.idempotency import idempotent
from service.openapi import (
    LIST_STYLES_RESPONSES,
    REGISTER_STYLE_ERRORS,
    STYLE_IMAGE_RESPONSES,
    STYLE_RESPONSES,
)
from service.registry import (
    MAX_NAME_LENGTH,
    AlreadyRegisteredError,
    NameTakenError,
    StyleNotFoundError,
    StyleRecord,
    derived_name,
    find_style,
    name_key,
    name_problem,
    new_record,
    style_id,
)
from service.security import AdminDep, UserDep

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MIN_THUMBNAIL, MAX_THUMBNAIL = 16, 1024
THUMBNAIL_QUALITY = 85

router = APIRouter(prefix="/styles", tags=["styles"])


class Style(BaseModel):
    id: str
    name: str
    width: int
    height: int
    created: str

    @classmethod
    def of(cls, record: StyleRecord) -> Style:
        return cls(
            id=record.id,
            name=record.name,
            width=record.width,
            height=record.height,
            created=record.created,
        )


class StyleList(BaseModel):
    styles: list[Style]
    next_cursor: str | None = Field(
        None, description="Pass as `cursor` for the next page; null on the last page."
    )


def upright_size(data: bytes, limits: ImageLimits) -> tuple[int, int]:
    """(width, height) as the style will be used: decoded fully, EXIF orientation applied."""
    return ImageOps.exif_transpose(open_image(data, "file", limits)).size


def checked_name(name: str | None) -> str | None:
    """The name sent, stripped and checked; None when none was sent."""
    if name is None or not name.strip():
        return None
    label = name.strip()
    problem = name_problem(label)
    if problem is not None:
        raise InvalidInputError(f"name {label[:80]!r} {problem}", "name")
    return label


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": Style, "description": "The same image was registered before: that style."},
        **REGISTER_STYLE_ERRORS,
    },
)
@idempotent(status.HTTP_201_CREATED)
async def register_style(
    file: Annotated[UploadFile, File(description="PNG, JPEG or WebP style image")],
    caller: AdminDep,
    known_fields: FormFieldsDep,
    registry: RegistryDep,
    limits: LimitsDep,
    response: Response,
    name: Annotated[
        str | None,
        Form(
            description=(
                "A name to use instead of the id (in `style_id`, `/styles/{name}`): unique "
                f"per owner, compared ignoring case, up to {MAX_NAME_LENGTH} characters, no "
                "`/` or control characters. Default: the file name (with the id's first "
                "digits added when taken)."
            )
        ),
    ] = None,
) -> Style:
    """Register a style. Its id is the sha256 of the bytes: registering the same file again
    returns the existing style (200) instead of a new one (201); with another `name`, 409
    naming the one it has."""
    chosen = checked_name(name)
    data = await file.read()
    width, height = await run_in_threadpool(upright_size, data, limits)
    id_ = style_id(data)
    label = chosen or derived_name(PurePath(file.filename or "").stem, id_)
    record = new_record(data, label, width, height, caller.owner)
    try:
        stored, created = await registry.add(record, data)
    except NameTakenError:
        if chosen is not None:
            raise
        # A file name is no choice of the user's: another style's name is no reason to refuse.
        unique = f"{label[: MAX_NAME_LENGTH - 9]}-{id_[:8]}"
        stored, created = await registry.add(replace(record, name=unique), data)
    if not created and chosen is not None and name_key(stored.name) != name_key(chosen):
        raise AlreadyRegisteredError(
            f"name: this image is registered already as {stored.name!r} (id {stored.id}), "
            f"the name it keeps; use that name or the id instead of {chosen[:80]!r}",
            "name",
        )
    if not created:
        response.status_code = status.HTTP_200_OK
    return Style.of(stored)


def encode_cursor(created: str, id_: str) -> str:
    """The page after the item created at `created` (ISO 8601) with id `id_`."""
    return base64.urlsafe_b64encode(f"{created} {id_}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[str, str]:
    """(created, id) of the last item of the previous page."""
    try:
        created, id_ = base64.urlsafe_b64decode(cursor.encode()).decode().split(" ")
        return created, id_
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInputError(
            f"cursor {cursor[:80]!r} is not one this service gave (`next_cursor`)", "cursor"
        ) from None


# The query of a paged list (GET /styles, GET /jobs).
PageLimit = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Items per page.")]
PageCursor = Annotated[
    str | None, Query(max_length=200, description="The previous page's `next_cursor`.")
]


def page_of(
    items: list[T], position: Callable[[T], tuple[str, str]], limit: int, cursor: str | None
) -> tuple[list[T], str | None]:
    """The page of `items` after `cursor`, and the next page's cursor (None on the last).
    GET /styles and GET /jobs list oldest first, ties by id: `position(item)` is (created in
    ISO 8601, id), the order of `items`."""
    if cursor is not None:
        after = decode_cursor(cursor)
        items = [item for item in items if position(item) > after]
    page = items[:limit]
    return page, encode_cursor(*position(page[-1])) if len(items) > limit else None


@router.get("", responses=LIST_STYLES_RESPONSES)
async def list_styles(
    caller: UserDep,
    registry: RegistryDep,
    limit: PageLimit = DEFAULT_PAGE_SIZE,
    cursor: PageCursor = None,
) -> StyleList:
    """The registered styles, oldest first, one page at a time."""
    records = await registry.list()
    page, next_cursor = page_of(records, lambda r: (r.created, r.id), limit, cursor)
    return StyleList(styles=[Style.of(record) for record in page], next_cursor=next_cursor)


@router.get("/{style_id}", responses=STYLE_RESPONSES)
async def get_style(style_id: str, caller: UserDep, registry: RegistryDep) -> Style:
    """A style by its id or its name."""
    return Style.of(await find_style(registry, style_id, caller.owner))


def thumbnail(data: bytes, size: int, limits: ImageLimits) -> bytes:
    """The style upright in RGB, its longer side at most `size`, as a JPEG."""
    upright = images.to_rgb(open_image(data, "style_id", limits))
    upright.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    upright.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY)
    return buffer.getvalue()


def media_type_of(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:  # the header only: checked at registration
        return Image.MIME.get(image.format or "", "application/octet-stream")


@router.get("/{style_id}/image", response_class=Response, responses=STYLE_IMAGE_RESPONSES)
async def get_style_image(
    style_id: str,
    request: Request,
    caller: UserDep,
    registry: RegistryDep,
    stylizer: StylizerDep,
    size: Annotated[
        int | None,
        Query(
            ge=MIN_THUMBNAIL,
            le=MAX_THUMBNAIL,
            description="A thumbnail: a JPEG whose longer side is at most `size` pixels. "
            "Default: the image as registered.",
        ),
    ] = None,
) -> Response:
    """A style's image (by id or name), as registered or as a thumbnail."""
    record = await find_style(registry, style_id, caller.owner)
    tag = f'"{record.id}-{size or "full"}"'
    # An id names these bytes forever; a name may be given to another style later.
    by_id = style_id == record.id
    headers = {
        "ETag": tag,
        "Cache-Control": "private, max-age=31536000, immutable" if by_id else "private, no-cache",
    }
    if request.headers.get("if-none-match") == tag:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    data = await registry.image(record.id)
    if data is None:  # deleted in between
        raise StyleNotFoundError(f"no style with id or name {style_id[:80]!r}", "style_id")
    if size is None:
        return Response(data, media_type=media_type_of(data), headers=headers)
    small = await stylizer.decode_budget.decode(
        header_pixels(data), "style_id", thumbnail, data, size, stylizer.limits
    )
    return Response(small, media_type="image/jpeg", headers=headers)


@router.delete("/{style_id}", status_code=status.HTTP_204_NO_CONTENT, responses=STYLE_RESPONSES)
async def delete_style(style_id: str, caller: AdminDep, registry: RegistryDep) -> Response:
    """Delete a style by its id or its name."""
    record = await find_style(registry, style_id, caller.owner)
    if not await registry.delete(record.id):
        raise StyleNotFoundError(f"no style with id or name {style_id[:80]!r}", "style_id")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
