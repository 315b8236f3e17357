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

from models.model import RELU_TAPS, StyleTransfer, _conv, _pool
from models.weights import WEIGHTS_DIR, WeightsError, read_state, save_state

DEFAULT_LITE = WEIGHTS_DIR / "lite.safetensors"
# Channels at relu1_1, relu2_1, relu3_1, relu4_1 (the full VGG: 64, 128, 256, 512).
LITE_WIDTHS: tuple[int, int, int, int] = (16, 32, 64, 128)


def make_lite_encoder(widths: Sequence[int] = LITE_WIDTHS) -> nn.Sequential:
    """`make_encoder`'s 31 modules with `widths` channels: taps at RELU_TAPS as the full one."""
    w1, w2, w3, w4 = widths
    return nn.Sequential(
        nn.Conv2d(3, 3, (1, 1)),  # the input normalisation, as the full encoder's first layer
        *_conv(3, w1),
        *_conv(w1, w1),
        _pool(),
        *_conv(w1, w2),
        *_conv(w2, w2),
        _pool(),
        *_conv(w2, w3),
        *_conv(w3, w3),
        *_conv(w3, w3),
        *_conv(w3, w3),
        _pool(),
        *_conv(w3, w4),
    )


def make_lite_decoder(widths: Sequence[int] = LITE_WIDTHS) -> nn.Sequential:
    """`make_decoder`'s layout with `widths` channels: the lite encoder mirrored."""
    w1, w2, w3, w4 = widths
    up = nn.Upsample(scale_factor=2, mode="nearest")
    layers = [
        *_conv(w4, w3),
        up,
        *_conv(w3, w3),
        *_conv(w3, w3),
        *_conv(w3, w3),
        *_conv(w3, w2),
        up,
        *_conv(w2, w2),
        *_conv(w2, w1),
        up,
        *_conv(w1, w1),
        *_conv(w1, 3),
    ]
    return nn.Sequential(*layers[:-1])  # the last conv has no ReLU


def make_lite(widths: Sequence[int] = LITE_WIDTHS) -> StyleTransfer:
    """The lite networks (random weights) behind `StyleTransfer`'s one stylize path."""
    return StyleTransfer(make_lite_encoder(widths), make_lite_decoder(widths))


def lite_state(net: StyleTransfer) -> dict[str, Tensor]:
    """One state dict for both networks: `encoder.<i>.*` and `decoder.<i>.*`."""
    return {
        **{f"encoder.{k}": v for k, v in net.encoder.state_dict().items()},
        **{f"decoder.{k}": v for k, v in net.decoder.state_dict().items()},
    }


def save_lite(net: StyleTransfer, path: Path) -> None:
    save_state(lite_state(net), path, half=True)


def load_lite(
    path: Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> StyleTransfer:
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


def widths_of(state: dict[str, Tensor], path: Path) -> tuple[int, int, int, int]:
    """The channel widths at the four taps, read from the encoder's conv weights."""
    try:
        return tuple(  # type: ignore[return-value]
            int(state[f"encoder.{tap - 1}.weight"].shape[0]) for tap in RELU_TAPS
        )
    except KeyError as exc:
        raise WeightsError(f"{path}: not a lite model (no encoder.{exc.args[0]})") from exc


# --- a head start: the full networks' weights, pruned -----------------------------------------


@torch.no_grad()
def prune_into(
    source: nn.Sequential,
    target: nn.Sequential,
    source_input: Tensor,
    target_input: Tensor,
    samples: int = 32_768,
    generator: torch.Generator | None = None,
) -> None:
    """Initialise the slim `target` from `source` of the same layout, layer by layer on a batch
    (channel pruning with least-squares reconstruction, He et al., ICCV 2017): each conv keeps
    the source's most active output channels (mean squared ReLU output; all of them when the
    widths agree), and its weights are the least-squares fit of those channels' pre-activations
    from the target's own inputs at `samples` random positions, so that the errors of the
    layers before are corrected rather than compounded. `source_input` and `target_input` are
    the same images (or the same AdaIN targets) in each network's input space."""
    x_source, x_target = source_input.float(), target_input.float()
    for big, small in zip(source, target, strict=True):
        if not isinstance(big, nn.Conv2d):
            x_source, x_target = big(x_source), small(x_target)
            continue
        y_source = big(x_source)
        keep = torch.arange(small.out_channels)
        if small.out_channels < big.out_channels:
            energy = y_source.clamp(min=0).pow(2).mean(dim=(0, 2, 3))
            keep = energy.topk(small.out_channels).indices.sort().values
        fit_conv(small, x_target, y_source[:, keep], samples, generator)
        x_source, x_target = y_source, small(x_target)


@torch.no_grad()
def fit_conv(
    conv: nn.Conv2d,
    inputs: Tensor,
    wanted: Tensor,
    samples: int,
    generator: torch.Generator | None = None,
) -> None:
    """Least squares (lightly ridge-regularised) for an unpadded, stride-1 conv's weight and
    bias: conv(inputs) ~ wanted, (N, C_out, h, w), at `samples` random output positions."""
    n = inputs.shape[0]
    columns = F.unfold(inputs, conv.kernel_size)  # (N, C_in * kh * kw, h * w)
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
    solution = torch.linalg.solve(gram + ridge, x.t() @ y)  # (C_in * kh * kw + 1, C_out)
    conv.weight.copy_(solution[:-1].t().reshape(conv.weight.shape))
    conv.bias.copy_(solution[-1])
