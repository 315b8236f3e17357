"""The user's flicker/detail trade-off on a stabilised clip (`stability`, on /jobs and the
command): 0 gives each frame on its own (the frames of `stabilize=false`), and more stability
gives frames that change less on a still scene whose pixels jitter."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from devkit.clips import write_video
from devkit.images import encode, random_image
from devkit.videos import decode_frames
from media.clip import (
    WHOLE_CLIP,
    Clip,
    ClipSettings,
    ModelBackend,
    join,
    open_clip,
    stabilizer_config,
    stylize_frames,
)
from media.controls import check_controls
from media.defaults import DEFAULT_STABILITY
from media.imaging import ImageLimits
from models.errors import InvalidInputError
from models.pipeline import Pipeline
from models.video import DEFAULT_STRENGTH, StabilizerConfig, for_model, with_strength
from models.weights import load_model

SETTINGS = ClipSettings(crf=10, preset="veryfast", limits=ImageLimits(10**7, 10**6))
FRAMES = 8


@pytest.fixture(scope="module")
def backend(reference_weights: tuple[Path, Path]) -> ModelBackend:
    return ModelBackend({"full": Pipeline(load_model(*reference_weights))})


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    """A still picture with fresh noise on every frame: per-frame stylization flickers."""
    folder = tmp_path_factory.mktemp("stability")
    generator = torch.Generator().manual_seed(7)
    still = torch.rand(1, 3, 64, 64, generator=generator)
    noise = 0.06 * torch.randn(FRAMES, 3, 64, 64, generator=generator)
    write_video((still + noise).clamp(0, 1), folder / "clip.mp4")
    (folder / "style.png").write_bytes(encode(random_image(48, 48, seed=2024)))
    controls = check_controls(styles=1, content_size=0, style_size=48)
    return open_clip(folder / "clip.mp4", [folder / "style.png"], [], controls)


def frames_at(clip: Clip, backend: ModelBackend, work: Path, **params: object) -> np.ndarray:
    clip_params = replace(clip.params, **params)
    work.mkdir(parents=True)
    state = stylize_frames(
        clip.video, work, clip_params, clip.styles, backend, SETTINGS, part=WHOLE_CLIP
    )
    join(state, clip.video, work / "out.mp4", clip_params)
    return np.stack(decode_frames((work / "out.mp4").read_bytes())).astype(np.float32)


def flicker(frames: np.ndarray) -> float:
    return float(np.abs(np.diff(frames, axis=0)).mean())


def test_more_stability_flickers_less_and_none_is_per_frame(
    clip: Clip, backend: ModelBackend, tmp_path: Path
) -> None:
    per_frame = frames_at(clip, backend, tmp_path / "off", stabilize=False)
    at = {s: frames_at(clip, backend, tmp_path / str(s), stability=s) for s in (0.0, 0.5, 1.0)}
    assert np.abs(at[0.0] - per_frame).mean() < 0.5, "0: each frame on its own"
    assert flicker(at[0.5]) < 0.9 * flicker(at[0.0])
    assert flicker(at[1.0]) < flicker(at[0.5])


def test_stability_is_checked_and_defaults_to_the_stabiliser_s_own(clip: Clip) -> None:
    assert DEFAULT_STABILITY == DEFAULT_STRENGTH == clip.params.stability
    with pytest.raises(InvalidInputError) as raised:
        replace(clip.params, stability=1.5)
    assert raised.value.field == "stability"
    record = clip.params.record()
    del record["stability"]  # a job stored before the setting existed
    assert type(clip.params).from_record(record, ["full"]).stability == DEFAULT_STABILITY


class RecolourTargets(ModelBackend):
    """The backend, recording the size of each frame the styles are recoloured to."""

    def __init__(self, backend: ModelBackend) -> None:
        super().__init__(backend.pipelines)
        self.sizes: list[tuple[int, int]] = []

    def style_statistics(
        self, style: torch.Tensor, recolour_to: torch.Tensor | None, model: str | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if recolour_to is not None:
            self.sizes.append((recolour_to.shape[-2], recolour_to.shape[-1]))
        return super().style_statistics(style, recolour_to, model)


@pytest.mark.parametrize(
    ("models", "named", "blends_for"),
    [
        (["full", "lite"], None, "full"),
        (["full", "lite"], "lite", "lite"),
        (["lite", "full"], None, "lite"),  # the service's default is lite
    ],
)
def test_a_clips_stabiliser_blends_for_the_network_that_draws_it(
    clip: Clip, backend: ModelBackend, models: list[str], named: str | None, blends_for: str
) -> None:
    both = ModelBackend(dict.fromkeys(models, backend.pipeline(None)))
    controls = clip.params.controls.model_copy(update={"model": named})
    params = replace(clip.params, controls=controls, stability=0.75)
    expected = with_strength(for_model(StabilizerConfig(), blends_for), 0.75)
    assert stabilizer_config(params, both) == expected
    # lite's blend differs from the full model's (its fine detail is not propagated).
    lite, full = (for_model(StabilizerConfig(), name).blending for name in ("lite", "full"))
    assert lite.detail_weight < full.detail_weight


def test_colour_preservation_recolours_to_the_frame_not_its_padding(
    clip: Clip, backend: ModelBackend, tmp_path: Path
) -> None:
    # The stabiliser hands the network the frame on a larger, mirrored canvas; the styles are
    # recoloured to the frame's own pixels, as when each frame is stylized alone.
    recording = RecolourTargets(backend)
    controls = clip.params.controls.model_copy(update={"preserve_color": True})
    frames_at(clip, recording, tmp_path / "colour", controls=controls)
    assert len(recording.sizes) >= FRAMES
    assert set(recording.sizes) == {(64, 64)}
