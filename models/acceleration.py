"""Where and how fast the networks run: the device, their precision and `torch.compile`.

Only the networks' weights and activations take the lower precision; the AdaIN statistics, the
AdaIN target, CORAL, masks and the alpha blend stay float32 (`models.model`). fp32 is the
precision in which outputs equal the reference port's pixels within 1/255. Figures behind the
`auto` choices: docs/benchmarks.md.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from models.config import CompileMode, Device, Precision

log = logging.getLogger("models.acceleration")

CPUINFO = Path("/proc/cpuinfo")
# x86 flags of native bf16 arithmetic: AVX512-BF16 (AMD Zen 4+, Intel Cooper Lake+), AMX.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def pick_device(name: Device | str) -> torch.device:
    """`auto`: CUDA when there is one, else the CPU; or the device named."""
    if name == Device.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(str(name))


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux); None where there is no such file."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def native_bf16(flags: Iterable[str] | None) -> bool:
    """Whether the CPU computes bf16 natively: from its flags, or where they are unknown (no
    /proc/cpuinfo), from torch's own CPU probe."""
    if flags is not None:
        return not NATIVE_BF16_FLAGS.isdisjoint(flags)
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pick_dtype(
    precision: Precision, device: torch.device | str, flags: Iterable[str] | None = None
) -> torch.dtype:
    """The networks' dtype. `auto`: fp16 on CUDA (tensor cores; bf16 is not measured there
    yet), bf16 on CPUs with native bf16 (faster than fp32 there, with a PSNR well above what
    the eye sees: docs/benchmarks.md), fp32 elsewhere. `flags`: the CPU's feature flags
    (default: read from /proc/cpuinfo)."""
    if precision != Precision.auto:
        return DTYPES[str(precision)]
    device_type = torch.device(device).type
    if device_type == "cuda":
        return torch.float16
    if device_type == "cpu" and native_bf16(cpu_flags() if flags is None else flags):
        return torch.bfloat16
    return torch.float32


def compiler_found(device: torch.device | str) -> str | None:
    """The compiler `torch.compile`'s code generation needs: C++ for the CPU (Inductor's C++
    kernels), C for CUDA (Triton's launchers); None when there is none."""
    names = (
        ("cc", "gcc", "clang") if torch.device(device).type == "cuda" else ("c++", "g++", "clang++")
    )
    return next((path for name in names if (path := shutil.which(name))), None)


def wants_compile(mode: CompileMode, device: torch.device | str) -> bool:
    """`on`, or `auto` on CUDA. `auto` leaves the CPU eager: there compiling gained little for
    minutes of warm-up (docs/benchmarks.md)."""
    return mode == CompileMode.on or (
        mode == CompileMode.auto and torch.device(device).type == "cuda"
    )


class CompiledOrEager(nn.Module):
    """`torch.compile(module, dynamic=True)` (one graph for every image size, so the service's
    warm-up pays the whole compile before /readyz turns 200), falling back to the eager module
    for good if compiling or running the compiled code fails."""

    def __init__(
        self, module: nn.Module, backend: str | Callable[..., object] = "inductor"
    ) -> None:
        super().__init__()
        self.eager = module
        self.compiled = torch.compile(module, dynamic=True, backend=backend)
        self.failed = False

    def forward(self, x: Tensor) -> Tensor:
        if not self.failed:
            try:
                return self.compiled(x)
            except torch.cuda.OutOfMemoryError:
                raise  # the engine's to handle (it splits the batch); not a compile failure
            except Exception:
                log.warning("torch.compile failed; running eager from now on", exc_info=True)
                self.failed = True
        return self.eager(x)


def compile_networks(net: nn.Module, mode: CompileMode, device: torch.device | str) -> bool:
    """Compile `net.encoder` and `net.decoder` in place when `mode` asks for it and a compiler
    is there; whether it did. The compile itself happens on the first forward pass."""
    if not wants_compile(mode, device):
        return False
    if compiler_found(device) is None:
        log.warning("torch.compile skipped: no C/C++ compiler found; running eager")
        return False
    net.encoder = CompiledOrEager(net.encoder)
    net.decoder = CompiledOrEager(net.decoder)
    return True
