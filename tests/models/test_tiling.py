"""Tiled stylization: the untiled output, up to float rounding, for every control and any size."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import Tensor

from devkit import reference_port as port
from models import model, tiling
from models.model import (
    Masks,
    StyleMix,
    StyleTransfer,
    calc_mean_std,
    calc_region_mean_std,
    coral,
    make_encoder,
    masks_from_binary,
)
from models.pipeline import Pipeline, stylize_batch
from models.weights import load_model

# Tiled and untiled passes sum the same products in other orders (float32 convolutions whose
# oneDNN kernels differ by shape and CPU); measured differences are ~5e-7 here, a wrong margin or
# grid shows ~1e-2: the bound leaves room for other CPUs and still tells the two apart.
TILE_TOLERANCE = 1e-4
TILE = 64  # small tiles: images of a few hundred pixels cross several tile edges


@pytest.fixture(scope="module")
def net(reference_weights: tuple[Path, Path]) -> StyleTransfer:
    return load_model(*reference_weights)


@pytest.fixture
def tiled(net: StyleTransfer) -> Pipeline:
    return Pipeline(net, TILE)


def untiled(pipeline: Pipeline, content: Tensor, mix: StyleMix) -> Tensor:
    return stylize_batch(pipeline.net, content, [mix], tile_size=0)


def rand(*shape: int, seed: int) -> Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def two_styles(net: Pipeline, masks: Masks | None, alpha: float) -> StyleMix:
    means, stds = net.style_statistics(
        torch.cat([rand(1, 3, 48, 48, seed=1), rand(1, 3, 48, 48, seed=2)])
    )
    return StyleMix(means, stds, torch.tensor([1.0, 3.0]), masks, alpha)


def test_the_margin_covers_what_cut_edges_spoil() -> None:
    # Encoder to relu4_1: 4 features wrong from a cut edge; with the decoder, 62 output pixels.
    assert tiling.cut_reach(make_encoder()) == 4
    assert tiling.MARGIN == 64


@pytest.mark.parametrize("length", [64, 150, 203, 256])
def test_tiles_cover_the_image_once_on_the_feature_grid(length: int) -> None:
    spans = tiling.spans(length, TILE)
    assert [s.start for s in spans] == list(range(0, length, TILE))
    assert spans[-1].stop == length
    for span in spans:
        assert span.window_start % 8 == 0 and span.window_start >= 0
        assert span.window_stop == min(span.stop + tiling.MARGIN, length)
        assert span.start - span.window_start in (0, tiling.MARGIN)


def partial_masks(height: int, width: int) -> Masks:
    """Uncovered pixels (they take the unmasked mix) and an almost empty region (it takes the
    whole image's statistics), both summed over tiles."""
    values = torch.zeros(2, height, width)
    values[0, : height // 3, : width // 2] = 1.0
    values[1, -3:, -3:] = 0.5
    return Masks(values)


@pytest.mark.parametrize(
    ("height", "width", "control"),
    [
        (203, 157, "plain"),
        (160, 240, "alpha"),
        (131, 97, "soft masks"),
        (203, 157, "binary mask"),
        (203, 157, "partial masks"),
        (203, 157, "content box"),
        (131, 97, "content box and masks"),
        (203, 157, "content box on a margin unlike the frame"),
    ],
)
def test_tiled_equals_untiled(tiled: Pipeline, height: int, width: int, control: str) -> None:
    content = rand(1, 3, height, width, seed=3)
    masks = {
        "soft masks": Masks(rand(2, height, width, seed=4)),
        "binary mask": masks_from_binary(rand(height, width, seed=5)),
        "partial masks": partial_masks(height, width),
        "content box and masks": Masks(rand(2, height, width, seed=4)),
    }.get(control)
    mix = two_styles(tiled, masks, alpha=0.6 if control == "alpha" else 1.0)
    if control.startswith("content box"):  # a frame on a padded canvas (the stabiliser's)
        mix = replace(mix, content_box=(5, height - 9, 11, width - 4))
    if control.endswith("unlike the frame"):  # its features held within the frame's range
        stripes = (torch.arange(width) // 2 % 2).float().expand(1, 3, height, width)
        content = stripes.clone()
        content[..., 5 : height - 9, 11 : width - 4] = (
            0.4 + 0.2 * content[..., 5 : height - 9, 11 : width - 4]
        )
    with torch.inference_mode():
        expected = untiled(tiled, content, mix)
        out = tiled.stylize_batch(content, [mix])
    assert out.shape == content.shape
    torch.testing.assert_close(out, expected, atol=TILE_TOLERANCE, rtol=0)
    assert (out - content).abs().max() > 0.05  # the styles changed something


def test_tiled_colour_preservation_and_styles(tiled: Pipeline) -> None:
    content, style = rand(1, 3, 150, 190, seed=6), rand(1, 3, 170, 90, seed=7)
    with torch.inference_mode():
        out = tiled.stylize(
            content, [style, content.flip(-1)], 0.8, [2.0, 1.0], preserve_color=True
        )
        expected = Pipeline(tiled.net, tile_size=0).stylize(
            content, [style, content.flip(-1)], 0.8, [2.0, 1.0], preserve_color=True
        )
    torch.testing.assert_close(out, expected, atol=TILE_TOLERANCE, rtol=0)


def test_accumulated_statistics_are_those_of_the_whole_image(net: StyleTransfer) -> None:
    image = rand(1, 3, 200, 140, seed=8)
    region = rand(3, 1, 25, 18, seed=9)
    with torch.inference_mode():
        feat = net.encode(image).float()
        for got, expected in [
            (tiling.accumulated_statistics(net, image, TILE), calc_mean_std(feat)),
            (
                tiling.accumulated_statistics(net, image, TILE, region),
                calc_region_mean_std(feat, region),
            ),
        ]:
            for got_part, expected_part in zip(got, expected, strict=True):
                torch.testing.assert_close(got_part, expected_part, atol=1e-5, rtol=1e-5)


def test_large_styles_take_tiled_statistics(tiled: Pipeline) -> None:
    styles = torch.cat([rand(1, 3, 130, 150, seed=10), rand(1, 3, 130, 150, seed=11)])
    with torch.inference_mode():
        mean, std = tiled.style_statistics(styles)
        expected_mean, expected_std = calc_mean_std(tiled.net.encode(styles).float())
    torch.testing.assert_close(mean, expected_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(std, expected_std, atol=1e-5, rtol=1e-5)


def test_coral_in_chunks_is_the_reference_coral(monkeypatch: pytest.MonkeyPatch) -> None:
    source, target = rand(3, 37, 41, seed=13), rand(3, 50, 30, seed=14) * 0.5 + 0.2
    monkeypatch.setattr(model, "PIXELS_PER_CHUNK", 100)  # many chunks
    torch.testing.assert_close(coral(source, target), port.coral(source, target), atol=1e-5, rtol=0)
