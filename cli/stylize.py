"""`adain stylize`: content images x style images -> stylized files (`models.pipeline`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.common import (
    DecoderOption,
    DeviceOption,
    EncoderOption,
    InputError,
    ModelOption,
    PrecisionOption,
    usage_error,
)
from models.config import (
    DEFAULT_TILE_SIZE,
    FEATURE_STRIDE,
    Device,
    ModelName,
    Precision,
    check_tile_size,
)

if TYPE_CHECKING:
    import torch

    from models.model import Masks


def register(app: typer.Typer) -> None:
    app.command()(stylize)


def expand(paths: list[Path]) -> list[Path]:
    """Each folder replaced by the images in it."""
    from models.data import list_images

    return [p for path in paths for p in (list_images(path) if path.is_dir() else [path])]


def read_image(
    path: Path, argument: str, size: int, crop: bool
) -> tuple[torch.Tensor, tuple[int, int]]:
    """The image as `models.images.load_with_size` reads it; an unreadable file is an input
    error naming the argument."""
    from PIL import UnidentifiedImageError

    from models import images

    try:
        return images.load_with_size(path, size, crop)
    except UnidentifiedImageError as exc:
        raise InputError(f"{argument} {path}: not a readable image (PNG, JPEG, WebP, ...)") from exc
    except OSError as exc:
        raise InputError(f"{argument} {path}: could not be read ({exc.strerror or exc})") from exc


def read_masks(
    paths: list[Path], n_styles: int, content_size: tuple[int, int], grid: tuple[int, int]
) -> Masks:
    """`--mask` files through `models.images.masks_from_images`, the service's rules."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from models import images

    uprights = []
    for path in paths:
        try:
            with Image.open(path) as image:
                uprights.append(ImageOps.exif_transpose(image))
        except UnidentifiedImageError as exc:
            raise InputError(f"--mask {path}: not a readable image (PNG, JPEG, WebP, ...)") from exc
    return images.masks_from_images(
        uprights, n_styles, content_size, grid, [f"--mask {path}" for path in paths]
    )


def check_output(output: Path, separate: bool) -> None:
    """An output file's extension must name a format; its folder is created."""
    from PIL import Image

    if separate:
        output.mkdir(parents=True, exist_ok=True)
        return
    if output.suffix.lower() not in Image.registered_extensions():
        raise usage_error(
            f"{str(output)!r} has no image extension: end it with .png, .jpg or .webp",
            "--output",
        )
    output.parent.mkdir(parents=True, exist_ok=True)


def stylize(
    content: Annotated[Path, typer.Argument(exists=True, help="Content image or folder of them.")],
    styles: Annotated[list[Path], typer.Argument(exists=True, help="Style images or folders.")],
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            help="Output file (its folder is created), or a folder when an input is a folder.",
        ),
    ],
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Content-style trade-off.")] = 1.0,
    mix_weights: Annotated[
        str | None,
        typer.Option("--weights", help="Interpolation weights, one per style, e.g. 1,2,1."),
    ] = None,
    mask: Annotated[
        list[Path] | None,
        typer.Option(
            help="One mask per style, or one binary mask "
            "for two styles (white = first); each of the content image's size."
        ),
    ] = None,
    preserve_color: Annotated[bool, typer.Option(help="Keep the content's colours.")] = False,
    content_size: Annotated[int, typer.Option(min=0, help="Shorter side; 0 keeps it.")] = 512,
    style_size: Annotated[int, typer.Option(min=0, help="Shorter side; 0 keeps it.")] = 512,
    crop: Annotated[bool, typer.Option(help="Centre-crop to a square of the size.")] = False,
    stabilize: Annotated[bool, typer.Option(help="Videos: temporal stabilisation.")] = True,
    encoder: EncoderOption = None,
    decoder: DecoderOption = None,
    device: DeviceOption = Device.auto,
    precision: PrecisionOption = Precision.auto,
    model: ModelOption = ModelName.full,
    tile_size: Annotated[
        int,
        typer.Option(
            min=0,
            help="Images with more pixels than its square "
            f"are stylized in tiles of this side (a multiple of {FEATURE_STRIDE}; "
            "0: never): memory stays bounded, the output is the untiled one.",
        ),
    ] = DEFAULT_TILE_SIZE,
) -> None:
    """Stylize CONTENT (an image, a folder of them, or a video: MP4 out) with one or more STYLES.

    Several style files mix into one output (interpolation with --weights, or regions with
    --mask); a folder among the inputs stylizes every content with every style separately, into
    the folder OUTPUT.
    """
    import itertools

    import torch
    from tqdm import tqdm

    from models import images
    from models.config import PipelineConfig
    from models.errors import DomainError
    from models.model import parse_mix_weights
    from models.pipeline import build_pipeline

    try:
        check_tile_size(tile_size)
    except ValueError as exc:
        raise usage_error(str(exc), "--tile-size") from None
    weights = parse_mix_weights([mix_weights] if mix_weights else [])
    from service.jobs.run import ModelBackend
    from service.jobs.submit import VIDEO_SUFFIXES, stylize_video_file

    config = PipelineConfig(
        device, precision, tile_size=tile_size, encoder_path=encoder, decoder_path=decoder,
        model=model,
    )
    if content.suffix.lower() in VIDEO_SUFFIXES:  # a video, MP4 out: the video job's function
        pipeline = build_pipeline(config)
        with tqdm(total=0, unit="frame", desc="stylize", leave=True) as bar:

            def progress(done: int, total: int) -> None:
                bar.total = max(total, done)
                bar.update(done - bar.n)

            try:
                record = stylize_video_file(
                    ModelBackend({model.value: pipeline}), content, styles, output,
                    weights=weights, masks=mask or [],
                    alpha=alpha, preserve_color=preserve_color, content_size=content_size,
                    style_size=style_size, crop=crop, stabilize=stabilize, on_progress=progress,
                )
            except DomainError as exc:
                raise InputError(exc.detail) from exc
        frames = record.frames_done
        typer.echo(f"wrote {frames} frames to {output}")
        return
    contents, style_files = expand([content]), expand(styles)
    separate = content.is_dir() or any(s.is_dir() for s in styles)
    check_output(output, separate)
    pipeline = build_pipeline(config)
    groups = [[s] for s in style_files] if separate else [style_files]
    jobs = list(itertools.product(contents, groups))
    style_cache: dict[Path, torch.Tensor] = {}
    with torch.inference_mode():
        for content_path, group in tqdm(jobs, disable=len(jobs) == 1, desc="stylize"):
            content_image, upright_size = read_image(content_path, "CONTENT", content_size, crop)
            content_image = content_image.to(pipeline.device)
            for path in group:
                if path not in style_cache:
                    style_cache[path] = read_image(path, "STYLES", style_size, crop)[0].to(
                        pipeline.device
                    )
            masks = None
            if mask:
                grid = (content_image.shape[-2], content_image.shape[-1])
                masks = read_masks(mask, len(group), upright_size, grid).to(pipeline.device)
            result = pipeline.stylize(
                content_image,
                [style_cache[path] for path in group],
                alpha,
                weights,
                masks,
                preserve_color,
            )
            name = f"{content_path.stem}_stylized_{group[0].stem}.png"
            images.to_pil(result).save(output / name if separate else output)
    typer.echo(f"wrote {len(jobs)} image(s) to {output}")
