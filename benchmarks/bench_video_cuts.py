"""Cuts in video: the stabiliser (`models.video`) on two shots of unrelated photos, one after the
other, against a stabiliser started on the second shot (what a cut should give), with the cut's
detection (`cut_share`) on and off; and the share of reliable flow that camera motions keep, which
the detection's threshold must stay below.

Per photo pair: the reliable share at the cut, and over the second shot the mean absolute
difference from the fresh start and the change of the mean ln style loss (`models.evaluate`).

    nice -n 19 python3 -m benchmarks.bench_video_cuts [--size 256] [--pairs 5] [--style ...]
"""

from __future__ import annotations

import argparse
import math
from itertools import pairwise

import torch
from torch import Tensor

from benchmarks.bench_video_stability import mean_ln_losses
from benchmarks.common import machine
from devkit.clips import (
    Clip,
    content_photos,
    load_photo,
    pan,
    render,
    rotate,
    standard_clips,
    style_images,
    zoom,
)
from models.config import Device, PipelineConfig
from models.model import StyleMix
from models.pipeline import Pipeline, build_pipeline
from models.video import (
    LIVE,
    FlowEstimator,
    Stabilizer,
    StabilizerConfig,
    Tracking,
    grey_uint8,
    placed_mix,
)

SHOT_FRAMES = 8
# Content photo indices of the two shots, in the dataset's sorted order.
PAIRS = ((3, 17), (42, 100), (5, 6), (200, 300), (7, 400), (60, 61), (250, 500), (9, 90))


def reliable_shares(config: StabilizerConfig, frames: Tensor) -> list[float]:
    """The share of each frame's pixels that match the previous frame reliably."""
    flow = FlowEstimator(config)
    greys = [grey_uint8(frame[None]) for frame in frames]
    return [
        float(flow.backward(current, previous).reliable.mean())
        for previous, current in pairwise(greys)
    ]


def run(net: Pipeline, mix: StyleMix, config: StabilizerConfig, frames: Tensor) -> Tensor:
    stabilizer = Stabilizer(
        lambda frame, placement: net.stylize_batch(frame, [placed_mix(mix, placement)]), config
    )
    return torch.cat([stabilizer(frame[None]) for frame in frames])


def motion_clips(size: int) -> list[Clip]:
    """The stability benchmark's clips plus faster pans, a 5% zoom and a 3 degree rotation."""
    photo = load_photo(content_photos()[50], 2 * size)
    centre = ((size - 1) / 2, (size - 1) / 2)
    start = (0.25 * size, 0.25 * size)
    shape = (size, size)
    fast = [
        render(photo, pan((speed, speed / 3), start), 6, shape, name=f"pan_{speed}px")
        for speed in (8, 16, 24, 40)
    ]
    fast.append(render(photo, zoom(1.05, centre, start), 6, shape, name="zoom_5%"))
    fast.append(render(photo, rotate(math.radians(3), centre, start), 6, shape, name="rotate_3deg"))
    return standard_clips(size, 8) + fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="frame side, px")
    parser.add_argument("--pairs", type=int, default=len(PAIRS))
    parser.add_argument("--style", default="adain__la_muse", help="style file stem")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net = build_pipeline(PipelineConfig(Device.cpu))
    print(machine())
    print(f"embedded default, {net.dtype}, {args.size} px, {args.style}")
    style = load_photo({p.stem: p for p in style_images()}[args.style], args.size)[None]
    mean, std = net.style_statistics(style)
    mix = StyleMix(mean=mean, std=std, weights=torch.ones(1))
    photos = content_photos()
    shape = (args.size, args.size)
    start = (0.1 * args.size, 0.1 * args.size)
    print(
        f"{'pair':>9s} {'reliable at cut':>15s} {'diff on':>8s} {'diff off':>8s} "
        f"{'d ln style on':>13s} {'d ln style off':>14s}"
    )
    for first, second in PAIRS[: args.pairs]:
        shots = [
            render(
                load_photo(photos[index], 2 * args.size), pan(velocity, start), SHOT_FRAMES, shape
            )
            for index, velocity in ((first, (2.0, 0.5)), (second, (1.5, 1.0)))
        ]
        frames = torch.cat([shot.frames for shot in shots])
        at_cut = reliable_shares(StabilizerConfig(), frames[SHOT_FRAMES - 1 : SHOT_FRAMES + 1])[0]
        fresh = run(net, mix, StabilizerConfig(), shots[1].frames)
        fresh_style, _ = mean_ln_losses(net, shots[1], style, fresh)
        cells = []
        for config in (StabilizerConfig(), StabilizerConfig(tracking=Tracking(cut_share=0))):
            outputs = run(net, mix, config, frames)[SHOT_FRAMES:]
            style_ln, _ = mean_ln_losses(net, shots[1], style, outputs)
            cells.append((float((outputs - fresh).abs().mean()), style_ln - fresh_style))
        (diff_on, style_on), (diff_off, style_off) = cells
        print(
            f"{first:4d}>{second:<4d} {at_cut:15.3f} {diff_on:8.4f} {diff_off:8.4f} "
            f"{style_on:+13.3f} {style_off:+14.3f}",
            flush=True,
        )
    print(
        f"\nreliable share on camera motions (cut_share {StabilizerConfig().tracking.cut_share}):"
    )
    for clip in motion_clips(args.size):
        shares = {
            label: min(reliable_shares(config, clip.frames))
            for label, config in (("default", StabilizerConfig()), ("live", LIVE))
        }
        print(f"{clip.name:20s} " + "  ".join(f"min {k} {v:.3f}" for k, v in shares.items()))


if __name__ == "__main__":
    main()
