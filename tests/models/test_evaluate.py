"""The paper's Fig. 3 content and style losses (`models.evaluate`); the command around them is
tested in tests/cli/test_eval.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from devkit import reference_port as port
from devkit.images import random_image
from models import evaluate, images
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
