"""AdaIN style transfer (Huang & Belongie, ICCV 2017) in one file.

The layouts and formulas follow the reference PyTorch port (naoto0804/pytorch-AdaIN): the encoder
and decoder are the same `nn.Sequential`s, so its `vgg_normalised.pth` and `decoder.pth` state dicts
load unchanged, and `calc_mean_std`, `adaptive_instance_normalization` and `coral` compute exactly
what its `function.py` computes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import FEATURE_STRIDE
from models.errors import InvalidInputError

# relu1_1, relu2_1, relu3_1, relu4_1 in the reference encoder `nn.Sequential`.
RELU_TAPS: tuple[int, ...] = (3, 10, 17, 30)
# Every reflection pad needs 2 px: the smallest side that stays >= 2 after three ceil-mode pools.
MIN_SIDE = 9
EPS = 1e-5
# Pixels per step when CORAL reduces or converts a whole image: a large image is never copied
# whole in float64.
PIXELS_PER_CHUNK = 1 << 20


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(c_in, c_out, (3, 3)), nn.ReLU()]


def _pool() -> nn.Module:
    return nn.MaxPool2d((2, 2), (2, 2), (0, 0), ceil_mode=True)


def make_encoder() -> nn.Sequential:
    """The reference "normalised VGG-19" up to relu4_1 (31 modules, indices as in the port)."""
    return nn.Sequential(
        nn.Conv2d(3, 3, (1, 1)),  # RGB in [0, 1] -> Caffe BGR x 255 minus the ImageNet mean
        *_conv(3, 64), *_conv(64, 64), _pool(),  # relu1_1 = 3
        *_conv(64, 128), *_conv(128, 128), _pool(),  # relu2_1 = 10
        *_conv(128, 256), *_conv(256, 256), *_conv(256, 256), *_conv(256, 256), _pool(),  # 17
        *_conv(256, 512),  # relu4_1 = 30
    )


def make_decoder() -> nn.Sequential:
    """The reference decoder: the encoder mirrored, nearest upsampling, no normalisation."""
    up = nn.Upsample(scale_factor=2, mode="nearest")
    layers = [
        *_conv(512, 256), up,
        *_conv(256, 256), *_conv(256, 256), *_conv(256, 256), *_conv(256, 128), up,
        *_conv(128, 128), *_conv(128, 64), up,
        *_conv(64, 64), *_conv(64, 3),
    ]
    return nn.Sequential(*layers[:-1])  # the last conv has no ReLU


# --- the formulas of the reference `function.py` -------------------------------------------


def positions_by_channel(feat: Tensor) -> Tensor:
    """feat (N, C, h, w) as (N, h * w, C): a view of channels_last features (the networks'
    layout); torch reduces along this outer axis several times faster than along the inner one
    or over two axes."""
    n, c = feat.shape[:2]
    return feat.permute(0, 2, 3, 1).reshape(n, -1, c)


def calc_mean_std(feat: Tensor, eps: float = EPS) -> tuple[Tensor, Tensor]:
    """Per-sample, per-channel mean and std over space; unbiased variance + eps as the reference.
    Two passes (the mean, then the squares about it): torch's one-pass variance is far slower."""
    n, c = feat.shape[:2]
    flat = positions_by_channel(feat)
    mean = flat.mean(dim=1, keepdim=True)
    var = (flat - mean).square().sum(dim=1) / (flat.shape[1] - 1)
    return mean.view(n, c, 1, 1), (var + eps).sqrt().view(n, c, 1, 1)


def calc_region_mean_std(
    feat: Tensor, mask: Tensor, eps: float = EPS, whole: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """`calc_mean_std` over the pixels a (soft) mask selects: frequency-weighted, unbiased.

    feat (1, C, h, w), mask (S, 1, h, w) -> (S, C, 1, 1). A binary mask gives exactly the
    statistics of the selected pixels; an all-ones mask gives `calc_mean_std`. Almost empty
    regions take the whole image's statistics (`whole`, computed here when not given): see
    `trusted_region_stats`.
    """
    count = mask.sum(dim=(2, 3), keepdim=True)
    mean = (feat * mask).sum(dim=(2, 3), keepdim=True) / count.clamp(min=EPS)
    var = (mask * (feat - mean) ** 2).sum(dim=(2, 3), keepdim=True) / (count - 1).clamp(min=1)
    return trusted_region_stats(count, mean, var, whole or calc_mean_std(feat, eps), eps)


def trusted_region_stats(
    count: Tensor, mean: Tensor, var: Tensor, whole: tuple[Tensor, Tensor], eps: float = EPS
) -> tuple[Tensor, Tensor]:
    """A region's (mean, std) from its mass, mean and unbiased variance. A region of less than
    two features' mass has no usable variance (an almost empty mask would divide the features
    by ~sqrt(eps)): from mass 2 down to 1 its statistics turn into the whole image's."""
    whole_mean, whole_std = whole
    trust = (count - 1).clamp(0, 1)  # 1 for any real region: its own statistics unchanged
    return (trust * mean + (1 - trust) * whole_mean,
            trust * (var + eps).sqrt() + (1 - trust) * whole_std)


def adaptive_instance_normalization(content_feat: Tensor, style_feat: Tensor) -> Tensor:
    """AdaIN(x, y) = sigma(y) * (x - mu(x)) / sigma(x) + mu(y)."""
    style_mean, style_std = calc_mean_std(style_feat)
    return adain_from_stats(content_feat, style_mean, style_std)


def adain_from_stats(content_feat: Tensor, style_mean: Tensor, style_std: Tensor) -> Tensor:
    """AdaIN with the style statistics already computed (what the style cache stores)."""
    content_mean, content_std = calc_mean_std(content_feat)
    return (content_feat - content_mean) / content_std * style_std + style_mean


def rgb_moments(image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel mean (3, 1), unbiased std (3, 1) and sum over pixels of x x^T (3, 3), in
    float64, of image (3, H, W), accumulated over chunks of pixels (CORAL's statistics)."""
    flat = image.reshape(3, -1)
    s1 = torch.zeros((3, 1), dtype=torch.float64, device=image.device)
    s2 = torch.zeros((3, 3), dtype=torch.float64, device=image.device)
    for chunk in flat.split(PIXELS_PER_CHUNK, dim=1):
        chunk = chunk.double()
        s1 += chunk.sum(dim=1, keepdim=True)
        s2 += chunk @ chunk.t()
    n = flat.shape[1]
    mean = s1 / n
    var = (s2.diagonal()[:, None] - n * mean * mean) / max(n - 1, 1)
    return mean, var.clamp(min=0).sqrt(), s2


def _normalised_moments(image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean (3, 1), std (3, 1) and, + identity, the covariance of the standardised colours."""
    mean, std, sums = rgb_moments(image)
    # A flat channel (std 0) would make CORAL divide by zero; EPS leaves real images unchanged.
    std = std.clamp(min=EPS)
    pixels = image.shape[-2] * image.shape[-1]
    cov = (sums - pixels * mean @ mean.t()) / (std @ std.t())
    return mean, std, cov + torch.eye(3, dtype=torch.float64, device=image.device)


def _matrix_sqrt(x: Tensor) -> Tensor:
    u, d, v = torch.svd(x)
    return u @ d.pow(0.5).diag() @ v.t()


def coral(source: Tensor, target: Tensor) -> Tensor:
    """Recolour `source` (3, H, W) to the RGB mean and covariance of `target` (3, H', W').

    The reference's CORAL, used for colour preservation: the style image takes the content's
    colours before it is encoded. Computed in float64 so that the SVDs are stable, a chunk of
    pixels at a time so that a large image is not copied whole in float64.
    """
    src_mean, src_std, src_cov = _normalised_moments(source)
    tgt_mean, tgt_std, tgt_cov = _normalised_moments(target)
    move = _matrix_sqrt(tgt_cov) @ torch.linalg.inv(_matrix_sqrt(src_cov))
    out = torch.empty(source.shape, dtype=source.dtype, device=source.device)  # contiguous
    for src, dst in zip(source.reshape(3, -1).split(PIXELS_PER_CHUNK, dim=1),
                        out.view(3, -1).split(PIXELS_PER_CHUNK, dim=1), strict=True):
        dst.copy_(move @ ((src.double() - src_mean) / src_std) * tgt_std + tgt_mean)
    return out


# --- the paper's user controls -------------------------------------------------------------


def parse_mix_weights(values: Sequence[str], max_count: int | None = None) -> list[float] | None:
    """Style-mix weights as typed: repeated values, comma-separated ones ('1,2,1'), or both;
    None when there are none. The command's `--weights` and the form's `weights` both.
    More than `max_count` are refused before any is parsed; an error quotes 80 characters."""
    parts = [part.strip() for value in values for part in value.split(",") if part.strip()]
    if not parts:
        return None
    if max_count is not None and len(parts) > max_count:
        raise InvalidInputError(
            f"weights: got {len(parts)} weights; send one per style (at most {max_count})",
            "weights",
        )
    try:
        return [float(part) for part in parts]
    except ValueError:
        raise InvalidInputError(
            f"weights: expected numbers separated by commas, got {', '.join(values)[:80]!r}",
            "weights",
        ) from None


def normalise_mix_weights(mix_weights: Tensor | Sequence[float] | None, n_styles: int) -> Tensor:
    """Style-mix (interpolation) weights for `n_styles` styles, non-negative and summing to 1.

    Any finite, non-negative, not-all-zero numbers: normalised in float64, by the largest first,
    so that 2e38 (float32's overflow) or 1e308 (their sum's) or 1e-300 (float32's underflow)
    give the same mix as 1 (returned as float32).
    """
    if mix_weights is None:
        return torch.full((n_styles,), 1.0 / n_styles)
    w = torch.as_tensor(mix_weights, dtype=torch.float64).cpu()  # checked with one device sync
    if w.shape != (n_styles,):
        raise InvalidInputError(
            f"weights: expected one weight per style ({n_styles}), got {w.numel()}", "weights"
        )
    if not torch.isfinite(w).all() or (w < 0).any() or w.max() <= 0:
        raise InvalidInputError(
            "weights: weights must be finite, non-negative and not all zero", "weights"
        )
    w = w / w.max()
    return (w / w.sum()).float()


@dataclass(frozen=True)
class Masks:
    """Spatial control: `values` (S, H, W) in [0, 1], mask k selecting style k, any resolution.

    `binary`: the reference's form, one black-and-white mask split in two (`masks_from_binary`).
    Its regions are resized to the relu4_1 grid by nearest neighbour, as the reference does, so
    that every feature belongs to exactly one region; other masks are area-averaged (antialiased
    bilinear), so that a soft or thin mask keeps its share of every feature it covers.
    """

    values: Tensor
    binary: bool = False

    def to(self, device: torch.device | str) -> Masks:
        return Masks(self.values.to(device), self.binary)

    def on_grid(self, grid: tuple[int, int]) -> Tensor:
        """(S, 1, h, w) in [0, 1] on the feature grid."""
        values = self.values[:, None].float()
        if self.binary:
            return F.interpolate(values, size=grid, mode="nearest")
        resized = F.interpolate(values, size=grid, mode="bilinear", antialias=True)
        return resized.clamp(0, 1)


def masks_from_binary(mask: Tensor) -> Masks:
    """The reference's form: one binary mask (H, W) for two styles.

    White selects the first style, black the second.
    """
    first = (mask > 0.5).float()
    return Masks(torch.stack([first, 1 - first]), binary=True)


def check_mask_count(n_masks: int, n_styles: int) -> None:
    """The mask count rule: none, one per style, or one binary mask for exactly two styles."""
    if n_masks and n_masks != n_styles and not (n_masks == 1 and n_styles == 2):
        raise InvalidInputError(
            f"got {n_masks} masks for {n_styles} styles: send one per style, or one binary "
            "mask for exactly two styles", "mask",
        )


def masks_for_styles(values: Sequence[Tensor], n_styles: int) -> Masks:
    """`Masks` from mask images (each (H, W) in [0, 1], all one size) for `n_styles` styles:
    one per style, or one for two styles, which is the reference's binary form."""
    check_mask_count(len(values), n_styles)
    if len(values) == 1 and n_styles == 2:
        return masks_from_binary(values[0])
    return Masks(torch.stack(list(values)))


# Pixels (top, bottom, left, right), the bottom and right ones excluded.
Box = tuple[int, int, int, int]


def box_cells(box: Box, grid: tuple[int, int]) -> tuple[slice, slice]:
    """The relu4_1 features (rows, columns) of a `grid` whose cells' centres lie in `box`."""
    top, bottom, left, right = box

    def cells(start: int, stop: int, length: int) -> slice:
        # Cell i covers pixels FEATURE_STRIDE * i onwards; its centre lies half a cell on.
        centre = (FEATURE_STRIDE - 1) / 2
        first = max(0, math.ceil((start - centre) / FEATURE_STRIDE))
        return slice(first, min(length, math.ceil((stop - centre) / FEATURE_STRIDE)))

    return cells(top, bottom, grid[0]), cells(left, right, grid[1])


def box_mask(box: Box, grid: tuple[int, int], device: torch.device) -> Tensor:
    """(1, 1, h, w): 1 on `box_cells`, 0 elsewhere."""
    rows, columns = box_cells(box, grid)
    mask = torch.zeros((1, 1, *grid), device=device)
    mask[..., rows, columns] = 1
    return mask


@dataclass(frozen=True)
class StyleMix:
    """What one output image takes from its S styles: all the paper's controls for one item.

    mean, std: the styles' relu4_1 statistics (S, C, 1, 1); weights (S,): interpolation weights,
    stored normalised to sum 1; masks: spatial control or None; alpha in [0, 1]: the
    content-style trade-off. Built checked: the one place these controls are validated.
    content_box: the pixels (top, bottom, left, right) whose features give the content's
    statistics (None: all of them): a frame placed on a larger canvas (the video stabiliser's
    padding) keeps those of its own pixels, as when it is stylized alone.
    """

    mean: Tensor
    std: Tensor
    weights: Tensor
    masks: Masks | None = None
    alpha: float = 1.0
    content_box: Box | None = None

    def __post_init__(self) -> None:
        n_styles = self.mean.shape[0]
        if not 0.0 <= self.alpha <= 1.0:
            raise InvalidInputError(f"alpha must be in [0, 1], got {self.alpha}", "alpha")
        # Frozen, so the normalised weights replace the given ones through object.__setattr__.
        object.__setattr__(self, "weights", normalise_mix_weights(self.weights, n_styles))
        if self.masks is not None and self.masks.values.shape[0] != n_styles:
            # `masks_for_styles` has made a binary mask two: any other count is the rule's.
            check_mask_count(self.masks.values.shape[0], n_styles)


def feature_range(feat: Tensor) -> tuple[Tensor, Tensor]:
    """The (lowest, highest) (1, C, 1, 1) of each channel of feat (1, C, h, w)."""
    flat = positions_by_channel(feat)
    shape = (*feat.shape[:2], 1, 1)
    return flat.amin(dim=1).view(shape), flat.amax(dim=1).view(shape)


def held_within(feat: Tensor, bounds: tuple[Tensor, Tensor]) -> Tensor:
    """feat clamped, channel by channel, to the range its content box spans (`feature_range`):
    a canvas's mirrored margin can wake a channel that the frame's own features leave at zero,
    and divided by their tiny std it would decode to a patch of saturated strokes that reaches
    into the frame. Inside the box nothing changes."""
    return feat.clamp(min=bounds[0], max=bounds[1])


def adain_target(
    content_feat: Tensor,
    style_mean: Tensor,
    style_std: Tensor,
    mix_weights: Tensor,
    masks: Masks | None = None,
    content_box: Box | None = None,
) -> Tensor:
    """The AdaIN target t for one content image and S styles.

    content_feat (1, C, h, w); style_mean, style_std (S, C, 1, 1); mix_weights (S,) summing to 1.
    Without masks t is the convex combination of the S AdaIN outputs (the paper's
    interpolation). With masks, style k's AdaIN uses the content statistics of its own region,
    and a covered pixel p mixes the styles with mix_weights_k * mask_k(p), normalised per pixel.
    Pixels the masks leave uncovered take the unmasked t: pixel p takes the masked mix with the
    share coverage(p) = min(1, sum_k mask_k(p)) and the unmasked t with the rest, so masks that
    cover every pixel (a partition, the binary form) are the masked mix alone and masks that
    cover nothing give the unmasked result. Computed in float32 whatever the network's precision.
    `content_box` (`StyleMix`): the content's statistics, whole and by region, within it alone,
    and the features outside it held within the range of those inside (`held_within`).
    """
    feat = content_feat.float()
    grid = (feat.shape[-2], feat.shape[-1])
    own = feat
    if content_box is not None:
        rows, columns = box_cells(content_box, grid)
        boxed = feat[..., rows, columns]
        # One feature has no variance: a frame of a few pixels keeps the canvas's statistics.
        if boxed.shape[-2] * boxed.shape[-1] > 1:
            own = boxed
            feat = held_within(feat, feature_range(boxed))
    whole = calc_mean_std(own)
    if masks is None:
        return adain_target_from_stats(feat, whole, style_mean, style_std, mix_weights)
    region = masks.to(feat.device).on_grid(grid)
    counted = region if content_box is None else region * box_mask(content_box, grid, feat.device)
    by_region = calc_region_mean_std(feat, counted, whole=whole)
    return adain_target_from_stats(
        feat, whole, style_mean, style_std, mix_weights, region, by_region)


def adain_target_from_stats(
    content_feat: Tensor,
    whole: tuple[Tensor, Tensor],
    style_mean: Tensor,
    style_std: Tensor,
    mix_weights: Tensor,
    region: Tensor | None = None,
    region_stats: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """`adain_target` with the content's statistics given (those of the whole image when
    content_feat is one tile of it: `models.tiling`): `whole` its (mean, std) (1, C, 1, 1);
    with masks, region the masks on content_feat's grid (S, 1, h, w) and region_stats the
    (mean, std) of each region (S, C, 1, 1)."""
    feat = content_feat.float()
    style_mean = style_mean.to(feat.device, torch.float32)
    style_std = style_std.to(feat.device, torch.float32)
    w = mix_weights.to(feat.device, torch.float32).view(-1, 1, 1, 1)
    whole_mean, whole_std = whole
    unmasked = (w * ((feat - whole_mean) / whole_std * style_std + style_mean)).sum(
        dim=0, keepdim=True)
    if region is None:
        return unmasked
    assert region_stats is not None, "masks need their regions' statistics"
    mean, std = region_stats
    per_style = (feat - mean) / std * style_std + style_mean  # (S, C, h, w)
    mix = w * region
    total = mix.sum(dim=0, keepdim=True)
    covered = total > 0  # covered by a style of non-zero weight
    share = torch.where(covered, mix / total.clamp(min=1e-12), torch.zeros_like(mix))
    masked = (share * per_style).sum(dim=0, keepdim=True)
    coverage = torch.where(covered, region.sum(dim=0, keepdim=True).clamp(max=1), 0.0)
    return coverage * masked + (1 - coverage) * unmasked


def blend(content_feat: Tensor, target: Tensor, alpha: float) -> Tensor:
    """(1 - alpha) * f(c) + alpha * t: the content-style trade-off of the paper."""
    return target * alpha + content_feat.float() * (1 - alpha)


def check_size(images: Tensor) -> None:
    """A clear error instead of the reflection pad's for images the encoder cannot take."""
    height, width = images.shape[-2:]
    if min(height, width) < MIN_SIDE:
        raise InvalidInputError(
            f"image is {width}x{height} px; the encoder needs at least {MIN_SIDE} px per side"
        )


class StyleTransfer(nn.Module):
    """Encoder f (fixed VGG-19 to relu4_1) and decoder g. How they run on an image, whole or in
    tiles, is `models.pipeline`'s."""

    def __init__(
        self, encoder: nn.Sequential | None = None, decoder: nn.Sequential | None = None
    ) -> None:
        """The full networks by default; `models.lite` passes its slim ones (same layouts)."""
        super().__init__()
        self.encoder = encoder if encoder is not None else make_encoder()
        self.decoder = decoder if decoder is not None else make_decoder()
        self.encoder.requires_grad_(False)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.decoder.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    def encode(self, images: Tensor) -> Tensor:
        """relu4_1 features of RGB images in [0, 1]."""
        check_size(images)
        return self.encoder(images.to(self.dtype))

    def encode_taps(self, images: Tensor) -> list[Tensor]:
        """relu1_1 .. relu4_1 features (for the style loss)."""
        check_size(images)
        taps, x = [], images.to(self.dtype)
        starts = (0, *(t + 1 for t in RELU_TAPS[:-1]))
        for start, stop in zip(starts, (t + 1 for t in RELU_TAPS), strict=True):
            x = self.encoder[start:stop](x)
            taps.append(x)
        return taps

    def decode(self, feats: Tensor, size: tuple[int, int]) -> Tensor:
        """Images in [0, 1] cropped to `size`: the decoder returns 8 * ceil(H / 8) per side."""
        out = self.decoder(feats.to(self.dtype))
        return out[..., : size[0], : size[1]].float().clamp(0, 1)


# --- the training losses of the reference `net.py` ------------------------------------------


def content_loss(output_feat: Tensor, target: Tensor) -> Tensor:
    """MSE between the output's relu4_1 features and the AdaIN target t."""
    return F.mse_loss(output_feat.float(), target.float())


def style_loss(output_taps: list[Tensor], style_taps: list[Tensor]) -> Tensor:
    """Sum over relu1_1..relu4_1 of the MSEs of channel means and of channel stds."""
    total = torch.zeros((), device=output_taps[0].device)
    for out, style in zip(output_taps, style_taps, strict=True):
        out_mean, out_std = calc_mean_std(out.float())
        style_mean, style_std = calc_mean_std(style.float())
        total = total + F.mse_loss(out_mean, style_mean) + F.mse_loss(out_std, style_std)
    return total
