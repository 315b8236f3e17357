"""The networks' precision (chosen per device and CPU, statistics kept fp32) and torch.compile
with its fallback."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from devkit.images import psnr, random_image
from models import images
from models.acceleration import (
    CompiledOrEager,
    compile_networks,
    compiler_found,
    cpu_flags,
    native_bf16,
    pick_dtype,
    wants_compile,
)
from models.model import Masks, StyleTransfer, adain_target, calc_mean_std
from models.pipeline import Pipeline
from models.weights import load_model
from service.main import WARMUP_SIZES

ZEN4 = {"fpu", "sse2", "avx2", "avx512f", "avx512_bf16"}  # AMD EPYC Genoa: AVX512-BF16
SAPPHIRE_RAPIDS = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
SKYLAKE = {"fpu", "sse2", "avx2", "avx512f", "avx512bw"}  # AVX-512 without bf16
# bf16 networks against fp32 on small images of the test weights: what was measured is in
# docs/benchmarks.md (section f); the bound leaves room for other CPUs.
MIN_PSNR_DB = 35.0


@pytest.mark.parametrize(
    ("precision", "device", "flags", "expected"),
    [
        ("auto", "cpu", ZEN4, torch.bfloat16),
        ("auto", "cpu", SAPPHIRE_RAPIDS, torch.bfloat16),
        ("auto", "cpu", {"amx_bf16"}, torch.bfloat16),
        ("auto", "cpu", SKYLAKE, torch.float32),
        ("auto", "cpu", set(), torch.float32),  # flags unknown to us (e.g. an ARM CPU)
        ("auto", "cuda", SKYLAKE, torch.float16),
        ("auto", "mps", ZEN4, torch.float32),  # neither CPU nor CUDA: fp32
        ("fp32", "cpu", ZEN4, torch.float32),
        ("bf16", "cpu", SKYLAKE, torch.bfloat16),
        ("fp16", "cpu", ZEN4, torch.float16),
        ("bf16", "cuda", set(), torch.bfloat16),
        ("fp32", "cuda", set(), torch.float32),
    ],
)
def test_precision_picks_the_dtype(
    precision: str, device: str, flags: set[str], expected: torch.dtype
) -> None:
    assert pick_dtype(precision, device, flags) == expected  # type: ignore[arg-type]


def test_cpu_flags_come_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512f avx512_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu avx512f avx512_bf16\n"
    )
    assert cpu_flags(cpuinfo) == {"fpu", "avx512f", "avx512_bf16"}
    assert native_bf16(cpu_flags(cpuinfo))
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd sve\n")  # aarch64 spells it so
    assert cpu_flags(cpuinfo) == {"fp", "asimd", "sve"}
    assert not native_bf16(cpu_flags(cpuinfo))
    assert cpu_flags(tmp_path / "missing") is None


def test_without_cpuinfo_torch_probes_the_cpu() -> None:
    assert native_bf16(None) == torch.ops.mkldnn._is_mkldnn_bf16_supported()


# --- bf16 networks, fp32 statistics -------------------------------------------------------


@pytest.fixture(scope="module")
def nets(reference_weights: tuple[Path, Path]) -> dict[torch.dtype, StyleTransfer]:
    return {
        dtype: load_model(*reference_weights, dtype=dtype)
        for dtype in (torch.float32, torch.bfloat16)
    }


def image(width: int, height: int, seed: int) -> Tensor:
    return images.prepare(random_image(width, height, seed))


def test_networks_take_the_dtype(nets: dict[torch.dtype, StyleTransfer]) -> None:
    net = nets[torch.bfloat16]
    assert net.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in net.parameters())
    assert net.encode(image(24, 24, 1)).dtype == torch.bfloat16


@pytest.mark.parametrize(
    "controls",
    [{}, {"alpha": 0.6, "mix_weights": [1, 3], "masks": "binary"}, {"preserve_color": True}],
    ids=["plain", "alpha-weights-mask", "preserve-color"],
)
def test_bf16_output_is_close_to_fp32(
    nets: dict[torch.dtype, StyleTransfer], controls: dict[str, object]
) -> None:
    content = image(64, 48, 1)
    styles = [image(40, 40, 2), image(48, 32, 3)][: 2 if "mix_weights" in controls else 1]
    if controls.get("masks") == "binary":
        left = torch.zeros(48, 64)
        left[:, :30] = 1
        controls = {**controls, "masks": Masks(torch.stack([left, 1 - left]), binary=True)}
    with torch.inference_mode():
        outputs = {
            dtype: Pipeline(net).stylize(content, styles, **controls)  # type: ignore[arg-type]
            for dtype, net in nets.items()
        }
    fp32, bf16 = outputs[torch.float32], outputs[torch.bfloat16]
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    assert fp32.std() > 0.02  # a real image, not a flat grey: the comparison could fail
    assert psnr(bf16.numpy(), fp32.numpy()) >= MIN_PSNR_DB


def test_statistics_are_computed_in_fp32(nets: dict[torch.dtype, StyleTransfer]) -> None:
    net = nets[torch.bfloat16]
    style = image(40, 32, 4)
    with torch.inference_mode():
        feat = net.encode(style)
        mean, std = Pipeline(net).style_statistics(style)
        exact_mean, exact_std = calc_mean_std(feat.float())
        bf16_mean, bf16_std = calc_mean_std(feat)
    assert feat.dtype == torch.bfloat16
    assert mean.dtype == std.dtype == torch.float32
    # The bf16 features' statistics, computed in fp32 (not rounded to bf16's 8 bits).
    assert torch.equal(mean, exact_mean) and torch.equal(std, exact_std)
    assert not torch.equal(std, bf16_std.float())

    target = adain_target(feat, mean, std, torch.ones(1))
    assert target.dtype == torch.float32
    # The AdaIN target follows the style's fp32 statistics closely.
    target_mean, target_std = calc_mean_std(target)
    torch.testing.assert_close(target_mean, mean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(target_std, std, atol=1e-3, rtol=1e-3)
    assert not torch.equal(bf16_mean.float(), exact_mean)  # what bf16 statistics would lose


# --- torch.compile --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "device", "expected"),
    [("on", "cpu", True), ("off", "cuda", False), ("auto", "cuda", True), ("auto", "cpu", False)],
)
def test_compile_mode(mode: str, device: str, expected: bool) -> None:
    assert wants_compile(mode, device) is expected  # type: ignore[arg-type]


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(3, 4, 3), nn.ReLU()).eval()


def test_the_warm_up_sizes_compile_every_graph_later_sizes_use() -> None:
    """dynamic=True: the service's warm-up passes (service.main.WARMUP_SIZES) compile the graphs
    that later image sizes, square or not, odd or even, run without compiling again."""
    graphs: list[torch.fx.GraphModule] = []

    def counting_backend(graph: torch.fx.GraphModule, example_inputs: list[Tensor]) -> object:
        graphs.append(graph)
        return graph.forward

    net = StyleTransfer().eval()
    eager = {"encoder": net.encoder, "decoder": net.decoder}
    net.encoder = CompiledOrEager(eager["encoder"], backend=counting_backend)
    net.decoder = CompiledOrEager(eager["decoder"], backend=counting_backend)
    with torch.inference_mode():
        for width, height in WARMUP_SIZES:
            net.decoder(net.encoder(torch.rand(1, 3, height, width)))
        warmed_up = len(graphs)
        for height, width in ((256, 256), (120, 171), (64, 48), (37, 53)):
            x = torch.rand(1, 3, height, width)
            feat = net.encoder(x)
            assert torch.equal(feat, eager["encoder"](x))
            assert torch.equal(net.decoder(feat), eager["decoder"](feat))
    assert len(graphs) == warmed_up


def test_a_failing_compile_falls_back_to_eager(caplog: pytest.LogCaptureFixture) -> None:
    def broken_backend(graph: torch.fx.GraphModule, example_inputs: list[Tensor]) -> object:
        raise RuntimeError("no compiler today")

    net = small_net()
    compiled = CompiledOrEager(net, backend=broken_backend)
    x = torch.rand(1, 3, 16, 16)
    with caplog.at_level(logging.WARNING, "models.acceleration"), torch.inference_mode():
        assert torch.equal(compiled(x), net(x))
        assert compiled.failed
        assert torch.equal(compiled(x), net(x))  # eager from now on
    assert "torch.compile failed; running eager" in caplog.text


def test_no_compiler_no_compile(
    reference_weights: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    net = load_model(*reference_weights)
    encoder = net.encoder
    assert not compile_networks(net, "off", "cpu")
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no C or C++ compiler on it
    assert compiler_found("cpu") is None and compiler_found("cuda") is None
    with caplog.at_level(logging.WARNING, "models.acceleration"):
        assert not compile_networks(net, "on", "cpu")
    assert net.encoder is encoder
    assert "no C/C++ compiler found" in caplog.text
