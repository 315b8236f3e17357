"""Image <-> tensor conversion with the reference `test.py` transforms (Resize, CenterCrop)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps
from torch import Tensor

from models.errors import InvalidInputError
from models.model import Masks, check_mask_count, masks_for_styles


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright RGB: EXIF orientation applied; grey, palette, CMYK, 16-bit and alpha converted."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: scale to 8 bits before RGB (a plain convert would clip at 255).
        image = image.point(lambda v: v / 257).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def prepare(image: Image.Image, size: int = 0, crop: bool = False) -> Tensor:
    """(1, 3, H, W) in [0, 1]: shorter side resized to `size` (0 keeps it), centre-cropped to a
    size x size square when `crop`, exactly as the reference `test_transform`."""
    return rgb_to_tensor(to_rgb(image), size, crop)


def rgb_to_tensor(rgb: Image.Image, size: int = 0, crop: bool = False) -> Tensor:
    """`prepare` of an image that `to_rgb` has already made upright RGB."""
    if size:
        rgb = TF.resize(rgb, size)
    if crop and size:
        rgb = TF.center_crop(rgb, size)
    # to_tensor's arithmetic, dividing in place: no second full-size float copy.
    return TF.pil_to_tensor(rgb).contiguous().float().div_(255)[None]


def prepared_size(width: int, height: int, size: int = 0, crop: bool = False) -> tuple[int, int]:
    """(H, W) that `prepare(image, size, crop)` returns for a width x height image, without
    decoding it: torchvision's Resize rule (shorter side to `size`, the longer one truncated)."""
    if not size:
        return height, width
    if crop:
        return size, size
    short, long = min(width, height), max(width, height)
    longer = int(size * long / short)
    return (longer, size) if width <= height else (size, longer)


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")


def has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )


def upright_mask_to_tensor(upright: Image.Image, size: tuple[int, int]) -> Tensor:
    """(H, W) in [0, 1] from a mask image whose EXIF orientation is already applied, resized
    to `size` (H, W).

    A pixel's coverage is its luminance times its alpha: transparent pixels cover nothing
    whatever their colour, as in the layer a mask is painted on. 16-bit grey reads at its own
    level (value / 65535), not clipped to 8 bits.
    """
    if upright.mode in SIXTEEN_BIT_MODES:
        levels = np.asarray(upright, dtype=np.float32) / 65535
        coverage = Image.fromarray(levels.clip(0, 1))
    elif has_alpha(upright):
        rgba = upright.convert("RGBA")
        luminance = np.asarray(rgba.convert("L"), dtype=np.float32) / 255
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255
        coverage = Image.fromarray(luminance * alpha)
    else:  # 8 bits: resized as 8-bit grey, the levels the reference reads
        grey = upright.convert("L")
        if grey.size != (size[1], size[0]):
            grey = grey.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        return TF.to_tensor(grey)[0]
    if coverage.size != (size[1], size[0]):
        coverage = coverage.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(coverage, dtype=np.float32).copy()).clamp(0, 1)


def masks_from_images(
    uprights: Sequence[Image.Image],
    n_styles: int,
    content_size: tuple[int, int],
    grid: tuple[int, int],
    fields: Sequence[str],
) -> Masks:
    """The one mask constructor, for the command and the service alike.

    uprights: the mask images, EXIF orientation applied; content_size: the content image's
    upright (width, height) as given, before any resizing; grid: (H, W) of the content tensor.
    The rules: one mask per style, or one binary mask for exactly two styles (the reference's
    form); each mask has the content image's size (a mask of another size is refused, not
    stretched: it would select other regions than the ones drawn); each is read as
    `upright_mask_to_tensor` reads it, then resized with the content to `grid`.
    """
    check_mask_count(len(uprights), n_styles)
    for upright, field in zip(uprights, fields, strict=True):
        if upright.size != content_size:
            raise InvalidInputError(
                f"{field}: {upright.size[0]} x {upright.size[1]}, but masks must have the "
                f"content image's size {content_size[0]} x {content_size[1]}", field,
            )
    values = [upright_mask_to_tensor(upright, grid) for upright in uprights]
    return masks_for_styles(values, n_styles)


def load(path: Path, size: int = 0, crop: bool = False) -> Tensor:
    with Image.open(path) as image:
        return prepare(image, size, crop)


def load_with_size(path: Path, size: int = 0, crop: bool = False
                   ) -> tuple[Tensor, tuple[int, int]]:
    """`load`, and the upright (width, height) of the file's image (what masks must match)."""
    with Image.open(path) as image:
        rgb = to_rgb(image)
        return rgb_to_tensor(rgb, size, crop), rgb.size


ROWS_PER_CHUNK = 256  # rows converted to 8 bits at a time: a large image has no float copy


def to_uint8(image: Tensor) -> Tensor:
    """(1, 3, H, W) or (3, H, W) in [0, 1] -> (H, W, 3) uint8 on the CPU, rounded as
    torchvision's save_image."""
    planes = image.reshape(-1, *image.shape[-2:])
    pixels = torch.empty((*planes.shape[-2:], planes.shape[0]), dtype=torch.uint8)
    for start in range(0, planes.shape[-2], ROWS_PER_CHUNK):
        rows = planes[:, start : start + ROWS_PER_CHUNK].mul(255).add_(0.5).clamp_(0, 255)
        pixels[start : start + ROWS_PER_CHUNK] = rows.to(torch.uint8).permute(1, 2, 0).cpu()
    return pixels


def to_pil(image: Tensor) -> Image.Image:
    """(1, 3, H, W) or (3, H, W) in [0, 1] -> 8-bit RGB, rounded as torchvision's save_image."""
    pixels = to_uint8(image)
    # Pillow reads the tensor's memory instead of copying it (fromarray would copy).
    return Image.frombuffer("RGB", (pixels.shape[1], pixels.shape[0]), pixels.numpy(), "raw",
                            "RGB", 0, 1)
