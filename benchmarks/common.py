"""What every benchmark shares: network weights, images, the service's in-process stylizer, the
plain reference loop, and interleaved timing (variants alternate, so machine noise hits all
alike).

Weights: ADAIN_ENCODER_PATH / ADAIN_DECODER_PATH when set (the reference port's files),
otherwise seeded random ones in the reference layout (speed does not depend on the values).
"""

from __future__ import annotations

import asyncio
import io
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import save_image

from devkit import reference_port
from devkit.images import encode, random_image
from media.controls import check_controls
from media.imaging import ImageLimits, OutputFormat, StyleInput
from models.config import CompileMode, PipelineConfig, Precision
from models.model import make_decoder, make_encoder
from models.pipeline import build_pipeline
from service.cache import MemoryStatsCache, encoder_fingerprint
from service.engine import Engine, cpu_threads
from service.imaging import PixelBudget
from service.settings import Settings
from service.stylizer import Stylizer, StylizeRequest

# Both pipelines with the threads the service's engine uses: the engine sets them in its own
# worker thread, the reference loop runs in this one.
torch.set_num_threads(cpu_threads())

WEIGHTS_DIR = Path(os.environ.get("ADAIN_BENCH_WEIGHTS_DIR", "/tmp/adain-bench-weights"))


def network_weights() -> tuple[Path, Path]:
    """(encoder, decoder) paths in the reference layout."""
    encoder, decoder = os.environ.get("ADAIN_ENCODER_PATH"), os.environ.get("ADAIN_DECODER_PATH")
    if encoder and decoder:
        return Path(encoder), Path(decoder)
    encoder_path, decoder_path = WEIGHTS_DIR / "vgg_normalised.pth", WEIGHTS_DIR / "decoder.pth"
    if not decoder_path.is_file():
        WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        net_encoder, net_decoder = make_encoder(), make_decoder()
        with torch.no_grad():
            # He init keeps activations at a realistic scale through the 18 convs.
            for layer in [*net_encoder[1:], *net_decoder]:
                if isinstance(layer, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        torch.save(net_encoder.state_dict(), encoder_path)
        torch.save(net_decoder.state_dict(), decoder_path)
    return encoder_path, decoder_path


def photo(size: int, seed: int) -> bytes:
    """A JPEG upload of size x size pixels (4:3 photos would change the figures only by area)."""
    return encode(random_image(size, size, seed=seed), "JPEG", quality=90)


def machine() -> str:
    cores = len(os.sched_getaffinity(0))
    return (f"{platform.processor() or platform.machine()}, {cores} CPU cores available, "
            f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
            f"CUDA {'yes' if torch.cuda.is_available() else 'no'}, "
            f"load average {os.getloadavg()[0]:.1f}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")


# --- the two pipelines compared -------------------------------------------------------------


class ReferenceLoop:
    """The reference port's `test.py` for one content and one style, as plainly as it is:
    decode both files, Resize, ToTensor, VGG on each, AdaIN, decoder, `save_image` (PNG)."""

    def __init__(self, encoder: Path, decoder: Path) -> None:
        self.vgg, self.decoder = reference_port.load_nets(encoder, decoder)

    def __call__(self, content: bytes, style: bytes, size: int) -> bytes:
        transform = reference_port.test_transform(size, False)
        with torch.no_grad():
            content_tensor = transform(Image.open(io.BytesIO(content)))[None]
            style_tensor = transform(Image.open(io.BytesIO(style)))[None]
            result = reference_port.style_transfer(self.vgg, self.decoder, content_tensor,
                                                   style_tensor)
        buffer = io.BytesIO()
        save_image(result, buffer, format="png")
        return buffer.getvalue()


@dataclass
class InProcessService:
    """The service's pipeline without HTTP: `Stylizer` (decode, checks, style cache, engine,
    encode) on an event loop of its own, with the service's default settings."""

    stylizer: Stylizer
    engine: Engine
    loop: asyncio.AbstractEventLoop

    @classmethod
    def start(cls, encoder: Path, decoder: Path, cache_entries: int | None = None,
              precision: Precision | None = None, compile_mode: CompileMode = "off"
              ) -> InProcessService:
        """precision: None = the service's default (ADAIN_PRECISION, auto)."""
        settings = Settings(encoder_path=encoder, decoder_path=decoder, device="cpu")
        config = settings.pipeline_config()
        pipeline = build_pipeline(PipelineConfig(
            config.device, precision or config.precision, compile_mode, config.tile_size,
            encoder, decoder))
        engine = Engine(pipeline, "cpu", max_batch_size=settings.batch_size_for("cpu"),
                        max_wait_ms=settings.max_wait_ms, queue_size=settings.queue_size)
        engine.start()
        entries = settings.cache_size if cache_entries is None else cache_entries
        stylizer = Stylizer(
            engine, MemoryStatsCache(entries),
            ImageLimits(settings.max_image_pixels, settings.max_output_pixels),
            encoder_fingerprint(encoder, pipeline.dtype, torch.device("cpu")),
            PixelBudget(settings.decode_pixel_budget, settings.decode_wait_s),
        )
        return cls(stylizer, engine, asyncio.new_event_loop())

    def __call__(self, content: bytes, style: bytes, size: int) -> bytes:
        controls = check_controls(styles=1, content_size=size, style_size=size)
        request = StylizeRequest(
            content, (StyleInput(style, "style[0]"),), controls, output_format=OutputFormat.png
        )
        call = self.stylizer.stylize(request)
        return self.loop.run_until_complete(call).image

    def close(self) -> None:
        self.loop.run_until_complete(self.engine.close())
        self.loop.close()


# --- timing ---------------------------------------------------------------------------------


def interleaved(variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
                ) -> dict[str, list[float]]:
    """Seconds per call of each variant, the variants taking turns in each round."""
    for _ in range(warmup):
        for run in variants.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def report(title: str, times: dict[str, list[float]], baseline: str) -> dict[str, float]:
    """Prints median ms per variant and its ratio to `baseline`; returns the ratios."""
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"\n{title}")
    ratios = {}
    for name, median in medians.items():
        ratios[name] = median / medians[baseline]
        spread = f"{min(times[name]) * 1000:.0f}-{max(times[name]) * 1000:.0f}"
        print(f"  {name:<40} {median * 1000:8.1f} ms  (range {spread:>11} ms, "
              f"n={len(times[name])})  ratio {ratios[name]:.2f}x {baseline}")
    return ratios
