"""`run_job` in-process, as a worker or the command runs it: resuming from a checkpoint gives
the uninterrupted job's frames, the command's function writes the video, expiry cleans up."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from devkit.images import encode, psnr, random_image
from devkit.videos import coded_as_result, decode_frames, make_video
from media.clip import (
    ClipSettings,
    ClipStyles,
    ModelBackend,
    load_styles,
    open_clip,
    save_styles,
    stylize_clip,
)
from media.controls import check_controls
from media.imaging import ImageLimits, StyleInput, prepare_style
from media.video import VideoLimits, describe_output, tensor_to_rgb
from models.config import ModelName, PipelineConfig, Precision
from models.model import Masks, StyleMix
from models.pipeline import Pipeline, build_pipeline
from models.weights import load_model
from service.jobs.run import run_job
from service.jobs.store import STYLES_FILE, JobStatus, JobStore
from service.jobs.submit import create_job

STYLE = encode(random_image(48, 48, seed=1911))
SETTINGS = ClipSettings(
    crf=18, preset="veryfast", checkpoint_s=0.0, limits=ImageLimits(10**7, 10**6)
)
LIMITS = VideoLimits(100, 60, 10**6, 10**12)


@pytest.fixture(scope="module")
def net(reference_weights: tuple[Path, Path]) -> Pipeline:
    return Pipeline(load_model(*reference_weights))


def new_job(store: JobStore, clip: bytes, stabilize: bool = True, model: str | None = None) -> str:
    job_id, inputs = store.new_upload()
    (inputs / "video").write_bytes(clip)
    create_job(
        store,
        job_id,
        "me",
        [StyleInput(STYLE, "style[0]")],
        [],
        check_controls(styles=1, content_size=0, style_size=48, model=model),
        stabilize=stabilize,
        video_limits=LIMITS,
        limits=SETTINGS.limits,
    )
    return job_id


def test_a_resumed_job_gives_the_uninterrupted_frames(net: Pipeline, tmp_path: Path) -> None:
    """Stopped after 5 of 12 frames and run again: the stabiliser's state came back from the
    checkpoint, so every frame equals the one-go job's (up to H.264's rounding)."""
    clip = make_video(frames=12, width=64, height=48)
    whole = JobStore(tmp_path / "whole", 60)
    whole_id = new_job(whole, clip)
    backend = ModelBackend({"full": net})
    assert run_job(whole_id, whole, backend, SETTINGS).status is JobStatus.succeeded

    split = JobStore(tmp_path / "split", 60)
    split_id = new_job(split, clip)
    calls = iter(range(100))
    interrupted = run_job(
        split_id, split, ModelBackend({"full": net}), SETTINGS, should_stop=lambda: next(calls) == 5
    )
    assert interrupted is None
    record = split.get(split_id)
    assert record is not None
    assert (record.status, record.frames_done) == (JobStatus.running, 5)
    checkpoint = split.load_checkpoint(split_id)
    assert checkpoint is not None and checkpoint.frames_done == 5
    assert checkpoint.stabilizer is not None and "previous_output" in checkpoint.stabilizer
    final = run_job(split_id, split, ModelBackend({"full": net}), SETTINGS)
    assert final is not None and final.status is JobStatus.succeeded
    assert not split.work(split_id).exists()

    one = decode_frames(whole.blobs.read_bytes(f"{whole_id}/result.mp4"))
    other = decode_frames(split.blobs.read_bytes(f"{split_id}/result.mp4"))
    assert len(one) == len(other) == 12
    assert min(psnr(a / 255, b / 255) for a, b in zip(one, other, strict=True)) > 40
    # Without the state (a fresh stabiliser at frame 5) frame 6 would differ: the check can fail.
    plain = JobStore(tmp_path / "plain", 60)
    plain_id = new_job(plain, clip, stabilize=False)
    run_job(plain_id, plain, ModelBackend({"full": net}), SETTINGS)
    unstabilized = decode_frames(plain.blobs.read_bytes(f"{plain_id}/result.mp4"))
    assert (
        psnr(one[6] / 255, unstabilized[6] / 255)
        < min(psnr(a / 255, b / 255) for a, b in zip(one, other, strict=True)) - 3
    )


def test_the_commands_function_writes_the_video_with_progress(
    net: Pipeline, tmp_path: Path
) -> None:
    clip, style, output = tmp_path / "clip.webm", tmp_path / "style.png", tmp_path / "out.mp4"
    clip.write_bytes(make_video(frames=7, width=80, height=60, container="webm"))
    style.write_bytes(STYLE)
    seen: list[tuple[int, int]] = []
    controls = check_controls(styles=1, weights=[1.0], content_size=0, style_size=48)
    checked = open_clip(clip, [style], [], controls)
    frames = stylize_clip(
        checked,
        ModelBackend({"full": net}),
        output,
        SETTINGS,
        on_progress=lambda done, total: seen.append((done, total)),
    )
    assert frames == 7
    described = describe_output(output)
    assert (described["frames"], described["width"], described["height"]) == (7, 80, 60)
    assert described["audio_codec"] == "aac"
    assert seen[-1] == (7, 7)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_expired_jobs_and_orphans_are_cleaned_up(net: Pipeline, tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs", ttl_s=30)
    job_id = new_job(store, make_video(frames=2, width=32, height=32, audio=False), stabilize=False)
    record = run_job(job_id, store, ModelBackend({"full": net}), SETTINGS)
    assert record is not None and record.expires is not None
    assert abs(record.expires - time.time() - 30) < 5
    orphan, _ = store.new_upload()  # a crash between the upload and the record
    assert store.cleanup(now=record.expires - 1, orphan_age_s=3600) == []
    assert store.open_result(job_id) is not None
    removed = store.cleanup(now=record.expires + 1, orphan_age_s=0)
    assert sorted(removed) == sorted([job_id, orphan])
    for gone in (job_id, orphan):
        assert store.get(gone) is None and not store.blobs.exists(f"{gone}/")
        assert not store.scratch(gone).exists()


def test_a_job_canceled_before_it_runs_leaves_nothing(net: Pipeline, tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs", ttl_s=30)
    job_id = new_job(store, make_video(frames=3, width=32, height=32))

    def cancel(record: object) -> None:
        record.status = JobStatus.canceled  # type: ignore[attr-defined]

    store.update(job_id, cancel)
    record = run_job(job_id, store, ModelBackend({"full": net}), SETTINGS)
    assert record is not None and record.status is JobStatus.canceled
    assert not store.has_work(job_id) and not store.inputs(job_id).exists()
    assert store.open_result(job_id) is None


def test_adain_stylize_takes_a_video(reference_weights: tuple[Path, Path], tmp_path: Path) -> None:
    """`adain stylize clip.mov style.png -o out.mp4`: the command's hook, with a progress bar;
    a bad video is a one-line error."""
    from typer.testing import CliRunner

    from cli.app import app

    clip, style, output = tmp_path / "clip.mov", tmp_path / "style.png", tmp_path / "out.mp4"
    clip.write_bytes(make_video(frames=5, width=64, height=48, container="mov"))
    style.write_bytes(STYLE)
    encoder, decoder = reference_weights
    common = [
        "--encoder",
        str(encoder),
        "--decoder",
        str(decoder),
        "--precision",
        "fp32",
        "--content-size",
        "0",
        "--style-size",
        "48",
    ]
    done = CliRunner().invoke(app, ["stylize", str(clip), str(style), "-o", str(output), *common])
    assert done.exit_code == 0, done.output
    assert "wrote 5 frames" in done.output
    assert "frame" in done.output  # the progress bar
    assert describe_output(output)["frames"] == 5

    clip.write_bytes(b"not a video")
    failed = CliRunner().invoke(app, ["stylize", str(clip), str(style), "-o", str(output), *common])
    assert failed.exit_code == 1
    assert "video" in failed.output and "Traceback" not in failed.output


def test_a_job_another_process_runs_is_left_alone(net: Pipeline, tmp_path: Path) -> None:
    """The claim is a lock the system releases with its process: held (as by a replica or a
    worker running the job), run_job leaves the job; released (that process died), it runs."""
    store = JobStore(tmp_path / "jobs", ttl_s=30)
    job_id = new_job(store, make_video(frames=2, width=32, height=32, audio=False), stabilize=False)
    with store.claim(job_id) as claimed:
        assert claimed
        assert run_job(job_id, store, ModelBackend({"full": net}), SETTINGS) is None
        record = store.get(job_id)
        assert record is not None and record.status is JobStatus.queued
    record = run_job(job_id, store, ModelBackend({"full": net}), SETTINGS)
    assert record is not None and record.status is JobStatus.succeeded


def test_a_job_runs_on_the_model_it_names(net: Pipeline, tmp_path: Path) -> None:
    """`model` picks the backend's network: a lite job's frames are the lite network's (not
    the default's); a model the running process did not load fails the job naming `model`."""
    lite = build_pipeline(PipelineConfig(precision=Precision.fp32, model=ModelName.lite))
    backend = ModelBackend({"full": net, "lite": lite})
    clip = make_video(frames=2, width=64, height=48, audio=False)
    store = JobStore(tmp_path / "jobs", ttl_s=30)
    outputs = {}
    for model in ("full", "lite"):
        job_id = new_job(store, clip, stabilize=False, model=model)
        record = run_job(job_id, store, backend, SETTINGS)
        assert record is not None and record.status is JobStatus.succeeded
        assert record.public()["model"] == model
        outputs[model] = (
            np.stack(decode_frames(store.blobs.read_bytes(f"{job_id}/result.mp4"))) / 255
        )

    mix = StyleMix(
        *ModelBackend({"lite": lite}).style_statistics(
            prepare_style(StyleInput(STYLE, "style"), 48, False, SETTINGS.limits), None, None
        ),
        torch.ones(1),
    )
    coded: list[np.ndarray] = []
    for frame in decode_frames(clip):
        content = torch.from_numpy(frame / 255).permute(2, 0, 1)[None].float()
        stylized = tensor_to_rgb(lite.stylize_batch(content, [mix]))
        # checkpoint_s=0: each frame is a segment of its own, coded alone
        coded += coded_as_result([stylized], SETTINGS.crf, SETTINGS.preset)
    expected = np.stack(coded) / 255
    assert psnr(outputs["lite"], expected) > 40
    assert psnr(outputs["lite"], outputs["full"]) < psnr(outputs["lite"], expected) - 10

    missing = new_job(store, clip, stabilize=False, model="lite")
    failed = run_job(missing, store, ModelBackend({"full": net}), SETTINGS)
    assert failed is not None and failed.status is JobStatus.failed
    assert failed.error is not None and failed.error["field"] == "model"


def test_a_job_decodes_its_styles_once(tmp_path: Path) -> None:
    """Submission decodes and checks the styles and masks and stores them decoded; the run
    reads them back exactly, without the uploaded bytes."""
    store = JobStore(tmp_path / "jobs", ttl_s=30)
    job_id = new_job(store, make_video(frames=2, width=32, height=32, audio=False))
    inputs = store.fetch_inputs(job_id)
    assert sorted(path.name for path in inputs.iterdir()) == [STYLES_FILE, "video"]
    loaded = load_styles(inputs / STYLES_FILE)
    expected = prepare_style(StyleInput(STYLE, "style[0]"), 48, False, SETTINGS.limits)
    assert torch.equal(loaded.styles[0], expected) and loaded.masks is None

    masks = Masks(torch.rand(2, 24, 20), binary=True)
    save_styles(ClipStyles([expected, expected], masks), tmp_path / "two.pt")
    again = load_styles(tmp_path / "two.pt")
    assert again.masks is not None and again.masks.binary
    assert torch.equal(again.masks.values, masks.values)
    assert all(torch.equal(style, expected) for style in again.styles)
