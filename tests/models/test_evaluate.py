"""`adain eval`: the paper's Fig. 3 content and style losses, and the command around them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import Tensor
from typer.testing import CliRunner

from cli.app import app
from devkit import reference_port as port
from devkit.images import random_image
from models import evaluate, images
from models.data import is_held_out
from models.evaluate import Losses, PairResult
from models.model import StyleTransfer
from models.pipeline import Pipeline
from models.weights import load_model


@pytest.fixture(scope="module")
def net(reference_weights: tuple[Path, Path]) -> StyleTransfer:
    return load_model(*reference_weights)


def image(width: int, height: int, seed: int) -> Tensor:
    return images.prepare(random_image(width, height, seed))


def taps(net: StyleTransfer, batch: Tensor) -> list[Tensor]:
    with torch.inference_mode():
        return net.encode_taps(batch)


def test_losses_are_the_paper_measures(net: StyleTransfer) -> None:
    content, style = image(40, 32, seed=1), image(32, 40, seed=2)
    output, stylized, baseline = evaluate.evaluate_pair(Pipeline(net), content, style)
    with torch.inference_mode():
        assert torch.equal(output, Pipeline(net).stylize(content, [style]))
    # Written out with the port's formulas: t = AdaIN(f(c), f(s)); MSEs of means and stds.
    content_taps, style_taps, output_taps = (taps(net, x) for x in (content, style, output))
    target = port.adain(content_taps[-1], style_taps[-1])

    def style_loss(image_taps: list[Tensor]) -> float:
        total = 0.0
        for ours, theirs in zip(image_taps, style_taps, strict=True):
            (mean, std), (style_mean, style_std) = port.mean_std(ours), port.mean_std(theirs)
            total += float(((mean - style_mean) ** 2).mean() + ((std - style_std) ** 2).mean())
        return total

    assert stylized.content == pytest.approx(float(((output_taps[-1] - target) ** 2).mean()))
    assert stylized.style == pytest.approx(style_loss(output_taps), rel=1e-4)
    assert baseline.content == pytest.approx(float(((content_taps[-1] - target) ** 2).mean()))
    assert baseline.style == pytest.approx(style_loss(content_taps), rel=1e-4)
    assert baseline.style > 0 and baseline.content > 0
    assert stylized.content_vs_content == pytest.approx(
        float(((output_taps[-1] - content_taps[-1]) ** 2).mean()), rel=1e-5
    )
    # The photo is its own content (up to the rounding of a batched encoder pass).
    assert baseline.content_vs_content < 1e-9 * float(content_taps[-1].pow(2).mean())


def test_the_content_image_as_output_gives_the_baseline(net: StyleTransfer) -> None:
    content, style = image(40, 32, seed=3), image(24, 24, seed=4)
    _, _, baseline = evaluate.evaluate_pair(Pipeline(net), content, style)
    (measured,) = evaluate.measure(net, content, style, content)
    assert measured.content == pytest.approx(baseline.content, rel=1e-5)
    assert measured.style == pytest.approx(baseline.style, rel=1e-5)


def test_an_image_that_is_its_own_style_and_content_scores_zero(net: StyleTransfer) -> None:
    """Style loss of the style image against itself is 0; so is the content loss of an output
    whose features equal t, as t = AdaIN(f(c), f(c)) = f(c) when style = content."""
    picture = image(32, 32, seed=5)
    (measured,) = evaluate.measure(net, picture, picture, picture)
    assert measured.style == 0.0
    assert measured.content < 1e-9 * float(taps(net, picture)[-1].pow(2).mean())
    # A different output does not score zero.
    (other,) = evaluate.measure(net, picture, picture, image(32, 32, seed=6))
    assert other.style > 0 and other.content > 0


def test_measure_scores_a_batch_of_outputs_one_by_one(net: StyleTransfer) -> None:
    content, style = image(32, 24, seed=7), image(24, 24, seed=8)
    outputs = torch.cat([image(32, 24, seed=9), content])
    batch = evaluate.measure(net, content, style, outputs)
    singles = [evaluate.measure(net, content, style, outputs[i : i + 1])[0] for i in range(2)]
    for together, alone in zip(batch, singles, strict=True):
        assert together.content == pytest.approx(alone.content, rel=1e-4)
        assert together.style == pytest.approx(alone.style, rel=1e-4)


def test_summary_means_and_ratio() -> None:
    results = [
        PairResult("a.png", "x.png", Losses(2.0, 0.5, 1.0), Losses(4.0, 8.0, 0.0)),
        PairResult("b.png", "y.png", Losses(8.0, 2.0, 3.0), Losses(4.0, 2.0, 0.0)),
    ]
    summary = evaluate.summarise(results)
    assert summary.pairs == 2
    assert summary.mean == Losses(5.0, 1.25, 2.0)
    assert summary.baseline_mean == Losses(4.0, 5.0, 0.0)
    assert summary.mean_ln.content_vs_content == pytest.approx(math.log(3.0) / 2)
    assert summary.mean_ln.content == pytest.approx((math.log(2.0) + math.log(8.0)) / 2)
    assert summary.mean_ln.style == pytest.approx(0.0)  # ln 0.5 + ln 2 = 0
    assert summary.baseline_mean_ln.style == pytest.approx(math.log(4.0))
    assert summary.style_ratio == pytest.approx(1.25 / 5.0)


def test_pairs_cover_the_grid_once_mixing_contents_and_styles_early() -> None:
    contents = [Path(f"c{i}") for i in range(3)]
    styles = [Path(f"s{j}") for j in range(2)]
    pairs = list(evaluate.ordered_pairs(contents, styles))
    assert sorted(pairs) == sorted((c, s) for c in contents for s in styles)
    assert {c for c, _ in pairs[:3]} == set(contents)
    assert {s for _, s in pairs[:2]} == set(styles)
    assert pairs == list(evaluate.ordered_pairs(contents, styles))


def held_out_names(prefix: str, count: int, held_out: bool = True) -> list[str]:
    """File names that `models.data` holds out (or not): the split hashes the name."""
    names = (f"{prefix}_{i}.png" for i in range(10_000))
    return [name for name in names if is_held_out(Path(name)) == held_out][:count]


def test_eval_command_end_to_end(tmp_path: Path, reference_weights: tuple[Path, Path]) -> None:
    contents, styles = tmp_path / "content", tmp_path / "style"
    contents.mkdir()
    styles.mkdir()
    for seed, name in enumerate(held_out_names("photo", 2) + held_out_names("photo", 1, False)):
        random_image(40 + 8 * seed, 32, seed=seed).save(contents / name)
    for seed, name in enumerate(held_out_names("painting", 2) + held_out_names("art", 1, False)):
        random_image(32, 32, seed=10 + seed).save(styles / name)
    sheet, report = tmp_path / "out" / "sheet.png", tmp_path / "out" / "eval.json"
    result = CliRunner().invoke(app, [
        "eval", "--content-dir", str(contents), "--style-dir", str(styles),
        "--encoder", str(reference_weights[0]), "--decoder", str(reference_weights[1]),
        "--size", "32", "--pairs", "3", "--device", "cpu",
        "--sheet", str(sheet), "--json", str(report),
    ])
    assert result.exit_code == 0, result.output

    data = json.loads(report.read_text())
    assert data["settings"]["size"] == 32 and data["settings"]["held_out"] is True
    pairs = data["pairs"]
    assert len(pairs) == 3
    # Only held-out images, in the documented order.
    expected_order = evaluate.ordered_pairs(
        sorted(held_out_names("photo", 2)), sorted(held_out_names("painting", 2))
    )
    assert [(p["content"], p["style"]) for p in pairs] == [
        (c, s) for c, s in list(expected_order)[:3]
    ]
    # The numbers are the library's for the same inputs.
    net = load_model(*reference_weights)
    first = pairs[0]
    _, stylized, baseline = evaluate.evaluate_pair(
        Pipeline(net), images.load(contents / first["content"], 32),
        images.load(styles / first["style"], 32),
    )
    assert first["output"]["content"] == pytest.approx(stylized.content, rel=1e-5)
    assert first["output"]["style"] == pytest.approx(stylized.style, rel=1e-5)
    assert first["baseline"]["style"] == pytest.approx(baseline.style, rel=1e-5)
    summary = data["summary"]
    assert summary["pairs"] == 3
    assert summary["mean_ln"]["style"] == pytest.approx(
        sum(math.log(p["output"]["style"]) for p in pairs) / 3
    )
    assert summary["baseline_mean"]["content"] == pytest.approx(
        sum(p["baseline"]["content"] for p in pairs) / 3
    )

    lines = result.stdout.splitlines()
    for pair in pairs:
        assert any(line.startswith(f"{pair['content']} x {pair['style']}: ") for line in lines)
    assert "mean ln content loss" in result.stdout and "style / baseline style" in result.stdout

    with Image.open(sheet) as picture:
        cell, caption = evaluate.SHEET_CELL, evaluate.SHEET_CAPTION
        assert picture.size == (3 * cell, 3 * (cell + caption))
        # Each row shows three different pictures: content, style, output.
        row = picture.convert("RGB").crop((0, 0, 3 * cell, cell))
        thirds = [row.crop((i * cell, 0, (i + 1) * cell, cell)).tobytes() for i in range(3)]
        assert len(set(thirds)) == 3


def test_eval_without_held_out_images_is_a_plain_error(
    tmp_path: Path, reference_weights: tuple[Path, Path]
) -> None:
    folder = tmp_path / "training_only"
    folder.mkdir()
    for seed, name in enumerate(held_out_names("photo", 2, held_out=False)):
        random_image(24, 24, seed=seed).save(folder / name)
    result = CliRunner().invoke(app, [
        "eval", "--content-dir", str(folder), "--style-dir", str(folder),
        "--encoder", str(reference_weights[0]), "--decoder", str(reference_weights[1]),
    ])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "held-out" in result.stderr
    # --all-images uses them all.
    result = CliRunner().invoke(app, [
        "eval", "--content-dir", str(folder), "--style-dir", str(folder), "--all-images",
        "--encoder", str(reference_weights[0]), "--decoder", str(reference_weights[1]),
        "--size", "24", "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    assert "4 pairs." in result.stdout


def test_eval_scores_a_peer_folder_on_the_same_pairs(
    tmp_path: Path, reference_weights: tuple[Path, Path]
) -> None:
    """A peer's outputs are read from its manifest and measured beside the decoder's: a peer
    that returns the content photo itself scores exactly the baseline."""
    contents, styles, peer = tmp_path / "content", tmp_path / "style", tmp_path / "photo-peer"
    for folder in (contents, styles, peer):
        folder.mkdir()
    for seed, name in enumerate(held_out_names("photo", 2)):
        random_image(40, 32, seed=seed).save(contents / name)
    for seed, name in enumerate(held_out_names("painting", 1)):
        random_image(32, 32, seed=10 + seed).save(styles / name)
    entries = []
    for content_name in held_out_names("photo", 2):
        for style_name in held_out_names("painting", 1):
            output = f"32/{content_name}"
            (peer / "32").mkdir(exist_ok=True)
            images.to_pil(images.load(contents / content_name, 32)).save(peer / output)
            entries.append({"content": content_name, "style": style_name, "output": output})
    (peer / "manifest.json").write_text(json.dumps({"32": entries}))
    report = tmp_path / "eval.json"
    arguments = [
        "eval", "--content-dir", str(contents), "--style-dir", str(styles),
        "--encoder", str(reference_weights[0]), "--decoder", str(reference_weights[1]),
        "--size", "32", "--pairs", "0", "--device", "cpu", "--json", str(report),
    ]
    result = CliRunner().invoke(app, [*arguments, "--peer", str(peer)])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    scored = data["peers"]["photo-peer"]
    assert len(scored["pairs"]) == 2
    for ours, theirs in zip(data["pairs"], scored["pairs"], strict=True):
        assert (theirs["content"], theirs["style"]) == (ours["content"], ours["style"])
        assert theirs["output"]["style"] == pytest.approx(ours["baseline"]["style"], rel=1e-4)
        assert theirs["output"]["content_vs_content"] < 1e-6
    assert "| photo-peer | 2 |" in result.stdout and "| this decoder | 2 |" in result.stdout

    # A peer without an output for an evaluated pair is a plain error.
    (peer / "manifest.json").write_text(json.dumps({"32": entries[:1]}))
    result = CliRunner().invoke(app, [*arguments, "--peer", str(peer)])
    assert result.exit_code == 1 and "has no output for" in result.stderr
