"""The video stabiliser on a short synthetic clip with known motion, with the embedded networks.

A textured picture panning by a sub-stride 2.5 x 1.25 px per frame: per-frame stylization
flickers there (the strokes jump with the network's stride-8 grid), and the stabiliser must
remove most of it without blurring.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from devkit.clips import Clip, moving_disc, pan, render
from models.config import Device, PipelineConfig, Precision
from models.model import StyleMix
from models.pipeline import Pipeline, build_pipeline
from models.video import STRIDE, Stabilizer, StabilizerConfig, stylize_on_phase
from models.video_metrics import sharpness, warping_error

SIZE = 96
FRAMES = 8


def texture(size: int, seed: int) -> Tensor:
    """(3, size, size) in [0, 1]: smooth shapes plus fine detail, so strokes and edges exist."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255
    fine = rng.normal(0, 0.08, (size, size, 1)).astype(np.float32)
    return torch.from_numpy(np.clip(smooth + fine, 0, 1)).permute(2, 0, 1)


@pytest.fixture(scope="module")
def net() -> Pipeline:
    return build_pipeline(PipelineConfig(Device.cpu, Precision.fp32))


@pytest.fixture(scope="module")
def stylize(net: Pipeline):
    mean, std = net.style_statistics(texture(128, seed=7)[None])
    mix = StyleMix(mean=mean, std=std, weights=torch.ones(1))
    return lambda frame: net.stylize_batch(frame, [mix])


@pytest.fixture(scope="module")
def clip() -> Clip:
    return render(texture(2 * SIZE, seed=3), pan((2.5, 1.25), (8.0, 8.0)), FRAMES, (SIZE, SIZE))


def run(stabilizer: Stabilizer, frames: Tensor) -> Tensor:
    return torch.cat([stabilizer(frame[None]) for frame in frames])


@pytest.fixture(scope="module")
def per_frame(stylize, clip: Clip) -> Tensor:
    with torch.inference_mode():
        return torch.cat([stylize(frame[None]) for frame in clip.frames])


def test_the_clip_maker_gives_the_true_motion(clip: Clip) -> None:
    # The input clip moved by its own flow matches itself (up to the bilinear warp's blur on
    # its fine noise), far better than with a flow one pixel off.
    wrong = clip.flows + torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    assert warping_error(clip.frames, clip.flows, clip.valid) < 0.4 * warping_error(
        clip.frames, wrong, clip.valid
    )


def test_a_moving_disc_marks_the_uncovered_background_invalid() -> None:
    layer = (texture(2 * SIZE, seed=5), moving_disc((30.0, 40.0), (3.0, 0.0)), 15.0)
    clip = render(texture(2 * SIZE, seed=3), pan((0.0, 0.0)), 3, (SIZE, SIZE), layer=layer)
    invalid = ~clip.valid[0, 0]
    # Behind the disc's trailing edge (it moves right): the background there was covered.
    assert invalid[40, 30 - 15 + 1].item()
    assert not invalid[40, 80].item() and not invalid[40, 33].item()
    assert warping_error(clip.frames, clip.flows, clip.valid) < 1e-4


def test_stabilised_frames_flicker_far_less_and_stay_sharp(stylize, clip, per_frame) -> None:
    stabilised = run(Stabilizer(stylize), clip.frames)
    ratio = warping_error(stabilised, clip.flows, clip.valid) / warping_error(
        per_frame, clip.flows, clip.valid
    )
    assert ratio < 0.5, ratio
    assert sharpness(stabilised) > 0.85 * sharpness(per_frame)


def test_disabled_is_per_frame_exactly(stylize, clip, per_frame) -> None:
    disabled = run(Stabilizer(stylize, StabilizerConfig(enabled=False)), clip.frames)
    torch.testing.assert_close(disabled, per_frame, rtol=0, atol=0)


def test_resuming_from_the_state_gives_the_same_frames(stylize, clip) -> None:
    straight = Stabilizer(stylize)
    expected = run(straight, clip.frames)
    first = Stabilizer(stylize)
    head = run(first, clip.frames[:4])
    state = {key: value.clone() for key, value in first.state_dict().items()}
    resumed = Stabilizer(stylize)
    resumed.load_state_dict(state)
    tail = run(resumed, clip.frames[4:])
    torch.testing.assert_close(torch.cat([head, tail]), expected, rtol=0, atol=1e-6)


def test_the_phase_shift_is_an_exact_integer_shift(stylize) -> None:
    # Padding by (phase, 8 - phase) and cropping back leaves the frame's pixels where they were:
    # with an identity "stylization" the frame comes back bit for bit.
    frame = texture(SIZE, seed=11)[None]
    for phase in [(0, 0), (3, 5), (STRIDE - 1, 1)]:
        torch.testing.assert_close(stylize_on_phase(lambda x: x, frame, phase), frame)
