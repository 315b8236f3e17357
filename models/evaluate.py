"""The paper's quantitative evaluation (Huang & Belongie 2017, Fig. 3), behind `adain eval`.

For each content x style pair the stylized output is measured with the training losses:
content loss = MSE(relu4_1 of the output, AdaIN target t), style loss = sum over relu1_1..relu4_1
of the MSEs of channel means and stds between output and style. The same two numbers for the
content image itself as output are the baseline the paper plots beside them. A third number,
MSE(relu4_1 of the output, relu4_1 of the content photo), says how much of the photo is left
whatever t asked for: it compares methods that do not aim at t (other peers' outputs, scored from
a folder with `read_manifest`).

`run_evaluation` is the whole of `adain eval`: the pairs, the peers, the summary, the sheet, the
JSON report; the command only parses its options and prints.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageOps
from torch import Tensor

from models import images
from models.data import split
from models.errors import DomainError
from models.model import StyleTransfer, adaptive_instance_normalization, content_loss, style_loss
from models.pipeline import Pipeline

# ln(0) is -inf, which JSON cannot hold; losses this small are zero for every practical purpose.
LOSS_FLOOR = 1e-12
SHEET_CELL = 192  # px: each image of the contact sheet is fitted into a square this size
SHEET_CAPTION = 16  # px of caption under each row


@dataclass(frozen=True)
class Losses:
    content: float  # relu4_1 of the output vs the AdaIN target t (the paper's content loss)
    style: float
    content_vs_content: float  # relu4_1 of the output vs relu4_1 of the content photo


@dataclass(frozen=True)
class PairResult:
    content: str
    style: str
    output: Losses
    baseline: Losses  # the content image as output


@dataclass(frozen=True)
class Summary:
    pairs: int
    mean: Losses  # plain means over the pairs
    baseline_mean: Losses
    mean_ln: Losses  # means of ln(loss), the paper's axes
    baseline_mean_ln: Losses
    style_ratio: float  # mean style loss / mean baseline style loss: < 1 means styled


@torch.inference_mode()
def measure(net: StyleTransfer, content: Tensor, style: Tensor, outputs: Tensor) -> list[Losses]:
    """Fig. 3 losses of each of `outputs` (N, 3, H, W) for the pair content (1, 3, H, W), style.

    The content loss compares with t = AdaIN(f(content), f(style)), the target the decoder is
    trained to invert; outputs must therefore have the content's size.
    """
    style_taps = net.encode_taps(style)
    content_feat = net.encode(content).float()
    target = adaptive_instance_normalization(content_feat, style_taps[-1].float())
    output_taps = net.encode_taps(outputs)
    return [
        Losses(
            content=content_loss(output_taps[-1][i : i + 1], target).item(),
            style=style_loss([tap[i : i + 1] for tap in output_taps], style_taps).item(),
            content_vs_content=content_loss(output_taps[-1][i : i + 1], content_feat).item(),
        )
        for i in range(outputs.shape[0])
    ]


@torch.inference_mode()
def evaluate_pair(
    pipeline: Pipeline, content: Tensor, style: Tensor, loss_net: StyleTransfer | None = None
) -> tuple[Tensor, Losses, Losses]:
    """(stylized output, its losses, the baseline's losses) for one pair at alpha = 1.

    loss_net: the network whose VGG measures the losses when the pipeline's has another
    encoder (the lite model is measured through the full VGG, as every other method); None:
    the pipeline's own."""
    output = pipeline.stylize(content, [style])
    stylized, baseline = measure(
        loss_net or pipeline.net, content, style, torch.cat([output, content.float()])
    )
    return output, stylized, baseline


def read_manifest(folder: Path, size: int) -> dict[tuple[str, str], Path]:
    """Another method's outputs: `folder/manifest.json` maps each size (a string key) to a list
    of {"content", "style", "output"} file names, the output relative to `folder`."""
    manifest = json.loads((folder / "manifest.json").read_text())
    if str(size) not in manifest:
        raise FileNotFoundError(f"{folder / 'manifest.json'}: no outputs at size {size}")
    return {
        (entry["content"], entry["style"]): folder / entry["output"]
        for entry in manifest[str(size)]
    }


def ordered_pairs(contents: Sequence[Path], styles: Sequence[Path]) -> Iterator[tuple[Path, Path]]:
    """Every content x style pair once, walking the grid diagonally: pair k is content k mod C
    with style (k mod C + k div C) mod S, so the first N pairs already mix many of both."""
    for k in range(len(contents) * len(styles)):
        index = k % len(contents)
        yield contents[index], styles[(index + k // len(contents)) % len(styles)]


def summarise(results: Sequence[PairResult]) -> Summary:
    outputs = [result.output for result in results]
    baselines = [result.baseline for result in results]
    mean, baseline_mean = _reduce(outputs, _mean), _reduce(baselines, _mean)
    return Summary(
        pairs=len(results),
        mean=mean,
        baseline_mean=baseline_mean,
        mean_ln=_reduce(outputs, _mean_ln),
        baseline_mean_ln=_reduce(baselines, _mean_ln),
        style_ratio=mean.style / max(baseline_mean.style, LOSS_FLOOR),
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _mean_ln(values: list[float]) -> float:
    return _mean([ln_loss(value) for value in values])


def ln_loss(value: float) -> float:
    return math.log(max(value, LOSS_FLOOR))


def _reduce(group: list[Losses], reduce: Callable[[list[float]], float]) -> Losses:
    return Losses(
        content=reduce([losses.content for losses in group]),
        style=reduce([losses.style for losses in group]),
        content_vs_content=reduce([losses.content_vs_content for losses in group]),
    )


def comparison_table(summaries: dict[str, Summary]) -> str:
    """Methods side by side (Markdown): means of ln losses over the same pairs, and the content
    photo as output (the baseline) last."""
    lines = [
        "| method | pairs | ln content vs t | ln content vs content | ln style |",
        "| --- | --- | --- | --- | --- |",
    ]
    first = next(iter(summaries.values()))
    rows = [(name, summary.pairs, summary.mean_ln) for name, summary in summaries.items()]
    rows.append(("content photo (baseline)", first.pairs, first.baseline_mean_ln))
    for name, pairs, ln in rows:
        lines.append(
            f"| {name} | {pairs} | {ln.content:.3f} | {ln.content_vs_content:.3f} "
            f"| {ln.style:.3f} |"
        )
    return "\n".join(lines)


def sheet_row(content: Tensor, style: Tensor, output: Tensor, result: PairResult) -> Image.Image:
    """content | style | output, each fitted into a square cell, with the losses underneath."""
    row = Image.new("RGB", (3 * SHEET_CELL, SHEET_CELL + SHEET_CAPTION), "white")
    for column, image in enumerate((content, style, output)):
        cell = ImageOps.pad(images.to_pil(image), (SHEET_CELL, SHEET_CELL), color="white")
        row.paste(cell, (column * SHEET_CELL, 0))
    caption = (
        f"{result.content} x {result.style}: ln content {ln_loss(result.output.content):.2f}, "
        f"ln style {ln_loss(result.output.style):.2f}"
    )
    ImageDraw.Draw(row).text((4, SHEET_CELL + 2), caption, fill="black")
    return row


def contact_sheet(rows: Sequence[Image.Image]) -> Image.Image:
    width = max(row.width for row in rows)
    sheet = Image.new("RGB", (width, sum(row.height for row in rows)), "white")
    top = 0
    for row in rows:
        sheet.paste(row, (0, top))
        top += row.height
    return sheet


def results_json(
    results: Sequence[PairResult], summary: Summary, settings: dict[str, object]
) -> dict[str, object]:
    return {
        "settings": settings,
        "pairs": [asdict(result) for result in results],
        "summary": asdict(summary),
    }


# --- the whole evaluation -----------------------------------------------------------------------


class PeerOutputError(DomainError):
    """A peer's folder lacks an output for a pair, or has one of another size."""


@dataclass(frozen=True)
class EvaluationPlan:
    """What `run_evaluation` measures: the pairs in order, at one size, and the peers' outputs
    for them by peer name."""

    pairs: list[tuple[Path, Path]]
    size: int
    peers: dict[str, dict[tuple[str, str], Path]] = field(default_factory=dict)
    peer_folders: dict[str, Path] = field(default_factory=dict)
    sheet: bool = False

    @classmethod
    def from_folders(cls, content_dir: Path, style_dir: Path, *, size: int, pairs: int,
                     held_out: bool, peers: Sequence[Path] = (), sheet: bool = False
                     ) -> EvaluationPlan:
        """The first `pairs` (0: all) of `ordered_pairs` over the folders' images (those
        training holds out, or all); FileNotFoundError for a missing folder or manifest."""
        contents, styles = split(content_dir, held_out), split(style_dir, held_out)
        chosen = list(ordered_pairs(contents, styles))[: pairs or None]
        return cls(chosen, size, {folder.name: read_manifest(folder, size) for folder in peers},
                   {folder.name: folder for folder in peers}, sheet)


@dataclass
class EvaluationReport:
    results: list[PairResult]
    summary: Summary
    peer_results: dict[str, list[PairResult]]
    peer_summaries: dict[str, Summary]
    peer_folders: dict[str, Path]
    sheet: Image.Image | None

    def summary_line(self) -> str:
        summary = self.summary
        return (
            f"{summary.pairs} pairs. mean ln content loss {summary.mean_ln.content:.3f} "
            f"(baseline {summary.baseline_mean_ln.content:.3f}), mean ln style loss "
            f"{summary.mean_ln.style:.3f} (baseline {summary.baseline_mean_ln.style:.3f}); "
            f"means: content {summary.mean.content:.4f} (baseline "
            f"{summary.baseline_mean.content:.4f}), style {summary.mean.style:.4f} (baseline "
            f"{summary.baseline_mean.style:.4f}); style / baseline style "
            f"{summary.style_ratio:.3f}"
        )

    def comparison_table(self) -> str:
        return comparison_table({"this decoder": self.summary, **self.peer_summaries})

    def to_json(self, settings: dict[str, object]) -> dict[str, object]:
        report = results_json(self.results, self.summary, settings)
        report["peers"] = {
            name: results_json(self.peer_results[name], summary,
                               {"folder": str(self.peer_folders[name])})
            for name, summary in self.peer_summaries.items()
        }
        return report


def pair_line(result: PairResult) -> str:
    output, baseline = result.output, result.baseline
    return (
        f"{result.content} x {result.style}: content {output.content:.4f} (vs photo "
        f"{output.content_vs_content:.4f}) style {output.style:.4f} | baseline content "
        f"{baseline.content:.4f} style {baseline.style:.4f}"
    )


def run_evaluation(
    pipeline: Pipeline,
    plan: EvaluationPlan,
    on_pair: Callable[[str], None] = lambda _: None,
    loss_net: StyleTransfer | None = None,
) -> EvaluationReport:
    """Every pair of the plan stylized and measured, each peer's output measured beside it;
    `on_pair` hears one line per pair as it is done. loss_net: see `evaluate_pair`."""
    loss_net = loss_net or pipeline.net
    results: list[PairResult] = []
    peer_results: dict[str, list[PairResult]] = {name: [] for name in plan.peers}
    rows: list[Image.Image] = []
    for content_path, style_path in plan.pairs:
        content = images.load(content_path, plan.size).to(pipeline.device)
        style = images.load(style_path, plan.size).to(pipeline.device)
        output, stylized, baseline = evaluate_pair(pipeline, content, style, loss_net)
        result = PairResult(content_path.name, style_path.name, stylized, baseline)
        results.append(result)
        for name, outputs in plan.peers.items():
            peer_path = outputs.get((content_path.name, style_path.name))
            if peer_path is None:
                raise PeerOutputError(f"peer {name} has no output for {result.content} x "
                                      f"{result.style} at size {plan.size}")
            peer_output = images.load(peer_path).to(pipeline.device)
            if peer_output.shape != content.shape:
                raise PeerOutputError(f"{peer_path} is not the content's size")
            (peer_losses,) = measure(loss_net, content, style, peer_output)
            peer_results[name].append(
                PairResult(result.content, result.style, peer_losses, baseline)
            )
        on_pair(pair_line(result))
        if plan.sheet:
            rows.append(sheet_row(content, style, output, result))
    return EvaluationReport(
        results, summarise(results), peer_results,
        {name: summarise(found) for name, found in peer_results.items()},
        plan.peer_folders, contact_sheet(rows) if plan.sheet else None,
    )
