"""The video stabiliser on short synthetic clips with known motion.

A textured picture panning by a sub-stride 2.5 x 1.25 px per frame, with the embedded networks:
per-frame stylization flickers there (the strokes jump with the network's stride-8 grid), and
the stabiliser must remove most of it without blurring. A zoom and a rotation with a cheap fake
network that has the same stride-8 grid (block means): the similarity alignment must keep the
grid on the scene. Static masks must stay on the frame's pixels whatever the alignment.
"""

from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from devkit.clips import Clip, Deforming, moving_disc, pan, render, rotate, shake, zoom
from models import video
from models.config import FEATURE_STRIDE, Device, ModelName, PipelineConfig, Precision
from models.model import Masks, StyleMix
from models.pipeline import Pipeline, build_pipeline
from models.video import (
    LIVE,
    Blending,
    Carried,
    Flow,
    FlowEstimator,
    Placement,
    Renewal,
    Stabilizer,
    StabilizerConfig,
    Tracking,
    choose_start_phase,
    fit_similarity,
    for_model,
    grey_uint8,
    low_pass,
    placed_masks,
    placed_mix,
    premix,
    premixes,
    propagate,
    style_distance,
    with_strength,
)
from models.video_metrics import sharpness, warping_error
from models.warping import FlowMaps, contrast_preserving_mix, gaussian_blur

SIZE = 96
FRAMES = 8
NO_BLEND = Blending(weight=0)  # no propagation: the aligned stylizations alone


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
    return lambda frame, placement: net.stylize_batch(frame, [mix])


@pytest.fixture(scope="module")
def clip() -> Clip:
    return render(texture(2 * SIZE, seed=3), pan((2.5, 1.25), (8.0, 8.0)), FRAMES, (SIZE, SIZE))


def run(stabilizer: Stabilizer, frames: Tensor) -> Tensor:
    return torch.cat([stabilizer(frame[None]) for frame in frames])


def one_by_one(stylize, clip: Clip) -> Tensor:
    """The clip's frames stylized each on its own (per-frame stylization)."""
    with torch.inference_mode():
        return torch.cat([stylize(frame[None], None) for frame in clip.frames])


def against_per_frame(
    stylize, clip: Clip, config: StabilizerConfig = StabilizerConfig()
) -> tuple[float, float]:
    """The stabiliser's (the default's) warping error and sharpness over per-frame
    stylization's."""
    per_frame = one_by_one(stylize, clip)
    stabilised = run(Stabilizer(stylize, config), clip.frames)
    errors = [warping_error(frames, clip.flows, clip.valid) for frames in (stabilised, per_frame)]
    return errors[0] / errors[1], sharpness(stabilised) / sharpness(per_frame)


@pytest.fixture(scope="module")
def per_frame(stylize, clip: Clip) -> Tensor:
    with torch.inference_mode():
        return torch.cat(
            [stylize(frame[None], Placement.identity((SIZE, SIZE))) for frame in clip.frames]
        )


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


def test_a_hand_held_cameras_tremor_is_followed(stylize) -> None:
    # The camera shifts by about 2 px and turns by about 0.3 degrees, another way every frame
    # or two: the clip's own frames match along its true flow, and the stabiliser, following
    # the tremor, flickers far less than per-frame stylization and stays sharp.
    centre = ((SIZE - 1) / 2, (SIZE - 1) / 2)
    motion = shake(2.0, math.radians(0.3), centre, (16.0, 16.0), seed=4)
    clip = render(texture(2 * SIZE, seed=3), motion, FRAMES, (SIZE, SIZE))
    steps = clip.flows.flatten(2).norm(dim=1).mean(dim=1)
    assert steps.min() > 0.5, steps  # it moves every frame
    wrong = clip.flows + torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    assert warping_error(clip.frames, clip.flows, clip.valid) < 0.4 * warping_error(
        clip.frames, wrong, clip.valid
    )
    error, sharp = against_per_frame(stylize, clip)
    assert error < 0.3, error
    assert sharp > 0.9


def test_the_strokes_around_a_moving_object_flicker_less_and_keep_their_contrast(stylize) -> None:
    # A disc moving over a still scene changes the strokes around it as far as the network's
    # receptive field reaches, in every frame. On a rigid scene the blend carries the whole
    # image, fine detail too, keeping the new stylization's contrast (which costs some of the
    # flicker it takes out: 0.86x the band split's error here, 0.82x with the parts' mean
    # contrast); the band split carries the detail at 0.15.
    layer = (texture(2 * SIZE, seed=5), moving_disc((30.0, 40.0), (2.25, 1.0)), 15.0)
    clip = render(texture(2 * SIZE, seed=3), pan((0.0, 0.0)), FRAMES, (SIZE, SIZE), layer=layer)
    per_frame = one_by_one(stylize, clip)
    split = replace(StabilizerConfig().blending, rigid_contrast_window=0)
    whole, banded = (
        run(Stabilizer(stylize, StabilizerConfig(blending=blending)), clip.frames)
        for blending in (StabilizerConfig().blending, split)
    )
    errors = [warping_error(frames, clip.flows, clip.valid) for frames in (whole, banded)]
    assert errors[0] < 0.9 * errors[1], errors
    assert sharpness(whole) > 0.95 * sharpness(per_frame)


@pytest.fixture(scope="module")
def deforming_clip() -> Clip:
    # Non-rigid motion: a smooth displacement field changing every frame over a slow pan.
    motion = Deforming(SIZE, 2.5, 0.8, (0.5, 0.25), (8.0, 8.0), seed=1)
    return render(texture(2 * SIZE, seed=3), motion, FRAMES, (SIZE, SIZE))


def test_a_deforming_scene_flickers_far_less_and_less_at_full_strength(
    stylize, deforming_clip: Clip
) -> None:
    # The deformation field keeps the grid on the deforming scene, so the stabilised frames
    # flicker far less than per-frame ones (without it: about 0.5x), and stay sharp.
    clip = deforming_clip
    per_frame = one_by_one(stylize, clip)
    base = warping_error(per_frame, clip.flows, clip.valid)
    stabilised = run(Stabilizer(stylize), clip.frames)
    default = warping_error(stabilised, clip.flows, clip.valid)
    strongest = Stabilizer(stylize, with_strength(StabilizerConfig(), 1.0))
    strong = warping_error(run(strongest, clip.frames), clip.flows, clip.valid)
    assert default < 0.35 * base, (default, base)
    assert sharpness(stabilised) > 0.9 * sharpness(per_frame)
    assert strong < 0.97 * default, (strong, default)


@pytest.fixture(scope="module")
def local_clip() -> Clip:
    # A region deforming in front of a still camera (a waving arm), the rest still.
    region = (0.55 * SIZE, 0.5 * SIZE, 0.12 * SIZE)
    motion = Deforming(SIZE, 4.0, 0.8, start=(8.0, 8.0), seed=5, region=region)
    return render(texture(2 * SIZE, seed=3), motion, FRAMES, (SIZE, SIZE))


def test_a_local_deformation_moves_only_its_region(local_clip: Clip) -> None:
    # The region moves by more than a pixel a frame and the frame's corners not at all; the
    # true flow carries the clip onto itself.
    moved = local_clip.flows.norm(dim=1)
    assert moved.amax() > 1.0
    assert moved[:, :12, :12].amax() < 1e-3 and moved[:, -12:, -12:].amax() < 1e-3
    wrong = local_clip.flows * 0
    right = warping_error(local_clip.frames, local_clip.flows, local_clip.valid)
    assert right < 0.4 * warping_error(local_clip.frames, wrong, local_clip.valid)


def test_a_local_deformation_in_front_of_a_still_camera_flickers_less(
    stylize, local_clip: Clip
) -> None:
    # Only the region's strokes change from frame to frame; the stabiliser carries them along
    # the flow (about 0.4x per-frame's error at this size) and keeps them sharp.
    error, sharp = against_per_frame(stylize, local_clip)
    assert error < 0.6, error
    assert sharp > 0.9


def test_the_deformation_field_keeps_the_grid_on_a_deforming_scene(deforming_clip: Clip) -> None:
    # The camera's motion alone against the deformation followed too.
    off, on = (alignment_error(deforming_clip, Tracking(deforming=d)) for d in (False, True))
    assert on < 0.5 * off, (on, off)


def test_layers_told_apart_on_the_flows_own_samples_match_every_pixels() -> None:
    # A flow scaled up from a quarter of the frame's size is told apart on every fourth
    # pixel: the same second layer and nearly the same distances as on every pixel.
    size = (720, 800)
    ys, xs = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float32)
    flow = np.stack([0.01 * (xs - 400) + 1.5, 0.01 * (ys - 360) - 0.5], axis=-1)
    disc = (xs - 300) ** 2 + (ys - 380) ** 2 < 120**2
    flow[disc] = (-3.0, 2.0)
    flow = cv2.GaussianBlur(flow, (0, 0), 4)  # as smooth as a flow scaled up
    reliable = np.ones(size, bool)
    motion = fit_similarity(flow, reliable)
    stabilizer = Stabilizer(block_network)
    every, every_distance, every_second = stabilizer._layers(
        Flow(flow, reliable, FlowMaps(flow)), motion
    )
    sampled, sampled_distance, sampled_second = stabilizer._layers(
        Flow(flow, reliable, FlowMaps(flow), scale=4.0), motion
    )
    assert every is not None and sampled is not None
    assert sampled.shape == size and np.mean(every == sampled) > 0.99
    assert np.abs(every_distance - sampled_distance).mean() < 0.05
    torch.testing.assert_close(every_second, sampled_second, atol=0.05, rtol=0)


@pytest.mark.parametrize("with_object", [True, False], ids=["object", "deformation_alone"])
def test_an_object_over_a_deforming_scene_is_told_apart_from_the_deformation(
    with_object: bool,
) -> None:
    # A disc moving as one over a scene deforming by up to 2.5 px: the pixels apart from the
    # camera's motion are mostly the deforming scene's, so their median motion is neither's.
    # The disc is found by its own motion and its edge, and followed once it has moved so on
    # two frames in a row; the deformation alone is no object.
    size = (240, 320)
    ys, xs = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float32)
    camera = (1.0, 0.5)
    waves = (np.sin(2 * np.pi * xs / 150 + 0.3), np.cos(2 * np.pi * ys / 110 + 1.1))
    flow = np.stack([camera[0] + 2.5 * waves[0], camera[1] + 2.5 * waves[1]], axis=-1)
    disc = (xs - 200) ** 2 + (ys - 110) ** 2 < 45**2
    if with_object:
        flow[disc] = (-3.0, 2.0)
    flow = cv2.GaussianBlur(flow, (0, 0), 2)  # DIS's flow is smooth across an edge
    estimate = Flow(flow, np.ones(size, bool), FlowMaps(flow))
    motion = video._translation(torch.tensor(camera, dtype=torch.float64))
    stabilizer = Stabilizer(block_network)
    first_frame, _, _ = stabilizer._layers(estimate, motion)
    assert first_frame is None
    # The next frame (`_track` hands each frame's candidate on).
    stabilizer.last_object_candidate = stabilizer.object_candidate
    layer, _, second = stabilizer._layers(estimate, motion)
    if not with_object:
        assert layer is None
        return
    apart = np.hypot(flow[..., 0] - camera[0], flow[..., 1] - camera[1]) > 1.0
    assert np.count_nonzero(disc) < 0.2 * np.count_nonzero(apart)
    assert layer is not None and second is not None
    torch.testing.assert_close(
        second, torch.tensor([-3.0, 2.0], dtype=torch.float64), atol=0.05, rtol=0
    )
    inner = cv2.erode(disc.view(np.uint8), np.ones((7, 7), np.uint8)) > 0
    assert layer[inner].all()


def test_a_rigid_scene_is_not_taken_for_a_deforming_one(clip: Clip) -> None:
    stabilizer = Stabilizer(block_network)
    run(stabilizer, clip.frames)
    assert stabilizer.deformation is None


def renewals(stabilizer: Stabilizer, frames: Tensor) -> list[bool]:
    """Whether each frame renewed the reference (`block_network` between the halves)."""
    renewed = []
    for frame in frames:
        pending = stabilizer.begin(frame[None])
        renewed.append(pending.renewed)
        stabilizer.finish(pending, [block_network(*item) for item in pending.inputs])
    return renewed


def test_a_deformation_straining_the_strokes_renews_the_reference(deforming_clip: Clip) -> None:
    # The clip strains the scene by up to about 0.3: past a range of 0.05 the strokes are
    # drawn afresh, within the default range they follow it.
    strict = StabilizerConfig(renewal=Renewal(strain_range=0.05))
    assert any(renewals(Stabilizer(block_network, strict), deforming_clip.frames))
    assert not any(renewals(Stabilizer(block_network), deforming_clip.frames))


def test_a_patch_of_wrong_flow_does_not_strain_the_whole_field() -> None:
    # A field straining the scene by 0.1 everywhere, with a bump of 6 px over 3 x 3 of its
    # 60 x 80 cells (DIS matching the wrong one of repeated letters): the bump's strain does
    # not count, a strain over the whole field does.
    step = 4
    ys, xs = np.mgrid[0:60, 0:80].astype(np.float32) * step
    smooth = np.stack([0.1 * xs, np.zeros_like(ys)], axis=-1)
    bumped = smooth.copy()
    bumped[30:33, 40:43] += 6.0
    assert video._field_strain(bumped, step) == pytest.approx(0.1, abs=0.01)
    assert video._field_strain(12 * smooth, step) == pytest.approx(1.2, abs=0.01)


def test_resuming_a_deforming_scene_gives_the_same_frames(stylize, deforming_clip: Clip) -> None:
    frames = deforming_clip.frames
    expected = run(Stabilizer(stylize), frames)
    first = Stabilizer(stylize)
    head = run(first, frames[:4])
    assert first.deformation is not None
    resumed = Stabilizer(stylize)
    resumed.load_state_dict({key: value.clone() for key, value in first.state_dict().items()})
    tail = run(resumed, frames[4:])
    torch.testing.assert_close(torch.cat([head, tail]), expected, rtol=0, atol=1e-6)


def test_the_lite_networks_fine_strokes_stay_sharp_with_their_own_blend(clip: Clip) -> None:
    # The lite networks' finest strokes lie near the Nyquist rate, where each sub-pixel
    # resampling of the propagated output softens them: the full model's blend loses them on
    # this pan, lite's own (fine detail from the new stylization alone) keeps them. Moved by
    # whole pixels they are not resampled: there both blends are the same.
    lite = build_pipeline(PipelineConfig(Device.cpu, Precision.fp32, model=ModelName.lite))
    mean, std = lite.style_statistics(texture(128, seed=7)[None])
    mix = StyleMix(mean=mean, std=std, weights=torch.ones(1))

    def stylize(frame: Tensor, placement: Placement | None) -> Tensor:
        return lite.stylize_batch(frame, [mix])

    ratios = {
        model: against_per_frame(stylize, clip, for_model(StabilizerConfig(), model))
        for model in (ModelName.full, ModelName.lite)
    }
    assert ratios[ModelName.full][1] < 0.9 < ratios[ModelName.lite][1], ratios
    assert ratios[ModelName.lite][0] < 0.3, ratios
    assert for_model(StabilizerConfig(), ModelName.full) == StabilizerConfig()
    whole = render(texture(2 * SIZE, seed=3), pan((3.0, 0.0), (8.0, 8.0)), FRAMES, (SIZE, SIZE))
    lite_blend = for_model(StabilizerConfig(), ModelName.lite)
    torch.testing.assert_close(
        run(Stabilizer(stylize, lite_blend), whole.frames),
        run(Stabilizer(stylize), whole.frames),
        rtol=0,
        atol=0,
    )


def test_the_lite_networks_output_goes_back_sharpened_but_not_through_a_deformation(
    deforming_clip: Clip, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lanczos-4 softens the strokes at the pixel's scale that lite draws: on a turning camera
    # lite's output, sharpened before its way back, keeps more of them (no blend: the way back
    # alone). Through a deformation field it goes back unsharpened (there the sharpening
    # raised the style loss); the full model's never is sharpened.
    lite = build_pipeline(PipelineConfig(Device.cpu, Precision.fp32, model=ModelName.lite))
    mean, std = lite.style_statistics(texture(128, seed=7)[None])
    mix = StyleMix(mean=mean, std=std, weights=torch.ones(1))

    def stylize(frame: Tensor, placement: Placement | None) -> Tensor:
        return lite.stylize_batch(frame, [mix])

    centre = ((SIZE - 1) / 2, (SIZE - 1) / 2)
    turning = render(
        texture(2 * SIZE, seed=3), rotate(0.01, centre, (24.0, 24.0)), FRAMES, (SIZE, SIZE)
    )
    config = for_model(StabilizerConfig(), ModelName.lite)
    assert config.tracking.sharpen_back and not StabilizerConfig().tracking.sharpen_back
    plain = replace(config, tracking=replace(config.tracking, sharpen_back=False))
    detail = {
        sharpened: sharpness(
            run(Stabilizer(stylize, replace(chosen, blending=NO_BLEND)), turning.frames)
        )
        for sharpened, chosen in ((True, config), (False, plain))
    }
    assert detail[True] > 1.03 * detail[False], detail

    kernels: list[tuple[bool, str]] = []  # (through a deformation field, the way back's kernel)
    original = Placement.back_image

    def back_image(placement: Placement, canvas: Tensor, resample: str = "lanczos") -> np.ndarray:
        if not placement.integer:
            kernels.append((placement.canvas_points is not None, resample))
        return original(placement, canvas, resample)

    monkeypatch.setattr(Placement, "back_image", back_image)
    run(Stabilizer(stylize, config), deforming_clip.frames)
    assert {kernel for dense, kernel in kernels if dense} == {"lanczos"}, kernels
    assert {kernel for dense, kernel in kernels if not dense} <= {"sharp_lanczos"}, kernels


def test_the_strength_spans_per_frame_to_the_strongest() -> None:
    config = StabilizerConfig()
    assert not with_strength(config, 0).enabled
    assert with_strength(config, 0.5) == config
    weights = [with_strength(config, s).blending.weight for s in (0.25, 0.5, 0.75, 1.0)]
    assert weights == sorted(weights) and weights[0] < config.blending.weight < weights[-1]
    # Above the default the propagated detail lasts longer: the translation's kernel moves it
    # where the scene deforms too.
    assert with_strength(config, 0.25).blending.deforming_resample == "bicubic"
    assert with_strength(config, 0.75).blending.deforming_resample == config.blending.resample
    with pytest.raises(ValueError):
        with_strength(config, 1.5)


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


def test_shots_start_at_the_phase_whose_stylization_fits_the_style_best(net, stylize) -> None:
    # The phase is chosen on the clip's first frame by the distance of the stylization's
    # relu4_1 statistics to the style's; every shot then starts at it, a cut's too, and a
    # resumed stabiliser keeps it.
    frame = texture(SIZE, seed=3)[None]
    mean, std = net.style_statistics(texture(128, seed=7)[None])
    mix = StyleMix(mean=mean, std=std, weights=torch.ones(1))
    fits: dict[tuple[int, int], float] = {}

    def fit(content: Tensor, stylized: Tensor) -> float:
        fits[placements[-1]] = style_distance(net.style_statistics(stylized), mix)
        return fits[placements[-1]]

    placements: list[tuple[int, int]] = []

    def recording(canvas: Tensor, placement: Placement) -> Tensor:
        placements.append(placement._shift())
        return stylize(canvas, placement)

    chosen = choose_start_phase(frame, recording, fit)
    assert placements == list(video.START_PHASES)
    assert chosen == min(fits, key=fits.__getitem__)
    assert len(set(fits.values())) == len(fits)  # the phases do stylize differently
    phase = (4, 4)
    stabilizer = Stabilizer(recording, StabilizerConfig(), phase)
    moved = torch.roll(frame, 3, dims=-1)  # the grid follows the scene 3 px on
    other = texture(SIZE, seed=11)[None]  # a cut: nothing of the first shot in it
    placements.clear()
    for image in (frame, moved, other):
        stabilizer(image)
    assert placements[0] == placements[2] == phase != placements[1]
    resumed = Stabilizer(stylize)
    resumed.load_state_dict(stabilizer.state_dict())
    assert resumed.start_phase == phase


@pytest.mark.parametrize("config", [StabilizerConfig(), LIVE], ids=["default", "live"])
def test_begin_and_finish_around_the_callers_network_give_the_same_frames(
    stylize, config: StabilizerConfig
) -> None:
    # The live feed runs the network itself (through the engine) between the two halves; a
    # second motion layer (the default's, for the disc) asks for a second input. The same
    # frames as with the stylize callable. Twice the other tests' size: on a smaller disc
    # DIS's flow is too noisy to tell an object from a deformation.
    size = 2 * SIZE
    layer = (texture(2 * size, seed=5), moving_disc((60.0, 80.0), (2.5, 0.0)), 30.0)
    clip = render(texture(2 * size, seed=3), pan((0.5, 0.25)), FRAMES, (size, size), layer=layer)
    expected = run(Stabilizer(stylize, config), clip.frames)
    halves = Stabilizer(None, config)
    outputs, inputs = [], []
    for frame in clip.frames:
        pending = halves.begin(frame[None])
        assert all(canvas.shape[-2:] == placement.size for canvas, placement in pending.inputs)
        inputs.append(len(pending.inputs))
        outputs.append(halves.finish(pending, [stylize(*pair) for pair in pending.inputs]))
    torch.testing.assert_close(torch.cat(outputs), expected, rtol=0, atol=1e-6)
    assert max(inputs) == config.tracking.motion_layers, inputs
    with pytest.raises(TypeError):
        halves(clip.frames[:1])


def test_the_propagation_beside_the_network_or_in_line_gives_the_same_frames(
    stylize, clip, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whether a core is free beside the network decides where the previous output is moved,
    # not what comes out.
    outputs = []
    for beside in (True, False):
        monkeypatch.setattr(video, "_core_beside_network", lambda device, beside=beside: beside)
        outputs.append(run(Stabilizer(stylize), clip.frames))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


@pytest.mark.parametrize(("width", "canvas_width"), [(SIZE, SIZE + 8), (SIZE + 5, SIZE + 16)])
def test_the_phase_shift_is_an_exact_integer_shift(width: int, canvas_width: int) -> None:
    # Padding by the phase before and the rest after, to a multiple of the stride, then
    # cropping back leaves the frame's pixels where they were: with an identity "stylization"
    # the frame comes back bit for bit. Every phase fits the same canvas.
    frame = texture(2 * SIZE, seed=11)[None, :, :SIZE, :width]
    for phase in [(0, 0), (3, 5), (FEATURE_STRIDE - 1, FEATURE_STRIDE - 1)]:
        placement = Placement.shift((SIZE, width), phase)
        canvas = placement.place(frame)
        assert canvas.shape[-2:] == (SIZE + FEATURE_STRIDE, canvas_width)
        torch.testing.assert_close(placement.back(canvas), frame, rtol=0, atol=0)


def similarity(scale: float, angle: float, shift: tuple[float, float]) -> Tensor:
    """(2, 3) about the centre of a SIZE x SIZE frame."""
    centre = torch.full((2,), (SIZE - 1) / 2, dtype=torch.float64)
    cos, sin = scale * math.cos(angle), scale * math.sin(angle)
    linear = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64)
    offset = centre + torch.tensor(shift, dtype=torch.float64) - linear @ centre
    return torch.cat([linear, offset[:, None]], dim=1)


def flow_of(affine: Tensor) -> Tensor:
    ys, xs = torch.meshgrid(
        torch.arange(SIZE, dtype=torch.float64),
        torch.arange(SIZE, dtype=torch.float64),
        indexing="ij",
    )
    x = affine[0, 0] * xs + affine[0, 1] * ys + affine[0, 2]
    y = affine[1, 0] * xs + affine[1, 1] * ys + affine[1, 2]
    return torch.stack([x - xs, y - ys]).float()[None]


@pytest.mark.parametrize(
    ("scale", "angle", "shift"), [(1.012, 0.0, (0.3, -0.2)), (0.99, 0.01, (1.5, 0.5))]
)
def test_the_similarity_fit_recovers_the_camera_despite_a_moving_object(
    scale: float, angle: float, shift: tuple[float, float]
) -> None:
    truth = similarity(scale, angle, shift)
    flow = flow_of(truth)
    flow[..., 20:50, 30:60] += torch.tensor([4.0, -3.0]).view(1, 2, 1, 1)  # an object: 10%
    reliable = torch.ones(1, 1, SIZE, SIZE, dtype=torch.bool)
    reliable[..., :5, :] = False  # unreliable pixels are not used: make them wrong
    flow[..., :5, :] = 20.0
    fitted = fit_similarity(flow[0].permute(1, 2, 0).numpy(), reliable[0, 0].numpy())
    torch.testing.assert_close(fitted, truth, rtol=0, atol=2e-3)


def test_a_large_moving_object_does_not_turn_a_pan_into_a_zoom() -> None:
    # An object covering a third of the frame, moving 2.9 px from a pan, its flow blurred
    # across its edge as DIS's is: the least squares over every sample found a zoom there.
    truth = similarity(1.0, 0.0, (1.2, -0.6))
    flow = flow_of(truth)[0].permute(1, 2, 0).numpy()
    inside = np.zeros((SIZE, SIZE), np.float32)
    inside[10:70, 10:60] = 1
    flow += cv2.blur(inside, (9, 9))[..., None] * np.float32([-2.5, 1.5])
    fitted = fit_similarity(flow, np.ones((SIZE, SIZE), bool))
    # No zoom or turn (0.004 of scale moves the frame's corners by 0.3 px), and the pan's
    # translation to a small fraction of a pixel (the object's blurred edge pulls a little).
    torch.testing.assert_close(fitted[:, :2], truth[:, :2], rtol=0, atol=3e-4)
    torch.testing.assert_close(fitted[:, 2], truth[:, 2], rtol=0, atol=0.03)


def test_a_moving_objects_pixels_move_by_its_motion_up_to_its_edge() -> None:
    # A textured disc moving (-3, 2) px over a pan: DIS's flow runs between the two motions
    # for some px across the disc's edge and follows the background it uncovers smoothly.
    # The two motions chosen by the grey levels give each pixel one of them, and find the
    # uncovered background unreliable.
    layer = (texture(4 * SIZE, seed=5), moving_disc((50.0, 44.0), (-3.0, 2.0)), 22.0)
    clip = render(texture(2 * SIZE, seed=3), pan((1.2, -0.6)), 2, (SIZE, SIZE), layer=layer)
    previous, current = (video.grey_uint8(frame[None]) for frame in clip.frames)
    truth = clip.flows[0].permute(1, 2, 0).numpy()
    camera, second = torch.from_numpy(truth[2, 2]), torch.from_numpy(truth[44, 47])
    moved_by, on_layer = video.two_motion_flow(
        current, previous, video._translation(camera), second, None
    )
    single = clip.valid[0, 0].numpy()  # pixels wholly in one layer in both frames
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    from_edge = np.hypot(xs - 47.0, ys - 46.0) - 22.0  # the disc's edge now, px
    edge_band = single & (np.abs(from_edge) < 6)
    dis = FlowEstimator(StabilizerConfig()).backward(current, previous)
    off = np.linalg.norm(moved_by.flow - truth, axis=2)
    dis_off = np.linalg.norm(dis.flow - truth, axis=2)
    assert off[edge_band & moved_by.reliable].mean() < 0.3 * dis_off[edge_band].mean()
    assert np.mean(on_layer[single] == (from_edge[single] < 0)) > 0.97
    assert np.mean(moved_by.reliable[single & (np.abs(from_edge) > 3)]) > 0.95
    uncovered = ~single & (from_edge > 1)
    assert np.mean(moved_by.reliable[uncovered]) < 0.6 * np.mean(dis.reliable[uncovered])
    # With the disc's pixels in the last frame, none of the background within LAYER_EDGE_PX
    # of where it was is carried: the strokes along its old edge are drawn afresh.
    before = np.hypot(xs - 50.0, ys - 44.0) < 22.0
    near, _ = video.two_motion_flow(current, previous, video._translation(camera), second, before)
    assert not near.reliable[~single & (from_edge > 2)].any()


def smooth_texture(size: int, seed: int) -> Tensor:
    """`texture` with its fine detail blurred (sigma 1 px): a photo's spectrum rather than
    per-pixel noise, which resampling at half a pixel blurs more than at a whole one."""
    image = texture(size, seed).permute(1, 2, 0).numpy()
    return torch.from_numpy(cv2.GaussianBlur(image, (0, 0), 1.0)).permute(2, 0, 1)


@pytest.mark.parametrize("velocity", [(-3.5, 2.0), (2.25, -1.0), (1.3, 0.7)])
def test_a_moving_objects_translation_is_refined_on_the_grey_frames(
    velocity: tuple[float, float],
) -> None:
    # DIS's median over a disc moving over a pan falls short of its motion (here by 0.2-0.3
    # px), and the object's grid phase would drift by that every frame. Refined on the grey
    # frames it is within a few hundredths of a pixel.
    layer = (smooth_texture(4 * SIZE, seed=5), moving_disc((45.0, 48.0), velocity), 24.0)
    clip = render(smooth_texture(2 * SIZE, seed=3), pan((-1.2, 0.6)), 2, (SIZE, SIZE), layer=layer)
    previous, current = (video.grey_uint8(frame[None]) for frame in clip.frames)
    truth = clip.flows[0][:, 48, 45].double()
    on_disc = (clip.flows[0] - truth[:, None, None].float()).abs().amax(0).numpy() < 1e-3
    flow = FlowEstimator(StabilizerConfig()).backward(current, previous)
    median = video.median_motion(flow.flow, on_disc & flow.reliable)
    refined = video.refine_translation(current, previous, on_disc, median)
    error, median_error = (float((t - truth).abs().max()) for t in (refined, median))
    assert error < min(0.5 * median_error, 0.06), (refined, median, truth)
    # From half a pixel off too; a flat object (nothing to align) keeps the estimate.
    off = truth + torch.tensor([0.4, -0.3], dtype=torch.float64)
    refined_from_off = video.refine_translation(current, previous, on_disc, off)
    assert float((refined_from_off - truth).abs().max()) < 0.06
    flat = np.full_like(current, 128)
    assert torch.equal(video.refine_translation(flat, flat, on_disc, off), off)


def test_a_moving_objects_grid_phase_follows_it_to_the_sub_pixel() -> None:
    # A disc moving (-3.5, 2) px a frame over a pan: the object's own network input is placed
    # by its tracked displacement, resampled at its fraction of a pixel as the camera's is,
    # and that displacement follows the disc's (DIS's median alone falls behind by 0.1-0.3 px
    # a frame here).
    size = 160
    layer = (smooth_texture(2 * size, seed=5), moving_disc((70.0, 80.0), (-3.5, 2.0)), 40.0)
    motion = pan((-1.2, 0.6), (16.0, 16.0))
    clip = render(smooth_texture(2 * size, seed=3), motion, FRAMES, (size, size), layer=layer)
    placements: list[Placement] = []

    def recording(canvas: Tensor, placement: Placement) -> Tensor:
        placements.append(placement)
        return block_network(canvas, placement)

    stabilizer = Stabilizer(recording)
    displacements = []
    for frame in clip.frames[:1]:
        stabilizer(frame[None])
    for frame in clip.frames[1:]:
        placements.clear()
        stabilizer(frame[None])
        assert stabilizer.second_layer and len(placements) == 2
        displacements.append(stabilizer.layer_displacement.clone())
        # The object's canvas puts the disc's scene points on the grid where they first were
        # (a whole-pixel shift within SUBPIXEL_TOLERANCE_PX of it).
        on_grid = (placements[1].to_frame[:, 2] - displacements[-1]) % FEATURE_STRIDE
        off_grid = float(torch.minimum(on_grid, FEATURE_STRIDE - on_grid).max())
        assert off_grid <= video.SUBPIXEL_TOLERANCE_PX
    travelled = displacements[-1] - displacements[0]
    truth = torch.tensor([-3.5, 2.0], dtype=torch.float64) * (len(displacements) - 1)
    assert float((travelled - truth).abs().max()) < 0.2, (travelled, truth)


def test_a_deforming_scenes_object_and_background_near_it_move_by_their_own_motions() -> None:
    # The same disc over a deforming scene: DIS's flow runs between the disc's motion and the
    # scene's across the edge. Near the disc the background moves by the deformation field
    # (here the scene's true flow, which the field is fitted to away from the disc), the
    # disc by its translation; farther away DIS's flow and its check are kept as they are.
    motion = Deforming(SIZE, 2.5, 0.8, (0.5, 0.25), seed=3)
    background = texture(2 * SIZE, seed=3)
    layer = (texture(4 * SIZE, seed=5), moving_disc((50.0, 44.0), (-3.0, 2.0)), 22.0)
    clip = render(background, motion, 2, (SIZE, SIZE), layer=layer)
    scene = render(background, motion, 2, (SIZE, SIZE)).flows[0].permute(1, 2, 0).numpy()
    previous, current = (video.grey_uint8(frame[None]) for frame in clip.frames)
    truth = clip.flows[0].permute(1, 2, 0).numpy()
    second = torch.from_numpy(truth[44, 47])
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    before = np.hypot(xs - 50.0, ys - 44.0) < 22.0
    dis = FlowEstimator(StabilizerConfig()).backward(current, previous)
    moved_by, on_layer = video.deforming_two_motion_flow(
        current, previous, dis, scene, second, (before, None)
    )
    single = clip.valid[0, 0].numpy()
    from_edge = np.hypot(xs - 47.0, ys - 46.0) - 22.0
    edge_band = single & (np.abs(from_edge) < 6)
    off = np.linalg.norm(moved_by.flow - truth, axis=2)
    dis_off = np.linalg.norm(dis.flow - truth, axis=2)
    # (DIS's flow as the background's there too leaves 0.31x of DIS's error.)
    assert off[edge_band & moved_by.reliable].mean() < 0.1 * dis_off[edge_band].mean()
    assert np.mean(moved_by.reliable[edge_band]) > 0.9
    assert np.mean(on_layer[single] == (from_edge[single] < 0)) > 0.97
    assert np.mean(moved_by.reliable[single & (from_edge < -3)]) > 0.95
    # Past the band around where the disc was and is, DIS's flow and its check are kept.
    far = (np.hypot(xs - 50.0, ys - 44.0) > 22.0 + video.LAYER_BAND_PX + 2) & (from_edge > 12)
    assert np.array_equal(moved_by.flow[far], dis.flow[far])
    assert np.array_equal(moved_by.reliable[far], dis.reliable[far])


def test_a_resampled_placement_comes_back_close_to_the_frame() -> None:
    frame = texture(SIZE, seed=11)[None]
    to_frame = similarity(0.97, 0.05, (-6.3, -5.7))  # canvas -> frame: a zoom and a turn
    placement = Placement((SIZE, SIZE), (SIZE + 16, SIZE + 16), to_frame, False)
    back = placement.back(placement.place(frame))
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    assert (back - frame)[inner].abs().mean() < 0.02


@pytest.mark.parametrize("size", [(96, 128), (600, 800)])
def test_a_deforming_scenes_two_maps_invert_each_other(size: tuple[int, int]) -> None:
    # The way from the canvas to the frame is inverted on a grid of the canvas's points
    # (2.25 px apart on the larger frame) and interpolated between them: through the way
    # back it lands where it started.
    height, width = size
    stabilizer = Stabilizer(block_network)
    stabilizer.camera = torch.tensor([[1.02, -0.03, 3.3], [0.03, 1.02, -2.1]], dtype=torch.float64)
    step = video._deformation_step(size)
    ys, xs = np.mgrid[0:height:step, 0:width:step].astype(np.float32)
    stabilizer.deformation = np.stack(
        [4 * np.sin(xs / 70 + ys / 110), 3 * np.cos(ys / 60 - xs / 90)], axis=-1
    ).astype(np.float32)
    placement = stabilizer._placement(size)
    assert placement.frame_points is not None and placement.canvas_points is not None
    frame_points = placement.frame_points
    inside = cv2.inRange(frame_points, (1, 1), (width - 2, height - 2)) > 0
    back = cv2.remap(placement.canvas_points, frame_points, None, cv2.INTER_LINEAR)
    canvas_height, canvas_width = placement.size
    grid = np.stack(np.meshgrid(np.arange(canvas_width), np.arange(canvas_height)), axis=-1)
    error = np.linalg.norm(back - grid, axis=-1)[inside]
    assert error.max() < 0.1 and error.mean() < 0.02, (error.max(), error.mean())


def test_a_fields_grid_values_come_back_exactly_where_they_are_linear() -> None:
    # Values given on the grid of nodes that OpenCV's resize interpolates between, at a
    # spacing that is no whole number of pixels: a linear function comes back at every pixel.
    size, spacing = (301, 403), 2.75
    nodes = video._grid_nodes(size, spacing)
    values = np.stack(
        [0.3 * nodes[..., 0] - 0.2 * nodes[..., 1] + 1, 0.01 * nodes[..., 0] + 0.5 * nodes[..., 1]],
        axis=-1,
    )
    ys, xs = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float32)
    expected = np.stack([0.3 * xs - 0.2 * ys + 1, 0.01 * xs + 0.5 * ys], axis=-1)
    np.testing.assert_allclose(video._on_pixels(values, size, spacing), expected, atol=1e-3)


def test_a_shift_covers_the_frames_own_pixels() -> None:
    # AdaIN's content statistics are taken where the canvas shows the frame (`placed_mix`),
    # not its mirrored padding; a zoom's or a sub-pixel shift's canvas keeps the whole
    # canvas's.
    size = (SIZE, SIZE + 20)
    shift = Placement.shift(size, (3, 5))
    mix = StyleMix(torch.zeros(1, 4, 1, 1), torch.ones(1, 4, 1, 1), torch.ones(1))
    assert placed_mix(mix, shift).content_box == (5, 5 + SIZE, 3, 3 + SIZE + 20)
    assert placed_mix(mix, Placement.identity(size)).content_box is None
    for scale, angle, offset in ((0.97, 0.0, (1, 2)), (1.0, 0.0, (0.4, 0.3))):
        resampled = Placement(
            (SIZE, SIZE), (SIZE + 16, SIZE + 16), similarity(scale, angle, offset), False
        )
        assert placed_mix(mix, resampled).content_box is None


@pytest.mark.parametrize("scale", [1.0, 0.97])
def test_a_turned_canvas_counts_the_frames_own_pixels_inside_its_edges(scale: float) -> None:
    # A turned frame leaves mirrored triangles at the canvas's corners: the content's
    # statistics come from the box inside the frame's turned edges.
    canvas = (SIZE + 24, SIZE + 24)
    to_frame = similarity(scale, 0.05, (-12, -12))  # canvas point -> frame point
    placement = Placement((SIZE, SIZE), canvas, to_frame, False)
    mix = StyleMix(torch.zeros(1, 4, 1, 1), torch.ones(1, 4, 1, 1), torch.ones(1))
    top, bottom, left, right = placed_mix(mix, placement).content_box
    ys, xs = np.mgrid[top:bottom, left:right].astype(np.float64)
    frame_x, frame_y = (
        to_frame[axis, 0].item() * xs + to_frame[axis, 1].item() * ys + to_frame[axis, 2].item()
        for axis in range(2)
    )
    assert frame_x.min() >= -1e-6 and frame_x.max() <= SIZE - 1 + 1e-6
    assert frame_y.min() >= -1e-6 and frame_y.max() <= SIZE - 1 + 1e-6
    # All but the turned corners' reach: 0.05 rad over the side, about 5% of it per edge.
    assert min(bottom - top, right - left) >= SIZE / scale * (1 - 2 * 0.05) - 2
    slight = Placement((SIZE, SIZE), canvas, similarity(scale, 0.002, (-12, -12)), False)
    assert placed_mix(mix, slight).content_box is None  # under half a pixel at the corners


def test_a_deforming_canvas_counts_the_frames_own_pixels_inside_its_edges() -> None:
    # A deforming scene's canvas: the frame moved by (12, 7) px and bent by up to 3 px. The
    # content's statistics come from the box inside the frame's bent edges: no mirrored
    # padding, and all but the bend's reach of the frame.
    height, width = SIZE, SIZE + 20
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    bend = 3 * np.sin(xs / 17 + ys / 23)
    canvas_points = np.dstack([xs + 12 + bend, ys + 7 - bend]).astype(np.float32)
    placement = Placement(
        (height, width),
        (height + 24, width + 32),
        torch.tensor([[1.0, 0.0, -12.0], [0.0, 1.0, -7.0]], dtype=torch.float64),
        False,
        np.zeros((height + 24, width + 32, 2), np.float32),
        canvas_points,
    )
    top, bottom, left, right = placed_mix(
        StyleMix(torch.zeros(1, 4, 1, 1), torch.ones(1, 4, 1, 1), torch.ones(1)), placement
    ).content_box
    assert left >= canvas_points[:, 0, 0].max() and right - 1 <= canvas_points[:, -1, 0].min()
    assert top >= canvas_points[0, :, 1].max() and bottom - 1 <= canvas_points[-1, :, 1].min()
    assert right - left >= width - 7 and bottom - top >= height - 7


def block_network(canvas: Tensor, placement: Placement) -> Tensor:
    """A fake stylization with the networks' stride-8 grid: half the frame, half its 8 x 8
    block means (the blocks on the canvas's grid), so it changes when the grid moves."""
    height, width = canvas.shape[-2:]
    stride = FEATURE_STRIDE
    padded = F.pad(canvas, (0, -width % stride, 0, -height % stride), mode="replicate")
    blocks = F.interpolate(F.avg_pool2d(padded, stride), scale_factor=stride, mode="nearest")
    return 0.5 * canvas + 0.5 * blocks[..., :height, :width]


def test_a_camera_a_little_off_a_whole_pixel_shift_is_placed_by_that_shift() -> None:
    # A pan that comes back: the tracked camera drifts by about a tenth of a pixel, and the
    # last frame is placed as the first was (its pixels unresampled: the same stylization),
    # not resampled into other strokes. Farther off, the frame is resampled onto the grid.
    stabilizer = Stabilizer(block_network)
    size = (96, 96)
    for drift in ((0.15, -0.12), (-0.18, 0.0)):
        camera = video._translation(torch.tensor([3.0 + drift[0], 2.0 + drift[1]]))
        assert stabilizer._rigid_placement(size, camera).integer, drift
    off = video._translation(torch.tensor([3.3, 2.0]))
    assert not stabilizer._rigid_placement(size, off).integer


def alignment_error(clip: Clip, tracking: Tracking, renewal: Renewal = Renewal()) -> float:
    """The warping error of `block_network`'s aligned stylizations alone (no propagation)."""
    config = StabilizerConfig(tracking=tracking, blending=NO_BLEND, renewal=renewal)
    outputs = run(Stabilizer(block_network, config), clip.frames)
    return warping_error(outputs, clip.flows, clip.valid)


@pytest.mark.parametrize(
    "motion",
    [
        zoom(1.015, ((SIZE - 1) / 2, (SIZE - 1) / 2), (24.0, 24.0)),
        zoom(1 / 1.015, ((SIZE - 1) / 2, (SIZE - 1) / 2), (24.0, 24.0)),
        rotate(0.015, ((SIZE - 1) / 2, (SIZE - 1) / 2), (24.0, 24.0)),
    ],
    ids=["zoom_in", "zoom_out", "rotation"],
)
def test_similarity_alignment_keeps_the_grid_on_a_zooming_or_turning_scene(motion) -> None:
    clip = render(texture(2 * SIZE, seed=3), motion, FRAMES, (SIZE, SIZE))
    # No renewal of the reference, and no deformation field (it would follow the zoom too).
    unrenewed = Renewal(magnify_range=1, minify_range=1, angle_range=1)
    off, on = (
        alignment_error(clip, Tracking(similarity=s, deforming=False), unrenewed)
        for s in (False, True)
    )
    assert on < 0.6 * off, (on, off)


def test_subpixel_alignment_keeps_the_grid_on_a_slow_pan() -> None:
    # 0.75 px per frame: a whole-pixel shift leaves the scene up to 0.5 px off the grid, the
    # resampling into the reference's grid does not (no propagation: the alignment alone).
    clip = render(texture(2 * SIZE, seed=3), pan((0.75, 0.4), (8.0, 8.0)), FRAMES, (SIZE, SIZE))
    off, on = (alignment_error(clip, Tracking(subpixel=s)) for s in (False, True))
    assert on < 0.6 * off, (on, off)


def test_the_border_is_not_carried_into_the_frame() -> None:
    # A fake network that marks the canvas's outer 4 px: panning, the marks drawn at the
    # entering border must not be propagated inwards (trusted by their distance from it).
    def marking(canvas: Tensor, placement: Placement) -> Tensor:
        marked = canvas.clone()
        marked[..., :, :4] = 1.0
        marked[..., :, -4:] = 1.0
        return marked

    clip = render(texture(2 * SIZE, seed=3), pan((-3.0, 0.0), (40.0, 8.0)), FRAMES, (SIZE, SIZE))
    inside = {}
    for reach in (0, 32):
        config = StabilizerConfig(
            tracking=Tracking(align_grid=False), blending=Blending(border_trust_px=reach)
        )
        outputs = run(Stabilizer(marking, config), clip.frames)
        inside[reach] = (outputs - clip.frames).abs()[..., 8:24].mean().item()
    assert inside[32] < 0.5 * inside[0], inside


@pytest.mark.parametrize("rate", [1.015, 1 / 1.015], ids=["zoom_in", "zoom_out"])
def test_the_reference_is_renewed_on_the_mirrored_side_of_the_scale_range(rate: float) -> None:
    # A steady 1.5% zoom passes a 2% (magnified) / 4% (minified) range within a few frames: the
    # tracked scale must stay within it (strokes are drawn at the reference's scale), crossing
    # from one side to the other, each side to its own bound.
    clip = render(
        texture(2 * SIZE, seed=3),
        zoom(rate, ((SIZE - 1) / 2, (SIZE - 1) / 2), (24.0, 24.0)),
        2 * FRAMES,
        (SIZE, SIZE),
    )
    config = StabilizerConfig(
        blending=NO_BLEND, renewal=Renewal(magnify_range=0.02, minify_range=0.04)
    )
    stabilizer = Stabilizer(block_network, config)
    log_scales = []
    for frame in clip.frames:
        stabilizer(frame[None])
        log_scales.append(0.5 * math.log(float(torch.linalg.det(stabilizer.camera[:, :2]))))
    assert -0.02 <= min(log_scales) < -0.01, log_scales
    assert 0.03 < max(log_scales) <= 0.04, log_scales


def test_the_reference_is_renewed_within_the_angle_range() -> None:
    clip = render(
        texture(2 * SIZE, seed=3),
        rotate(0.015, ((SIZE - 1) / 2, (SIZE - 1) / 2), (24.0, 24.0)),
        2 * FRAMES,
        (SIZE, SIZE),
    )
    stabilizer = Stabilizer(
        block_network, StabilizerConfig(blending=NO_BLEND, renewal=Renewal(angle_range=0.04))
    )
    angles = []
    for frame in clip.frames:
        stabilizer(frame[None])
        angles.append(math.atan2(float(stabilizer.camera[1, 0]), float(stabilizer.camera[0, 0])))
    assert max(abs(angle) for angle in angles) <= 0.04, angles
    assert min(angles) < -0.02 and max(angles) > 0.02, angles


def test_a_renewal_fades_the_old_strokes_out_and_resumes_mid_fade() -> None:
    # A 1.5% zoom renews a 2% range every few frames: on a renewal the old output fades out
    # over the configured frames, while the new strokes propagate alone; a stabiliser resumed
    # from its state in the middle of a fade gives the same frames.
    clip = render(
        texture(2 * SIZE, seed=3),
        zoom(1.015, ((SIZE - 1) / 2, (SIZE - 1) / 2), (24.0, 24.0)),
        FRAMES,
        (SIZE, SIZE),
    )
    config = StabilizerConfig(renewal=Renewal(magnify_range=0.02, minify_range=0.02))
    straight = Stabilizer(block_network, config)
    fading_at = []
    expected = []
    for index, frame in enumerate(clip.frames):
        expected.append(straight(frame[None]))
        if straight.fading is not None:
            fading_at.append(index)
            assert not np.array_equal(straight.previous_output, straight.stream)
        else:
            assert np.array_equal(straight.previous_output, straight.stream)
    # Every fade lasts as many frames as renewal.fade has shares.
    assert len(fading_at) >= 2 and len(fading_at) % len(config.renewal.fade) == 0, fading_at
    middle = fading_at[0] + 1
    first = Stabilizer(block_network, config)
    run(first, clip.frames[:middle])
    assert first.fading is not None
    resumed = Stabilizer(block_network, config)
    resumed.load_state_dict({key: value.clone() for key, value in first.state_dict().items()})
    tail = run(resumed, clip.frames[middle:])
    torch.testing.assert_close(tail, torch.cat(expected[middle:]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("config", [StabilizerConfig(), LIVE], ids=["default", "live"])
def test_a_cut_starts_the_new_shot_afresh(config: StabilizerConfig) -> None:
    # Two shots of unrelated pictures, each panning: from the cut on, the output is the one a
    # stabiliser started on the second shot gives (nothing of the first leaks in, its motion is
    # not tracked on); without the cut's detection it is not. A pan itself is never a cut.
    # Both checks of the flow find it: the forward-backward one and LIVE's photometric one.
    first = render(texture(2 * SIZE, seed=3), pan((2.5, 1.25), (8.0, 8.0)), FRAMES, (SIZE, SIZE))
    second = render(texture(2 * SIZE, seed=11), pan((-1.5, 2.0), (80, 8.0)), FRAMES, (SIZE, SIZE))
    frames = torch.cat([first.frames, second.frames])
    fresh = run(Stabilizer(block_network, config), second.frames)
    detected = Stabilizer(block_network, config)
    outputs = run(detected, frames)
    assert detected.frames == FRAMES  # the second shot's frames, none of the first's
    torch.testing.assert_close(outputs[FRAMES:], fresh, rtol=0, atol=1e-6)
    never = replace(config, tracking=replace(config.tracking, cut_share=0))
    undetected = run(Stabilizer(block_network, never), frames)
    assert (undetected[FRAMES:] - fresh).abs().mean() > 0.01
    panning = Stabilizer(block_network, config)
    run(panning, first.frames)
    assert panning.frames == FRAMES


def reliable_shares(config: StabilizerConfig, clip: Clip) -> tuple[float, float]:
    """The shares of the truly valid pixels and of the occluded ones that the flow's check
    finds reliable, over the clip's frame pairs."""
    estimator, valid_share, occluded_share = FlowEstimator(config), [], []
    for index in range(1, len(clip.frames)):
        current, previous = (grey_uint8(clip.frames[i][None]) for i in (index, index - 1))
        reliable = estimator.backward(current, previous).reliable
        valid = clip.valid[index - 1, 0].numpy()
        valid_share.append(reliable[valid].mean())
        occluded_share.append(reliable[~valid].mean())
    return float(np.mean(valid_share)), float(np.mean(occluded_share))


def test_the_photometric_check_finds_occlusions_as_the_forward_backward_one_does() -> None:
    # A disc crossing a pan (LIVE's check, at the size a live frame has): the pixels it
    # uncovers are found unreliable at least as well as by the forward flow's check, the
    # others kept.
    layer = (texture(4 * SIZE, seed=5), moving_disc((60.0, 80.0), (3.0, 1.0)), 40.0)
    clip = render(
        texture(4 * SIZE, seed=3), pan((1.5, 0.5), (8.0, 8.0)), FRAMES, (192, 256), layer=layer
    )
    assert LIVE.tracking.photometric_tolerance > 0
    forward_backward = replace(LIVE, tracking=replace(LIVE.tracking, photometric_tolerance=0))
    valid, occluded = reliable_shares(LIVE, clip)
    valid_fb, occluded_fb = reliable_shares(forward_backward, clip)
    assert valid > 0.9 and occluded < 0.6
    assert occluded <= occluded_fb + 0.05 and valid >= valid_fb - 0.05


def test_the_photometric_check_follows_a_cameras_exposure_drift() -> None:
    # Each frame brighter by 6% (15 grey levels, past the tolerance): the frames' mean
    # difference is taken out, so the pan stays reliable.
    clip = render(texture(4 * SIZE, seed=3), pan((1.5, 0.5), (8.0, 8.0)), FRAMES, (192, 256))
    brighter = torch.arange(FRAMES, dtype=torch.float32).view(-1, 1, 1, 1) * 0.06
    drifting = replace(clip, frames=(0.4 * clip.frames + brighter).clamp(0, 1))
    assert LIVE.tracking.photometric_tolerance < 0.06 * 255
    valid, _ = reliable_shares(LIVE, drifting)
    assert valid > 0.9


def test_a_mix_of_unrelated_patterns_keeps_their_contrast() -> None:
    # Two unrelated stroke patterns mixed half and half lose about half their variance; the
    # contrast-preserving mix keeps it, and leaves a mix of a pattern with itself as it is.
    rng = np.random.default_rng(0)
    first, second = (
        gaussian_blur(rng.random((64, 64, 3), dtype=np.float32), 1.0) for _ in range(2)
    )
    weight = np.full((64, 64, 1), 0.5, dtype=np.float32)
    inner = (slice(8, -8), slice(8, -8))
    plain = (0.5 * first + 0.5 * second)[inner].var()
    kept = contrast_preserving_mix(first, second, weight, 3.0)[inner].var()
    own = first[inner].var()
    assert plain < 0.65 * own, (plain, own)
    assert 0.85 * own < kept < 1.15 * own, (kept, own)
    same = contrast_preserving_mix(first, first, weight, 3.0)
    np.testing.assert_allclose(same, first, rtol=0, atol=1e-5)


def test_a_mix_keeps_the_new_outputs_contrast_not_the_carried_ones() -> None:
    # The stabiliser mixes the carried output (first, at 0.8) with the network's new one
    # (second): where the carried strokes lost contrast, the mix gets back most of the new
    # output's; the weighted mean of both variances is 0.59 of it here.
    rng = np.random.default_rng(2)
    pattern, second = (
        gaussian_blur(rng.random((64, 64, 3), dtype=np.float32), 1.0) for _ in range(2)
    )
    first = pattern.mean() + 0.7 * (pattern - pattern.mean())
    weight = np.full((64, 64, 1), 0.8, dtype=np.float32)
    inner = (slice(8, -8), slice(8, -8))
    own = second[inner].var()
    plain = (0.8 * first + 0.2 * second)[inner].var()
    mixed = contrast_preserving_mix(first, second, weight, 3.0)[inner].var()
    assert plain < 0.4 * own, (plain, own)
    assert 0.75 * own < mixed < 1.15 * own, (mixed, own)
    # Where the scene deforms unfollowed, the stabiliser keeps the weighted mean instead.
    everywhere = np.ones_like(weight)
    weighted = contrast_preserving_mix(first, second, weight, 3.0, mean_share=everywhere)
    assert weighted[inner].var() < 0.7 * own, (weighted[inner].var(), own)


@pytest.mark.parametrize("detail_sigma", [1.0, 0.0])
def test_the_premixed_linear_blend_equals_propagate(detail_sigma: float) -> None:
    # With a plain linear mix (contrast_window 0) and one detail weight, the previous output's
    # part of the blend is mixed before it moves (`premix`): the same output as `propagate`
    # where it has not moved.
    rng = np.random.default_rng(1)
    config = StabilizerConfig(blending=Blending(contrast_window=0, detail_sigma=detail_sigma))
    assert premixes(config)
    stylized, stream = (gaussian_blur(rng.random((40, 50, 3), dtype=np.float32), 0.7) for _ in "ab")
    smooth = low_pass(stream, detail_sigma) if detail_sigma > 0 else stream
    valid = rng.random((40, 50, 1), dtype=np.float32)
    blending = config.blending
    weight, detail = blending.weight * valid, blending.detail_weight * valid
    expected = propagate(stylized, stream.copy(), smooth.copy(), weight, detail, config)
    carried = Carried(valid, premixed=premix(stream, config))
    np.testing.assert_allclose(carried.blend(stylized, config), expected, rtol=0, atol=1e-5)
    # A detail weight of its own where the scene deforms weighs each pixel apart.
    assert not premixes(with_strength(config, 1.0))


@pytest.mark.parametrize("side", [1, 2, 5])
def test_the_blur_takes_frames_smaller_than_its_window(side: int) -> None:
    image = np.random.default_rng(side).random((side, side + 3, 3), dtype=np.float32)
    blurred = gaussian_blur(image, 3.0)
    assert blurred.shape == image.shape
    assert blurred.std() <= image.std()


def mask_network(canvas: Tensor, placement: Placement, masks: Masks) -> Tensor:
    """A fake stylization that draws the first mask as it reaches the network (at the
    canvas's resolution)."""
    placed = placed_masks(masks, placement)
    return placed.on_grid(canvas.shape[-2:])[:1].expand(1, 3, -1, -1)


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize(
    "motion",
    [pan((2.5, 1.25), (8.0, 8.0)), zoom(1.015, ((SIZE - 1) / 2, (SIZE - 1) / 2), (24.0, 24.0))],
    ids=["pan", "zoom"],
)
def test_a_static_mask_stays_on_the_frames_pixels(motion, binary: bool) -> None:
    # A half/half mask: whatever shift or resampling puts the frame on the network's grid, the
    # mask must reach the network in the same place, so the output's boundary stays at x = 40.
    clip = render(texture(2 * SIZE, seed=3), motion, FRAMES, (SIZE, SIZE))
    left = torch.zeros(SIZE, SIZE)
    left[:, :40] = 1
    masks = Masks(torch.stack([left, 1 - left]), binary=binary)
    stabilizer = Stabilizer(
        lambda canvas, placement: mask_network(canvas, placement, masks),
        StabilizerConfig(blending=NO_BLEND),
    )
    for frame in clip.frames:
        drawn = stabilizer(frame[None])[0, 0]
        assert (drawn - left).abs().mean() < 0.01
        assert (drawn[:, :39] > 0.9).all() and (drawn[:, 41:] < 0.1).all()


def test_a_checkpoint_of_the_translation_only_stabiliser_still_resumes(stylize, clip) -> None:
    # Checkpoints written before the similarity alignment held the camera as a displacement.
    first = Stabilizer(stylize)
    run(first, clip.frames[:4])
    state = first.state_dict()
    assert torch.equal(state["camera"][:, :2], torch.eye(2, dtype=torch.float64))  # a pan
    old = {key: state[key] for key in ("frames", "previous_grey", "previous_output")}
    old["second_layer"] = state["second_layer"]
    old["displacement"] = torch.stack([-state["camera"][:, 2], state["layer_displacement"]])
    resumed = Stabilizer(stylize)
    resumed.load_state_dict(old)
    expected = run(first, clip.frames[4:])
    torch.testing.assert_close(run(resumed, clip.frames[4:]), expected, rtol=0, atol=1e-6)
