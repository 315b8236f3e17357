"""Uploaded bytes -> checked Pillow images, and result tensors -> encoded image bytes."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from enum import StrEnum

from PIL import Image, UnidentifiedImageError
from torch import Tensor

from models import images
from models.errors import DomainError, InvalidInputError
from models.model import MIN_SIDE

ACCEPTED_FORMATS = {"PNG", "JPEG", "WEBP"}


class UnsupportedImageError(DomainError):
    """An upload that is not a PNG, JPEG or WebP image, or that cannot be decoded."""


class ImageTooLargeError(DomainError):
    """An upload with more pixels than ADAIN_MAX_IMAGE_PIXELS."""


class OutputFormat(StrEnum):
    png = "png"
    jpeg = "jpeg"
    webp = "webp"

    @property
    def media_type(self) -> str:
        return f"image/{self.value}"


@dataclass(frozen=True)
class ImageLimits:
    max_image_pixels: int  # per upload, checked from the header before decoding
    max_output_pixels: int  # per image after resizing, the budget of the networks


def open_image(data: bytes, field: str, limits: ImageLimits) -> Image.Image:
    """Decode an upload fully, refusing what is not PNG/JPEG/WebP or has too many pixels.

    `Image.open` reads only the header, so the pixel count is checked before any decoding.
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns between MAX_IMAGE_PIXELS and twice that; our own check follows.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise too_many_pixels(field, None, limits) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise unsupported(field) from None
    if image.format not in ACCEPTED_FORMATS:
        raise unsupported(field, image.format)
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise too_many_pixels(field, (width, height), limits)
    try:
        image.load()
    except Image.DecompressionBombError:
        raise too_many_pixels(field, None, limits) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise UnsupportedImageError(
            f"{field}: the {image.format} image could not be decoded ({exc})", field
        ) from None
    return image


def unsupported(field: str, found: str | None = None) -> UnsupportedImageError:
    what = f"a {found} image" if found else "not an image Pillow can read"
    return UnsupportedImageError(f"{field}: {what}; send PNG, JPEG or WebP", field)


def too_many_pixels(field: str, size: tuple[int, int] | None, limits: ImageLimits
                    ) -> ImageTooLargeError:
    found = f"{size[0]} x {size[1]} = {size[0] * size[1]} pixels" if size else "too many pixels"
    return ImageTooLargeError(
        f"{field}: {found}; the limit is {limits.max_image_pixels} pixels "
        "(ADAIN_MAX_IMAGE_PIXELS)", field,
    )


def check_prepared_size(
    size: tuple[int, int], resize_to: int, crop: bool, field: str, limits: ImageLimits
) -> None:
    """Refuses an image that, resized as `prepare` will resize it, exceeds the pixel budget or
    is too small for the encoder."""
    height, width = images.prepared_size(*size, resize_to, crop)
    if min(height, width) < MIN_SIDE:
        raise InvalidInputError(
            f"{field}={resize_to} makes a {width} x {height} pixel image; the networks need "
            f"at least {MIN_SIDE} pixels per side", field,
        )
    if height * width > limits.max_output_pixels:
        raise InvalidInputError(
            f"{field}={resize_to} makes a {width} x {height} = {width * height} pixel image; "
            f"the limit is {limits.max_output_pixels} pixels (ADAIN_MAX_OUTPUT_PIXELS)", field,
        )


def encode_image(result: Tensor, output_format: OutputFormat, quality: int) -> bytes:
    buffer = io.BytesIO()
    picture = images.to_pil(result)
    if output_format is OutputFormat.png:
        picture.save(buffer, format="PNG")
    else:
        picture.save(buffer, format=output_format.value.upper(), quality=quality)
    return buffer.getvalue()
