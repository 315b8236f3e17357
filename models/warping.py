"""Resampling, blurring and mixing of frames for the stabiliser (`models.video`), through OpenCV.

The stabiliser's images are (H, W, C) float32 numpy arrays in [0, 1] (OpenCV's layout), so
each step is one call into OpenCV's vectorised, threaded kernels instead of torch ops written
for (N, C, H, W); a frame is converted once on the way in and once on the way out. Flows follow
`devkit.clips`: (H, W, 2) backward flow, pixel p shows what the other frame shows at
p + flow(p), channel 0 = x, 1 = y.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import cv2
import numpy as np
import torch
from torch import Tensor

# Resampling kernels by name: OpenCV's Lanczos uses 4 lobes (8 x 8 taps).
INTERPOLATION = {
    "lanczos": cv2.INTER_LANCZOS4,
    "bicubic": cv2.INTER_CUBIC,
    "bilinear": cv2.INTER_LINEAR,
    "nearest": cv2.INTER_NEAREST,
}
# Local variance (of [0, 1] pixel values) under which contrast_preserving_mix leaves a mix as
# it is: flat regions have no strokes to fade.
CONTRAST_FLOOR = 1e-5
# From this window (sigma, px) on, contrast_preserving_mix computes the local moments on a grid
# twice as coarse.
MOMENTS_COARSE_SIGMA = 2.0
LANCZOS_LOBES = 3  # the separable shift's kernel: Lanczos-3, 6 taps per axis
# OpenCV's remap and warpAffine take at most this many channels at once.
MAX_CHANNELS = 4


def to_image(tensor: Tensor) -> np.ndarray:
    """(1, C, H, W) tensor -> (H, W, C) float32 array (one copy, on the CPU): OpenCV's merge
    interleaves the planes several times faster than a strided transpose copy."""
    planes = tensor[0].detach().float().cpu().numpy()
    image = cv2.merge(list(planes))
    return image.reshape(*image.shape[:2], planes.shape[0])


def to_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """(H, W, C) array -> (1, C, H, W) tensor sharing its memory (on the CPU)."""
    return torch.from_numpy(image).permute(2, 0, 1)[None].to(device)


def to_contiguous_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """(H, W, C) array -> (1, C, H, W) contiguous tensor (one copy, what a network takes)."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(device)


@lru_cache(maxsize=8)
def pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y of every pixel, (H, W) float32 each (read-only: shared between calls)."""
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    xs.flags.writeable = ys.flags.writeable = False
    return xs, ys


@lru_cache(maxsize=8)
def pixel_points(height: int, width: int) -> np.ndarray:
    """(x, y) of every pixel, (H, W, 2) float32 (read-only: shared between calls)."""
    points = cv2.merge(list(pixel_grid(height, width)))
    points.flags.writeable = False
    return points


class FlowMaps:
    """A backward flow made into OpenCV's fixed-point remapping tables once, for the several
    images moved along it in a frame."""

    def __init__(self, flow: np.ndarray) -> None:
        self.points = cv2.add(flow, pixel_points(*flow.shape[:2]))  # (H, W, 2): where p goes
        self.fixed, self.fraction = cv2.convertMaps(self.points, None, cv2.CV_16SC2)

    def inside(self) -> np.ndarray:
        """(H, W) bool: the matches that lie in the other frame."""
        height, width = self.points.shape[:2]
        return cv2.inRange(self.points, (0, 0), (width - 1, height - 1)) > 0

    def warp(self, image: np.ndarray, resample: str = "bilinear") -> np.ndarray:
        """`image` (H, W[, C]) sampled at p + flow(p), edges clamped."""
        return _per_channels(
            image,
            lambda part: cv2.remap(
                part,
                self.fixed,
                self.fraction,
                INTERPOLATION[resample],
                borderMode=cv2.BORDER_REPLICATE,
            ),
        )


def warp_affine(
    image: np.ndarray,
    to_source: np.ndarray,
    size: tuple[int, int],
    resample: str,
    border: int,
) -> np.ndarray:
    """(h, w[, C]) of size (h, w) whose pixel p is `image` at `to_source` (2, 3) @ (p, 1). A
    translation with "lanczos" is two 1-D Lanczos-3 filters (separable, several times faster
    than OpenCV's 8 x 8 Lanczos-4 warp: a sub-pixel pan's every frame takes one each way)."""
    height, width = size
    if resample == "lanczos" and np.array_equal(to_source[:, :2], np.eye(2)):
        return _shift(image, float(to_source[0, 2]), float(to_source[1, 2]), size, border)
    flags = INTERPOLATION[resample] | cv2.WARP_INVERSE_MAP

    def apply(part: np.ndarray) -> np.ndarray:
        return cv2.warpAffine(part, to_source, (width, height), flags=flags, borderMode=border)

    return _per_channels(image, apply)


def remap_points(image: np.ndarray, points: np.ndarray, resample: str, border: int) -> np.ndarray:
    """(h, w[, C]) whose pixel p is `image` at `points[p]` ((h, w, 2) float32 (x, y)): a dense
    placement (a deforming scene's)."""
    return _per_channels(
        image,
        lambda part: cv2.remap(part, points, None, INTERPOLATION[resample], borderMode=border),
    )


def _lanczos_taps(fraction: float) -> np.ndarray:
    """The 6 normalised Lanczos-3 weights of the samples at offsets -2..3 for a point
    `fraction` in [0, 1) past the first of the middle two."""
    distance = fraction - np.arange(-LANCZOS_LOBES + 1, LANCZOS_LOBES + 1, dtype=np.float64)
    taps = np.sinc(distance) * np.sinc(distance / LANCZOS_LOBES)
    return (taps / taps.sum()).astype(np.float32)


def _shift(
    image: np.ndarray, shift_x: float, shift_y: float, size: tuple[int, int], border: int
) -> np.ndarray:
    """(h, w[, C]) whose pixel (x, y) is `image` at (x + shift_x, y + shift_y), Lanczos-3."""
    height, width = size
    base_x, base_y = math.floor(shift_x), math.floor(shift_y)
    reach = LANCZOS_LOBES - 1
    # The source pixels the taps read: columns base_x - 2 .. base_x + width + 2, rows alike.
    left, top = base_x - reach, base_y - reach
    right, bottom = left + width + 2 * LANCZOS_LOBES - 1, top + height + 2 * LANCZOS_LOBES - 1
    source_height, source_width = image.shape[:2]
    pads = (
        max(0, -top),
        max(0, bottom - source_height),
        max(0, -left),
        max(0, right - source_width),
    )
    padded = cv2.copyMakeBorder(image, *pads, border) if any(pads) else image
    window = padded[top + pads[0] : bottom + pads[0], left + pads[2] : right + pads[2]]
    taps_x, taps_y = _lanczos_taps(shift_x - base_x), _lanczos_taps(shift_y - base_y)
    filtered = cv2.sepFilter2D(
        window,  # a view: OpenCV takes rows at any stride, no copy needed
        -1,
        taps_x,
        taps_y,
        anchor=(0, 0),
        borderType=cv2.BORDER_REPLICATE,
    )
    result = filtered[:height, :width]
    return result[..., None] if image.ndim == 3 and result.ndim == 2 else result


def _per_channels(image: np.ndarray, apply: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`apply` on groups of at most MAX_CHANNELS channels; the channel axis kept as given."""
    if image.ndim == 2 or image.shape[2] <= MAX_CHANNELS:
        result = apply(image)
        return result[..., None] if image.ndim == 3 and result.ndim == 2 else result
    parts = [
        apply(np.ascontiguousarray(image[..., start : start + MAX_CHANNELS]))
        for start in range(0, image.shape[2], MAX_CHANNELS)
    ]
    return np.concatenate([p[..., None] if p.ndim == 2 else p for p in parts], axis=2)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of (H, W[, C]), reflect-padded (3 sigma each side, less on an image too
    small for that: reflection needs fewer pixels of padding than of image)."""
    radius = min(max(1, int(3 * sigma + 0.5)), min(image.shape[:2]) - 1)
    if radius < 1:
        return image
    side = 2 * radius + 1
    blurred = cv2.GaussianBlur(image, (side, side), sigma, borderType=cv2.BORDER_REFLECT_101)
    return blurred[..., None] if image.ndim == 3 and blurred.ndim == 2 else blurred


def contrast_preserving_mix(
    first: np.ndarray, second: np.ndarray, weight: np.ndarray, sigma: float
) -> np.ndarray:
    """weight * first + (1 - weight) * second ((H, W, C), weight (H, W, 1)), its deviation from
    the local mean scaled so that its local variance is the weighted mean of the parts'
    (Heitz and Neyret 2018's variance-preserving blend, with the parts' local covariance): the
    gain is 1 where the parts agree, up to 2 where they are unrelated. Local moments in a
    Gaussian window of `sigma` px; they vary no faster than the window, so from a sigma of
    MOMENTS_COARSE_SIGMA on they are computed on a grid twice as coarse (the arithmetic,
    not the blurs, is what costs at video sizes) and interpolated back."""
    height, width = first.shape[:2]
    if sigma >= MOMENTS_COARSE_SIGMA and min(height, width) >= 4:
        half = ((width + 1) // 2, (height + 1) // 2)
        parts = [cv2.resize(part, half, interpolation=cv2.INTER_AREA) for part in (first, second)]
        shares = cv2.resize(weight, half, interpolation=cv2.INTER_AREA).reshape(*half[::-1], 1)
        mean, gain = (
            cv2.resize(part, (width, height), interpolation=cv2.INTER_LINEAR)
            for part in _contrast_gain(*parts, shares, sigma / 2)
        )
    else:
        mean, gain = _contrast_gain(first, second, weight, sigma)
    # mean + (linear mix - mean) * gain
    mixed = np.subtract(first, second)
    mixed *= weight
    mixed += second
    mixed -= mean
    mixed *= gain
    mixed += mean
    return mixed


def _contrast_gain(
    first: np.ndarray, second: np.ndarray, weight: np.ndarray, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """The local mean of the mix and its contrast gain (see contrast_preserving_mix), in place
    on a few buffers."""
    other = 1 - weight
    mean_first, mean_second = gaussian_blur(first, sigma), gaussian_blur(second, sigma)
    scratch = np.multiply(first, first)
    var_first = gaussian_blur(scratch, sigma)
    var_first -= np.multiply(mean_first, mean_first, out=scratch)
    np.maximum(var_first, 0, out=var_first)
    np.multiply(second, second, out=scratch)
    var_second = gaussian_blur(scratch, sigma)
    var_second -= np.multiply(mean_second, mean_second, out=scratch)
    np.maximum(var_second, 0, out=var_second)
    np.multiply(first, second, out=scratch)
    apart = gaussian_blur(scratch, sigma)
    apart -= np.multiply(mean_first, mean_second, out=scratch)
    # The wanted variance w var1 + (1 - w) var2 exceeds the linear mix's
    # w^2 var1 + (1 - w)^2 var2 + 2 w (1 - w) cov by w (1 - w) (var1 + var2 - 2 cov).
    apart *= -2
    apart += var_first
    apart += var_second
    apart *= weight * other
    var_first *= weight
    var_second *= other
    wanted = np.add(var_first, var_second, out=var_first)
    # The floor keeps flat regions (both variances ~0) from being amplified by noise.
    wanted += CONTRAST_FLOOR
    mixed = np.subtract(wanted, apart, out=var_second)
    gain = np.divide(wanted, mixed, out=wanted)
    np.sqrt(gain, out=gain)
    np.clip(gain, 1, 2, out=gain)
    mean_first *= weight
    mean_second *= other
    mean_first += mean_second
    return mean_first, gain
