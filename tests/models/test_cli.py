"""`adain stylize` as a command, compared with a re-implementation of the reference `test.py`.

The commands run in-process through Click's runner (a Python start-up costs seconds on two
cores); one test runs a real process for the exit status and the message a user sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner, Result

from devkit import reference_port as port
from devkit.images import random_image
from models import images
from models.cli import app
from models.model import masks_from_binary
from models.weights import load_model

REPO = Path(__file__).resolve().parents[2]


def adain(*args: str | Path | float) -> Result:
    return CliRunner().invoke(app, [str(arg) for arg in args])


def adain_process(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "models.cli", *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # tiny images: threads only contend
    )


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def assert_same_image(output: Path, reference: Path) -> None:
    """Within 1/255 per pixel; the port returns 8 * ceil(size / 8), so compare its top left."""
    ours, theirs = pixels(output), pixels(reference)
    height, width = ours.shape[:2]
    assert theirs.shape[0] >= height and theirs.shape[1] >= width
    difference = np.abs(ours - theirs[:height, :width])
    assert difference.max() <= 1, f"max difference {difference.max()} / 255"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    specs = {"content": (52, 44, 1), "style_a": (40, 48, 2), "style_b": (48, 36, 3)}
    paths = {}
    for name, (width, height, seed) in specs.items():
        paths[name] = folder / f"{name}.png"
        random_image(width, height, seed).save(paths[name])
    return paths


SIZES = {"content_size": 36, "style_size": 28}
CASES = {
    "single style": ({**SIZES}, []),
    "alpha 0.5": ({**SIZES, "alpha": 0.5}, ["--alpha", "0.5"]),
    "preserve color": ({**SIZES, "preserve_color": True}, ["--preserve-color"]),
    # The port interpolates only styles of the content's size: crop all to the same square.
    "interpolation": (
        {"content_size": 32, "style_size": 32, "interpolation_weights": [1, 3], "crop": True},
        ["--weights", "1,3", "--crop"],
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_stylize_matches_the_reference_test_py(
    case: str, tmp_path: Path, inputs: dict[str, Path], reference_weights: tuple[Path, Path]
) -> None:
    reference_options, cli_options = CASES[case]
    interpolating = "interpolation_weights" in reference_options
    styles = [inputs["style_a"], inputs["style_b"]] if interpolating else [inputs["style_a"]]
    result = adain(
        "stylize", inputs["content"], *styles, "-o", tmp_path / "ours.png",
        "--content-size", reference_options["content_size"],
        "--style-size", reference_options["style_size"], "--device", "cpu",
        "--encoder", reference_weights[0], "--decoder", reference_weights[1], *cli_options,
    )
    assert result.exit_code == 0, result.output
    port.run_test_py(
        *port.load_nets(*reference_weights), inputs["content"], styles,
        tmp_path / "reference.png", **reference_options,
    )
    # 52 x 44 resized to a shorter side of 36 is 42 x 36 (42.5 truncated): not a multiple of 8.
    expected_size = (32, 32) if "crop" in reference_options else (42, 36)
    with Image.open(tmp_path / "ours.png") as output:
        assert output.size == expected_size
    assert_same_image(tmp_path / "ours.png", tmp_path / "reference.png")


def test_folders_stylize_every_content_with_every_style(
    tmp_path: Path, reference_weights: tuple[Path, Path]
) -> None:
    contents, styles = tmp_path / "contents", tmp_path / "styles"
    contents.mkdir()
    styles.mkdir()
    for seed, name in enumerate(("harbour", "street")):
        random_image(40 + 8 * seed, 32, seed=20 + seed).save(contents / f"{name}.png")
    for seed, name in enumerate(("ink", "oil")):
        random_image(32, 32 + 8 * seed, seed=30 + seed).save(styles / f"{name}.jpg")
    result = adain(
        "stylize", contents, styles, "-o", tmp_path / "out", "--content-size", 0,
        "--style-size", 0, "--device", "cpu",
        "--encoder", reference_weights[0], "--decoder", reference_weights[1],
    )
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == [
        f"{content}_stylized_{style}.png"
        for content in ("harbour", "street") for style in ("ink", "oil")
    ]
    nets = port.load_nets(*reference_weights)
    for content in ("harbour", "street"):
        for style in ("ink", "oil"):
            reference = tmp_path / f"reference_{content}_{style}.png"
            port.run_test_py(
                *nets, contents / f"{content}.png", [styles / f"{style}.jpg"], reference,
                content_size=0, style_size=0,
            )
            assert_same_image(tmp_path / "out" / f"{content}_stylized_{style}.png", reference)


def test_odd_sizes_come_back_exact(tmp_path: Path, reference_weights: tuple[Path, Path]) -> None:
    contents = tmp_path / "contents"
    contents.mkdir()
    sizes = {"tall": (37, 53), "strip": (130, 9), "tiny": (9, 11)}
    for seed, (name, (width, height)) in enumerate(sizes.items()):
        random_image(width, height, seed=seed).save(contents / f"{name}.png")
    style = tmp_path / "style.png"
    random_image(24, 24, seed=9).save(style)
    result = adain(
        "stylize", contents, style, "-o", tmp_path / "out", "--content-size", 0,
        "--style-size", 0, "--device", "cpu",
        "--encoder", reference_weights[0], "--decoder", reference_weights[1],
    )
    assert result.exit_code == 0, result.output
    for name, size in sizes.items():
        with Image.open(tmp_path / "out" / f"{name}_stylized_style.png") as output:
            assert output.size == size


def test_a_missing_decoder_is_a_plain_message(
    tmp_path: Path, inputs: dict[str, Path], reference_weights: tuple[Path, Path]
) -> None:
    missing = tmp_path / "nowhere" / "decoder.safetensors"
    result = adain_process(
        "stylize", inputs["content"], inputs["style_a"], "-o", tmp_path / "out.png",
        "--encoder", reference_weights[0], "--decoder", missing, "--device", "cpu",
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and str(missing) in result.stderr
    assert "no decoder weights" in result.stderr and "decoder.pth" in result.stderr
    assert not (tmp_path / "out.png").exists()


def test_masks_one_binary_for_two_styles_or_one_per_style(
    tmp_path: Path, inputs: dict[str, Path], reference_weights: tuple[Path, Path]
) -> None:
    mask = Image.new("L", (52, 44), 0)
    mask.paste(255, (0, 0, 26, 44))  # left half white: the first style
    mask.save(tmp_path / "mask.png")
    common = [
        "--content-size", 0, "--style-size", 0, "--device", "cpu",
        "--encoder", reference_weights[0], "--decoder", reference_weights[1],
    ]
    styles = [inputs["style_a"], inputs["style_b"]]
    result = adain(
        "stylize", inputs["content"], *styles, "-o", tmp_path / "out.png",
        "--mask", tmp_path / "mask.png", *common,
    )
    assert result.exit_code == 0, result.output
    net = load_model(*reference_weights)
    content = images.load(inputs["content"])
    with torch.inference_mode():
        expected = net.stylize(
            content, [images.load(path) for path in styles],
            masks=masks_from_binary(images.prepare_mask(mask, content.shape[-2:])),
        )
    expected_path = tmp_path / "expected.png"
    images.to_pil(expected).save(expected_path)
    assert_same_image(tmp_path / "out.png", expected_path)

    three = [*styles, inputs["style_a"]]
    result = adain(
        "stylize", inputs["content"], *three, "-o", tmp_path / "bad.png",
        "--mask", tmp_path / "mask.png", "--mask", tmp_path / "mask.png", *common,
    )
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "--mask" in message and "got 2 masks for 3 styles" in message
    assert not (tmp_path / "bad.png").exists()
