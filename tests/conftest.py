"""Shared fixtures: random weights in the reference layout, and small test images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.model import make_decoder, make_encoder

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def reference_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(vgg_normalised.pth, decoder.pth): seeded random state dicts in the reference layout.

    The decoder's last conv is scaled so outputs land inside [0, 1] instead of saturating.
    """
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(1234)
    encoder, decoder = make_encoder(), make_decoder()
    with torch.no_grad():
        decoder[-1].weight.mul_(0.05)
        decoder[-1].bias.fill_(0.5)
    torch.save(encoder.state_dict(), folder / "vgg_normalised.pth")
    torch.save(decoder.state_dict(), folder / "decoder.pth")
    return folder / "vgg_normalised.pth", folder / "decoder.pth"


def random_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A smooth random image (noise upsampled), so that features are not pure noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    return image.convert(mode)


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()
