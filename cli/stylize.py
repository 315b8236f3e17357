"""`adain stylize`: content images x style images -> stylized files (`models.pipeline`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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
    without_field_prefix,
)
from media.defaults import DEFAULT_SIZE, DEFAULT_STABILITY, MAX_STYLES, OWN_SIZE_LIMIT
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

    from media.controls import StyleControls
    from models.config import PipelineConfig
    from models.model import Masks


# What the command's inputs may be, as its errors say.
READABLE_IMAGE = "not a readable image (PNG, JPEG, WebP, ...)"
READABLE_CONTENT = "not a readable image or video (PNG, JPEG, WebP, ...; MP4, WebM, MOV, GIF, ...)"


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
        what = READABLE_CONTENT if argument == "CONTENT" else READABLE_IMAGE
        raise InputError(f"{argument} {path}: {what}") from exc
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
            raise InputError(f"--mask {path}: {READABLE_IMAGE}") from exc
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


def check_video_output(output: Path) -> None:
    """A video comes out as an MP4: the output's name must say so."""
    from media.clip import VIDEO_OUTPUT_SUFFIXES

    if output.suffix.lower() not in VIDEO_OUTPUT_SUFFIXES:
        raise usage_error(
            f"{str(output)!r} is no video file name: a video comes out as MP4, end it with .mp4",
            "--output",
        )


@contextmanager
def naming_content(content: Path) -> Iterator[None]:
    """An error of the video (`media.video`'s field "video") as the CONTENT argument's."""
    from models.errors import DomainError

    try:
        yield
    except DomainError as exc:
        if exc.field != "video":
            raise
        detail = without_field_prefix(exc.detail, "video")
        raise InputError(f"CONTENT {content}: {detail}") from exc


def stylize_video(
    content: Path,
    styles: list[Path],
    output: Path,
    config: PipelineConfig,
    masks: list[Path],
    controls: StyleControls,
    *,
    own_size: bool,
    stabilize: bool,
    stability: float,
) -> int:
    """The video through `media.clip`: every input checked, then the network loaded and a
    progress bar shown; an error of the video names the CONTENT argument. `own_size`: the
    video keeps its size (no --content-size)."""
    from tqdm import tqdm

    from media.clip import ModelBackend, open_clip, stylize_clip
    from models.pipeline import build_pipeline

    with naming_content(content):
        clip = open_clip(
            content,
            styles,
            masks,
            controls,
            own_size_unless_asked=own_size,
            stabilize=stabilize,
            stability=stability,
        )
    backend = ModelBackend({config.model.value: build_pipeline(config)})
    output.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=clip.frames, unit="frame", desc="stylize") as bar:

        def progress(done: int, total: int) -> None:
            bar.total = max(total, done)
            bar.update(done - bar.n)

        with naming_content(content):  # a frame past the probe may not decode
            return stylize_clip(clip, backend, output, on_progress=progress)


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
    alpha: Annotated[float, typer.Option(help="Content-style trade-off, 0 to 1.")] = 1.0,
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
    content_size: Annotated[
        int | None,
        typer.Option(
            help=f"Shorter side; 0 keeps it. Default: {DEFAULT_SIZE} for images; a video "
            f"keeps its size, its shorter side at most {OWN_SIZE_LIMIT}.",
        ),
    ] = None,
    style_size: Annotated[int, typer.Option(help="Shorter side; 0 keeps it.")] = DEFAULT_SIZE,
    crop: Annotated[bool, typer.Option(help="Centre-crop to a square of the size.")] = False,
    stabilize: Annotated[bool, typer.Option(help="Videos: temporal stabilisation.")] = True,
    stability: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Videos, stabilised: 0 each frame on its own (most detail, flickers) to 1 "
            "the most stable (softer where the scene moves).",
        ),
    ] = DEFAULT_STABILITY,
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
    import media  # noqa: F401 (before torch: OMP_WAIT_POLICY)

    try:
        check_tile_size(tile_size)
    except ValueError as exc:
        raise usage_error(str(exc), "--tile-size") from None
    import itertools

    import torch
    from tqdm import tqdm

    from media.clip import is_video_file
    from media.controls import check_controls
    from models import images
    from models.config import PipelineConfig
    from models.model import parse_mix_weights
    from models.pipeline import build_pipeline

    weights = parse_mix_weights([mix_weights] if mix_weights else [])
    video = is_video_file(content)

    def controls_for(n_styles: int) -> StyleControls:
        return check_controls(
            styles=n_styles,
            masks=len(mask or []),
            weights=weights,
            alpha=alpha,
            preserve_color=preserve_color,
            content_size=(0 if video else DEFAULT_SIZE) if content_size is None else content_size,
            style_size=style_size,
            crop=crop,
            max_styles=MAX_STYLES if video else None,
        )

    config = PipelineConfig(
        device,
        precision,
        tile_size=tile_size,
        encoder_path=encoder,
        decoder_path=decoder,
        model=model,
    )
    if video:
        check_video_output(output)
        controls = controls_for(len(styles))
        own_size = content_size is None
        frames = stylize_video(
            content,
            styles,
            output,
            config,
            mask or [],
            controls,
            own_size=own_size,
            stabilize=stabilize,
            stability=stability,
        )
        typer.echo(f"wrote {frames} frames to {output}")
        return
    contents, style_files = expand([content]), expand(styles)
    separate = content.is_dir() or any(s.is_dir() for s in styles)
    check_output(output, separate)
    groups = [[s] for s in style_files] if separate else [style_files]
    controls = controls_for(len(groups[0])) if groups else None
    pipeline = build_pipeline(config)
    jobs = list(itertools.product(contents, groups))
    style_cache: dict[Path, torch.Tensor] = {}
    with torch.inference_mode():
        for content_path, group in tqdm(jobs, disable=len(jobs) == 1, desc="stylize"):
            assert controls is not None  # there are jobs: there are groups
            content_image, upright_size = read_image(
                content_path, "CONTENT", controls.content_size, controls.crop
            )
            content_image = content_image.to(pipeline.device)
            for path in group:
                if path not in style_cache:
                    style_cache[path] = read_image(
                        path, "STYLES", controls.style_size, controls.crop
                    )[0].to(pipeline.device)
            masks = None
            if mask:
                grid = (content_image.shape[-2], content_image.shape[-1])
                masks = read_masks(mask, len(group), upright_size, grid).to(pipeline.device)
            result = pipeline.stylize(
                content_image,
                [style_cache[path] for path in group],
                controls.alpha,
                controls.weights,
                masks,
                controls.preserve_color,
            )
            name = f"{content_path.stem}_stylized_{group[0].stem}.png"
            images.to_pil(result).save(output / name if separate else output)
    typer.echo(f"wrote {len(jobs)} image(s) to {output}")
