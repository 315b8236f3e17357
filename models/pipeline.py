"""The pipeline: the networks built from a `PipelineConfig`, and the one stylize path.

`build_pipeline` is how the service, the command, the benchmarks and training get their
networks (device, precision, `torch.compile`, weights). `stylize_batch` and `style_statistics`
run them on images of any size, whole or in tiles (`models.tiling`) by their `tile_size`
parameter; colour preservation (CORAL on the style) happens here and nowhere else. The service's
engine, the command, jobs, live feeds and the evaluation all stylize through this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from models import tiling
from models.acceleration import compile_networks, pick_device, pick_dtype
from models.config import DEFAULT_TILE_SIZE, ModelName, PipelineConfig, check_tile_size
from models.lite import load_lite
from models.model import (
    Masks,
    StyleMix,
    StyleTransfer,
    adain_target,
    blend,
    calc_mean_std,
    coral,
    normalise_mix_weights,
)
from models.weights import load_model

__all__ = ["Pipeline", "PipelineConfig", "build_pipeline", "style_statistics", "stylize_batch"]


def style_statistics(
    net: StyleTransfer,
    styles: Tensor,
    tile_size: int = DEFAULT_TILE_SIZE,
    recolour_to: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """relu4_1 mean and std (float32) of a batch of style images (N, 3, H, W): all AdaIN needs
    of a style. `recolour_to` (1, 3, H', W'): colour preservation, the styles recoloured to its
    colours first (CORAL)."""
    if recolour_to is not None:
        styles = torch.cat([coral(style, recolour_to[0])[None] for style in styles])
    if tiling.needs_tiles(styles.shape[-2], styles.shape[-1], tile_size):
        stats = [tiling.accumulated_statistics(net, style, tile_size) for style in styles.split(1)]
        return torch.cat([m for m, _ in stats]), torch.cat([s for _, s in stats])
    return calc_mean_std(net.encode(styles).float())


def stylize_batch(
    net: StyleTransfer,
    contents: Tensor,
    mixes: Sequence[StyleMix],
    tile_size: int = DEFAULT_TILE_SIZE,
) -> Tensor:
    """The one stylize path: contents (N, 3, H, W) in [0, 1], mixes[i] the styles and controls
    of item i -> (N, 3, H, W) float32. Untiled: one encoder pass and one decoder pass for the
    batch, the AdaIN target and the alpha blend per item. Images with more pixels than
    tile_size ** 2 go tile by tile (tile_size 0: never), with the same output."""
    if len(mixes) != contents.shape[0]:
        raise ValueError(f"{contents.shape[0]} contents but {len(mixes)} style mixes")
    if tiling.needs_tiles(contents.shape[-2], contents.shape[-1], tile_size):
        outs = [
            tiling.stylize_tiled(net, content, mix, tile_size)
            for content, mix in zip(contents.split(1), mixes, strict=True)
        ]
        return outs[0] if len(outs) == 1 else torch.cat(outs)  # no copy of one 8K output
    feats = net.encode(contents)
    blended = [
        blend(
            feat,
            adain_target(feat, mix.mean, mix.std, mix.weights, mix.masks, mix.content_box),
            mix.alpha,
        )
        for feat, mix in zip(feats.split(1), mixes, strict=True)
    ]
    return net.decode(torch.cat(blended), (contents.shape[-2], contents.shape[-1]))


@dataclass(frozen=True)
class Pipeline:
    """The networks with the tile size they run at: what the engine, the command and the
    evaluation hold."""

    net: StyleTransfer
    tile_size: int = DEFAULT_TILE_SIZE
    compiled: bool = False

    def __post_init__(self) -> None:
        check_tile_size(self.tile_size)

    @property
    def device(self) -> torch.device:
        return self.net.device

    @property
    def dtype(self) -> torch.dtype:
        return self.net.dtype

    def style_statistics(
        self, styles: Tensor, recolour_to: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return style_statistics(self.net, styles, self.tile_size, recolour_to)

    def stylize_batch(self, contents: Tensor, mixes: Sequence[StyleMix]) -> Tensor:
        return stylize_batch(self.net, contents, mixes, self.tile_size)

    def stylize(
        self,
        content: Tensor,
        styles: Sequence[Tensor],
        alpha: float = 1.0,
        mix_weights: Tensor | Sequence[float] | None = None,
        masks: Masks | Tensor | None = None,
        preserve_color: bool = False,
    ) -> Tensor:
        """Stylize content (1, 3, H, W) with S styles (each (1, 3, H', W'), any size) and every
        control of the paper: alpha, interpolation weights, masks (`Masks`, or a tensor
        (S, H, W) of one mask per style), colour preservation."""
        recolour_to = content if preserve_color else None
        stats = [self.style_statistics(style, recolour_to) for style in styles]
        mix = StyleMix(
            mean=torch.cat([mean for mean, _ in stats]),
            std=torch.cat([std for _, std in stats]),
            weights=normalise_mix_weights(mix_weights, len(styles)),
            masks=Masks(masks) if isinstance(masks, Tensor) else masks,
            alpha=alpha,
        )
        return self.stylize_batch(content, [mix])


def build_pipeline(config: PipelineConfig, *, untrained_decoder: bool = False) -> Pipeline:
    """The networks as `config` says, ready for inference. `untrained_decoder`: the decoder
    keeps its fresh initialisation instead of loading weights (training from scratch)."""
    device = pick_device(config.device)
    dtype = pick_dtype(config.precision, device)
    net = (
        load_lite(config.lite_path, device, dtype)
        if config.model is ModelName.lite
        else load_model(
            config.encoder_path,
            config.decoder_path,
            device,
            dtype,
            untrained_decoder=untrained_decoder,
        )
    )
    compiled = compile_networks(net, config.compile, device)
    return Pipeline(net, config.tile_size, compiled)
