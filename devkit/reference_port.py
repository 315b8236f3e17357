"""An independent re-implementation of the reference PyTorch port (naoto0804/pytorch-AdaIN):
its `net.py` layouts, its `function.py` formulas and its `test.py` pipeline, written from the
port's description without importing anything from `models`: the oracle tests compare against,
and the plain loop the benchmarks time as the baseline. The port has no spatial control;
`spatial_control` follows the original Torch `test.lua` (xunhuang1995/AdaIN-style), with the
port's formulas.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn
from torchvision import transforms
from torchvision.utils import save_image

# The port's VGG: (output channels of each 3x3 conv) per block; a pool follows every block
# but the last. It runs to relu5_4; `test.py` keeps the first 31 modules (up to relu4_1).
VGG_BLOCKS = ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512,) * 4)
# The port's decoder: (in, out) of each 3x3 conv; "up" is a nearest 2x upsampling.
DECODER_PLAN = (
    (512, 256),
    "up",
    (256, 256),
    (256, 256),
    (256, 256),
    (256, 128),
    "up",
    (128, 128),
    (128, 64),
    "up",
    (64, 64),
    (64, 3),
)


def padded_conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(c_in, c_out, (3, 3)), nn.ReLU()]


def full_vgg() -> nn.Sequential:
    """The port's `net.vgg` (53 modules, relu5_4 last)."""
    layers: list[nn.Module] = [nn.Conv2d(3, 3, (1, 1))]
    c_in = 3
    for block_index, block in enumerate(VGG_BLOCKS):
        if block_index:
            layers.append(nn.MaxPool2d((2, 2), (2, 2), (0, 0), ceil_mode=True))
        for c_out in block:
            layers += padded_conv(c_in, c_out)
            c_in = c_out
    return nn.Sequential(*layers)


def decoder() -> nn.Sequential:
    """The port's `net.decoder` (28 modules; no ReLU after the last conv)."""
    layers: list[nn.Module] = []
    for step in DECODER_PLAN:
        if step == "up":
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        else:
            layers += padded_conv(*step)
    return nn.Sequential(*layers[:-1])


def load_nets(vgg_path: Path, decoder_path: Path) -> tuple[nn.Sequential, nn.Sequential]:
    """What `test.py` builds: the decoder, and the VGG cut after relu4_1.

    A state dict that stops at relu4_1 is loaded into the cut network (the port's full file
    would be loaded before cutting; the first 31 modules are the same either way).
    """
    vgg = nn.Sequential(*list(full_vgg().children())[:31])
    state = torch.load(vgg_path, weights_only=True)
    vgg.load_state_dict({k: v for k, v in state.items() if int(k.split(".")[0]) < 31})
    net_decoder = decoder()
    net_decoder.load_state_dict(torch.load(decoder_path, weights_only=True))
    return vgg.eval(), net_decoder.eval()


# --- function.py --------------------------------------------------------------------------------


def mean_std(feat: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    n, c = feat.shape[:2]
    flat = feat.reshape(n, c, -1)
    return flat.mean(dim=2).view(n, c, 1, 1), (flat.var(dim=2) + eps).sqrt().view(n, c, 1, 1)


def adain(content_feat: Tensor, style_feat: Tensor) -> Tensor:
    content_mean, content_std = mean_std(content_feat)
    style_mean, style_std = mean_std(style_feat)
    return (content_feat - content_mean) / content_std * style_std + style_mean


def coral(source: Tensor, target: Tensor) -> Tensor:
    """In float32, as the port (it asserts FloatTensors)."""

    def whitened(image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        flat = image.reshape(3, -1)
        mean, std = flat.mean(dim=-1, keepdim=True), flat.std(dim=-1, keepdim=True)
        return (flat - mean) / std, mean, std

    def sqrtm(matrix: Tensor) -> Tensor:
        u, d, v = torch.svd(matrix)
        return u @ torch.diag(d.sqrt()) @ v.t()

    src, _, _ = whitened(source)
    tgt, tgt_mean, tgt_std = whitened(target)
    src_cov = src @ src.t() + torch.eye(3)
    tgt_cov = tgt @ tgt.t() + torch.eye(3)
    moved = sqrtm(tgt_cov) @ torch.inverse(sqrtm(src_cov)) @ src
    return (moved * tgt_std + tgt_mean).view(source.shape)


# --- test.py ------------------------------------------------------------------------------------


def test_transform(size: int, crop: bool) -> transforms.Compose:
    steps: list[object] = []
    if size != 0:
        steps.append(transforms.Resize(size))
    if crop:
        steps.append(transforms.CenterCrop(size))
    steps.append(transforms.ToTensor())
    return transforms.Compose(steps)


def style_transfer(
    vgg: nn.Module,
    net_decoder: nn.Module,
    content: Tensor,
    style: Tensor,
    alpha: float = 1.0,
    interpolation_weights: list[float] | None = None,
) -> Tensor:
    """One content (repeated once per style when interpolating) and its style(s) -> image."""
    content_f = vgg(content)
    style_f = vgg(style)
    if interpolation_weights:
        per_style = adain(content_f, style_f)
        feat = sum(w * per_style[i : i + 1] for i, w in enumerate(interpolation_weights))
        content_f = content_f[0:1]
    else:
        feat = adain(content_f, style_f)
    return net_decoder(feat * alpha + content_f * (1 - alpha))


def run_test_py(
    vgg: nn.Module,
    net_decoder: nn.Module,
    content_path: Path,
    style_paths: list[Path],
    output: Path,
    alpha: float = 1.0,
    interpolation_weights: list[int] | None = None,
    preserve_color: bool = False,
    content_size: int = 512,
    style_size: int = 512,
    crop: bool = False,
) -> None:
    """`test.py` for one content and one style, or one content and several interpolated styles
    (integer weights, normalised as the port does). Writes the image as the port saves it."""
    content_tf, style_tf = test_transform(content_size, crop), test_transform(style_size, crop)
    with torch.no_grad():
        if interpolation_weights:
            style = torch.stack([style_tf(Image.open(p)) for p in style_paths])
            content = content_tf(Image.open(content_path)).unsqueeze(0).expand_as(style)
            total = sum(interpolation_weights)
            normalised = [w / total for w in interpolation_weights]
            result = style_transfer(vgg, net_decoder, content, style, alpha, normalised)
        else:
            content = content_tf(Image.open(content_path))
            style = style_tf(Image.open(style_paths[0]))
            if preserve_color:
                style = coral(style, content)
            result = style_transfer(vgg, net_decoder, content[None], style[None], alpha)
    save_image(result, output)


# --- test.lua's spatial control (the original Torch code; the port has none) ----------------


def scale_simple(mask: Tensor, height: int, width: int) -> Tensor:
    """Torch's `image.scale(mask, width, height, 'simple')`: destination pixel (j, i) takes the
    source pixel (floor(j * H / height), floor(i * W / width)), the ratios in float32."""

    def sources(size: int, source_size: int) -> Tensor:
        ratio = torch.tensor(source_size / size, dtype=torch.float32)
        index = (torch.arange(size, dtype=torch.float32) * ratio).long()
        return index.clamp(max=source_size - 1)

    return mask[sources(height, mask.shape[0])][:, sources(width, mask.shape[1])]


def spatial_control(
    vgg: nn.Module,
    net_decoder: nn.Module,
    content: Tensor,
    styles: list[Tensor],
    mask: Tensor,
    alpha: float = 1.0,
) -> Tensor:
    """`test.lua -mask`: one binary mask (H, W) of 0s and 1s for two styles (1 = the first).
    The mask is scaled to the relu4_1 grid by `scale_simple`; the features where it is 1 take
    AdaIN with the first style, those where it is 0 with the second, each region normalised by
    its own statistics (the port's `adain` on the region's features as a C x n x 1 image)."""
    content_f = vgg(content)
    _, channels, height, width = content_f.shape
    grid_mask = scale_simple(mask, height, width).reshape(-1)
    flat = content_f.reshape(channels, -1)
    target = torch.zeros_like(flat)
    for value, style in ((1.0, styles[0]), (0.0, styles[1])):
        where = (grid_mask == value).nonzero().squeeze(1)
        region = flat[:, where].reshape(1, channels, -1, 1)
        target[:, where] = adain(region, vgg(style)).reshape(channels, -1)
    feat = target.view_as(content_f)
    return net_decoder(feat * alpha + content_f * (1 - alpha))
