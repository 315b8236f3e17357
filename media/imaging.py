"""Image bytes -> checked Pillow images -> the networks' tensors, and result tensors -> encoded
image bytes: the checks /stylize, video jobs, live mode and the command share (`models.images`
resizes, so every entry point gets the same pixels). Failures are domain errors naming the field
(or the command's argument) they came from."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from isal import isal_zlib
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from models import images
from models.errors import DomainError, InvalidInputError
from models.model import MIN_SIDE, Masks

# MPO: the multi-picture JPEGs phones write (previews, depth maps); the first picture is the
# photo, and Pillow opens on it.
ACCEPTED_FORMATS = {"PNG", "JPEG", "MPO", "WEBP"}


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


# The largest side each encoder can write (libwebp: 14-bit sides; JPEG: 16-bit).
ENCODER_MAX_SIDE = {"png": 2**31 - 1, "jpeg": 65535, "webp": 16383}


def check_encodable(width: int, height: int, format_name: str, field: str = "format") -> None:
    """Refuses an output the encoder of `format_name` cannot write, before any work is done
    for it. `format_name` is a key of `ENCODER_MAX_SIDE` (image formats; video containers add
    their codecs' limits there)."""
    limit = ENCODER_MAX_SIDE[format_name]
    if max(width, height) > limit:
        raise InvalidInputError(
            f"{field}={format_name} cannot encode a {width} x {height} pixel image: its limit "
            f"is {limit} pixels a side; choose another format or a smaller content_size",
            field,
        )


@dataclass(frozen=True)
class ImageLimits:
    max_image_pixels: int  # per upload, checked from the header before decoding
    max_output_pixels: int  # per image after resizing, the budget of the networks


def header_pixels(data: bytes) -> int:
    """Width x height from the image's header, without decoding it; 0 when the header cannot
    be read (`open_image` then says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except (Image.DecompressionBombError, UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return 0
    return width * height


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
    drop_unreadable_exif(image)
    return image


def drop_unreadable_exif(image: Image.Image) -> None:
    """An EXIF block that is no TIFF structure (or is otherwise broken) means "no orientation":
    dropped, so that `ImageOps.exif_transpose` later leaves the picture as it is."""
    try:
        image.getexif()
    except Exception:  # any failure parsing the metadata: Pillow raises several kinds
        image.info.pop("exif", None)
        image.getexif().clear()


def unsupported(field: str, found: str | None = None) -> UnsupportedImageError:
    what = f"a {found} image" if found else "not a readable image"
    return UnsupportedImageError(f"{field}: {what}; send PNG, JPEG or WebP", field)


def too_many_pixels(
    field: str, size: tuple[int, int] | None, limits: ImageLimits
) -> ImageTooLargeError:
    found = f"{size[0]} x {size[1]} = {size[0] * size[1]} pixels" if size else "too many pixels"
    return ImageTooLargeError(
        f"{field}: {found}; the limit is {limits.max_image_pixels} pixels (ADAIN_MAX_IMAGE_PIXELS)",
        field,
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
            f"at least {MIN_SIDE} pixels per side",
            field,
        )
    if height * width > limits.max_output_pixels:
        raise InvalidInputError(
            f"{field}={resize_to} makes a {width} x {height} = {width * height} pixel image; "
            f"the limit is {limits.max_output_pixels} pixels (ADAIN_MAX_OUTPUT_PIXELS)",
            field,
        )


@dataclass(frozen=True)
class StyleInput:
    """The bytes of one style image and the form field they came from (for error messages)."""

    data: bytes
    field: str


def prepare_content(
    data: bytes, size: int, crop: bool, output_format: OutputFormat, limits: ImageLimits
) -> tuple[Tensor, tuple[int, int]]:
    """The content tensor and the upright size (width, height) of the uploaded image; refuses
    an output the format cannot encode before any network runs."""
    upright = images.to_rgb(open_image(data, "content", limits))
    check_prepared_size(upright.size, size, crop, "content_size", limits)
    height, width = images.prepared_size(*upright.size, size, crop)
    check_encodable(width, height, output_format.value)
    return images.rgb_to_tensor(upright, size, crop), upright.size


def prepare_style(style: StyleInput, size: int, crop: bool, limits: ImageLimits) -> Tensor:
    upright = images.to_rgb(open_image(style.data, style.field, limits))
    check_prepared_size(upright.size, size, crop, "style_size", limits)
    return images.rgb_to_tensor(upright, size, crop)


def prepare_masks(
    masks: tuple[bytes, ...],
    n_styles: int,
    content_size: tuple[int, int],
    grid: tuple[int, int],
    limits: ImageLimits,
) -> Masks:
    """The uploaded masks decoded, then `models.images.masks_from_images` (its rules)."""
    fields = [f"mask[{index}]" for index in range(len(masks))]
    uprights = [
        ImageOps.exif_transpose(open_image(data, field, limits))
        for data, field in zip(masks, fields, strict=True)
    ]
    return images.masks_from_images(uprights, n_styles, content_size, grid, fields)


def encode_image(result: Tensor, output_format: OutputFormat, quality: int) -> bytes:
    if output_format is OutputFormat.png:
        return encode_png(images.to_uint8(result).numpy())
    buffer = io.BytesIO()
    images.to_pil(result).save(buffer, format=output_format.value.upper(), quality=quality)
    return buffer.getvalue()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_AVERAGE_FILTER = 3
PNG_ROWS_PER_CHUNK = 256  # rows filtered at a time: an 8K image has no full-size int16 copy


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(pixels: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes, fast: every row takes PNG's Average filter (one numpy pass
    instead of Pillow's per-row trial of the five filters), deflated by ISA-L at level 1.
    Lossless as any PNG; the file a little larger than Pillow's (docs/benchmarks.md)."""
    height, width, channels = pixels.shape
    rows = pixels.reshape(height, width * channels)
    compressor = isal_zlib.compressobj(1)
    parts = []
    for start in range(0, height, PNG_ROWS_PER_CHUNK):
        x = rows[start : start + PNG_ROWS_PER_CHUNK].astype(np.int16)
        left = np.zeros_like(x)
        left[:, channels:] = x[:, :-channels]
        above = np.empty_like(x)
        above[1:] = x[:-1]
        above[0] = rows[start - 1] if start else 0
        filtered = np.empty((x.shape[0], x.shape[1] + 1), np.uint8)
        filtered[:, 0] = PNG_AVERAGE_FILTER
        filtered[:, 1:] = x - ((left + above) >> 1)  # modulo 256, as the filter is defined
        parts.append(compressor.compress(filtered.tobytes()))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"".join(
        [
            PNG_SIGNATURE,
            png_chunk(b"IHDR", header),
            png_chunk(b"IDAT", b"".join(parts)),
            png_chunk(b"IEND", b""),
        ]
    )
