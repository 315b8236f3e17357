"""`adain stylize` on videos, as a user runs it (real processes, real encoded clips): the output
must be an MP4, a still GIF is an image, a video keeps its size, errors are one line naming the
argument before any progress bar, and the web stack is never imported."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from PIL import Image

from devkit import REPO
from devkit.images import random_image
from devkit.videos import make_video, truncated
from media.clip import OWN_SIZE_LIMIT, is_video_file, own_size
from media.video import VideoInfo, describe_output

FAST = ("--model", "lite", "--device", "cpu", "--style-size", "32")


def adain_process(*args: str | Path, python: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *python, "-m", "cli", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("video-inputs")
    clip = folder / "clip.mp4"
    clip.write_bytes(make_video(frames=3, width=64, height=48, audio=False))
    style = folder / "style.png"
    random_image(40, 40, seed=3).save(style)
    still = folder / "still.gif"
    random_image(60, 44, seed=4).save(still)
    cut = folder / "cut.mp4"
    cut.write_bytes(truncated(make_video(frames=12, width=64, height=48)))
    notes = folder / "notes.txt"
    notes.write_text("not a picture")
    return {"clip": clip, "style": style, "still": still, "cut": cut, "notes": notes}


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The whole of stderr, which must be one `error: ...` line: no progress bar before it."""
    assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith("error: ")
    assert "stylize:" not in result.stderr and "Traceback" not in result.stderr
    return result.stderr


def test_a_video_keeps_its_size_and_imports_no_web_stack(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """No --content-size: the 64 x 48 clip comes out 64 x 48 (the images' 512 would make it
    682 x 512). The process never imports starlette, fastapi or the service (-X importtime
    lists every module a process imports)."""
    output = tmp_path / "out.mp4"
    result = adain_process(
        "stylize", files["clip"], files["style"], "-o", output, *FAST, python=("-X", "importtime")
    )
    assert result.returncode == 0, result.stderr
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert {"media.clip", "media.video", "torch"} <= imported  # the listing is complete
    assert {m.split(".")[0] for m in imported} & {"fastapi", "starlette", "service"} == set()
    described = describe_output(output)
    assert (described["frames"], described["width"], described["height"]) == (3, 64, 48)


def test_content_size_still_resizes_a_video(files: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "out.mp4"
    result = adain_process(
        "stylize", files["clip"], files["style"], "-o", output, *FAST, "--content-size", "96"
    )
    assert result.returncode == 0, result.stderr
    described = describe_output(output)
    assert (described["width"], described["height"]) == (128, 96)


def test_a_very_large_video_is_bounded() -> None:
    def info(width: int, height: int) -> VideoInfo:
        return VideoInfo(width, height, 10, Fraction(25), Fraction(1, 25), 0.4, 0, None, "h264")

    assert own_size(info(1920, 1080)) == 0  # Full HD keeps its size
    assert own_size(info(3840, 2160)) == OWN_SIZE_LIMIT
    assert own_size(info(2160, 3840)) == OWN_SIZE_LIMIT  # portrait: the shorter side too


def test_a_video_into_an_image_name_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "out.png"
    result = adain_process("stylize", files["clip"], files["style"], "-o", output, *FAST)
    assert result.returncode == 2
    message = one_line_error(result)
    assert "--output" in message and ".mp4" in message and str(output) in message
    assert not output.exists()


def test_a_still_gif_is_an_image(files: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "out.png"
    result = adain_process(
        "stylize", files["still"], files["style"], "-o", output, *FAST, "--content-size", "0"
    )
    assert result.returncode == 0, result.stderr
    assert "frames" not in result.stdout and "image(s)" in result.stdout
    with Image.open(output) as written:
        assert (written.format, written.size) == ("PNG", (60, 44))


def test_an_animated_gif_is_a_video_and_a_still_one_is_not(
    files: dict[str, Path], tmp_path: Path
) -> None:
    animated = tmp_path / "animated.gif"
    animated.write_bytes(make_video(frames=3, width=32, height=24, container="gif", audio=False))
    assert is_video_file(animated)
    assert not is_video_file(files["still"])
    assert is_video_file(files["clip"]) and not is_video_file(files["style"])


@pytest.mark.parametrize(
    ("arguments", "status", "said"),
    [
        (["--weights", "1,2"], 2, ["--weights", "one weight per style (1), got 2"]),
        (["--model", "lit"], 2, ["--model", "'lit' is not one of"]),
    ],
    ids=["weights count", "model name"],
)
def test_wrong_options_on_a_video_are_one_line(
    files: dict[str, Path], tmp_path: Path, arguments: list[str], status: int, said: list[str]
) -> None:
    output = tmp_path / "out.mp4"
    fast = [a for a in FAST if a not in ("--model", "lite")]
    result = adain_process(
        "stylize", files["clip"], files["style"], "-o", output, *fast, *arguments
    )
    assert result.returncode == status
    message = one_line_error(result)
    assert all(part in message for part in said), message
    assert "Value error" not in message and not output.exists()


def test_a_broken_video_names_the_content_argument(files: dict[str, Path], tmp_path: Path) -> None:
    result = adain_process("stylize", files["cut"], files["style"], "-o", tmp_path / "o.mp4", *FAST)
    assert result.returncode == 1
    message = one_line_error(result)
    assert message.startswith(f"error: CONTENT {files['cut']}: ")
    assert "video:" not in message


def test_unreadable_content_says_videos_are_accepted(
    files: dict[str, Path], tmp_path: Path
) -> None:
    result = adain_process(
        "stylize", files["notes"], files["style"], "-o", tmp_path / "o.png", *FAST
    )
    assert result.returncode == 1
    message = one_line_error(result)
    assert f"CONTENT {files['notes']}: not a readable image or video" in message
