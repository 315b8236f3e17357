"""Stylizing images of any size in bounded memory: overlapping tiles, whole-image statistics.

Memory of one forward pass grows with the pixels (figures: docs/benchmarks.md), so an image
with more than `tile_size ** 2` pixels is cut into tiles of `tile_size` x `tile_size` output
pixels, each computed from a window that reaches MARGIN pixels further on every side inside the
image. Tile edges are multiples of 8, so every tile sees the encoder's pooling grid and the
decoder's upsampling grid of the whole image; at the image's true borders a tile pads (reflects)
as the untiled pass does. Wrong values from cutting a window spread at most `cut_reach` pixels
inwards, less than MARGIN, so each tile's centre is what the untiled pass computes.

AdaIN needs the content's relu4_1 mean and std over the whole image (per mask region with masks):
a first pass over the tiles accumulates sums and sums of squares in float64 over the features of
each tile's centre (every feature counted once), a second pass decodes with them. The output is
the untiled output up to float rounding (docs/benchmarks.md; it also compares URST's
thumbnail statistics, one pass but an approximation, in benchmarks/bench_tiling.py).

Built on `models.model` alone; `models.pipeline` decides when to tile.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.config import FEATURE_STRIDE, check_tile_size
from models.model import (
    EPS,
    StyleMix,
    StyleTransfer,
    adain_target_from_stats,
    blend,
    box_mask,
    held_within,
    make_decoder,
    make_encoder,
    trusted_region_stats,
)


def cut_reach(layers: Iterable[nn.Module]) -> int:
    """How far, in the last layer's pixels, values go wrong inwards from a window's cut edge.

    Each 3x3 convolution after its reflection pad reads one pixel beyond the edge (padding that
    replaces the true neighbours): one more wrong pixel. A 2x2 pool on the grid halves the reach
    (rounded up), a nearest upsampling doubles it.
    """
    reach = 0
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            reach += (layer.kernel_size[0] - 1) // 2
        elif isinstance(layer, nn.MaxPool2d):
            reach = math.ceil(reach / 2)
        elif isinstance(layer, nn.Upsample):
            reach *= 2
        elif isinstance(layer, nn.PixelUnshuffle):  # the lite encoder's space-to-depth
            reach = math.ceil(reach / layer.downscale_factor)
        elif isinstance(layer, nn.PixelShuffle):
            reach *= layer.upscale_factor
    return reach


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


# Encoder to relu4_1 then decoder: 4 features wrong at relu4_1, 62 output pixels in all.
MARGIN = _round_up(cut_reach([*make_encoder(), *make_decoder()]), FEATURE_STRIDE)


@dataclass(frozen=True)
class Span:
    """One tile along one axis: it writes output pixels [start, stop) and reads input pixels
    [window_start, window_stop). All but `stop` and `window_stop` at the image's end are
    multiples of FEATURE_STRIDE."""

    start: int
    stop: int
    window_start: int
    window_stop: int

    def features(self) -> slice:
        """The relu4_1 features of the tile's own output, in the window's features."""
        first = (self.start - self.window_start) // FEATURE_STRIDE
        count = math.ceil(self.stop / FEATURE_STRIDE) - self.start // FEATURE_STRIDE
        return slice(first, first + count)

    def window_features(self) -> slice:
        """The window's relu4_1 features in the whole image's feature grid."""
        return slice(
            self.window_start // FEATURE_STRIDE, math.ceil(self.window_stop / FEATURE_STRIDE)
        )

    def own(self) -> slice:
        """The tile's output pixels in the window's output."""
        return slice(self.start - self.window_start, self.stop - self.window_start)


def spans(length: int, tile_size: int, margin: int = MARGIN) -> list[Span]:
    """Tiles of `tile_size` pixels covering [0, length), each with `margin` pixels of context."""
    check_tile_size(tile_size)
    if margin % FEATURE_STRIDE:
        raise ValueError(f"the margin must be a multiple of {FEATURE_STRIDE}, got {margin}")
    return [
        Span(
            start,
            min(start + tile_size, length),
            max(start - margin, 0),
            min(start + tile_size + margin, length),
        )
        for start in range(0, length, tile_size)
    ]


def tiles(height: int, width: int, tile_size: int) -> Iterator[tuple[Span, Span]]:
    """(rows, columns) of every tile, row by row."""
    columns = spans(width, tile_size)
    for rows in spans(height, tile_size):
        for cols in columns:
            yield rows, cols


def needs_tiles(height: int, width: int, tile_size: int) -> bool:
    """Whether an image is tiled: more than tile_size ** 2 pixels (tile_size 0: never)."""
    return tile_size > 0 and height * width > tile_size * tile_size


def _window(image: Tensor, rows: Span, cols: Span) -> Tensor:
    return image[..., rows.window_start : rows.window_stop, cols.window_start : cols.window_stop]


def accumulated_statistics(
    net: StyleTransfer, image: Tensor, tile_size: int, region: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """relu4_1 mean and std of image (1, 3, H, W), as `calc_mean_std` (region None, -> (1, C,
    1, 1)) or `calc_region_mean_std` with region (S, 1, h, w) on the whole feature grid (-> (S,
    C, 1, 1)) compute them on the untiled features."""
    whole, by_region, _ = whole_and_region_statistics(net, image, tile_size, region)
    return whole if by_region is None else by_region


def whole_and_region_statistics(
    net: StyleTransfer,
    image: Tensor,
    tile_size: int,
    region: Tensor | None = None,
    counted: Tensor | None = None,
) -> tuple[
    tuple[Tensor, Tensor], tuple[Tensor, Tensor] | None, tuple[Tensor, Tensor] | None
]:
    """The whole image's (mean, std) and, with region, each region's, in one pass over the
    tiles: float64 sums over each tile's own features, row 0 weighted by ones, or by
    `counted` (1, 1, h, w) on the whole feature grid: the features that stand for the whole
    (`StyleMix.content_box`; the regions are then counted within it too), and then also their
    range (`models.model.feature_range`; else None)."""
    count = s1 = s2 = torch.zeros((), dtype=torch.float64, device=image.device)
    bounds: tuple[Tensor, Tensor] | None = None  # the counted features' range, (C,) each
    for rows, cols in tiles(image.shape[-2], image.shape[-1], tile_size):
        feat = net.encode(_window(image, rows, cols))[0, :, rows.features(), cols.features()]
        feat = feat.double()  # (C, h, w)
        weight = (
            torch.ones((1, *feat.shape[-2:]), dtype=torch.float64, device=feat.device)
            if counted is None
            else _own_features(counted, rows, cols)
        )
        if counted is not None and weight[0].any():
            inside = feat[:, weight[0] > 0]  # (C, n)
            low, high = inside.amin(dim=1), inside.amax(dim=1)
            if bounds is not None:
                low, high = torch.minimum(bounds[0], low), torch.maximum(bounds[1], high)
            bounds = low, high
        if region is not None:
            masks = _own_features(region, rows, cols) * weight[:1]
            weight = torch.cat([weight, masks])  # (1 + S, h, w)
        count = count + weight.sum(dim=(1, 2))[:, None]
        s1 = s1 + torch.einsum("chw,shw->sc", feat, weight)
        s2 = s2 + torch.einsum("chw,shw->sc", feat * feat, weight)
    # calc_region_mean_std's formulas, with sum m (f - mean)^2 = s2 - 2 mean s1 + mean^2 count.
    mean = s1 / count.clamp(min=EPS)
    var = (s2 - 2 * mean * s1 + mean * mean * count) / (count - 1).clamp(min=1)
    mean, var, count = (x.float()[..., None, None] for x in (mean, var.clamp(min=0), count))
    whole = mean[:1], (var[:1] + EPS).sqrt()
    held = None
    if bounds is not None:
        lowest, highest = (b.float()[None, :, None, None] for b in bounds)
        held = lowest, highest
    if region is None:
        return whole, None, held
    return whole, trusted_region_stats(count[1:], mean[1:], var[1:], whole), held


def _own_features(grid: Tensor, rows: Span, cols: Span) -> Tensor:
    """(S, h, w) float64: masks (S, 1, H, W) on the whole feature grid at a tile's own features."""
    window = grid[:, 0, rows.window_features(), cols.window_features()]
    return window[:, rows.features(), cols.features()].double()


def stylize_tiled(
    net: StyleTransfer,
    content: Tensor,
    mix: StyleMix,
    tile_size: int,
    statistics: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """`models.pipeline.stylize_batch` for one content (1, 3, H, W), tile by tile -> (1, 3, H,
    W) float32. `statistics`: the content's (mean, std) when already known (without masks);
    by default accumulated over the tiles."""
    height, width = content.shape[-2:]
    grid = (math.ceil(height / FEATURE_STRIDE), math.ceil(width / FEATURE_STRIDE))
    region = None if mix.masks is None else mix.masks.to(content.device).on_grid(grid)
    own = None if mix.content_box is None else box_mask(mix.content_box, grid, content.device)
    held = None
    if statistics is not None and region is None and own is None:
        whole, by_region = statistics, None
    else:
        whole, by_region, held = whole_and_region_statistics(
            net, content, tile_size, region, own
        )
    out = torch.empty((1, 3, height, width), dtype=torch.float32, device=content.device)
    for rows, cols in tiles(height, width, tile_size):
        window = _window(content, rows, cols)
        feat = net.encode(window)
        tile_region = (
            None if region is None else region[:, :, rows.window_features(), cols.window_features()]
        )
        target = adain_target_from_stats(
            feat if held is None else held_within(feat, held),
            whole,
            mix.mean,
            mix.std,
            mix.weights,
            tile_region,
            by_region,
        )
        decoded = net.decode(blend(feat, target, mix.alpha), window.shape[-2:])
        out[..., rows.start : rows.stop, cols.start : cols.stop] = decoded[
            ..., rows.own(), cols.own()
        ]
    return out
