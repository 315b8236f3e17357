"""The "lite" model: a slim VGG encoder and its mirrored decoder, AdaIN between them.

The same layouts as the full networks (`models.model.make_encoder` / `make_decoder`: reflection
pads, 3x3 convs, ceil-mode pools, nearest upsampling, relu1_1..relu4_1 at the same indices) with
a quarter of the channels, so every control, the stride of 8 and the tiling's `cut_reach` work
unchanged, at about 1/16 of the FLOPs. Trained by distillation from the full model
(`models.distill`, Collaborative Distillation's linear embedding: a 1x1 conv per tap maps these
features into the full encoder's); why this shape: `models/weights/LITE_MODEL_CARD.md`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.model import StyleTransfer, check_size
from models.weights import WEIGHTS_DIR, WeightsError, read_state, save_state

DEFAULT_LITE = WEIGHTS_DIR / "lite.safetensors"
# Channels at strides 2, 4 and 8 (the full VGG's relu2_1, relu3_1, relu4_1: 128, 256, 512).
LITE_WIDTHS: tuple[int, int, int] = (32, 64, 128)
# The encoder's ReLUs whose outputs stand for relu2_1, relu3_1 and relu4_1 (the last: AdaIN's).
LITE_TAPS: tuple[int, ...] = (3, 8, 13)
# The full networks' convs each lite conv is initialised from (`init_from`): encoder conv index
# -> the full encoder's, decoder conv index -> the full decoder's (None: its output image).
ENCODER_SOURCES: dict[int, int] = {2: 9, 4: 12, 7: 16, 9: 25, 12: 29}
DECODER_SOURCES: dict[int, int | None] = {0: 1, 3: 5, 5: 11, 7: 14, 10: 21, 12: None}
# How every conv pads; part of the style statistics' cache key (`service.cache`), since the
# statistics change with it.
LITE_PADDING = "reflect"


class PadToEven(nn.Module):
    """Reflects one row / column onto odd sides, so that the space-to-depth step can fold
    2x2 blocks (the output is cropped back to the input's size)."""

    def forward(self, x: Tensor) -> Tensor:
        odd_h, odd_w = x.shape[-2] % 2, x.shape[-1] % 2
        return F.pad(x, (0, odd_w, 0, odd_h), mode="reflect") if odd_h or odd_w else x


def _conv(c_in: int, c_out: int, relu: bool = True) -> list[nn.Module]:
    # Reflection padding, as the full networks': zero padding made every border look like an
    # edge to each conv, which drew a line along the output's borders (LITE_MODEL_CARD.md).
    conv = nn.Conv2d(c_in, c_out, (3, 3), padding=1, padding_mode=LITE_PADDING)
    return [conv, nn.ReLU(inplace=True)] if relu else [conv]


def _pool() -> nn.Module:
    return nn.MaxPool2d((2, 2), (2, 2), (0, 0), ceil_mode=True)


def make_lite_encoder(widths: Sequence[int] = LITE_WIDTHS) -> nn.Sequential:
    """Stride 8 as the full encoder, but nothing at full resolution: 2x2 blocks of pixels
    folded into channels (space-to-depth) first, then two convs at each of strides 2, 4, 8's
    entry. The ReLUs at LITE_TAPS stand for relu2_1, relu3_1, relu4_1."""
    w1, w2, w3 = widths
    return nn.Sequential(
        PadToEven(),
        nn.PixelUnshuffle(2),
        *_conv(12, w1),  # 2, 3: "relu2_1"
        *_conv(w1, w1),
        _pool(),
        *_conv(w1, w2),  # 7, 8: "relu3_1"
        *_conv(w2, w2),
        _pool(),
        *_conv(w2, w3),  # 12, 13: "relu4_1"
    )


def make_lite_decoder(widths: Sequence[int] = LITE_WIDTHS) -> nn.Sequential:
    """The encoder mirrored with nearest upsampling; its last conv makes 2x2 blocks of pixels
    (depth-to-space), so it too never runs at full resolution."""
    w1, w2, w3 = widths
    return nn.Sequential(
        *_conv(w3, w2),
        nn.Upsample(scale_factor=2, mode="nearest"),
        *_conv(w2, w2),
        *_conv(w2, w2),
        *_conv(w2, w1),
        nn.Upsample(scale_factor=2, mode="nearest"),
        *_conv(w1, w1),
        *_conv(w1, 12, relu=False),
        nn.PixelShuffle(2),
    )


class LiteStyleTransfer(StyleTransfer):
    """`StyleTransfer` (the one stylize path, every control, tiling) on the lite networks."""

    def __init__(self, widths: Sequence[int] = LITE_WIDTHS) -> None:
        super().__init__(make_lite_encoder(widths), make_lite_decoder(widths))

    def encode_taps(self, images: Tensor) -> list[Tensor]:
        """The features at LITE_TAPS (the distillation's embedding loss)."""
        check_size(images)
        taps, x = [], images.to(self.dtype)
        starts = (0, *(t + 1 for t in LITE_TAPS[:-1]))
        for start, stop in zip(starts, (t + 1 for t in LITE_TAPS), strict=True):
            x = self.encoder[start:stop](x)
            taps.append(x)
        return taps


def make_lite(widths: Sequence[int] = LITE_WIDTHS) -> LiteStyleTransfer:
    return LiteStyleTransfer(widths)


def lite_state(net: LiteStyleTransfer) -> dict[str, Tensor]:
    """One state dict for both networks: `encoder.<i>.*` and `decoder.<i>.*`."""
    return {
        **{f"encoder.{k}": v for k, v in net.encoder.state_dict().items()},
        **{f"decoder.{k}": v for k, v in net.decoder.state_dict().items()},
    }


def save_lite(net: LiteStyleTransfer, path: Path) -> None:
    save_state(lite_state(net), path, half=True)


def load_lite(
    path: Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LiteStyleTransfer:
    """The lite model from `path` (None: the embedded weights), ready for inference as
    `models.weights.load_model`'s: channels_last, weights in `dtype`."""
    path = path or DEFAULT_LITE
    state = read_state(path)
    widths = widths_of(state, path)
    net = make_lite(widths)
    expected = lite_state(net)
    for key, ref in expected.items():
        if key not in state or state[key].shape != ref.shape:
            raise WeightsError(f"{path}: not a lite model; {key} missing or of the wrong shape")
    net.encoder.load_state_dict(
        {k[len("encoder.") :]: state[k] for k in expected if k.startswith("encoder.")}
    )
    net.decoder.load_state_dict(
        {k[len("decoder.") :]: state[k] for k in expected if k.startswith("decoder.")}
    )
    net.requires_grad_(False)
    net.eval()
    return net.to(torch.device(device), dtype, memory_format=torch.channels_last)


def widths_of(state: dict[str, Tensor], path: Path) -> tuple[int, int, int]:
    """The channel widths at the three taps, read from the encoder's conv weights."""
    try:
        return tuple(  # type: ignore[return-value]
            int(state[f"encoder.{tap - 1}.weight"].shape[0]) for tap in LITE_TAPS
        )
    except KeyError as exc:
        raise WeightsError(f"{path}: not a lite model (no encoder.{exc.args[0]})") from exc


# --- a head start: the full networks' weights, fitted layer by layer --------------------------


@torch.no_grad()
def outputs_of(layers: nn.Sequential, x: Tensor, wanted: set[int]) -> dict[int, Tensor]:
    """The outputs of the modules at the `wanted` indices of `layers` run on x."""
    found = {}
    for index, layer in enumerate(layers):
        x = layer(x)
        if index in wanted:
            found[index] = x
    return found


@torch.no_grad()
def init_from(
    target: nn.Sequential,
    target_input: Tensor,
    wanted: dict[int, Tensor],
    samples: int = 32_768,
    generator: torch.Generator | None = None,
) -> None:
    """Initialise each conv of `target` (at the keys of `wanted`) by least squares from the
    pre-activations a full network computes there (channel pruning with least-squares
    reconstruction, He et al., ICCV 2017): a conv narrower than its source keeps the source's
    most active channels (mean squared ReLU output), and it is fitted on the target's own
    inputs, so that the errors of the layers before are corrected rather than compounded.
    wanted[i] (N, C, h, w) must be on conv i's output grid; target_input: the same images (or
    AdaIN targets) as the full network's, in the target's input space."""
    x = target_input.float()
    for index, layer in enumerate(target):
        if index in wanted:
            assert isinstance(layer, nn.Conv2d)
            goal = wanted[index].float()
            if layer.out_channels < goal.shape[1]:
                energy = goal.clamp(min=0).pow(2).mean(dim=(0, 2, 3))
                goal = goal[:, energy.topk(layer.out_channels).indices.sort().values]
            fit_conv(layer, x, goal, samples, generator)
        x = layer(x)


@torch.no_grad()
def fit_conv(
    conv: nn.Conv2d,
    inputs: Tensor,
    wanted: Tensor,
    samples: int,
    generator: torch.Generator | None = None,
) -> None:
    """Least squares (lightly ridge-regularised) for a stride-1 conv's weight and bias:
    conv(inputs) ~ wanted, (N, C_out, h, w), at `samples` random output positions."""
    n = inputs.shape[0]
    columns = F.unfold(inputs, conv.kernel_size, padding=conv.padding)  # (N, C_in*k*k, h*w)
    per_image = max(1, min(samples // n, columns.shape[-1]))
    xs, ys = [], []
    for index in range(n):
        chosen = torch.randperm(columns.shape[-1], generator=generator)[:per_image]
        xs.append(columns[index][:, chosen].t())
        ys.append(wanted[index].reshape(wanted.shape[1], -1)[:, chosen].t())
    x, y = torch.cat(xs).double(), torch.cat(ys).double()
    x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
    gram = x.t() @ x
    ridge = 1e-4 * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
    solution = torch.linalg.solve(gram + ridge, x.t() @ y)  # (C_in * k * k + 1, C_out)
    conv.weight.copy_(solution[:-1].t().reshape(conv.weight.shape))
    conv.bias.copy_(solution[-1])


def conv_flops(layers: nn.Sequential, channels: int, height: int, width: int) -> int:
    """Multiply-adds x 2 of every conv of `layers` on one (1, channels, height, width) input."""
    total = 0

    def count(conv: nn.Module, _: object, output: Tensor) -> None:
        nonlocal total
        assert isinstance(conv, nn.Conv2d)
        per_output = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
        total += 2 * output.numel() * per_output

    hooks = [m.register_forward_hook(count) for m in layers if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            layers(torch.zeros(1, channels, height, width))
    finally:
        for hook in hooks:
            hook.remove()
    return total
