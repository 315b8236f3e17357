"""A fake camera for Chromium (`--use-file-for-fake-video-capture`): a Y4M clip showing one
picture in every frame. Used by the live page's tests and the page's screenshots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_y4m(path: Path, picture: Image.Image, frames: int) -> None:
    """A Y4M clip (4:2:0, full-range BT.601 as JPEG) showing `picture` in every frame."""
    width, height = picture.size
    ycbcr = np.asarray(picture.convert("YCbCr"))
    y = ycbcr[..., 0]
    chroma = [
        np.asarray(
            Image.fromarray(ycbcr[..., c]).resize((width // 2, height // 2), Image.Resampling.BOX)
        )
        for c in (1, 2)
    ]
    with path.open("wb") as clip:
        clip.write(f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            clip.write(b"FRAME\n" + y.tobytes() + chroma[0].tobytes() + chroma[1].tobytes())
