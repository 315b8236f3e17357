"""The stabiliser's OpenCV helpers (models/warping.py): the shortcuts taken for speed give what
the plain computation gives."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from models import warping
from models.warping import (
    FlowMaps,
    contrast_preserving_mix,
    gaussian_blur,
    in_bands,
    linear_mix,
    remap_points,
    rigid_part,
    to_image,
    warp_affine,
)


def noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth random pixels in [0, 1] (strokes of a few pixels)."""
    image = np.random.default_rng(seed).random((height, width, channels), dtype=np.float32)
    return cv2.GaussianBlur(image, (0, 0), 1.5)


def test_bands_of_rows_give_the_whole_frames_blur(monkeypatch: pytest.MonkeyPatch) -> None:
    image = noise(301, 200)
    banded = gaussian_blur(image, 2.0, banded=True)
    monkeypatch.setattr(warping, "BAND_HALO_SHARE", 10**9)
    np.testing.assert_array_equal(banded, gaussian_blur(image, 2.0))


def test_bands_of_rows_give_the_whole_frames_mix_on_its_coarser_grid() -> None:
    """The contrast-preserving mix computes its moments on a grid 4 times coarser: bands on
    multiples of 8 rows see the same grid."""
    first, second = noise(320, 150, seed=1), noise(320, 150, seed=2)
    weight = np.full((320, 150, 1), 0.8, np.float32)

    def rows(band: slice) -> np.ndarray:
        return contrast_preserving_mix(first[band], second[band], weight[band], 3.0)

    banded = in_bands(rows, first, 26)  # rounded up to 32 rows: 26 would shift the grid
    assert banded is not None
    np.testing.assert_array_equal(banded, rows(slice(None)))


@pytest.mark.parametrize("shift", [(0.5, 0.25), (-2.3, 1.7), (2.9, -0.6), (0.0, 0.0)])
@pytest.mark.parametrize("lobes", [3, 4])
def test_a_small_shift_without_padding_equals_the_padded_one(
    shift: tuple[float, float], lobes: int
) -> None:
    """A frame-to-frame shift moves the image by the filter's anchor and lets OpenCV fill the
    edge; the same shift of the image padded first (the general path) agrees."""
    image, pad = noise(120, 90), 12
    border = cv2.BORDER_REPLICATE
    direct = warping._shift(image, *shift, (120, 90), border, lobes=lobes)
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, border)
    general = warping._shift(padded, shift[0] + pad, shift[1] + pad, (120, 90), border, lobes=lobes)
    np.testing.assert_allclose(direct, general, atol=1e-6)


@pytest.mark.parametrize("shift", [(0.5, 0.25), (-2.3, 1.7), (12.4, 9.6)])
def test_a_shift_sharpened_in_its_bands_equals_sharpening_first(
    shift: tuple[float, float],
) -> None:
    """`_shift` sharpening each band of rows before its filters gives the image sharpened
    whole and shifted after, away from the border (which the shift's padding fills before the
    sharpening there)."""
    image, border = noise(200, 120), cv2.BORDER_REPLICATE
    taps = warping.LANCZOS_SHARPENING_TAPS
    banded = warping._shift(image, *shift, (200, 120), border, sharpening=taps)
    sharpened = cv2.sepFilter2D(image, -1, taps, taps, borderType=border)
    sharpened_first = warping._shift(sharpened, *shift, (200, 120), border)
    inner = (slice(20, -20), slice(20, -20))
    np.testing.assert_allclose(banded[inner], sharpened_first[inner], atol=1e-5)


def test_the_sharpened_lanczos_keeps_more_of_the_detail_and_adds_none() -> None:
    """Lanczos-4 (Lanczos-3 for a shift) softens detail near the pixel's scale; on the image
    sharpened first, a turn and a sub-pixel shift keep more of it (variance of the Laplacian),
    without passing the original's."""
    height, width = 120, 160
    image = np.random.default_rng(4).random((height, width, 3), dtype=np.float32)
    image = cv2.GaussianBlur(image, (0, 0), 0.6)  # detail down to two pixels
    inner = (slice(12, -12), slice(12, -12))

    def detail(resampled: np.ndarray) -> float:
        return float(cv2.Laplacian(resampled[inner], cv2.CV_32F).var())

    angle = math.radians(2.0)
    turn = np.array(
        [[math.cos(angle), -math.sin(angle), 3.3], [math.sin(angle), math.cos(angle), -2.6]]
    )
    shift = np.array([[1.0, 0.0, 0.37], [0.0, 1.0, 0.61]])
    for to_source in (turn, shift):
        kept = {
            kernel: detail(
                warp_affine(image, to_source, (height, width), kernel, cv2.BORDER_REFLECT_101)
            )
            / detail(image)
            for kernel in ("lanczos", "sharp_lanczos")
        }
        assert kept["lanczos"] + 0.03 < kept["sharp_lanczos"] < 1.0


def test_a_whole_pixel_shift_moves_the_pixels_exactly() -> None:
    image = noise(64, 80)
    moved = warping._shift(image, 2.0, -1.0, (64, 80), cv2.BORDER_REPLICATE, lobes=4)
    np.testing.assert_allclose(moved[1:, :-2], image[:-1, 2:], atol=1e-6)


def test_the_rigid_part_of_a_uniform_flow_is_its_translation() -> None:
    flow = np.zeros((45, 80, 2), np.float32)
    flow[...] = (0.6, -0.3)
    rigid = rigid_part(flow, np.ones((45, 80), bool), (0.6, -0.3), (180, 320))
    assert rigid is not None
    assert rigid.irregular == ()
    assert rigid.translation == pytest.approx((2.4, -1.2))


def test_a_moving_object_is_irregular_and_a_zoom_all_of_it() -> None:
    height, width = 60, 80
    flow = np.zeros((height, width, 2), np.float32)
    flow[20:36, 40:56] = (2.0, 0.0)  # an object moving 2 px over a still background
    reliable = np.ones((height, width), bool)
    rigid = rigid_part(flow, reliable, (0.0, 0.0), (height, width))
    assert rigid is not None
    covered = np.zeros((height, width), bool)
    for top, bottom, left, right in rigid.irregular:
        covered[top:bottom, left:right] = True
    assert covered[20:36, 40:56].all()
    assert covered.mean() < 0.3
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    zoom = np.stack([(xs - width / 2) * 0.05, (ys - height / 2) * 0.05], axis=-1)
    assert rigid_part(zoom, reliable, (0.0, 0.0), (height, width)) is None


@pytest.mark.parametrize("resample", ["lanczos", "bicubic", "bilinear"])
def test_moving_by_the_rigid_part_agrees_with_the_remap(resample: str) -> None:
    """A flow that is one translation but for an object: the translation by a separable
    filter (or warpAffine) and the object's rectangles by the remap give the remap's frame."""
    height, width = 96, 128
    image = noise(height, width)
    flow = np.zeros((height, width, 2), np.float32)
    flow[...] = (1.5, -0.5)
    flow[40:64, 48:80] = (-3.0, 2.0)
    reliable = np.ones((height, width), bool)
    rigid = rigid_part(flow, reliable, (1.5, -0.5), (height, width))
    assert rigid is not None and rigid.irregular
    fast = FlowMaps(flow, rigid).warp(image, resample)
    plain = FlowMaps(flow).warp(image, resample)
    inner = (slice(4, -4), slice(4, -4))  # the edges: replicated either way, not alike
    np.testing.assert_allclose(fast[inner], plain[inner], atol=2e-3)


def test_the_linear_mix_is_the_weighted_sum() -> None:
    first, second = noise(50, 70, seed=1), noise(50, 70, seed=2)
    weight = np.random.default_rng(3).random((50, 70, 1), dtype=np.float32)
    expected = weight * first + (1 - weight) * second
    np.testing.assert_allclose(linear_mix(first, second, weight), expected, atol=1e-4)
    np.testing.assert_allclose(
        linear_mix(first, second, 0.8), 0.8 * first + 0.2 * second, atol=1e-6
    )


def test_the_sharpened_bicubic_keeps_lanczos_4s_detail() -> None:
    """The bicubic on a sharpened image keeps the detail OpenCV's Lanczos-4 keeps (variance of
    the Laplacian, through a dense map), which the bicubic alone loses, and its pixels are no
    further from Lanczos-4's than the bicubic's."""
    height, width = 120, 160
    image = np.random.default_rng(4).random((height, width, 3), dtype=np.float32)
    image = cv2.GaussianBlur(image, (0, 0), 0.6)  # detail down to two pixels
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    points = cv2.merge([xs + 2.3 * np.sin(ys / 17) + 0.4, ys + 1.7 * np.cos(xs / 23) + 0.3])
    border = cv2.BORDER_REFLECT_101
    lanczos_4 = cv2.remap(image, points, None, cv2.INTER_LANCZOS4, borderMode=border)
    inner = (slice(8, -8), slice(8, -8))

    def detail(resampled: np.ndarray) -> float:
        return float(cv2.Laplacian(resampled[inner], cv2.CV_32F).var())

    ours = remap_points(image, points, "sharp_bicubic", border)
    bicubic = remap_points(image, points, "bicubic", border)
    assert abs(detail(ours) / detail(lanczos_4) - 1) < 0.05
    assert detail(bicubic) / detail(lanczos_4) < 0.9
    assert np.abs(ours - lanczos_4)[inner].mean() < np.abs(bicubic - lanczos_4)[inner].mean()


@pytest.mark.parametrize("layout", ["planes", "channels_last", "channels_last_crop", "bfloat16"])
def test_a_tensor_becomes_its_own_interleaved_copy(layout: str) -> None:
    """`to_image` copies the rows of a channels-last tensor (a network's output) as they are
    and interleaves planes otherwise: the same (H, W, C) float32 pixels either way, in memory
    of their own."""
    tensor = torch.rand(1, 3, 40, 56)
    if layout != "planes":
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    if layout == "channels_last_crop":
        tensor = tensor[..., 3:37, 5:50]
    if layout == "bfloat16":
        tensor = tensor.bfloat16()
    image = to_image(tensor)
    assert image.dtype == np.float32 and image.flags.c_contiguous
    np.testing.assert_array_equal(image, tensor[0].float().permute(1, 2, 0).numpy())
    image[0, 0, 0] = -1.0
    assert float(tensor[0, 0, 0, 0]) != -1.0
