"""`adain` commands that need only the model library: stylize, train, convert."""

from __future__ import annotations

import itertools
from enum import Enum
from pathlib import Path
from typing import Annotated

import torch
import typer
from PIL import Image
from tqdm import tqdm

from models import images
from models.data import list_images
from models.model import masks_from_binary
from models.train import TrainConfig, pick_device, train
from models.weights import WeightsError, convert_t7, load_model, save_state

app = typer.Typer(help="AdaIN arbitrary style transfer.", no_args_is_help=True, add_completion=False)


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def parse_weights(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint="--weights")


def expand(paths: list[Path]) -> list[Path]:
    return [p for path in paths for p in (list_images(path) if path.is_dir() else [path])]


@app.command()
def stylize(
    content: Annotated[Path, typer.Argument(exists=True, help="Content image or folder of them.")],
    styles: Annotated[list[Path], typer.Argument(exists=True, help="Style images or folders.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output file (or folder).")],
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Content-style trade-off.")] = 1.0,
    weights: Annotated[str | None, typer.Option(help="Interpolation weights, e.g. 1,2,1.")] = None,
    mask: Annotated[list[Path] | None, typer.Option(help="One mask per style, or one binary mask "
                    "for two styles (white = first).")] = None,
    preserve_color: Annotated[bool, typer.Option(help="Keep the content's colours.")] = False,
    content_size: Annotated[int, typer.Option(min=0, help="Shorter side; 0 keeps it.")] = 512,
    style_size: Annotated[int, typer.Option(min=0, help="Shorter side; 0 keeps it.")] = 512,
    crop: Annotated[bool, typer.Option(help="Centre-crop to a square of the size.")] = False,
    encoder: Annotated[Path | None, typer.Option(help="vgg_normalised.pth (default: embedded).")] = None,
    decoder: Annotated[Path | None, typer.Option(help="decoder.pth (default: embedded).")] = None,
    device: Annotated[Device, typer.Option(help="Where to run.")] = Device.auto,
    half: Annotated[bool, typer.Option(help="fp16 on CUDA (statistics stay fp32).")] = False,
) -> None:
    """Stylize CONTENT with STYLE... . Several style files mix into one output (interpolation with
    --weights, or regions with --mask); a folder among the inputs stylizes every content with
    every style separately, into the folder OUTPUT."""
    try:
        net = load_model(encoder, decoder, pick_device(device.value), half)
    except WeightsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
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
            style_images = [
                style_cache.setdefault(p, images.load(p, style_size, crop).to(device_)) for p in group
            ]
            masks = load_masks(mask, content_image.shape[-2:], len(group))
            try:
                result = net.stylize(
                    content_image, style_images, alpha, parse_weights(weights),
                    masks.to(device_) if masks is not None else None, preserve_color,
                )
            except ValueError as exc:
                raise typer.BadParameter(str(exc))
            target = output / f"{content_path.stem}_stylized_{group[0].stem}.png" if separate else output
            images.to_pil(result).save(target)
    typer.echo(f"wrote {len(jobs)} image(s) to {output}")


def load_masks(paths: list[Path] | None, size: tuple[int, int], n_styles: int) -> torch.Tensor | None:
    if not paths:
        return None
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


@app.command("train")
def train_command(
    content_dir: Annotated[Path, typer.Option(exists=True, file_okay=False)],
    style_dir: Annotated[Path, typer.Option(exists=True, file_okay=False)],
    out_dir: Path = Path("runs/decoder"),
    encoder: Annotated[Path | None, typer.Option(help="Default: embedded VGG-19.")] = None,
    steps: int = 160_000,
    batch_size: int = 8,
    lr: float = 1e-4,
    lr_decay: float = 5e-5,
    style_weight: float = 10.0,
    resize: Annotated[int, typer.Option(help="Shorter side before cropping.")] = 512,
    crop: int = 256,
    max_minutes: Annotated[float, typer.Option(help="Wall-clock budget; 0 = none.")] = 0.0,
    checkpoint_every: int = 100,
    sample_every: int = 500,
    workers: int = 2,
    seed: int = 0,
    device: Device = Device.auto,
) -> None:
    """Train the decoder (resumes from OUT_DIR/checkpoint.pt when present)."""
    config = TrainConfig(
        content_dir=content_dir, style_dir=style_dir, out_dir=out_dir, encoder=encoder,
        steps=steps, batch_size=batch_size, lr=lr, lr_decay=lr_decay, style_weight=style_weight,
        resize=resize, crop=crop, max_minutes=max_minutes, checkpoint_every=checkpoint_every,
        sample_every=sample_every, workers=workers, seed=seed, device=device.value,
    )
    step = train(config)
    typer.echo(f"stopped at step {step}; decoder in {out_dir / 'decoder.safetensors'}")


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(exists=True, help="vgg_normalised.t7 or decoder.t7")],
    output: Annotated[Path, typer.Argument(help=".pth or .safetensors")],
) -> None:
    """Convert a Torch7 original of the reference weights to a state dict."""
    try:
        save_state(convert_t7(source), output)
    except WeightsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    typer.echo(f"wrote {output}")
