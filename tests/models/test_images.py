"""`prepared_size` predicts `prepare`'s output size without decoding (for the pixel budget)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from devkit.images import random_image
from models.images import prepare, prepared_size, upright_mask_to_tensor


@pytest.mark.parametrize(
    ("width", "height", "size", "crop"),
    [(40, 30, 0, False), (40, 30, 17, False), (30, 40, 17, False), (333, 97, 64, False),
     (97, 333, 64, False), (50, 50, 31, False), (81, 47, 20, True), (13, 200, 9, False)],
)
def test_prepared_size_matches_prepare(width: int, height: int, size: int, crop: bool) -> None:
    tensor = prepare(random_image(width, height), size, crop)
    assert tuple(tensor.shape[-2:]) == prepared_size(width, height, size, crop)


def png_roundtrip(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return Image.open(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize("level", [257, 20000, 32768, 65535])
def test_16_bit_masks_read_at_their_level(level: int) -> None:
    """Not clipped to 8 bits (where every level from 255 up read as white)."""
    mask = png_roundtrip(Image.fromarray(np.full((12, 10), level, dtype=np.uint16)))
    assert mask.mode == "I;16"
    for size in ((12, 10), (6, 5)):
        coverage = upright_mask_to_tensor(mask, size)
        assert coverage.shape == size
        torch.testing.assert_close(coverage, torch.full(size, level / 65535), atol=1e-6, rtol=0)


def test_a_mask_alpha_multiplies_its_luminance() -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., :3] = 255
    rgba[:, :4, 3] = 255  # opaque white: covered
    rgba[:, 4:, 3] = 0  # transparent white: not covered
    rgba[:2, 4:, 3] = 128  # half transparent white
    coverage = upright_mask_to_tensor(png_roundtrip(Image.fromarray(rgba)), (8, 8))
    assert (coverage[:, :4] == 1).all() and (coverage[2:, 4:] == 0).all()
    torch.testing.assert_close(coverage[:2, 4:], torch.full((2, 4), 128 / 255))
    grey_alpha = Image.fromarray(np.full((8, 8), 128, np.uint8)).convert("LA")
    grey_alpha.putalpha(64)
    torch.testing.assert_close(
        upright_mask_to_tensor(grey_alpha, (4, 4)), torch.full((4, 4), 128 / 255 * 64 / 255)
    )
