"""The style registry: register a style image once, use it by id in POST /stylize."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import PurePath
from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile, status
from PIL import ImageOps
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from models.errors import InvalidInputError
from service.deps import LimitsDep, RegistryDep
from service.imaging import ImageLimits, open_image
from service.openapi import LIST_STYLES_RESPONSES, REGISTER_STYLE_ERRORS, STYLE_RESPONSES
from service.registry import StyleNotFoundError, StyleRecord, new_record
from service.security import AdminDep, UserDep

MAX_NAME_LENGTH = 200

router = APIRouter(prefix="/styles", tags=["styles"])


class Style(BaseModel):
    id: str
    name: str
    width: int
    height: int
    created: str

    @classmethod
    def of(cls, record: StyleRecord) -> Style:
        return cls(**asdict(record))


class StyleList(BaseModel):
    styles: list[Style]


def upright_size(data: bytes, limits: ImageLimits) -> tuple[int, int]:
    """(width, height) as the style will be used: decoded fully, EXIF orientation applied."""
    return ImageOps.exif_transpose(open_image(data, "file", limits)).size


@router.post("", status_code=status.HTTP_201_CREATED, responses={
    200: {"model": Style, "description": "The same image was registered before: that style."},
    **REGISTER_STYLE_ERRORS,
})
async def register_style(
    file: Annotated[UploadFile, File(description="PNG, JPEG or WebP style image")],
    caller: AdminDep,
    registry: RegistryDep,
    limits: LimitsDep,
    response: Response,
    name: Annotated[str | None, Form(description="Display name; default: the file name")] = None,
) -> Style:
    """Register a style. Its id is the sha256 of the bytes: registering the same file again
    returns the existing style (200) instead of a new one (201)."""
    data = await file.read()
    label = (name or PurePath(file.filename or "").stem).strip()
    if len(label) > MAX_NAME_LENGTH:
        raise InvalidInputError(
            f"name: {len(label)} characters; the limit is {MAX_NAME_LENGTH}", "name"
        )
    width, height = await run_in_threadpool(upright_size, data, limits)
    record = new_record(data, label, width, height)
    stored, created = await registry.add(record, data)
    if not created:
        response.status_code = status.HTTP_200_OK
    return Style.of(stored)


@router.get("", responses=LIST_STYLES_RESPONSES)
async def list_styles(caller: UserDep, registry: RegistryDep) -> StyleList:
    return StyleList(styles=[Style.of(record) for record in await registry.list()])


@router.get("/{style_id}", responses=STYLE_RESPONSES)
async def get_style(style_id: str, caller: UserDep, registry: RegistryDep) -> Style:
    record = await registry.get(style_id)
    if record is None:
        raise StyleNotFoundError(f"no style with id {style_id!r}", "style_id")
    return Style.of(record)


@router.delete("/{style_id}", status_code=status.HTTP_204_NO_CONTENT,
               responses=STYLE_RESPONSES)
async def delete_style(style_id: str, caller: AdminDep, registry: RegistryDep) -> Response:
    if not await registry.delete(style_id):
        raise StyleNotFoundError(f"no style with id {style_id!r}", "style_id")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
