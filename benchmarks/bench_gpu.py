"""(e) GPU latency and throughput of the networks (encoder + AdaIN + decoder, style statistics
precomputed as the service caches them): 256, 512 and 1024 px, batch 1 and 8, fp32 against
fp16 and bf16 (ADAIN_PRECISION), eager against torch.compile as the service compiles
(ADAIN_COMPILE). Without CUDA it says so and exits 0.

    python3 -m benchmarks.bench_gpu [--sizes 256 512 1024] [--batches 1 8] [--repeats 10]
        [--precisions fp32 fp16 bf16]
    python3 -m benchmarks.bench_gpu --device cpu --sizes 64 --repeats 1 --precisions fp32 bf16 \
        --no-compile   # a smoke run of the code
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from benchmarks.common import machine, network_weights
from models.acceleration import DTYPES
from models.config import PipelineConfig
from models.model import StyleMix
from models.pipeline import Pipeline, build_pipeline


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(run: Callable[[], Tensor], device: torch.device, repeats: int) -> float:
    """Median over `repeats` timed calls, after 3 untimed ones (cuDNN autotuning, compiling)."""
    for _ in range(3):
        run()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def stylizer(pipeline: Pipeline) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The engine's batch pass, `Pipeline.stylize_batch`: encode, AdaIN to the style
    statistics, decode."""

    def run(content: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        mix = StyleMix(mean, std, torch.ones(1))
        return pipeline.stylize_batch(content, [mix] * len(content))

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--precisions", nargs="+", choices=sorted(DTYPES),
                        default=["fp32", "fp16", "bf16"])
    parser.add_argument("--no-compile", action="store_true", help="eager mode only")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: the GPU benchmark did not run (this is not a failure)")
        sys.exit(0)
    print(machine())
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}")
    encoder, decoder = network_weights()
    print(f"{'size':>5} {'batch':>5} {'precision':>9} {'mode':>8} {'ms/batch':>10} "
          f"{'images/s':>9} {'vs ' + args.precisions[0] + ' eager':>14}")
    for size in args.sizes:
        for batch in args.batches:
            content = torch.rand(batch, 3, size, size, device=device)
            baseline: float | None = None
            for precision in args.precisions:
                for compiled in ([False] if args.no_compile else [False, True]):
                    # Compiled as the service compiles (`build_pipeline`, ADAIN_COMPILE=on).
                    pipeline = build_pipeline(PipelineConfig(
                        device.type, precision, "on" if compiled else "off",
                        encoder_path=encoder, decoder_path=decoder))
                    with torch.inference_mode():
                        mean, std = pipeline.style_statistics(
                            torch.rand(1, 3, size, size, device=device))
                    with torch.inference_mode():
                        seconds = seconds_per_call(
                            partial(stylizer(pipeline), content, mean, std), device,
                            args.repeats)
                    baseline = baseline or seconds
                    print(f"{size:>5} {batch:>5} {precision:>9} "
                          f"{'compiled' if compiled else 'eager':>8} {seconds * 1000:>10.1f} "
                          f"{batch / seconds:>9.1f} {baseline / seconds:>13.2f}x")
                    del pipeline
                if device.type == "cuda":
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
