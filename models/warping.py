"""Resampling, blurring and mixing of frames for the stabiliser (`models.video`), through OpenCV.

The stabiliser's images are (H, W, C) float32 numpy arrays in [0, 1] (OpenCV's layout), so
each step is one call into OpenCV's vectorised, threaded kernels instead of torch ops written
for (N, C, H, W); a frame is converted once on the way in and once on the way out. Flows follow
`devkit.clips`: (H, W, 2) backward flow, pixel p shows what the other frame shows at
p + flow(p), channel 0 = x, 1 = y.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property, lru_cache

import cv2
import numpy as np
import torch
from torch import Tensor

# Resampling kernels by name: OpenCV's Lanczos uses 4 lobes (8 x 8 taps). "sharp_bicubic" and
# "sharp_lanczos": OpenCV's bicubic and Lanczos-4 on the image sharpened first by
# SHARPENING_TAPS and LANCZOS_SHARPENING_TAPS (`_resampling`).
INTERPOLATION = {
    "lanczos": cv2.INTER_LANCZOS4,
    "sharp_bicubic": cv2.INTER_CUBIC,
    "sharp_lanczos": cv2.INTER_LANCZOS4,
    "bicubic": cv2.INTER_CUBIC,
    "bilinear": cv2.INTER_LINEAR,
    "nearest": cv2.INTER_NEAREST,
}
# OpenCV's bicubic (Keys, a = -0.75) reads 4 x 4 taps, its Lanczos-4 8 x 8 at four times the
# cost, but the bicubic alone softens the finest detail. This separable 7-tap prefilter, fitted
# by least squares so that it and the bicubic have Lanczos-4's frequency response (averaged
# over the sub-pixel phases) over the whole band, gives Lanczos-4's sharpness on average
# (docs/video.md). Not where an image is resampled again and again: at a whole-pixel phase the
# bicubic passes the sharpening through, and repeated, it compounds.
SHARPENING_TAPS = np.array(
    [0.0136, 0.0116, -0.0479, 1.0454, -0.0479, 0.0116, 0.0136], dtype=np.float32
)
# Lanczos-4 itself, averaged over the sub-pixel phases, keeps 0.79 of the detail at 0.875 pi and
# 0.64 at pi, which strokes at the pixel's scale show. Half of SHARPENING_TAPS's boost before
# it: 0.85 and 0.68 there, within 5% of flat below. For an image resampled once (the lite
# network's output back onto a shifted, turned or zoomed frame); the full boost, or taps
# fitted flat up to 0.85 pi, let more of the network's flicker through (docs/video.md).
LANCZOS_SHARPENING_TAPS = (SHARPENING_TAPS + np.eye(1, 7, 3, dtype=np.float32)[0]) / 2
_SHARPENING = {"sharp_bicubic": SHARPENING_TAPS, "sharp_lanczos": LANCZOS_SHARPENING_TAPS}
# Local variance (of [0, 1] pixel values) under which contrast_preserving_mix leaves a mix as
# it is: flat regions have no strokes to fade.
CONTRAST_FLOOR = 1e-5
# From this window (sigma, px) on, contrast_preserving_mix computes the local moments on a
# coarser grid: 2, 4, ... times, as long as the window keeps a sigma of MOMENTS_GRID_SIGMA
# grid steps (the default window of 3 px: 4 times, 0.75 steps).
MOMENTS_COARSE_SIGMA = 2.0
MOMENTS_GRID_SIGMA = 0.75
LANCZOS_LOBES = 3  # the separable shift's kernel: Lanczos-3, 6 taps per axis
REMAP_LANCZOS_LOBES = 4  # OpenCV's INTER_LANCZOS4: 8 taps per axis
# OpenCV's remap and warpAffine take at most this many channels at once.
MAX_CHANNELS = 4
# `in_bands`: a frame is split into one band of rows per core, each at least this many
# times its halo high (a smaller band would spend more on its halo than it saves).
BAND_HALO_SHARE = 4
BAND_ALIGN = 8
# `rigid_part`: a flow's reliable pixels, averaged over a window of RIGID_WINDOW px (at the
# flow's scale), that depart from the camera's translation by at most RIGID_TOLERANCE_PX
# there are the translation plus DIS's noise; tiles of RIGID_TILE px are moved either way.
RIGID_WINDOW = 5
RIGID_TOLERANCE_PX = 0.2
RIGID_TILE = 8
# Past this share of irregular tiles the whole frame follows the flow (one remap).
RIGID_SHARE = 0.5
# `pixel_points` and `pixel_grid` are cut from grids of sides rounded up to this (px).
GRID_QUANTUM = 64


# Runs `in_bands`' bands (OpenCV and numpy release the interpreter lock).
_BAND_THREADS = "bands"
_BANDS = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix=_BAND_THREADS)


def in_bands(
    compute: Callable[[slice], np.ndarray], like: np.ndarray, halo: int
) -> np.ndarray | None:
    """`compute(rows)`, a frame's result (of `like`'s shape and type, (H, ...)) computed from
    its `rows` only, made by one thread per core on bands of rows, each with `halo` rows more
    on either side that are cropped again: the same result as on the whole frame where the
    computation reaches no further than `halo` rows. Band edges and halos lie on multiples of
    BAND_ALIGN rows, so that a computation on a coarser grid (up to that factor) sees the
    frame's grid. Each band writes its rows into the result (no joining copy after). Much of
    the stabiliser's work (numpy, OpenCV's filters) runs on one core otherwise. None: the
    frame is too small to split."""
    height = like.shape[0]
    halo = BAND_ALIGN * math.ceil(halo / BAND_ALIGN)
    bands = min(os.cpu_count() or 1, height // (BAND_HALO_SHARE * halo))
    if bands < 2 or threading.current_thread().name.startswith(_BAND_THREADS):
        return None  # too small, or in a band already: its pool's threads may all be waiting
    edges = [BAND_ALIGN * round(band * height / bands / BAND_ALIGN) for band in range(bands)]
    edges.append(height)
    result = np.empty_like(like)

    def band(start: int, stop: int) -> None:
        low, high = max(0, start - halo), min(height, stop + halo)
        rows = result[start:stop]
        rows[...] = compute(slice(low, high))[start - low : stop - low].reshape(rows.shape)

    for done in [_BANDS.submit(band, start, stop) for start, stop in itertools.pairwise(edges)]:
        done.result()
    return result


def to_image(tensor: Tensor) -> np.ndarray:
    """(1, C, H, W) tensor -> (H, W, C) float32 array (one copy, on the CPU). A channels-last
    tensor (the networks' outputs) already holds the pixels interleaved: its rows are copied
    as they are; planes are interleaved by OpenCV's merge, several times faster than a
    strided transpose copy."""
    planes = tensor[0].detach().float().cpu()
    if planes.stride(0) == 1:
        return planes.permute(1, 2, 0).numpy().copy()
    image = cv2.merge(list(planes.numpy()))
    return image.reshape(*image.shape[:2], planes.shape[0])


def to_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """(H, W, C) array -> (1, C, H, W) tensor sharing its memory (on the CPU)."""
    return torch.from_numpy(image).permute(2, 0, 1)[None].to(device)


def to_contiguous_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """(H, W, C) array -> (1, C, H, W) contiguous tensor (one copy, what a network takes):
    OpenCV's transpose of the (H * W, C) matrix, about twice as fast as numpy's strided copy."""
    height, width, channels = image.shape
    if image.flags.c_contiguous:
        planes = cv2.transpose(image.reshape(height * width, channels))
    else:
        planes = np.ascontiguousarray(image.transpose(2, 0, 1))
    return torch.from_numpy(planes.reshape(channels, height, width))[None].to(device)


def pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y of every pixel, (H, W) float32 each (read-only views of shared arrays)."""
    xs, ys = _pixel_grid(_rounded_up(height), _rounded_up(width))
    return xs[:height, :width], ys[:height, :width]


def pixel_points(height: int, width: int) -> np.ndarray:
    """(x, y) of every pixel, (H, W, 2) float32 (a read-only view of a shared array)."""
    return _pixel_points(_rounded_up(height), _rounded_up(width))[:height, :width]


def _rounded_up(side: int) -> int:
    """A side rounded up to a multiple of GRID_QUANTUM: the grids are made once for sizes
    that change by a few pixels from frame to frame (a resampled canvas's), and cropped."""
    return GRID_QUANTUM * -(-side // GRID_QUANTUM)


@lru_cache(maxsize=8)
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    xs.flags.writeable = ys.flags.writeable = False
    return xs, ys


@lru_cache(maxsize=8)
def _pixel_points(height: int, width: int) -> np.ndarray:
    points = cv2.merge(list(_pixel_grid(height, width)))
    points.flags.writeable = False
    return points


@dataclass(frozen=True)
class RigidPart:
    """Where a backward flow is one translation to within its noise: the whole frame moves
    by `translation` (x, y, px) but for the `irregular` rectangles (top, bottom, left, right),
    which follow the flow itself."""

    translation: tuple[float, float]
    irregular: tuple[tuple[int, int, int, int], ...]


def rigid_part(
    flow: np.ndarray,
    reliable: np.ndarray,
    translation: tuple[float, float],
    size: tuple[int, int],
) -> RigidPart | None:
    """The rigid part of a backward flow (H, W, 2) computed at a reduced scale, for the frame
    of `size` (H, W) it is scaled up to: the tiles (RIGID_TILE px at the flow's scale) where
    the flow's reliable pixels, averaged over a RIGID_WINDOW px window to take out DIS's
    noise, depart from `translation` (at the flow's scale) by more than RIGID_TOLERANCE_PX
    anywhere are irregular (a moving object, a zoom, a deforming scene). None: more than
    RIGID_SHARE of the tiles are."""
    weight = reliable.astype(np.float32)
    residual = (flow - np.asarray(translation, dtype=np.float32)) * weight[..., None]
    window = (RIGID_WINDOW, RIGID_WINDOW)
    mean = cv2.boxFilter(residual, -1, window)
    mean = cv2.magnitude(mean[..., 0], mean[..., 1])
    irregular = mean > RIGID_TOLERANCE_PX * np.maximum(cv2.boxFilter(weight, -1, window), 1e-3)
    return rigid_around(irregular, translation, size)


def rigid_around(
    irregular: np.ndarray, translation: tuple[float, float], size: tuple[int, int]
) -> RigidPart | None:
    """The rigid part of a backward flow that is `translation` (x, y, px) but on the
    `irregular` pixels ((h, w) bool, at the flow's scale), for the frame of `size` (H, W) it
    is scaled up to: the tiles of RIGID_TILE px holding an irregular pixel follow the flow.
    None: more than RIGID_SHARE of the tiles do."""
    height, width = irregular.shape
    rows, columns = -(-height // RIGID_TILE), -(-width // RIGID_TILE)
    padded = np.zeros((rows * RIGID_TILE, columns * RIGID_TILE), dtype=bool)
    padded[:height, :width] = irregular
    tiles = padded.reshape(rows, RIGID_TILE, columns, RIGID_TILE).any(axis=(1, 3))
    if np.count_nonzero(tiles) > RIGID_SHARE * tiles.size:
        return None
    # Tile edges on the frame (the flow's pixel i covers the frame's i * scale onwards).
    frame_height, frame_width = size
    row_edges = np.minimum(np.arange(rows + 1) * RIGID_TILE * frame_height / height, frame_height)
    column_edges = np.minimum(
        np.arange(columns + 1) * RIGID_TILE * frame_width / width, frame_width
    )
    row_edges, column_edges = np.round(row_edges).astype(int), np.round(column_edges).astype(int)
    rectangles = []
    for row, flagged in enumerate(tiles):
        # Runs of irregular tiles along the row: one rectangle each.
        steps = np.diff(np.concatenate([[0], flagged.view(np.int8), [0]]))
        for start, stop in zip(
            np.flatnonzero(steps == 1), np.flatnonzero(steps == -1), strict=True
        ):
            rectangles.append(
                (row_edges[row], row_edges[row + 1], column_edges[start], column_edges[stop])
            )
    scale_x, scale_y = frame_width / width, frame_height / height
    return RigidPart(
        (translation[0] * scale_x, translation[1] * scale_y),
        tuple(tuple(int(edge) for edge in rectangle) for rectangle in rectangles),
    )


class FlowMaps:
    """A backward flow made into the points each pixel samples once, for the several images
    moved along it in a frame; with its `rigid` part, the frame is moved by the translation (a
    separable filter, many times cheaper than a remap with Lanczos) and only the irregular
    rectangles along the flow."""

    def __init__(self, flow: np.ndarray, rigid: RigidPart | None = None) -> None:
        self.flow = flow
        self.rigid = rigid

    @cached_property
    def points(self) -> np.ndarray:
        """(H, W, 2): where each pixel's match lies."""
        return cv2.add(self.flow, pixel_points(*self.flow.shape[:2]))

    def inside(self) -> np.ndarray:
        """(H, W) bool: the matches that lie in the other frame."""
        height, width = self.points.shape[:2]
        return cv2.inRange(self.points, (0, 0), (width - 1, height - 1)) > 0

    def warp(
        self, image: np.ndarray, resample: str = "bilinear", irregular: str | None = None
    ) -> np.ndarray:
        """`image` (H, W[, C]) sampled at p + flow(p), edges clamped; `irregular`: the kernel
        where the flow is not the rigid part's translation (by default `resample`)."""
        remapped = irregular or resample
        if self.rigid is None:
            return remap_points(image, self.points, remapped, cv2.BORDER_REPLICATE)
        dx, dy = self.rigid.translation
        size, border = (image.shape[0], image.shape[1]), cv2.BORDER_REPLICATE
        if resample == "lanczos":  # OpenCV's remap's Lanczos has 4 lobes
            moved = _shift(image, dx, dy, size, border, lobes=REMAP_LANCZOS_LOBES)
        else:
            moved = warp_affine(
                image, np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]]), size, resample, border
            )
        for top, bottom, left, right in self.rigid.irregular:
            moved[top:bottom, left:right] = remap_points(
                image, self.points[top:bottom, left:right], remapped, border
            )
        return moved


def warp_affine(
    image: np.ndarray,
    to_source: np.ndarray,
    size: tuple[int, int],
    resample: str,
    border: int,
) -> np.ndarray:
    """(h, w[, C]) of size (h, w) whose pixel p is `image` at `to_source` (2, 3) @ (p, 1). A
    translation with "lanczos" ("sharp_lanczos": on the image sharpened first) is two 1-D
    Lanczos-3 filters (separable, several times faster than OpenCV's 8 x 8 Lanczos-4 warp: a
    sub-pixel pan's every frame takes one each way)."""
    height, width = size
    if resample in ("lanczos", "sharp_lanczos") and np.array_equal(to_source[:, :2], np.eye(2)):
        shift_x, shift_y = float(to_source[0, 2]), float(to_source[1, 2])
        return _shift(image, shift_x, shift_y, size, border, sharpening=_SHARPENING.get(resample))
    source, kernel = _resampling(image, resample, border)
    flags = kernel | cv2.WARP_INVERSE_MAP

    def apply(part: np.ndarray) -> np.ndarray:
        return cv2.warpAffine(part, to_source, (width, height), flags=flags, borderMode=border)

    return _per_channels(source, apply)


def remap_points(image: np.ndarray, points: np.ndarray, resample: str, border: int) -> np.ndarray:
    """(h, w[, C]) whose pixel p is `image` at `points[p]` ((h, w, 2) float32 (x, y)). On
    float points rather than OpenCV's fixed-point tables: its bilinear remap of 1, 3 or 4
    channels runs twice as fast on them, the other kernels alike."""
    source, kernel = _resampling(image, resample, border)
    return _per_channels(
        source, lambda part: cv2.remap(part, points, None, kernel, borderMode=border)
    )


def _resampling(image: np.ndarray, resample: str, border: int) -> tuple[np.ndarray, int]:
    """What OpenCV's warps and remaps read for `resample`, and their kernel: the sharpened
    kernels read the image sharpened by their taps (`_SHARPENING`, in bands of rows on all
    cores)."""
    taps = _SHARPENING.get(resample)
    if taps is None:
        return image, INTERPOLATION[resample]
    reach = len(taps) // 2

    def rows(band: slice) -> np.ndarray:
        sharpened = cv2.sepFilter2D(image[band], -1, taps, taps, borderType=border)
        return sharpened[..., None] if image.ndim == 3 and sharpened.ndim == 2 else sharpened

    sharpened = in_bands(rows, image, reach)
    return (rows(slice(None)) if sharpened is None else sharpened), INTERPOLATION[resample]


def _lanczos_taps(fraction: float, lobes: int) -> np.ndarray:
    """The 2 * lobes normalised Lanczos weights of the samples at offsets 1 - lobes .. lobes
    for a point `fraction` in [0, 1) past the first of the middle two."""
    distance = fraction - np.arange(1 - lobes, lobes + 1, dtype=np.float64)
    taps = np.sinc(distance) * np.sinc(distance / lobes)
    return (taps / taps.sum()).astype(np.float32)


def _shift(
    image: np.ndarray,
    shift_x: float,
    shift_y: float,
    size: tuple[int, int],
    border: int,
    *,
    sharpening: np.ndarray | None = None,
    lobes: int = LANCZOS_LOBES,
) -> np.ndarray:
    """(h, w[, C]) whose pixel (x, y) is `image` at (x + shift_x, y + shift_y), Lanczos with
    `lobes` lobes as two 1-D filters, on the image sharpened by the symmetric `sharpening`
    taps first (in the same bands of rows)."""
    height, width = size
    base_x, base_y = math.floor(shift_x), math.floor(shift_y)
    reach = lobes - 1
    taps_x, taps_y = _lanczos_taps(shift_x - base_x, lobes), _lanczos_taps(shift_y - base_y, lobes)
    # The source pixels the taps read: columns base_x - reach .. base_x + width + reach + 1,
    # rows alike.
    left, top = base_x - reach, base_y - reach
    source_height, source_width = image.shape[:2]
    if size == (source_height, source_width) and {-left, -top} <= set(range(2 * lobes)):
        # A shift by less than the taps' reach (a frame-to-frame motion): the filter's anchor
        # moves the image and OpenCV's border the pixels outside it, without a padded copy.
        window, anchor, border_type = image, (-left, -top), border
    else:
        right, bottom = left + width + 2 * lobes - 1, top + height + 2 * lobes - 1
        pads = (
            max(0, -top),
            max(0, bottom - source_height),
            max(0, -left),
            max(0, right - source_width),
        )
        padded = cv2.copyMakeBorder(image, *pads, border) if any(pads) else image
        # A view: OpenCV takes rows at any stride, no copy needed. Row y of the result reads
        # rows y .. y + 2 * lobes - 1 of the window (the rows past it are cropped).
        window = padded[top + pads[0] : bottom + pads[0], left + pads[2] : right + pads[2]]
        anchor, border_type = (0, 0), cv2.BORDER_REPLICATE

    def rows(band: slice) -> np.ndarray:
        part = window[band]
        if sharpening is not None:
            part = cv2.sepFilter2D(part, -1, sharpening, sharpening, borderType=border_type)
        return cv2.sepFilter2D(part, -1, taps_x, taps_y, anchor=anchor, borderType=border_type)

    sharpening_reach = 0 if sharpening is None else len(sharpening) // 2
    filtered = in_bands(rows, window, 2 * lobes + sharpening_reach)
    filtered = rows(slice(None)) if filtered is None else filtered
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


def gaussian_blur(
    image: np.ndarray, sigma: float, banded: bool = False, reach: float = 3.0
) -> np.ndarray:
    """Gaussian blur of (H, W[, C]), reflect-padded (`reach` sigmas each side, less on an
    image too small for that: reflection needs fewer pixels of padding than of image);
    `banded`: in bands of rows on all cores (`in_bands`; OpenCV's Gaussian filter uses one)."""
    radius = min(max(1, int(reach * sigma + 0.5)), min(image.shape[:2]) - 1)
    if radius < 1:
        return image
    side = 2 * radius + 1

    def rows(band: slice) -> np.ndarray:
        blurred = cv2.GaussianBlur(
            image[band], (side, side), sigma, borderType=cv2.BORDER_REFLECT_101
        )
        return blurred[..., None] if image.ndim == 3 and blurred.ndim == 2 else blurred

    blurred = in_bands(rows, image, radius) if banded else None
    return rows(slice(None)) if blurred is None else blurred


def over_channels(weight: np.ndarray, channels: int) -> np.ndarray:
    """An (H, W, 1) weight repeated over `channels`, (H, W, channels), a new array: numpy's
    broadcasting of an (H, W, 1) factor costs several times a product of equal shapes."""
    if weight.shape[2] == channels:
        return weight.copy()
    if channels in (3, 4):
        code = cv2.COLOR_GRAY2RGB if channels == 3 else cv2.COLOR_GRAY2RGBA
        return cv2.cvtColor(weight, code)
    return np.repeat(weight, channels, axis=2)


def linear_mix(first: np.ndarray, second: np.ndarray, weight: np.ndarray | float) -> np.ndarray:
    """weight * first + (1 - weight) * second, (H, W, C) each and weight (H, W, 1) or a
    number: one pass of OpenCV's blendLinear (its per-pixel weights need no repeating over
    the channels; it divides by the weights' sum plus 1e-5, a relative error of 1e-5)."""
    if not isinstance(weight, np.ndarray):
        mixed = np.multiply(first, np.float32(weight))
        mixed += np.multiply(second, np.float32(1 - weight))
        return mixed
    plane = weight.reshape(weight.shape[:2])
    mixed = cv2.blendLinear(first, second, plane, np.subtract(1, plane))
    return mixed.reshape(first.shape)


def contrast_preserving_mix(
    first: np.ndarray,
    second: np.ndarray,
    weight: np.ndarray,
    sigma: float,
    mean_share: np.ndarray | None = None,
) -> np.ndarray:
    """weight * first + (1 - weight) * second ((H, W, C), weight (H, W, 1)), its deviation
    from the local mean scaled so that its local variance is `second`'s (Heitz and Neyret
    2018's variance-preserving blend, with the parts' local covariance, but keeping the
    second part's contrast: the stabiliser's second part is the network's new output, its
    first a mix of earlier ones, whose contrast each frame's mix and resampling move away
    from the network's); `mean_share` (H, W, 1) in [0, 1]: where the weighted mean of the
    parts' variances is kept instead (their own blend). The gain is 1 where the parts agree,
    up to 2 where they are unrelated (or the first has less contrast), never under 1. Local
    moments in a Gaussian window of `sigma` px; they vary no faster than the window, so from
    a sigma of MOMENTS_COARSE_SIGMA on they are computed on a coarser grid (the arithmetic,
    not the blurs, is what costs at video sizes) and interpolated back."""
    height, width, channels = first.shape
    factor = 1
    while sigma >= MOMENTS_COARSE_SIGMA and sigma / (2 * factor) >= MOMENTS_GRID_SIGMA:
        factor *= 2
    if factor > 1 and min(height, width) >= 2 * factor:
        coarse = (-(-width // factor), -(-height // factor))
        shared = (weight,) if mean_share is None else (weight, mean_share)
        first_c, second_c, weight_c, *share_c = (
            cv2.resize(part, coarse, interpolation=cv2.INTER_AREA).reshape(*coarse[::-1], -1)
            for part in (first, second, *shared)
        )
        share = over_channels(share_c[0], channels) if share_c else None
        offset, gain = (
            cv2.resize(part, (width, height), interpolation=cv2.INTER_LINEAR).reshape(
                height, width, channels
            )
            for part in _contrast_gain(
                first_c, second_c, over_channels(weight_c, channels), sigma / factor, share
            )
        )
    else:
        share = None if mean_share is None else over_channels(mean_share, channels)
        offset, gain = _contrast_gain(first, second, over_channels(weight, channels), sigma, share)
    # mean + (linear mix - mean) * gain = linear mix * gain + offset
    mixed = linear_mix(first, second, weight)
    mixed *= gain
    mixed += offset
    return mixed


def _contrast_gain(
    first: np.ndarray,
    second: np.ndarray,
    weight: np.ndarray,
    sigma: float,
    mean_share: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The mix's contrast gain (see contrast_preserving_mix) and its local mean times
    (1 - gain), in place on a few buffers; `weight` and `mean_share` of the parts' shape."""
    other = np.subtract(1, weight)
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
    covariance = gaussian_blur(scratch, sigma)
    covariance -= np.multiply(mean_first, mean_second, out=scratch)
    # The floor keeps flat regions (both variances ~0) from being amplified by noise.
    wanted = np.add(var_second, CONTRAST_FLOOR)
    if mean_share is not None:  # w var1 + (1 - w) var2 = var2 + w (var1 - var2)
        wanted += mean_share * weight * (var_first - var_second)
    # The linear mix's variance: w^2 var1 + (1 - w)^2 var2 + 2 w (1 - w) cov.
    covariance *= weight
    covariance *= other
    covariance *= 2
    var_first *= weight
    var_first *= weight
    var_second *= other
    var_second *= other
    mixed = np.add(var_first, var_second, out=var_first)
    mixed += covariance
    mixed += CONTRAST_FLOOR
    gain = np.divide(wanted, mixed, out=wanted)
    np.sqrt(gain, out=gain)
    np.clip(gain, 1, 2, out=gain)
    # The mix's local mean, times 1 - gain.
    mean_first *= weight
    mean_second *= other
    mean_first += mean_second
    np.subtract(1, gain, out=scratch)
    mean_first *= scratch
    return mean_first, gain
