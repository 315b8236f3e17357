"""Small synthetic images for tests and benchmarks, and their encoded bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def random_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A smooth random image (noise upsampled), so that features are not pure noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    return image.convert(mode)


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    """The file `image.save` would write, as bytes (an upload's body)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def psnr(one: np.ndarray, other: np.ndarray, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of two images of the same shape (values 0..peak)."""
    error = np.mean((np.asarray(one, dtype=np.float64) - np.asarray(other, dtype=np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(peak**2 / error))
