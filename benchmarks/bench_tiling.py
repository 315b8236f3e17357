"""Tiled stylization: accuracy against the untiled pass, and time and peak memory of 4K and 8K
outputs through `adain stylize` and through HTTP, with the embedded weights.

Accuracy (in this process, fp32): a 2048 x 2048 photo stylized untiled, tiled with statistics
accumulated over the tiles (the default), and tiled with URST's thumbnail statistics: PSNR and
max difference against untiled, and a crop across the tile corner written next to the untiled
crop (docs/images/tile_seam_crop.png). Memory: each output in a fresh process, its peak resident
memory (ru_maxrss of the CLI child; VmHWM of the server, which includes its start-up).

    nice -n 5 python3 -m benchmarks.bench_tiling [--sizes 4k,8k] [--skip-accuracy]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from benchmarks.common import machine
from devkit import REPO
from devkit.images import random_image
from devkit.server import running_server
from models import images, tiling
from models.config import DEFAULT_TILE_SIZE, PipelineConfig
from models.model import StyleMix, StyleTransfer, calc_mean_std
from models.pipeline import build_pipeline, style_statistics, stylize_batch

SIZES = {"4k": (3840, 2160), "8k": (7680, 4320)}
PHOTO = Path("/work/shared/datasets/content/train/adain__avril.jpg")
STYLE = Path("/work/shared/datasets/style/train/adain__antimonocromatismo.jpg")
CROP = 160  # pixels each side of the crop, centred on the corner of four tiles
THUMBNAIL_SIDE = 1024


def picture(path: Path, size: tuple[int, int], seed: int) -> Image.Image:
    """The photo resized and centre-cropped to size (width, height); noise if it is absent."""
    if not path.is_file():
        return random_image(*size, seed=seed)
    with Image.open(path) as image:
        rgb = images.to_rgb(image)
    scale = max(size[0] / rgb.width, size[1] / rgb.height)
    resized = rgb.resize(
        (math.ceil(rgb.width * scale), math.ceil(rgb.height * scale)), Image.Resampling.BICUBIC
    )
    left, top = (resized.width - size[0]) // 2, (resized.height - size[1]) // 2
    return resized.crop((left, top, left + size[0], top + size[1]))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a - b).double().pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def thumbnail_statistics(net: StyleTransfer, image: Tensor, side: int) -> tuple[Tensor, Tensor]:
    """URST's statistics (Chen et al., AAAI 2022): those of the image shrunk (area-averaged) to
    `side` on its longer side."""
    height, width = image.shape[-2:]
    scale = side / max(height, width)
    size = (max(round(height * scale), 9), max(round(width * scale), 9))
    thumbnail = F.interpolate(image.float(), size=size, mode="bilinear", antialias=True)
    return calc_mean_std(net.encode(thumbnail).float())


def timed(work: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    result = work()
    return result, time.perf_counter() - start


def accuracy(side: int, tile: int, out_dir: Path) -> None:
    net = build_pipeline(PipelineConfig(device="cpu", precision="fp32")).net
    content = images.prepare(picture(PHOTO, (side, side), seed=1))
    style = images.prepare(picture(STYLE, (512, 512), seed=2))
    with torch.inference_mode():
        mean, std = style_statistics(net, style)
        mix = StyleMix(mean, std, torch.ones(1))
        untiled, untiled_s = timed(lambda: stylize_batch(net, content, [mix], tile_size=0))
        exact = net.encode(content).float()
        exact_stats = calc_mean_std(exact)
        del exact
        tiled, tiled_s = timed(lambda: stylize_batch(net, content, [mix], tile_size=tile))
        accumulated = tiling.accumulated_statistics(net, content, tile)
        thumb = thumbnail_statistics(net, content, THUMBNAIL_SIDE)
        thumbed, thumb_s = timed(lambda: tiling.stylize_tiled(net, content, mix, tile, thumb))
    print(
        f"\naccuracy at {side} x {side}, fp32, tiles of {tile} px (+{tiling.MARGIN} px "
        f"margins), one style"
    )
    print(f"  untiled                    {untiled_s:7.1f} s")
    for name, out, seconds, stats in [
        ("tiled, accumulated stats", tiled, tiled_s, accumulated),
        (f"tiled, thumbnail {THUMBNAIL_SIDE} stats", thumbed, thumb_s, thumb),
    ]:
        levels = (out - untiled).abs().max().item() * 255
        mean_error = (
            (stats[0].flatten() - exact_stats[0].flatten()).abs().max() / exact_stats[0].abs().max()
        ).item()
        std_error = (
            (stats[1].flatten() - exact_stats[1].flatten()).abs().max() / exact_stats[1].abs().max()
        ).item()
        print(
            f"  {name:<26} {seconds:7.1f} s  PSNR {psnr(out, untiled):6.1f} dB  max diff "
            f"{levels:6.3f} / 255  relu4_1 stats max error: mean {mean_error:.1e}, std "
            f"{std_error:.1e} (of the largest)"
        )
    corner = slice(max(tile - CROP, 0), tile + CROP)
    crops = [images.to_pil(x[..., corner, corner]) for x in (tiled, untiled)]
    sheet = Image.new("RGB", (4 * CROP + 8, 2 * CROP), "white")
    sheet.paste(crops[0], (0, 0))
    sheet.paste(crops[1], (2 * CROP + 8, 0))
    path = out_dir / "tile_seam_crop.png"
    sheet.save(path)
    print(f"  wrote {path}: tiled | untiled, {2 * CROP} px around a corner of four tiles")


def peak_of_child(command: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in GB) of a command run in a fresh process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{command} failed: {process.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024**2


def vm_hwm_gb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    raise RuntimeError("no VmHWM")


def memory(label: str, size: tuple[int, int], work: Path, via: set[str]) -> None:
    content, style = work / f"content_{label}.jpg", work / "style.jpg"
    picture(PHOTO, size, seed=3).save(content, quality=92)
    picture(STYLE, (512, 512), seed=4).save(style, quality=92)
    megapixels = size[0] * size[1] / 1e6
    print(
        f"\n{label}: {size[0]} x {size[1]} ({megapixels:.1f} MP), content upload "
        f"{content.stat().st_size / 1e6:.1f} MB JPEG, PNG output"
    )
    if "cli" in via:
        command = [sys.executable, "-m", "cli", "stylize", str(content), str(style)]
        output = ["-o", str(work / f"out_{label}.png"), "--content-size", "0", "--device", "cpu"]
        seconds, peak = peak_of_child(command + output)
        print(f"  adain stylize   {seconds:7.1f} s  peak RSS {peak:5.2f} GB")
    if "http" in via:
        http(content, style)


def http(content: Path, style: Path) -> None:
    env = {"ADAIN_DEVICE": "cpu", "PYTHONPATH": str(REPO)}
    with running_server(env, ready_timeout_s=600) as server:
        idle = vm_hwm_gb(server.process.pid)
        start = time.perf_counter()
        response = httpx.post(
            f"{server.url}/stylize",
            data={"content_size": "0"},
            timeout=3600,
            files=[
                ("content", ("c.jpg", content.read_bytes())),
                ("style", ("s.jpg", style.read_bytes())),
            ],
        )
        seconds = time.perf_counter() - start
        response.raise_for_status()
        peak = vm_hwm_gb(server.process.pid)
    print(
        f"  HTTP POST       {seconds:7.1f} s  peak RSS {peak:5.2f} GB (server after start-up "
        f"and warm-up: {idle:.2f} GB); response {len(response.content) / 1e6:.1f} MB, "
        f"Content-Length {response.headers['content-length']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4k,8k", help="of " + ", ".join(SIZES) + " or WxH")
    parser.add_argument("--accuracy-side", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE_SIZE,
                        help="tile side of the accuracy test")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--via", default="cli,http", help="adain stylize (cli), HTTP or both")
    parser.add_argument("--images", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    print(machine())
    if not args.skip_accuracy:
        args.images.mkdir(parents=True, exist_ok=True)
        accuracy(args.accuracy_side, args.tile, args.images)
    with tempfile.TemporaryDirectory(prefix="adain-bench-tiling-") as folder:
        for label in filter(None, args.sizes.split(",")):
            size = SIZES.get(label) or tuple(int(n) for n in label.split("x"))
            memory(label, (size[0], size[1]), Path(folder), set(args.via.split(",")))


if __name__ == "__main__":
    main()
