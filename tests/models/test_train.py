"""The decoder's training: the loss goes down, checkpoints resume, the budget ends runs cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from devkit import REPO
from devkit.images import random_image
from models.data import is_held_out
from models.train import TrainConfig, Trainer, train
from models.weights import read_state


def image_folder(folder: Path, count: int, seed: int) -> Path:
    """`count` square training images (none of them in the held-out split)."""
    folder.mkdir()
    made, index = 0, 0
    while made < count:
        path = folder / f"image_{seed}_{index}.png"
        index += 1
        if is_held_out(path):
            continue
        random_image(32, 32, seed=seed * 100 + index).save(path)
        made += 1
    return folder


@pytest.fixture
def config(tmp_path: Path) -> TrainConfig:
    # Square images, resize == crop and one image per folder: the "random" crop is the whole
    # image, every step sees the same batch, so a falling loss measures learning, not a luckier
    # crop (with lr 0 the loss stays put). The embedded encoder: random ones give ~0 losses.
    # The default seed fixes the decoder's initialisation (`test_the_seed_fixes_the_run`).
    return TrainConfig(
        content_dir=image_folder(tmp_path / "content", 1, seed=1),
        style_dir=image_folder(tmp_path / "style", 1, seed=2),
        out_dir=tmp_path / "run",
        batch_size=2, lr=1e-4, resize=24, crop=24, workers=0,
        checkpoint_every=2, sample_every=4, device="cpu",
    )


def read_log(config: TrainConfig) -> list[dict[str, float]]:
    lines = (config.out_dir / "log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def total_loss(record: dict[str, float], config: TrainConfig) -> float:
    return config.content_weight * record["content"] + config.style_weight * record["style"]


# Each loss's last 3 steps over its first 3 must fall under these ratios. The runs are fixed by
# the seed; the ratios over seeds 0-3 and the margins these thresholds leave (midway between the
# worst seed and 1, the ratio without learning) are in docs/training.md.
PAPER_LOSS_RATIO = {False: 0.83, True: 0.88}  # by bf16 autocast
IDENTITY_RATIO = 0.94
CONTENT_PHOTO_RATIO = 0.9
PIXEL_WARMUP_RATIO = 0.95


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_loss_goes_down_and_outputs_are_written(config: TrainConfig, bf16: bool) -> None:
    config.steps, config.bf16 = 12, bf16
    assert train(config) == 12
    records = read_log(config)
    assert [r["step"] for r in records] == list(range(1, 13))
    first = sum(total_loss(r, config) for r in records[:3])
    last = sum(total_loss(r, config) for r in records[-3:])
    assert last < PAPER_LOSS_RATIO[bf16] * first, (first, last)
    assert (config.out_dir / "samples" / "step_0000004.jpg").is_file()
    exported = read_state(config.out_dir / "decoder.safetensors")
    assert exported["1.weight"].shape == (256, 512, 3, 3)


def losses_by_step(config: TrainConfig) -> list[float]:
    """Every logged number but the time, step by step."""
    return [r[k] for r in read_log(config) for k in sorted(r) if k != "seconds"]


def test_the_seed_fixes_the_run(config: TrainConfig, tmp_path: Path) -> None:
    """The decoder's initialisation and the crops come from `seed`: a run repeats exactly
    (up to float rounding), so the loss thresholds below are met or missed for good, not by
    luck; another seed is another run."""
    config.steps = 3
    train(config)
    first = losses_by_step(config)
    config.out_dir = tmp_path / "again"
    train(config)
    assert losses_by_step(config) == pytest.approx(first, rel=1e-5)
    config.out_dir, config.seed = tmp_path / "other", 1
    train(config)
    assert losses_by_step(config) != pytest.approx(first, rel=1e-3)


def test_resume_continues_where_the_checkpoint_left_off(config: TrainConfig) -> None:
    config.steps = 4
    train(config)
    checkpoint = torch.load(config.out_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 4

    resumed = Trainer(config)
    assert resumed.step == 4
    for name, value in checkpoint["decoder"].items():
        assert torch.equal(resumed.net.decoder.state_dict()[name], value)
    # The optimiser's moments came back too, not a fresh Adam.
    assert resumed.optimizer.state_dict()["state"], "Adam state was not restored"

    # A killed run logged steps after its last checkpoint: the resumed run replaces them.
    with (config.out_dir / "log.jsonl").open("a") as log:
        log.write(json.dumps({"step": 5, "content": 1.0, "style": 1.0}) + "\n")
    config.steps = 6
    resumed = Trainer(config)
    assert resumed.run() == 6
    assert [r["step"] for r in read_log(config)] == [1, 2, 3, 4, 5, 6]


def test_wall_clock_budget_stops_with_a_checkpoint(config: TrainConfig) -> None:
    config.steps = 1000
    config.max_minutes = 1e-9  # already over when the loop starts
    assert train(config) == 0
    assert torch.load(config.out_dir / "checkpoint.pt", weights_only=True)["step"] == 0


def test_pixel_warmup_learns_to_invert_the_encoder(config: TrainConfig) -> None:
    config.steps, config.pixel_warmup = 10, 8
    trainer = Trainer(config)
    trainer.run()
    # Adam started afresh with the paper's loss: its moments count the 2 steps since the warm-up.
    assert {int(state["step"]) for state in trainer.optimizer.state.values()} == {2}
    records = read_log(config)
    warmup, paper = records[:8], records[8:]
    assert all(set(r) >= {"pixel"} and "style" not in r for r in warmup)
    assert all({"content", "style"} <= set(r) for r in paper)
    assert sum(r["pixel"] for r in warmup[-2:]) < PIXEL_WARMUP_RATIO * sum(
        r["pixel"] for r in warmup[:2])


def test_sigterm_ends_the_run_after_the_step_with_a_checkpoint(config: TrainConfig) -> None:
    command = [
        sys.executable, "-m", "cli", "train",
        "--content-dir", str(config.content_dir), "--style-dir", str(config.style_dir),
        "--out-dir", str(config.out_dir), "--resize", "24", "--crop", "24", "--batch-size", "2",
        "--workers", "0", "--device", "cpu", "--checkpoint-every", "1000", "--steps", "100000",
    ]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.DEVNULL)
    log = config.out_dir / "log.jsonl"
    deadline = time.monotonic() + 300
    while not (log.is_file() and log.read_text().strip()):
        assert process.poll() is None, "training exited before its first step"
        assert time.monotonic() < deadline, "no training step within 5 minutes"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    logged = read_log(config)[-1]["step"]
    assert torch.load(config.out_dir / "checkpoint.pt", weights_only=True)["step"] == logged


def test_a_fresh_run_can_start_from_given_decoder_weights(
    config: TrainConfig, reference_weights: tuple[Path, Path]
) -> None:
    config.init_decoder = reference_weights[1]
    trainer = Trainer(config)
    given = torch.load(reference_weights[1], weights_only=True)
    for name, value in trainer.net.decoder.state_dict().items():
        assert torch.equal(value, given[name])
    assert trainer.step == 0


def test_identity_term_and_ema_are_trained_logged_and_saved(config: TrainConfig) -> None:
    config.steps, config.ema_decay = 12, 0.5
    config.identity_pixel_weight, config.identity_feature_weight = 50.0, 1.0
    # The paper's terms off: only the identity term can make its loss fall.
    config.content_weight = config.style_weight = 0.0
    trainer = Trainer(config)
    trainer.run()
    records = read_log(config)
    assert all({"identity_pixel", "identity_feature"} <= set(r) for r in records)
    def identity(record: dict[str, float]) -> float:
        return 50.0 * record["identity_pixel"] + record["identity_feature"]

    assert sum(map(identity, records[-3:])) < IDENTITY_RATIO * sum(map(identity, records[:3]))
    ema = read_state(config.out_dir / "decoder_ema.safetensors")
    trained = read_state(config.out_dir / "decoder.safetensors")
    # The average lags the trained weights: equal would mean no averaging, or no export of it.
    assert not torch.equal(ema["1.weight"], trained["1.weight"])
    resumed = Trainer(config)
    for name, value in trainer.ema.state_dict().items():
        assert torch.equal(resumed.ema.state_dict()[name], value), name


def test_content_photo_term_is_trained_and_logged(config: TrainConfig) -> None:
    config.steps, config.content_photo_weight = 12, 1.0
    # The paper's terms off: only the content-photo term can make its loss fall.
    config.content_weight = config.style_weight = 0.0
    train(config)
    photo = [record["content_photo"] for record in read_log(config)]
    assert len(photo) == 12
    assert sum(photo[-3:]) < CONTENT_PHOTO_RATIO * sum(photo[:3]), photo
