"""Clips with exactly known motion, made from still photos, for measuring temporal stability.

Each frame is rendered from a photo held at `SUPERSAMPLE` times the frame's resolution: every
output pixel averages SUPERSAMPLE x SUPERSAMPLE bilinear samples of it (antialiased, so a
sub-pixel pan is a true sub-pixel pan and not a jump every few frames). The motion is a map from
frame pixels to "world" points (the photo's plane), so the true flow between two frames is known
in closed form, as are the pixels that cannot be matched (they leave the frame or are uncovered
by a moving layer).

Conventions, shared with `models.video_metrics` and `models.video`: pixel centres at integer
coordinates (x right, y down); `flows[t]` (2, H, W) is the backward flow of frame t + 1: its
pixel p shows what frame t shows at p + flows[t](p) (channel 0 = x, 1 = y); `valid[t]` (1, H, W)
marks the pixels of frame t + 1 that have such a visible match in frame t.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from devkit import DATASETS
from media.video import SegmentWriter
from models.images import prepare, to_uint8

SUPERSAMPLE = 4

# A motion: frame index t and frame pixel coordinates (x, y) -> world coordinates (x, y).
Motion = Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Clip:
    name: str
    frames: Tensor  # (T, 3, H, W) in [0, 1]
    flows: Tensor  # (T - 1, 2, H, W): backward flow of frame t + 1 into frame t, pixels
    valid: Tensor  # (T - 1, 1, H, W) bool: pixels of frame t + 1 visible in frame t


def content_photos() -> list[Path]:
    return sorted((DATASETS / "content" / "train").glob("*.jpg"))


def style_images() -> list[Path]:
    return sorted((DATASETS / "style" / "train").glob("*.jpg"))


def load_photo(path: Path, short_side: int) -> Tensor:
    """(3, H, W) in [0, 1], the shorter side resized to `short_side`."""
    with Image.open(path) as image:
        return prepare(image, short_side)[0]


def _pixel_grid(height: int, width: int) -> tuple[Tensor, Tensor]:
    """Coordinates of the SUPERSAMPLE^2 sub-samples of every pixel, (H*S, W*S) each."""
    offsets = (torch.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE - 0.5
    ys = (torch.arange(height)[:, None] + offsets[None]).reshape(-1)
    xs = (torch.arange(width)[:, None] + offsets[None]).reshape(-1)
    return torch.meshgrid(xs, ys, indexing="xy")


def _sample(image: Tensor, world_x: Tensor, world_y: Tensor, scale: float) -> Tensor:
    """Bilinear samples of `image` (C, H', W') at world points, the image being `scale` times the
    world's resolution (world point (x, y) = image pixel (scale * (x + 0.5) - 0.5, ...))."""
    height, width = image.shape[-2:]
    px, py = scale * (world_x + 0.5) - 0.5, scale * (world_y + 0.5) - 0.5
    grid = torch.stack([2 * px / (width - 1) - 1, 2 * py / (height - 1) - 1], dim=-1)
    return F.grid_sample(
        image[None], grid[None], mode="bilinear", padding_mode="border", align_corners=True
    )[0]


def _box_down(image: Tensor) -> Tensor:
    return F.avg_pool2d(image[None], SUPERSAMPLE)[0]


def render(
    photo: Tensor,
    motion: Motion,
    frames: int,
    size: tuple[int, int],
    layer: tuple[Tensor, Motion, float] | None = None,
    name: str = "clip",
) -> Clip:
    """A clip of `frames` frames of size (H, W) showing `photo` under `motion`, optionally with a
    moving disc cut from another photo over it: layer = (photo, its motion, radius in px); the
    layer's motion maps frame pixels to the layer photo's own world coordinates, its disc is
    centred on that world's origin."""
    height, width = size
    source, scale = _prepared_source(photo, height, width)
    sub_x, sub_y = _pixel_grid(height, width)
    pix_y, pix_x = torch.meshgrid(
        torch.arange(height, dtype=torch.float32),
        torch.arange(width, dtype=torch.float32),
        indexing="ij",
    )
    if layer is not None:
        layer_source, _ = _prepared_source(layer[0], height, width)
        middle_x = (layer_source.shape[-1] / SUPERSAMPLE - 1) / 2
        middle_y = (layer_source.shape[-2] / SUPERSAMPLE - 1) / 2
    rendered, coverage = [], []
    for t in range(frames):
        wx, wy = motion(t, sub_x, sub_y)
        image = _sample(source, wx, wy, scale)
        if layer is not None:
            _, layer_motion, radius = layer
            lx, ly = layer_motion(t, sub_x, sub_y)
            inside = ((lx**2 + ly**2) <= radius**2).float()[None]
            picture = _sample(layer_source, lx + middle_x, ly + middle_y, SUPERSAMPLE)
            image = inside * picture + (1 - inside) * image
            coverage.append(_box_down(inside))
        rendered.append(_box_down(image).clamp(0, 1))
    flows, valid = [], []
    for t in range(frames - 1):
        flow, ok = _flow(motion, t, pix_x, pix_y, height, width)
        if layer is not None:
            layer_flow, layer_ok = _flow(layer[1], t, pix_x, pix_y, height, width)
            # Only pixels wholly in one layer in both frames have a single true motion.
            now_fg, now_bg = coverage[t + 1][0] >= 1 - 1e-6, coverage[t + 1][0] <= 1e-6
            fg_src = _warp_mask(coverage[t], pix_x + layer_flow[0], pix_y + layer_flow[1])
            bg_src = _warp_mask(coverage[t], pix_x + flow[0], pix_y + flow[1])
            flow = torch.where(now_fg[None], layer_flow, flow)
            ok = (now_fg & layer_ok & (fg_src >= 1 - 1e-3)) | (now_bg & ok & (bg_src <= 1e-3))
        flows.append(flow)
        valid.append(ok[None])
    return Clip(name, torch.stack(rendered), torch.stack(flows), torch.stack(valid))


def _prepared_source(photo: Tensor, height: int, width: int) -> tuple[Tensor, float]:
    """The photo resampled so that one world pixel (the photo's pixel at frame scale: the photo
    resized to cover the frame with its shorter side 1.5x the frame's longer side) spans
    SUPERSAMPLE source pixels; returns it and the scale source px / world px."""
    world_short = 1.5 * max(height, width)
    factor = SUPERSAMPLE * world_short / min(photo.shape[-2:])
    big = F.interpolate(
        photo[None], scale_factor=factor, mode="bicubic", align_corners=False, antialias=factor < 1
    )[0].clamp(0, 1)
    return big, SUPERSAMPLE


def _flow(
    motion: Motion, t: int, pix_x: Tensor, pix_y: Tensor, height: int, width: int
) -> tuple[Tensor, Tensor]:
    """Backward flow of frame t + 1 into frame t under `motion` (a `Deforming` one, or an
    invertible affine map per frame, inverted numerically from three points), and whether the
    match lies inside frame t."""
    wx, wy = motion(t + 1, pix_x, pix_y)
    inverse = partial(motion.inverse, t) if isinstance(motion, Deforming) else None
    inverse = inverse or _affine_inverse(motion, t)
    px, py = inverse(wx, wy)
    inside = (px >= 0) & (px <= width - 1) & (py >= 0) & (py <= height - 1)
    return torch.stack([px - pix_x, py - pix_y]), inside


def _affine_inverse(motion: Motion, t: int) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    base = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    other = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    wx, wy = motion(t, base, other)
    origin = torch.stack([wx[0], wy[0]])
    matrix = torch.stack(
        [torch.stack([wx[1], wy[1]]) - origin, torch.stack([wx[2], wy[2]]) - origin], dim=1
    )  # columns: d/dx, d/dy
    inv = torch.linalg.inv(matrix)

    def apply(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        dx, dy = x.double() - origin[0], y.double() - origin[1]
        return (
            (inv[0, 0] * dx + inv[0, 1] * dy).float(),
            (inv[1, 0] * dx + inv[1, 1] * dy).float(),
        )

    return apply


def _warp_mask(mask: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Max of a (1, H, W) coverage over the 2x2 neighbours of (x, y): any layer nearby counts."""
    height, width = mask.shape[-2:]
    pooled = F.max_pool2d(mask[None], 3, stride=1, padding=1)[0]
    grid = torch.stack([2 * x / (width - 1) - 1, 2 * y / (height - 1) - 1], dim=-1)
    return F.grid_sample(
        pooled[None], grid[None], mode="nearest", padding_mode="border", align_corners=True
    )[0, 0]


# --- the motions ---------------------------------------------------------------------------


def pan(velocity: tuple[float, float], start: tuple[float, float] = (0.0, 0.0)) -> Motion:
    """The camera moves `velocity` px per frame (the scene moves the opposite way)."""

    def motion(t: int, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return x + start[0] + velocity[0] * t, y + start[1] + velocity[1] * t

    return motion


def zoom(
    rate: float,
    centre: tuple[float, float],
    start: tuple[float, float] = (0.0, 0.0),
    velocity: tuple[float, float] = (0.0, 0.0),
) -> Motion:
    """Zoom in by `rate` per frame about the frame point `centre`, with an optional pan."""

    def motion(t: int, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        scale = rate**-t
        return (
            centre[0] + (x - centre[0]) * scale + start[0] + velocity[0] * t,
            centre[1] + (y - centre[1]) * scale + start[1] + velocity[1] * t,
        )

    return motion


def rotate(
    angle: float, centre: tuple[float, float], start: tuple[float, float] = (0.0, 0.0)
) -> Motion:
    """The camera turns by `angle` radians per frame about the frame point `centre`."""

    def motion(t: int, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        cos, sin = math.cos(angle * t), math.sin(angle * t)
        dx, dy = x - centre[0], y - centre[1]
        return (
            centre[0] + cos * dx - sin * dy + start[0],
            centre[1] + sin * dx + cos * dy + start[1],
        )

    return motion


def shake(
    amplitude: float,
    angle: float,
    centre: tuple[float, float],
    start: tuple[float, float] = (0.0, 0.0),
    seed: int = 0,
    frames: int = 256,
) -> Motion:
    """A hand-held camera: it shifts and turns about the frame point `centre` by a random tremor
    that changes direction every frame or two (an AR(1) process, coefficient 0.5), `amplitude`
    px and `angle` radians its standard deviations; motion defined for t < `frames`."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(frames, 3, generator=generator, dtype=torch.float64)
    tremor = torch.zeros_like(noise)
    for t in range(frames):  # stationary: unit variance at every frame
        tremor[t] = noise[t] if t == 0 else 0.5 * tremor[t - 1] + math.sqrt(0.75) * noise[t]
    scales = torch.tensor([amplitude, amplitude, angle], dtype=torch.float64)
    offsets = (tremor * scales).tolist()

    def motion(t: int, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        shift_x, shift_y, turn = offsets[t]
        cos, sin = math.cos(turn), math.sin(turn)
        dx, dy = x - centre[0], y - centre[1]
        return (
            centre[0] + cos * dx - sin * dy + start[0] + shift_x,
            centre[1] + sin * dx + cos * dy + start[1] + shift_y,
        )

    return motion


def moving_disc(start: tuple[float, float], velocity: tuple[float, float]) -> Motion:
    """A layer whose centre is at frame point start + velocity * t (world origin = its centre)."""

    def motion(t: int, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return x - start[0] - velocity[0] * t, y - start[1] - velocity[1] * t

    return motion


class Deforming:
    """Non-rigid motion: a slow pan plus a smooth random displacement field that changes over
    time (water, foliage, cloth), frame pixel p -> world point p + start + velocity * t + D_t(p).
    D_t is a sum of `modes` plane waves per axis, wavelengths 0.3 to 0.8 of `size`, each
    drifting in phase by up to `rate` radians per frame, scaled so that |D_t| <= `amplitude`
    px: frame to frame the scene moves up to about amplitude * rate px besides the pan. The
    steepest wave keeps the map invertible (|grad D| < 1), so the true flow is found by
    fixed-point iteration and a pixel is occluded only when it leaves the frame. `region` (x, y,
    sigma), frame px: D_t only there, faded out by a Gaussian window (a waving arm, a face, a
    flag in front of a still scene)."""

    def __init__(
        self,
        size: int,
        amplitude: float,
        rate: float,
        velocity: tuple[float, float] = (0.0, 0.0),
        start: tuple[float, float] = (0.0, 0.0),
        seed: int = 0,
        modes: int = 4,
        region: tuple[float, float, float] | None = None,
    ) -> None:
        generator = torch.Generator().manual_seed(seed)

        def uniform(low: float, high: float) -> Tensor:
            return low + (high - low) * torch.rand(2, modes, generator=generator)

        angle = uniform(0, 2 * math.pi)
        wavenumber = 2 * math.pi / (size * uniform(0.3, 0.8))
        self.kx, self.ky = wavenumber * torch.cos(angle), wavenumber * torch.sin(angle)
        self.speed = rate * uniform(0.5, 1.0) * torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
        self.phase = uniform(0, 2 * math.pi)
        weights = uniform(0.5, 1.0)
        self.weights = amplitude * weights / weights.sum(dim=1, keepdim=True)  # |D| <= amplitude
        self.velocity, self.start, self.region = velocity, start, region

    def displacement(self, t: int, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """D_t at frame points (x, y): (dx, dy), each shaped like x."""
        shift = []
        for axis in range(2):
            total = torch.zeros_like(x, dtype=torch.float32)
            for mode in range(self.weights.shape[1]):
                argument = (
                    self.kx[axis, mode] * x
                    + self.ky[axis, mode] * y
                    + self.speed[axis, mode] * t
                    + self.phase[axis, mode]
                )
                total = total + self.weights[axis, mode] * torch.sin(argument)
            shift.append(total)
        if self.region is not None:
            centre_x, centre_y, sigma = self.region
            window = torch.exp(-((x - centre_x) ** 2 + (y - centre_y) ** 2) / (2 * sigma**2))
            return shift[0] * window, shift[1] * window
        return shift[0], shift[1]

    def __call__(self, t: int, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        dx, dy = self.displacement(t, x, y)
        return (
            x + self.start[0] + self.velocity[0] * t + dx,
            y + self.start[1] + self.velocity[1] * t + dy,
        )

    def inverse(self, t: int, world_x: Tensor, world_y: Tensor) -> tuple[Tensor, Tensor]:
        """The frame points of frame t that show the world points (x, y)."""
        base_x = world_x - self.start[0] - self.velocity[0] * t
        base_y = world_y - self.start[1] - self.velocity[1] * t
        x, y = base_x, base_y
        for _ in range(40):  # a contraction by |grad D| < 0.5: far below 1e-6 px
            dx, dy = self.displacement(t, x, y)
            x, y = base_x - dx, base_y - dy
        return x, y


def pan_and_back(velocity: tuple[float, float], turn: int, start: tuple[float, float]) -> Motion:
    """The camera pans `velocity` px per frame until frame `turn`, then back: frame 2 * turn
    shows exactly what frame 0 did."""

    def motion(t: int, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        steps = min(t, 2 * turn - t)
        return x + start[0] + velocity[0] * steps, y + start[1] + velocity[1] * steps

    return motion


# --- the standard set ------------------------------------------------------------------------


def standard_clips(
    size: int = 256,
    frames: int = 24,
    photos: list[Path] | None = None,
    names: Sequence[str] = (),
) -> list[Clip]:
    """Sub-pixel pans (slow, diagonal, the issue's 3 px), a zoom in, a zoom out, a rotation, a
    hand-held camera's tremor (`shake`), a disc moving over a slowly panning photo, one over a
    still photo (occlusions) and a large one over a pan (a quarter of the frame: the camera's
    fit must not take it for a zoom), non-rigid motion (`Deforming`: 2 and 3 px over slow pans,
    under a moving disc, and 8 px in one region in front of a still camera), and a pan that
    returns to its first frame, at size x size px, from
    the dataset's content photos; `names`: only those (in that order)."""
    paths = photos or content_photos()
    first, second, third, fourth = (
        load_photo(paths[i % len(paths)], 2 * size) for i in (3, 17, 42, 64)
    )
    offset = (0.1 * size, 0.1 * size)
    centre = ((size - 1) / 2, (size - 1) / 2)
    shape = (size, size)
    makers: dict[str, Callable[[str], Clip]] = {
        "pan_0.75px": lambda n: render(first, pan((0.75, 0.25), offset), frames, shape, name=n),
        "pan_2.5px_diagonal": lambda n: render(
            second, pan((2.5, 1.25), offset), frames, shape, name=n
        ),
        "pan_3px": lambda n: render(third, pan((3.0, 0.0), offset), frames, shape, name=n),
        "zoom_1.2%": lambda n: render(
            first, zoom(1.012, centre, (0.2 * size, 0.2 * size)), frames, shape, name=n
        ),
        "zoom_out_1%": lambda n: render(
            third, zoom(1 / 1.01, centre, (0.2 * size, 0.2 * size)), frames, shape, name=n
        ),
        "rotate_0.5deg": lambda n: render(
            second,
            rotate(math.radians(0.5), centre, (0.25 * size, 0.25 * size)),
            frames,
            shape,
            name=n,
        ),
        "shake": lambda n: render(  # a hand-held camera's tremor
            fourth,
            shake(2.0, math.radians(0.3), centre, (0.2 * size, 0.2 * size), seed=4),
            frames,
            shape,
            name=n,
        ),
        "disc_over_pan": lambda n: render(
            second,
            pan((0.5, 0.0), offset),
            frames,
            shape,
            name=n,
            layer=(third, moving_disc((0.3 * size, 0.4 * size), (2.25, 1.0)), 0.2 * size),
        ),
        "disc_over_still": lambda n: render(
            first,
            pan((0.0, 0.0), offset),
            frames,
            shape,
            name=n,
            layer=(second, moving_disc((0.25 * size, 0.3 * size), (3.0, 1.5)), 0.2 * size),
        ),
        "big_disc_over_pan": lambda n: render(  # an object covering a quarter of the frame
            third,
            pan((-1.2, 0.6), offset),
            frames,
            shape,
            name=n,
            layer=(first, moving_disc((0.5 * size, 0.5 * size), (-3.5, 2.0)), 0.3 * size),
        ),
        "deform_2px": lambda n: render(
            fourth, Deforming(size, 2.5, 0.8, (0.5, 0.25), offset, seed=1), frames, shape, name=n
        ),
        "deform_3px": lambda n: render(
            third, Deforming(size, 3.5, 0.85, (1.0, 0.0), offset, seed=2), frames, shape, name=n
        ),
        "deform_under_disc": lambda n: render(
            first,
            Deforming(size, 2.5, 0.8, (0.25, 0.5), offset, seed=3),
            frames,
            shape,
            name=n,
            layer=(fourth, moving_disc((0.3 * size, 0.3 * size), (2.0, 1.5)), 0.2 * size),
        ),
        "deform_local": lambda n: render(  # a waving arm in front of a still camera
            second,
            Deforming(
                size, 8.0, 0.8, start=offset, seed=5, region=(0.55 * size, 0.5 * size, 0.1 * size)
            ),
            frames,
            shape,
            name=n,
        ),
        "pan_returns": lambda n: render(  # an odd count: the last frame is the first
            second,
            pan_and_back((1.5, 0.75), (frames - 1) // 2, offset),
            (frames - 1) // 2 * 2 + 1,
            shape,
            name=n,
        ),
    }
    return [makers[name](name) for name in (names or makers)]


def write_video(frames: Tensor, path: Path, rate: int = 25, crf: int = 12) -> None:
    """Frames (T, 3, H, W) in [0, 1] as an H.264 MP4 of `rate` frames/s (4:2:0, nearly
    lossless at the default `crf`), for the clip runner (`media.clip`), which reads files."""
    size = (frames.shape[-2], frames.shape[-1])
    writer = SegmentWriter(path, size, Fraction(1, rate), Fraction(rate), crf, "veryfast")
    for index, frame in enumerate(frames):
        writer.write(to_uint8(frame[None]).numpy(), index)
    writer.close()
