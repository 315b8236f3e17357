"""`adain eval` end to end: the pairs, the sheet, the JSON report, peers, plain errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from cli.app import app
from devkit.images import random_image
from models import evaluate, images
from models.data import is_held_out
from models.pipeline import Pipeline
from models.weights import load_model


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


def test_eval_scores_the_lite_weights_it_is_given(
    tmp_path: Path, reference_weights: tuple[Path, Path]
) -> None:
    """`--model lite --lite-weights FILE` scores that file (a training run's), not the embedded
    lite weights; the report names it."""
    from models.lite import load_lite, save_lite

    contents, styles = tmp_path / "content", tmp_path / "style"
    contents.mkdir()
    styles.mkdir()
    random_image(40, 32, seed=1).save(contents / held_out_names("photo", 1)[0])
    random_image(32, 32, seed=2).save(styles / held_out_names("painting", 1)[0])
    other = load_lite()
    for parameter in other.decoder.parameters():
        parameter.data.mul_(0.5)
    weights = tmp_path / "lite_ema.safetensors"
    save_lite(other, weights)

    def style_loss(*extra: str) -> tuple[float, dict[str, object]]:
        report = tmp_path / f"eval{len(extra)}.json"
        result = CliRunner().invoke(app, [
            "eval", "--content-dir", str(contents), "--style-dir", str(styles),
            "--encoder", str(reference_weights[0]), "--decoder", str(reference_weights[1]),
            "--size", "32", "--pairs", "1", "--device", "cpu", "--model", "lite",
            "--json", str(report), *extra,
        ])
        assert result.exit_code == 0, result.output
        data = json.loads(report.read_text())
        return data["pairs"][0]["output"]["style"], data["settings"]

    embedded, embedded_settings = style_loss()
    given, given_settings = style_loss("--lite-weights", str(weights))
    assert embedded_settings["lite_weights"] == "embedded"
    assert given_settings["lite_weights"] == str(weights)
    assert given != pytest.approx(embedded, rel=1e-3)
