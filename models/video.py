"""Temporal stabilisation of stylized video: causal, so video jobs and the live feed share it.

Per-frame AdaIN flickers although the statistics barely change between frames: the encoder's
pools and the decoder's upsamplings have a stride of 8, so when the scene moves by a fraction
of 8 px the network sees it on another phase of its grid and draws the strokes elsewhere. Two
measures, both using only the frames seen so far:

1. Grid alignment. The camera's motion since a reference frame is tracked (a similarity fitted
   to the optical flow), and each frame is placed on the network's input so that the scene
   falls on the same points of the stride-8 grid as in the reference, then the output is taken
   back. While the motion is a whole-pixel translation this is an integer shift (reflect
   padding, then a crop): no resampling. Under a sub-pixel translation, a zoom or a rotation
   the frame is resampled (bicubic, through OpenCV) into the reference's grid and the output
   back, so the scene lies on the reference's grid to a fraction of a pixel; the reference is
   renewed when its scale or angle drifts too far, since strokes drawn at another scale and
   magnified back lose sharpness. Where the scene deforms (water, foliage, cloth, faces), a
   smooth displacement field on top of the camera's map follows it, accumulated from the flow
   frame by frame, and the frame is resampled through it: each stroke stays on its scene
   point. A moving object is a second layer with a phase of its own. The phase a shot starts
   at is free, and the network's look changes with it, so a clip's first frame is stylized at
   a few phases and the one nearest the style kept (`choose_start_phase`).
2. Propagation. The previous output, moved along the optical flow (OpenCV's DIS on the input
   frames), is blended into the new stylization where the flow is reliable (forward-backward
   consistent, Sundaram et al. 2010 / Ruder et al. 2016), and the new stylization is taken as
   it is where the scene was occluded or the flow fails, and trusted less near the frame's
   border (where the network sees reflected content). Since aligned stylizations already
   agree, the blend removes the remaining jitter without averaging strokes that disagree;
   where they do not quite agree the mix keeps the local contrast (a variance-preserving
   blend), so the strokes neither fade nor double. A renewed reference draws all strokes
   afresh: the new ones are then propagated alone and the output shown before fades out over
   a couple of frames, instead of lingering in the blend's memory. A frame that mostly does not
   match the previous one (a cut) starts afresh.

`Stabilizer` takes a (network input, `Placement`) -> stylized callable, so every image control
(alpha, interpolation, colour preservation) works unchanged: the caller closes over them and
places its mix with `placed_mix` (a static mask follows the frame, and AdaIN's content
statistics stay the frame's own, not its padding's).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from functools import lru_cache

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from models.config import FEATURE_STRIDE, ModelName
from models.model import Box, Masks, StyleMix
from models.warping import (
    FlowMaps,
    contrast_preserving_mix,
    gaussian_blur,
    in_bands,
    linear_mix,
    pixel_grid,
    pixel_points,
    remap_points,
    rigid_around,
    rigid_part,
    to_contiguous_tensor,
    to_image,
    to_tensor,
    warp_affine,
)

# A second motion layer: reliable pixels moving this far (px per frame) from the camera's
# motion, covering at least this share of the frame.
SECOND_LAYER_APART = 1.0
SECOND_LAYER_SHARE = 0.02
# Flow departing from every aligned motion by this much (px per frame) starts to count as a
# deforming scene, fully from NONRIGID_FULL_PX on (DIS's noise on rigid motion stays below).
NONRIGID_FROM_PX = 0.3
NONRIGID_FULL_PX = 1.0
# The camera's motion is fitted to about this many pixels of the flow (every k-th row and
# column, k at least 4), its median translation to about MEDIAN_SAMPLES: more only costs time.
SIMILARITY_SAMPLES = 8192
MEDIAN_SAMPLES = 4096
# A second motion is the peak of its pixels' flow histogram, in bins of this many px, at most
# DOMINANT_BINS a side (flow farther from the lowest falls in the last: the peak lies nearer).
DOMINANT_BIN_PX = 0.25
DOMINANT_BINS = 256
# A fitted frame-to-frame similarity whose linear part moves no frame corner by more than this
# (px) is taken as a translation: flow noise must not turn a pan into a resampled zoom (DIS's
# noise on the clips of devkit/clips.py stays well below it; slower zooms stay translations).
LINEAR_NOISE_PX = 0.25
# A frame-to-frame camera motion within this of a whole-pixel translation (px) moves the
# previous output as a whole-pixel shift would, all but DIS's noise (`_moves_whole_pixels`).
WHOLE_PIXEL_PX = 0.1
# While the tracked linear part moves no frame corner by more than this (px), the frame is
# placed by an integer shift (the rounding of the translation errs by up to 0.5 px already).
INTEGER_TOLERANCE_PX = 0.5
# From this many pixels on, a frame's propagation is made beside the making of the network's
# input (about 15 ms at 1280 x 720, 0.5 ms at 256 x 341) even where no core is left beside the
# network.
OVERLAP_PIXELS = 512 * 512
# A renewed reference starts at this share of the range, on the side opposite the motion.
RENEWED_SHARE = 0.9
# A translation's fractional part below this (px, per axis) is placed by a whole-pixel shift:
# the network draws other strokes on a resampled frame (it is not shift-invariant), which
# differ from the reference's more than the same strokes this far off the grid do. The
# tracked camera drifts by about a tenth of a pixel over a pan that comes back: its last
# frame is then drawn as the first was (docs/video.md).
SUBPIXEL_TOLERANCE_PX = 0.2
# A canvas that turns the frame's corners by this much (px) takes AdaIN's content statistics
# from the frame's own pixels (`Placement.frame_box`).
TURNED_CORNER_PX = 0.5
# The deforming scene's displacement field is followed on a grid of about this many cells on
# the frame's shorter side (it is smooth: the flow it comes from is computed at 180 px), and
# its per-frame increment smoothed over about one cell (a Gaussian of this many cells) where
# the flow is reliable (normalised convolution: occlusions filled from around them).
DEFORMATION_CELLS = 64
DEFORMATION_SIGMA_CELLS = 1.0
# The scene deforms when the smoothed flow departs from the camera's motion by NONRIGID_FROM_PX
# (in the pixels of the frames the flow was computed on) or more on this share of the reliable
# flow: DIS's errors on rigid motion (a low-contrast region on a zoom) cover far less, the
# clips of `devkit.clips.Deforming` most of it.
DEFORMING_SHARE = 0.15
# The increment is filled into regions without reliable flow from a window four times wider,
# weighted by this against the narrow one (so that it takes over only in those holes).
WIDE_FILL_SHARE = 0.05
# A second layer is a moving object only when at least this share of the pixels apart from the
# aligned motions move within RIGID_LAYER_PX (px per frame) of one translation, and those cover
# at least RIGID_LAYER_MIN_SHARE of the frame; otherwise they deform (a deforming scene's flow
# departs from any one translation by more than DIS's noise, but may have small patches that
# happen to move as one).
RIGID_LAYER_SHARE = 0.55
RIGID_LAYER_PX = 0.25
RIGID_LAYER_MIN_SHARE = 0.04
# ...or when one connected region of them covers RIGID_LAYER_MIN_SHARE within RIGID_LAYER_PX of
# their most common translation and stops at an edge: the region within OBJECT_EDGE_PX of it
# that holds the first is at most OBJECT_GROWTH times its size (a rigid object's grows by its
# edge's band, a smooth deformation's spreads as the tolerance widens).
OBJECT_EDGE_PX = 0.75
OBJECT_GROWTH = 2.0
# ...and, unless a second layer is followed already, when the last frame's pixels did so too,
# by a translation within OBJECT_STEADY_PX of this one: an object moves on, while a patch of a
# deformation that happens to move as one does not last.
OBJECT_STEADY_PX = 0.5
# A rigid scene with a moving object moves the previous output by the two motions, each pixel
# by the one that moves the previous grey frame onto it within this many grey levels (out of
# 255, over 3 x 3 px; `two_motion_flow`); no motion that close: an occlusion.
LAYER_MATCH_TOLERANCE = 10
# ...and stylizes afresh the background within this many px of where the object was: the
# network's strokes along the object's edge reach over it, and carried with the background
# they would stay behind as echoes of the edge.
LAYER_EDGE_PX = 4
# On a deforming scene the background's motion near a moving object is the deformation
# field's (smooth, fitted away from the object) within this many px of it, where DIS's
# windows straddle the object's edge; farther, DIS's own flow (`deforming_two_motion_flow`).
LAYER_BAND_PX = 8
# ...and the echoes' band (LAYER_EDGE_PX) there is narrower: on a deforming scene the wider
# band raised the flicker near the object more than it lowered the style loss (docs/video.md).
DEFORMING_LAYER_EDGE_PX = 2
# A moving object's translation is refined on about TRACKED_POINTS points tracked by
# Lucas-Kanade in windows of TRACKING_WINDOW_PX (`refine_translation`) on the grey frames
# blurred by TRACKING_BLUR_SIGMA; a window whose smaller eigenvalue (of its gradients' matrix,
# per pixel) is under TRACKING_MIN_EIGENVALUE is too flat to place. Unless fewer than
# REFINE_MIN_POINTS are tracked or the refinement moves it by more than REFINE_LIMIT_PX (the
# points found something else): then DIS's estimate is kept.
TRACKED_POINTS = 400
TRACKING_WINDOW_PX = 15
TRACKING_MIN_EIGENVALUE = 1e-3
TRACKING_BLUR_SIGMA = 1.5
REFINE_MIN_POINTS = 16
REFINE_LIMIT_PX = 1.0
# Fixed-point steps inverting frame -> reference into reference -> frame (a smooth field
# displacing less than a cell converges to well under 0.01 px in three).
INVERSION_STEPS = 3
# The inversion is made on a grid this many times finer than the field's and interpolated
# between its points: the inverse's kinks, where the field's cells meet, fall between them.
INVERSE_GRID_SHARE = 4
# The share of the deformation field's cells whose strain does not count (`_field_strain`).
STRAIN_OUTLIERS = 0.01


@dataclass(frozen=True)
class Tracking:
    """How the motion is found and the network's grid kept on it."""

    # Align the stride-8 grid to the camera's motion (integer shifts of the input, or a
    # resampling under a zoom or a rotation).
    align_grid: bool = True
    # Follow the camera's zoom and rotation too (a similarity), not only its translation.
    similarity: bool = True
    # Follow the fractional part of the camera's translation too (resampling of the frame into
    # the reference's grid and of the output back), not only whole pixels: a whole-pixel shift
    # leaves the scene up to 0.5 px off the grid, enough for the strokes to move, and the
    # propagation then has to average them away (the style loss rises).
    subpixel: bool = True
    # Motions aligned: 1 the dominant one (camera), 2 also a second one (a moving object, for
    # which the frame is stylized a second time on that object's phase).
    motion_layers: int = 2
    # Where the scene deforms (water, foliage, cloth, faces: the flow departs from the aligned
    # motions by NONRIGID_FROM_PX or more on DEFORMING_SHARE of the frame), follow it with a
    # smooth displacement field on top of the camera, and resample the frame through it onto the
    # reference's grid (and the output back): the network then draws each stroke at the same
    # scene point, frame after frame, instead of anew wherever the scene moved.
    deforming: bool = True
    # Resampling of the frame into the reference's grid and of the output back (once per
    # frame, not repeated): "lanczos" keeps the strokes sharper than "bicubic" ("bilinear");
    # its way in through anything but a translation is the sharpened bicubic
    # (`Placement._resampled`).
    resample: str = "lanczos"
    # The output's way back through a rigid resampling (a sub-pixel shift, a zoom, a turn) by
    # "lanczos" on the output sharpened first ("sharp_lanczos"): strokes at the pixel's scale
    # (the lite networks') keep their contrast. Not through a deformation field, where it
    # raised the style loss instead (docs/video.md).
    sharpen_back: bool = False
    # OpenCV DIS preset: "ultrafast", "fast" or "medium".
    flow_preset: str = "medium"
    # The flow is computed on the frames scaled down to this shorter side (px) when they are
    # larger, and scaled back up (0: at the frame's size): the motions tracked are smooth,
    # and DIS's time grows with the pixels (benchmarks/bench_video_stability.py --speed).
    flow_short_side: int = 180
    # Forward-backward check (Sundaram et al.): a pixel is occluded when
    # |f + b|^2 > consistency * (|f|^2 + |b|^2) + consistency_floor (px^2).
    consistency: float = 0.01
    consistency_floor: float = 0.5
    # The check on every `consistency_step`-th pixel of each row and column, each answer
    # standing for its block (the flow's occlusions are a few px wide at the least): a
    # quarter of its cost at 2.
    consistency_step: int = 1
    # Check the flow by the previous frame moved along it instead: a pixel is occluded when
    # its grey level, averaged over 3 x 3 px, differs from the match's by more than this (out
    # of 255) beyond the frames' mean difference (a camera's exposure drifts). No second flow,
    # a third of the check's cost; fewer occluded pixels pass, more where the frame is flat
    # (docs/live.md). 0: the forward-backward check.
    photometric_tolerance: int = 0
    # A cut: when less than this share of a frame's pixels match the previous frame reliably,
    # a new shot starts and the previous frames are forgotten. Otherwise the old shot's strokes
    # would be blended in wherever the flow matches by chance, and the motion fitted to that
    # flow would turn or zoom the new shot's grid. Even fast camera motion keeps a share far
    # above it (benchmarks/bench_video_cuts.py); a false cut costs one frame of flicker
    # (0: never).
    cut_share: float = 0.25


@dataclass(frozen=True)
class Blending:
    """How the previous output, moved along the flow, is blended into the new stylization."""

    # Weight of the propagated previous output where the flow is reliable (0: per-frame).
    weight: float = 0.8
    # Near the frame's border the network sees reflected content and draws other strokes; the
    # previous output is trusted in proportion to its distance from the border up to this
    # (px), so those strokes are not carried into the frame as the camera moves (0: off).
    border_trust_px: int = 32
    # Detail kept from the new stylization: the blend acts on the frames' low-pass part
    # (Gaussian of this sigma, px) and the finer detail comes from the new stylization alone,
    # so repeated resampling and slightly misaligned strokes cannot wash it out (0: blend all).
    detail_sigma: float = 1.0
    # Weight of the propagated previous output in that finer detail (lower than `weight`:
    # each resampling softens detail, and a short memory keeps it from accumulating). The
    # band split applies where the deformation field is followed (`rigid_contrast_window`).
    detail_weight: float = 0.15
    # The same where the scene deforms (the flow departs from every aligned motion by
    # NONRIGID_FULL_PX or more): there the new stylization draws its strokes elsewhere each
    # frame; a higher weight carries them along the flow instead (less flicker, but each
    # resampling softens them and the style loss rises: benchmarks/bench_video_stability.py).
    nonrigid_detail_weight: float = 0.15
    # Two stroke patterns that do not line up lose contrast when mixed (their variances add with
    # the squared weights): the strokes fade and double, and the style loss rises. The mixed
    # low-pass band gets back the new stylization's contrast (the propagated band has less:
    # each frame's mix and resampling soften it), measured in a Gaussian window of this sigma
    # (px); where the parts agree nothing changes (0: a plain linear mix).
    contrast_window: float = 3.0
    # On a rigidly moving scene (no deformation field followed) the strokes are redrawn on
    # the aligned grid at the same scene points, so the finer detail agrees too: there the
    # whole images are mixed at `weight`, keeping the contrast in a Gaussian window of this
    # sigma (px), with no band split. Carrying the detail lowers the flicker that the new
    # stylization's detail brings (around a moving object, whose motion changes the strokes
    # as far as the network's receptive field reaches), and the contrast keeps the strokes
    # that do not line up from fading (0: the band split everywhere; docs/video.md). The
    # contrast kept is the new stylization's, but where the scene deforms without the
    # deformation field followed (the flow departs from every aligned motion: the strokes
    # are carried to where the network no longer draws them), the parts' weighted mean.
    rigid_contrast_window: float = 2.0
    # ...also while the camera moves by a fraction of a pixel a frame. False: only while it
    # moves by whole pixels or an object moves over the scene, the band split otherwise. Each
    # sub-pixel resampling of the carried detail softens it, which strokes at the pixel's
    # scale (the lite networks') show; around a moving object the new detail's flicker
    # costs more than that.
    rigid_mix_subpixel: bool = True
    # Resampling of the previous output along the flow, repeated every frame: "lanczos"
    # (OpenCV's, 4 lobes, 8 x 8 taps) keeps strokes sharper than "bicubic" at five times its
    # cost, and far sharper than "bilinear" (docs/video.md).
    resample: str = "lanczos"
    # The same where the scene deforms (the deformation field is followed) and the flow is
    # not one translation: there "bicubic" gives what "lanczos" gives at a quarter of its
    # cost, as each frame keeps only `nonrigid_detail_weight`'s share of the propagated fine
    # detail (docs/video.md; `with_strength` above the default strength, which keeps more,
    # moves it with `resample`).
    deforming_resample: str = "bicubic"


@dataclass(frozen=True)
class Renewal:
    """When the reference grid is renewed, and how the strokes shown before fade out."""

    # The reference grid is renewed when the tracked motion passes these: the strokes are drawn
    # at the reference's scale and angle and turn with the scene, and each renewal draws them
    # afresh (as much flicker as a frame of per-frame stylization, or a blend of two stroke
    # patterns). Scale (ln) asymmetric: strokes magnified back lose sharpness and thicken
    # sooner than minified ones get finer, so a zoom sweeps from minified to magnified.
    magnify_range: float = 0.03
    minify_range: float = 0.1
    # Angle (radians): strokes of oriented styles (brush strokes) turned by a few degrees change
    # the style's statistics.
    angle_range: float = 0.05
    # Deformation: the reference is renewed when the followed field strains the strokes by more
    # than this (`_field_strain`: its derivative, px per px, where all but STRAIN_OUTLIERS of
    # its cells stay): at 1 the map folds. Renewing sooner cost more than the strain: each
    # renewal redraws every stroke (docs/video.md).
    strain_range: float = 1.0
    # A renewed reference draws the strokes afresh, unrelated to those shown: the new pattern
    # is propagated alone from then on, and what was shown fades out over these frames (its
    # share of each, mixed keeping the contrast). Blending it into the new pattern instead
    # would leave doubled strokes for as many frames as the blend's memory lasts (about ten).
    fade: tuple[float, ...] = (0.85, 0.5)


@dataclass(frozen=True)
class StabilizerConfig:
    enabled: bool = True
    tracking: Tracking = field(default_factory=Tracking)
    blending: Blending = field(default_factory=Blending)
    renewal: Renewal = field(default_factory=Renewal)


# `with_strength`: the blending at strength 1 (the most stable), and the strength the
# defaults stand for.
STRONGEST = Blending(weight=0.9, detail_weight=0.3, nonrigid_detail_weight=0.8)
DEFAULT_STRENGTH = 0.5


def with_strength(config: StabilizerConfig, strength: float) -> StabilizerConfig:
    """`config` at a user's flicker/detail trade-off (Reimann et al. 2023): 0 per-frame
    stylization, DEFAULT_STRENGTH the config's own blending, 1 STRONGEST's; the weights are
    interpolated linearly in between, the tracking kept."""
    if not 0 <= strength <= 1:
        raise ValueError(f"strength must lie in [0, 1], got {strength}")
    if strength == 0:
        return replace(config, enabled=False)
    blending = config.blending
    if strength <= DEFAULT_STRENGTH:
        share, low, high = (
            strength / DEFAULT_STRENGTH,
            Blending(weight=0, detail_weight=0, nonrigid_detail_weight=0),
            blending,
        )
    else:
        share = (strength - DEFAULT_STRENGTH) / (1 - DEFAULT_STRENGTH)
        low, high = blending, STRONGEST

    def between(name: str) -> float:
        return (1 - share) * getattr(low, name) + share * getattr(high, name)

    names = ("weight", "detail_weight", "nonrigid_detail_weight")
    weights: dict[str, float | str] = {name: between(name) for name in names}
    if strength > DEFAULT_STRENGTH:
        # The propagated detail lasts longer: it moves with the translation's kernel everywhere.
        weights["deforming_resample"] = blending.resample
    return replace(config, blending=replace(blending, **weights))


# The live feed's form: the cheapest flow, checked photometrically, one stylization per
# frame, no resampling of the frame (a zoom's two resampling passes cost more than the
# propagation's) and a plain linear blend (`premix`), as frames must keep up with the camera.
LIVE = StabilizerConfig(
    tracking=Tracking(
        flow_preset="ultrafast",
        flow_short_side=360,
        photometric_tolerance=10,
        motion_layers=1,
        similarity=False,
        subpixel=False,
        deforming=False,
    ),
    blending=Blending(resample="bicubic", contrast_window=0, rigid_contrast_window=0),
)


def for_model(config: StabilizerConfig, model: str) -> StabilizerConfig:
    """A job's `config` for the network `model` names (a `ModelName`). The lite networks draw
    finer strokes than the full model (more of their detail lies near the Nyquist rate, which
    every sub-pixel resampling of the propagated output softens): unless the camera moved by
    whole pixels or an object moves over the scene, their blend takes the fine detail from the
    new stylization alone, over a wider band, and their output goes back onto a shifted,
    turned or zoomed frame sharpened first (docs/video.md)."""
    if model != ModelName.lite:
        return config
    fine = replace(config.blending, rigid_mix_subpixel=False, detail_weight=0.0, detail_sigma=1.5)
    return replace(config, tracking=replace(config.tracking, sharpen_back=True), blending=fine)


_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


@dataclass(frozen=True)
class Placement:
    """Where a frame lies on the network's input (the canvas): canvas pixel (x, y) shows the
    frame's point `to_frame` @ (x, y, 1). `integer`: a whole-pixel shift (the canvas is the
    frame reflect-padded, its pixels unresampled); otherwise the frame is resampled. A
    deforming scene's placement is dense: canvas pixel p shows the frame's point
    `frame_points[p]`, frame pixel p lies at the canvas's point `canvas_points[p]` ((h, w, 2)
    and (H, W, 2) float32 (x, y)), `to_frame` their affine part."""

    frame_size: tuple[int, int]  # (H, W)
    size: tuple[int, int]  # the canvas's (H, W)
    to_frame: Tensor  # (2, 3) float64
    integer: bool
    frame_points: np.ndarray | None = None
    canvas_points: np.ndarray | None = None

    @staticmethod
    def shift(frame_size: tuple[int, int], phase: tuple[int, int] = (0, 0)) -> Placement:
        """The frame at offset phase = (x, y) in [0, 8) of the network's grid: reflect padding
        of `phase` before and the rest after, to the stride's first multiple at least 7 px
        larger on each axis: the network's input size does not change between frames, and its
        pools need no padding of their own, which costs the lite network more than the wider
        margin (docs/live.md)."""
        height, width = frame_size
        ox, oy = phase
        to_frame = torch.tensor([[1.0, 0.0, -ox], [0.0, 1.0, -oy]], dtype=torch.float64)
        reach = FEATURE_STRIDE - 1
        padded = (_stride_multiple(height + reach), _stride_multiple(width + reach))
        return Placement(frame_size, padded, to_frame, True)

    @staticmethod
    def identity(frame_size: tuple[int, int]) -> Placement:
        """The frame as it is (no stabiliser, or a caller outside it)."""
        to_frame = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
        return Placement(frame_size, frame_size, to_frame, True)

    def place(self, image: Tensor, mode: str = "lanczos") -> Tensor:
        """A map of the frame's pixels (N, C, H, W) -> the same on the canvas; `mode`: lanczos,
        bicubic, bilinear or nearest (masks) where it is resampled. Outside the frame it is
        mirrored."""
        height, width = self.frame_size
        if self.integer:
            ox, oy = self._shift()
            pads = (ox, self.size[1] - width - ox, oy, self.size[0] - height - oy)
            return F.pad(image, pads, mode="reflect") if any(pads) else image
        placed = [self._resampled(to_image(item[None]), mode) for item in image]
        canvas = torch.cat([to_tensor(item, image.device) for item in placed])
        return canvas.clamp(0, 1) if mode in ("lanczos", "bicubic") else canvas

    def place_frame(self, frame: Tensor, mode: str) -> Tensor:
        """`place` of one frame (1, C, H, W) as the network's input: a shift pads the tensor, a
        resampling goes through OpenCV's (H, W, C) layout."""
        if self.integer:
            return self.place(frame.float())
        canvas = self._resampled(to_image(frame), mode)
        np.clip(canvas, 0, 1, out=canvas)
        return to_contiguous_tensor(canvas, frame.device)

    def frame_box(self) -> Box | None:
        """Where the canvas shows the frame's own pixels rather than its mirrored padding
        (`StyleMix.content_box`: AdaIN's content statistics are then the frame's, as when it is
        stylized alone): a shift's frame, a deforming scene's or a turned frame's box inside
        the frame's edges on the canvas. None where the canvas is the frame, and under a
        sub-pixel shift or a zoom: there the frame's own statistics raised the style loss
        instead (docs/video.md)."""
        if self.size == self.frame_size and self.integer:
            return None
        if self.canvas_points is not None:
            edges = self.canvas_points
            return (
                math.ceil(float(edges[0, :, 1].max())),
                math.floor(float(edges[-1, :, 1].min())) + 1,
                math.ceil(float(edges[:, 0, 0].max())),
                math.floor(float(edges[:, -1, 0].min())) + 1,
            )
        if not self.integer:
            return self._turned_frame_box()
        height, width = self.frame_size
        ox, oy = self._shift()
        return oy, oy + height, ox, ox + width

    def _turned_frame_box(self) -> Box | None:
        """A turned frame's box inside its edges on the canvas: the mirrored triangles at its
        corners left out, as a shift's padding is. None where the frame is not turned by
        TURNED_CORNER_PX at its corners (a sub-pixel shift, a zoom): there the frame's own
        statistics raised the style loss (docs/video.md)."""
        height, width = self.frame_size
        linear, offset = self.to_frame[:, :2], self.to_frame[:, 2]
        angle = math.atan2(float(linear[1, 0]), float(linear[0, 0]))
        if abs(angle) * math.hypot(height, width) / 2 < TURNED_CORNER_PX:
            return None
        corners = _frame_corners(self.frame_size)[:, :2]
        x, y = ((corners - offset) @ torch.linalg.inv(linear).T).T.tolist()
        return (
            max(0, math.ceil(max(y[0], y[1]))),
            min(self.size[0], math.floor(min(y[2], y[3])) + 1),
            max(0, math.ceil(max(x[0], x[2]))),
            min(self.size[1], math.floor(min(x[1], x[3])) + 1),
        )

    def _shift(self) -> tuple[int, int]:
        """A shift's offset (x, y) of the frame on the canvas."""
        return int(-self.to_frame[0, 2]), int(-self.to_frame[1, 2])

    def _resampled(self, image: np.ndarray, mode: str) -> np.ndarray:
        """The frame (H, W, C) resampled onto the canvas, mirrored outside the frame: with
        "lanczos" through anything but a translation (two 1-D filters), the sharpened bicubic,
        at a third of Lanczos-4's cost. The network's input only: it changes the outputs
        little, where on the way back it softens them (docs/video.md)."""
        translation = torch.equal(self.to_frame[:, :2], _IDENTITY[:, :2])
        if mode == "lanczos" and (self.frame_points is not None or not translation):
            mode = "sharp_bicubic"
        if self.frame_points is not None:
            return remap_points(image, self.frame_points, mode, cv2.BORDER_REFLECT_101)
        to_frame = self.to_frame.numpy()
        return warp_affine(image, to_frame, self.size, mode, cv2.BORDER_REFLECT_101)

    def back(self, canvas: Tensor, resample: str = "lanczos") -> Tensor:
        """The network's output on the canvas (1, C, h, w) -> on the frame's pixels."""
        return to_tensor(self.back_image(canvas, resample), canvas.device)

    def back_image(self, canvas: Tensor, resample: str = "lanczos") -> np.ndarray:
        """`back` as an (H, W, C) float32 array, what the stabiliser works on."""
        height, width = self.frame_size
        if self.integer:
            ox, oy = self._shift()
            return to_image(canvas[..., oy : oy + height, ox : ox + width])
        if self.canvas_points is not None:
            frame = remap_points(
                to_image(canvas), self.canvas_points, resample, cv2.BORDER_REPLICATE
            )
        else:
            to_canvas = _invert(self.to_frame).numpy()
            frame = warp_affine(
                to_image(canvas), to_canvas, self.frame_size, resample, cv2.BORDER_REPLICATE
            )
        return np.clip(frame, 0, 1, out=frame)


# stylize(network input (1, 3, h, w) in [0, 1], where the frame lies on it) -> stylized
# (1, 3, h, w) in [0, 1].
Stylize = Callable[[Tensor, Placement], Tensor]


# fit(frame (1, 3, H, W), its stylization (1, 3, H, W)) -> how far the stylization lies from the
# style (`style_distance`): lower fits better.
StyleFit = Callable[[Tensor, Tensor], float]

# The grid phases (x, y) a clip's first frame is stylized at to choose its start.
START_PHASES: tuple[tuple[int, int], ...] = ((0, 0), (4, 0), (0, 4), (4, 4))


def choose_start_phase(
    frame: Tensor,
    stylize: Stylize,
    fit: StyleFit,
    phases: tuple[tuple[int, int], ...] = START_PHASES,
) -> tuple[int, int]:
    """The grid phase at which `frame`'s (1, 3, H, W) stylization fits the style best: the
    network's output changes with the phase at which the scene meets its stride-8 grid, and
    the stabiliser keeps a shot's phase where per-frame stylization meets a new one every
    frame (the style loss of a whole clip moves with it: docs/video.md)."""
    size = (frame.shape[-2], frame.shape[-1])
    fits = []
    with torch.inference_mode():
        for phase in phases:
            placement = Placement.shift(size, phase)
            canvas = placement.place_frame(frame, "lanczos")
            fits.append(fit(frame, placement.back(stylize(canvas, placement))))
    return phases[int(np.argmin(fits))]


def style_distance(statistics: tuple[Tensor, Tensor], mix: StyleMix) -> float:
    """How far an image's relu4_1 (mean, std) (1, C, 1, 1) lie from its styles' (their mix's
    weighted mean and std): the mean squared difference of both."""
    weights = mix.weights.view(-1, 1, 1, 1).float().cpu()
    mean = (weights * mix.mean.float().cpu()).sum(0, keepdim=True)
    std = (weights * mix.std.float().cpu()).sum(0, keepdim=True)
    image_mean, image_std = (part.float().cpu() for part in statistics)
    return float((image_mean - mean).pow(2).mean() + (image_std - std).pow(2).mean())


def placed_masks(masks: Masks, placement: Placement) -> Masks:
    """Static masks drawn on the frame, moved with it onto the network's input: they stay on
    the pixels they were drawn on, whatever the stabiliser's alignment."""
    values = masks.on_grid(placement.frame_size)  # each mask's own resizing rule
    mode = "nearest" if masks.binary else "bilinear"
    return Masks(placement.place(values, mode)[:, 0].clamp(0, 1), masks.binary)


def placed_mix(mix: StyleMix, placement: Placement) -> StyleMix:
    """A frame's style mix for its network input: static masks moved with the frame
    (`placed_masks`), the content's statistics over the frame's own pixels (`frame_box`)."""
    masks = None if mix.masks is None else placed_masks(mix.masks, placement)
    return replace(mix, masks=masks, content_box=placement.frame_box())


def grey_uint8(frame: Tensor) -> np.ndarray:
    """(H, W) uint8 luminance (ITU-R BT.601) of a (1, 3, H, W) RGB frame in [0, 1]: what DIS
    takes. From its planes, without making the (H, W, 3) array."""
    red, green, blue = frame[0].detach().float().cpu().numpy()
    grey = cv2.scaleAdd(blue, 0.114, cv2.addWeighted(red, 0.299, green, 0.587, 0.0))
    return cv2.convertScaleAbs(grey, alpha=255)


@dataclass(frozen=True)
class Flow:
    """The backward flow of a frame into the previous one: `maps` moves images of the previous
    frame onto this one; `reliable` (H, W) bool where the forward flow agrees; `scale`: frame
    pixels per pixel of the frames DIS saw (1: the flow is computed at the frame's size)."""

    flow: np.ndarray  # (H, W, 2) float32
    reliable: np.ndarray
    maps: FlowMaps
    scale: float = 1.0


class FlowEstimator:
    """Dense optical flow between consecutive frames (OpenCV DIS), with an occlusion mask,
    computed on the frames scaled down to `flow_short_side` (px, the shorter side) when they
    are larger: the flow of a smooth motion needs no more, and DIS's time grows with the
    pixels."""

    def __init__(self, config: StabilizerConfig) -> None:
        self.config = config
        # One per direction: the two are computed at once (DIS leaves much of a second core
        # idle on small frames; an instance is not to be shared between threads).
        self.dis, self.forward_dis = (
            cv2.DISOpticalFlow_create(_PRESETS[config.tracking.flow_preset]) for _ in range(2)
        )

    def backward(self, current: np.ndarray, previous: np.ndarray) -> Flow:
        """Pixel p of `current` shows what `previous` shows at p + flow(p), reliably where the
        forward flow agrees and the match lies in the frame."""
        height, width = current.shape
        short = self.config.tracking.flow_short_side
        scale = min(height, width) / short if short and min(height, width) > short else 1.0
        if scale > 1:
            small = (round(width / scale), round(height / scale))
            current = cv2.resize(current, small, interpolation=cv2.INTER_AREA)
            previous = cv2.resize(previous, small, interpolation=cv2.INTER_AREA)
        if self.config.tracking.photometric_tolerance > 0:
            back = self.dis.calc(current, previous, None)
            maps = FlowMaps(back)  # its points serve the check and, at scale 1, the warps
            reliable = self._photometric(maps, current, previous)
        else:
            forward = _BESIDE_NETWORK.submit(self.forward_dis.calc, previous, current, None)
            back = self.dis.calc(current, previous, None)
            reliable = self._consistent(back, forward.result())
            maps = FlowMaps(back)
        if scale > 1:
            # Scaled up, DIS's noise grows with the scale (up to about 1 px at 720p): where the
            # flow is the camera's translation to within it, the translation is the better
            # estimate, and moving by it is far cheaper.
            translation = median_motion(back, reliable).tolist()
            rigid = rigid_part(back, reliable, (translation[0], translation[1]), (height, width))
            back *= np.float32(scale)  # at the small size: a sixteenth of the pixels at 720p
            back = cv2.resize(back, (width, height), interpolation=cv2.INTER_LINEAR)
            reliable = cv2.resize(
                reliable.view(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST
            ).view(bool)
            maps = FlowMaps(back, rigid)
        return Flow(back, reliable, maps, scale)

    def _consistent(self, back: np.ndarray, forward: np.ndarray) -> np.ndarray:
        """(H, W) bool: where the forward flow at the backward flow's match leads back (within
        `consistency`) and the match lies in the frame, checked every `consistency_step`-th
        pixel."""
        tracking = self.config.tracking
        step = tracking.consistency_step
        height, width = back.shape[:2]
        sampled = _sampled(back, step)
        points = cv2.add(sampled, _sampled(pixel_points(height, width), step))
        forward_at_match = cv2.remap(
            forward, points, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        # |f + b|^2 - consistency (|f|^2 + |b|^2), both components at once.
        round_trip = cv2.add(forward_at_match, sampled)
        excess = cv2.multiply(round_trip, round_trip)
        excess -= tracking.consistency * cv2.add(
            cv2.multiply(sampled, sampled), cv2.multiply(forward_at_match, forward_at_match)
        )
        reliable = excess[..., 0] + excess[..., 1] <= tracking.consistency_floor
        reliable &= cv2.inRange(points, (0, 0), (width - 1, height - 1)) > 0
        if step == 1:
            return reliable
        return cv2.resize(
            reliable.view(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST
        ).view(bool)

    def _photometric(self, maps: FlowMaps, current: np.ndarray, previous: np.ndarray) -> np.ndarray:
        """(H, W) bool: where the previous grey frame moved along the backward flow matches
        the current one within `photometric_tolerance` (beyond their mean difference) and the
        match lies in the frame."""
        moved = maps.warp(previous)
        # Over 3 x 3 px: a camera's noise is then a third, an occlusion as wide stays.
        difference = cv2.blur(cv2.subtract(current, moved, dtype=cv2.CV_16S), (3, 3))
        drift = cv2.mean(current)[0] - cv2.mean(moved)[0]
        tolerance = self.config.tracking.photometric_tolerance
        reliable = cv2.inRange(difference, drift - tolerance, drift + tolerance) > 0
        reliable &= maps.inside()
        return reliable


def two_motion_flow(
    current: np.ndarray,
    previous: np.ndarray,
    motion: Tensor,
    second: Tensor,
    previous_layer: np.ndarray | None,
) -> tuple[Flow, np.ndarray]:
    """The backward flow of a rigid scene with a moving object, from the grey frames (H, W)
    uint8: at each pixel the camera's `motion` (2, 3) or the object's translation `second`
    (x, y), whichever moves `previous` onto `current` more closely (over 3 x 3 px), the
    object's only where it comes from the object (`previous_layer` (H, W) bool, the last
    frame's object, widened by 2 px). DIS's flow runs between the two motions for some px
    across the object's edge, and follows a disocclusion smoothly past the flow's check:
    carried along it, the object's strokes smear into the background. Reliable where the
    chosen motion matches within LAYER_MATCH_TOLERANCE and, in the background, the pixel was
    not within LAYER_EDGE_PX of the object before. Also returns the object's pixels (H, W)
    bool."""
    size = current.shape
    # Each motion as the map from this frame's pixels to the previous frame's.
    to_previous = (np.asarray(motion), np.asarray(_translation(second)))
    border = cv2.BORDER_REPLICATE
    mismatches = [
        _mismatch(current, warp_affine(previous, affine, size, "bilinear", border))
        for affine in to_previous
    ]
    on_layer = mismatches[1] < mismatches[0]
    reliable = np.minimum(*mismatches) <= LAYER_MATCH_TOLERANCE
    if previous_layer is not None:
        before = previous_layer.view(np.uint8)
        on_layer &= _from_object(before, to_previous[1])
        was_near = warp_affine(
            cv2.dilate(before, _LAYER_EDGE), to_previous[0], size, "nearest", border
        )
        reliable &= on_layer | (was_near == 0)
    camera_x, camera_y = _affine_flow(motion, size)
    flow = np.empty((*size, 2), np.float32)
    flow[..., 0], flow[..., 1] = camera_x, camera_y
    flow[on_layer] = np.asarray(second, dtype=np.float32)
    maps = FlowMaps(flow)
    reliable &= maps.inside()
    if np.array_equal(np.asarray(motion[:, :2]), np.eye(2)):
        translation = (float(camera_x), float(camera_y))
        maps = FlowMaps(flow, rigid_around(on_layer, translation, size))
    return Flow(flow, reliable, maps), on_layer


def deforming_two_motion_flow(
    current: np.ndarray,
    previous: np.ndarray,
    estimate: Flow,
    field_flow: np.ndarray,
    second: Tensor,
    layers: tuple[np.ndarray | None, np.ndarray | None],
) -> tuple[Flow, np.ndarray]:
    """`two_motion_flow` on a deforming scene: the background's motion is DIS's flow
    (`estimate`) but within LAYER_BAND_PX of the object, where DIS's flow runs between the two
    motions; there it is `field_flow` (H, W, 2), the camera's and the deformation field's,
    fitted away from the object. Each pixel takes the background's motion or the object's
    translation `second` as `two_motion_flow` does, the object's only where it comes from the
    last frame's object. `layers`: the object's pixels in the last frame and DIS's layer in
    this one ((H, W) bool or None). Reliable where DIS's flow is kept as DIS's check found,
    elsewhere within LAYER_MATCH_TOLERANCE, not within DEFORMING_LAYER_EDGE_PX of where the
    object was."""
    size = current.shape
    previous_layer = layers[0]
    near = np.zeros(size, np.uint8)
    for pixels in layers:
        if pixels is not None:
            near |= pixels.view(np.uint8)
    near = cv2.dilate(near, _LAYER_BAND) > 0
    background = estimate.flow.copy()
    np.copyto(background, field_flow, where=near[..., None])
    background_maps = FlowMaps(background)
    shift = np.asarray(_translation(second))
    border = cv2.BORDER_REPLICATE
    background_mismatch = _mismatch(current, background_maps.warp(previous))
    object_mismatch = _mismatch(current, warp_affine(previous, shift, size, "bilinear", border))
    on_layer = object_mismatch < background_mismatch
    reliable = estimate.reliable.copy()
    np.copyto(reliable, background_mismatch <= LAYER_MATCH_TOLERANCE, where=near)
    if previous_layer is not None:
        before = previous_layer.view(np.uint8)
        on_layer &= _from_object(before, shift)
        was_near = background_maps.warp(cv2.dilate(before, _DEFORMING_LAYER_EDGE), "nearest")
        reliable &= was_near == 0
    np.copyto(reliable, object_mismatch <= LAYER_MATCH_TOLERANCE, where=on_layer)
    np.copyto(background, np.asarray(second, dtype=np.float32), where=on_layer[..., None])
    maps = FlowMaps(background)
    return Flow(background, reliable & maps.inside(), maps, estimate.scale), on_layer


def refine_translation(
    current: np.ndarray, previous: np.ndarray, pixels: np.ndarray, initial: Tensor
) -> Tensor:
    """A moving object's backward translation (x, y) from `initial` (DIS's median over its
    `pixels` (H, W) bool), refined on the grey frames (H, W) uint8: the median shift of about
    TRACKED_POINTS points on a grid over its pixels, away from its edge (the background
    reaches the windows there), tracked into the previous frame by OpenCV's pyramidal
    Lucas-Kanade from `initial`. DIS's coarse-to-fine smoothing shortens an object's motion by
    up to a tenth; its grid phase and carried strokes would drift off it by that every frame."""
    # Around the object only: as far as its points' windows reach in either frame, and the blur.
    left, top, width, height = cv2.boundingRect(pixels.view(np.uint8))
    reach = math.ceil(float(initial.abs().max()) + TRACKING_WINDOW_PX + 3 * TRACKING_BLUR_SIGMA)
    box = (
        slice(max(top - reach, 0), top + height + reach),
        slice(max(left - reach, 0), left + width + reach),
    )
    current, previous = current[box], previous[box]
    inside = cv2.erode(pixels[box].view(np.uint8), _disc(TRACKING_WINDOW_PX // 2))
    step = max(1, int(math.sqrt(np.count_nonzero(inside) / TRACKED_POINTS)))
    ys, xs = np.nonzero(inside[step // 2 :: step, step // 2 :: step])
    if len(ys) < REFINE_MIN_POINTS:
        return initial
    start = (np.stack([xs, ys], 1) * step + step // 2).astype(np.float32)[:, None]
    # Blurred first: Lucas-Kanade's bilinear interpolation filters the previous frame by an
    # amount that depends on the fraction of a px, which pulls the estimates towards the half
    # px (docs/video.md).
    current, previous = (
        cv2.GaussianBlur(image, (0, 0), TRACKING_BLUR_SIGMA) for image in (current, previous)
    )
    end, found, _ = cv2.calcOpticalFlowPyrLK(
        current,
        previous,
        start,
        start + np.asarray(initial, dtype=np.float32),
        winSize=(TRACKING_WINDOW_PX, TRACKING_WINDOW_PX),
        maxLevel=1,
        criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.001),
        flags=cv2.OPTFLOW_USE_INITIAL_FLOW,
        minEigThreshold=TRACKING_MIN_EIGENVALUE,
    )
    found = found[:, 0] == 1
    if np.count_nonzero(found) < REFINE_MIN_POINTS:
        return initial
    shift = np.median((end - start)[found, 0], axis=0)
    refined = torch.from_numpy(shift.astype(np.float64))
    return refined if float((refined - initial).abs().max()) <= REFINE_LIMIT_PX else initial


def _mismatch(current: np.ndarray, moved: np.ndarray) -> np.ndarray:
    """How far (grey levels, (H, W) float32) `moved` is from `current`: less the frames' mean
    difference (a camera's exposure drifts), then over 3 x 3 px."""
    difference = cv2.subtract(current, moved, dtype=cv2.CV_32F)
    difference -= np.float32(cv2.mean(current)[0] - cv2.mean(moved)[0])
    return cv2.blur(np.abs(difference), (3, 3))


def _from_object(before: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels that the object's translation `shift` (2, 3) brings from the
    last frame's object (`before` (H, W) uint8), widened by 2 px."""
    size = before.shape
    widened = cv2.dilate(before, _LAYER_MARGIN)
    return warp_affine(widened, shift, size, "nearest", cv2.BORDER_REPLICATE) > 0


def _sampled(image: np.ndarray, step: int) -> np.ndarray:
    """About every `step`-th row and column of (H, W[, C]) (OpenCV's nearest resizing: a pixel
    grid sampled alike gives the pixels' places)."""
    if step == 1:
        return image
    height, width = image.shape[:2]
    small = (-(-width // step), -(-height // step))
    return cv2.resize(image, small, interpolation=cv2.INTER_NEAREST)


@dataclass
class Carried:
    """The previous frames' images moved onto the current frame (H, W, C), where they are
    valid (H, W, 1): what is propagated and its low-pass band with their weights (H, W, 1) in
    the blend, or a linear blend's premixed output (`premix`), or a renewal's fading output
    and where it is valid."""

    valid: np.ndarray
    stream: np.ndarray | None = None
    stream_smooth: np.ndarray | None = None  # None: the whole images are mixed
    weight: np.ndarray | None = None  # of the low-pass band (of the whole image)
    detail_weight: np.ndarray | None = None  # of the finer detail
    # Where the whole images' mix keeps the parts' mean contrast (`contrast_preserving_mix`).
    mean_contrast: np.ndarray | None = None
    premixed: np.ndarray | None = None
    fading: np.ndarray | None = None
    fading_weight: np.ndarray | None = None

    def blend(self, stylized: np.ndarray, config: StabilizerConfig) -> np.ndarray:
        """The new stylization with the propagated stream blended in (`propagate`)."""
        if self.premixed is not None:
            # propagate's linear blend, rearranged: s + valid (premix(s') - premix(s)), that is
            # valid-weighted between s and s + premix(s') - premix(s), in as few passes over
            # the frame as OpenCV allows. Not in bands: on a live frame the hand-over to the
            # bands' threads costs more.
            smooth, detail = _premix_parts(stylized, config.blending)
            carried = cv2.addWeighted(
                smooth, detail - config.blending.weight, stylized, 1 - detail, 0.0
            ).reshape(stylized.shape)
            carried += self.premixed
            blended = linear_mix(carried, stylized, self.valid)
            return np.clip(blended, 0, 1, out=blended)
        assert self.stream is not None and self.weight is not None
        stream, smooth = self.stream, self.stream_smooth
        weight, detail_weight, mean_contrast = self.weight, self.detail_weight, self.mean_contrast

        def rows(band: slice) -> np.ndarray:
            return propagate(
                stylized[band],
                stream[band],
                None if smooth is None else smooth[band],
                weight[band],
                None if detail_weight is None else detail_weight[band],
                config,
                None if mean_contrast is None else mean_contrast[band],
            )

        banded = in_bands(rows, stylized, _propagation_reach(config))
        return rows(slice(None)) if banded is None else banded


def premixes(config: StabilizerConfig) -> bool:
    """Whether the blend is linear with the same weights everywhere it is valid: then the
    previous output's part of it (`premix`) is made once, after that output, and moved along
    the flow alone (one resampling, no blur, before the network); otherwise the output and
    its low-pass band are moved and weighted per pixel."""
    blending = config.blending
    return (
        blending.contrast_window <= 0 and blending.nonrigid_detail_weight == blending.detail_weight
    )


def premix(image: np.ndarray, config: StabilizerConfig) -> np.ndarray:
    """(weight - detail_weight) * low-pass(image) + detail_weight * image: an image's part of
    `propagate`'s linear blend (where it is valid), s + w (S' - S) + d ((s' - S') - (s - S))
    = s + premix(s') - premix(s) (s, S: the new stylization and its low-pass band; s', S':
    the previous output's, moved; the blur and the motion commute but at occlusions, where the
    flow is not valid)."""
    smooth, detail = _premix_parts(image, config.blending)
    return cv2.addWeighted(smooth, config.blending.weight - detail, image, detail, 0.0).reshape(
        image.shape
    )


def _premix_parts(image: np.ndarray, blending: Blending) -> tuple[np.ndarray, float]:
    """`premix`'s low-pass band of an image and the weight of its finer detail."""
    if blending.detail_sigma <= 0:
        return image, 0.0
    return low_pass(image, blending.detail_sigma), blending.detail_weight


@dataclass
class Pending:
    """A frame between `Stabilizer.begin` and `Stabilizer.finish`: the network's inputs, each
    with where the frame lies on it (`grey` None: the stabiliser is off, the output is the
    network's own)."""

    inputs: list[tuple[Tensor, Placement]]
    grey: np.ndarray | None = None  # the frame as DIS saw it
    layer: np.ndarray | None = None  # the second motion layer's pixels (H, W) bool
    renewed: bool = False
    carried: Future[Carried] | None = None


# Runs the stabiliser's work that needs no new stylization while the network runs (OpenCV and
# numpy release the GIL); shared by all stabilisers of the process.
_BESIDE_NETWORK = ThreadPoolExecutor(max_workers=2, thread_name_prefix="stabiliser")


def _core_beside_network(device: torch.device) -> bool:
    """Whether a core is left beside the network: it runs on an accelerator, or on fewer
    threads than the CPU has cores."""
    return device.type != "cpu" or (os.cpu_count() or 1) > torch.get_num_threads()


class Stabilizer:
    """Causal: uses only previous frames, so video jobs and the live feed share it."""

    def __init__(
        self,
        stylize: Stylize | None,
        config: StabilizerConfig = StabilizerConfig(),
        start_phase: tuple[int, int] = (0, 0),
    ) -> None:
        # stylize: see `Stylize`; the caller closes over style statistics, alpha, colour
        # preservation, and places its mix with `placed_mix`. None: the caller runs the
        # network itself between `begin` and `finish`. start_phase: the grid phase (x, y) every
        # shot starts at (`choose_start_phase`).
        self.stylize = stylize
        self.config = config
        self.start_phase = start_phase
        self.flow = FlowEstimator(config)
        self.reset()

    def reset(self) -> None:
        """Forget the previous frames (a new clip, a cut)."""
        self.previous_grey: np.ndarray | None = None
        # The stabiliser's images are (H, W, C) float32 arrays (models.warping).
        self.previous_output: np.ndarray | None = None
        # What is propagated: the output of the current reference's strokes (the output itself
        # but while a renewal fades the old strokes out).
        self.stream: np.ndarray | None = None
        # `premix` of the stream, where the blend premixes.
        self.premixed: Future[np.ndarray] | None = None
        # The output shown when the reference was renewed, moved along with the scene, with
        # where it is still valid (H, W, 1), while it fades out; and how far it has faded.
        self.fading: np.ndarray | None = None
        self.fading_weight: np.ndarray | None = None
        self.fade_step = 0
        # The camera: the map (2, 3) from the current frame's pixels to the reference's, where
        # the grid is aligned; a shot starts at `start_phase`.
        self.camera = _translation(torch.tensor(self.start_phase, dtype=torch.float64))
        # Whether the camera moved by whole pixels since the last frame (WHOLE_PIXEL_PX).
        self.whole_pixel_motion = False
        # A deforming scene: where each frame point lies in the reference beyond the camera's
        # map, (x, y) px on a coarse grid of the frame's points (`_deformation_step` apart);
        # None while the scene moves rigidly.
        self.deformation: np.ndarray | None = None
        # The last frame's second-layer pixels (H, W) bool: kept out of the deformation field,
        # and where a moving object's pixels may come from (`two_motion_flow`).
        self.layer_pixels: np.ndarray | None = None
        # Displacement (x, y), px, of a second moving layer since it was first seen.
        self.layer_displacement = torch.zeros(2, dtype=torch.float64)
        self.second_layer = False
        # The translation of an object found by its edge (`_an_object_with_an_edge`) in this
        # frame and in the last one (OBJECT_STEADY_PX), before it is followed.
        self.object_candidate: Tensor | None = None
        self.last_object_candidate: Tensor | None = None
        self.frames = 0

    def __call__(self, frame: Tensor) -> Tensor:
        """(1, 3, H, W) in [0, 1] -> stylized (1, 3, H, W) in [0, 1]."""
        if self.stylize is None:
            raise TypeError("a Stabilizer made without a stylize callable runs by begin/finish")
        pending = self.begin(frame)
        return self.finish(
            pending, [self.stylize(canvas, placement) for canvas, placement in pending.inputs]
        )

    @torch.inference_mode()
    def begin(self, frame: Tensor) -> Pending:
        """The first half of a frame (1, 3, H, W) in [0, 1], before the network: the flow, the
        tracking and the network's inputs; the previous output starts moving along the flow
        beside the network. A caller that runs the network itself (the live feed, through
        the engine) stylizes `Pending.inputs` and hands the outputs to `finish`, one frame
        at a time."""
        size = (frame.shape[-2], frame.shape[-1])
        if not self.config.enabled:
            return Pending([(frame, Placement.identity(size))])
        grey = grey_uint8(frame)
        if self.previous_grey is not None and self.previous_grey.shape != grey.shape:
            self.reset()  # a new size is a new clip
        flow: Flow | None = None
        layer, renewed, residual = None, False, None
        if self.previous_grey is not None:
            flow = self.flow.backward(grey, self.previous_grey)
            if (
                np.count_nonzero(flow.reliable)
                < self.config.tracking.cut_share * flow.reliable.size
            ):
                self.reset()  # a new shot, stylized as a first frame
                flow = None
        carries = flow is not None and self.stream is not None and self.config.blending.weight > 0
        carried: Future[Carried] | None = None
        if carries and premixes(self.config):
            # The premixed output moves along the flow whatever the tracking finds but a
            # renewal (then made anew below): beside the tracking and the network's input.
            deforming = self.deformation is not None
            carried = _BESIDE_NETWORK.submit(self._carry, flow, False, None, deforming, False)
        moved_by = flow  # the flow the previous output moves along
        if flow is not None and self.config.tracking.align_grid:
            layer, renewed, residual, moved_by = self._track(flow, grey)
        beside = _core_beside_network(frame.device)
        if carries and (carried is None or renewed):
            # Moving the previous frames' images along the flow, and the blend's weights, need
            # no new stylization: they are made beside the network where a core is free for
            # them (otherwise they would only contend with the network's threads for the
            # cores and the interpreter lock), else beside the making of the network's input
            # on a large frame, else here (a small frame's input takes less than the hand-over).
            deforming = self.deformation is not None
            mixed_whole = self.whole_pixel_motion or layer is not None
            arguments = (moved_by, renewed, residual, deforming, mixed_whole)
            if beside or size[0] * size[1] >= OVERLAP_PIXELS:
                carried = _BESIDE_NETWORK.submit(self._carry, *arguments)
            else:
                carried = Future()
                carried.set_result(self._carry(*arguments))
        inputs = self._network_inputs(frame, layer)
        if carried is not None and not beside:
            wait([carried])
        return Pending(inputs, grey, layer, renewed, carried)

    @torch.inference_mode()
    def finish(self, pending: Pending, outputs: list[Tensor]) -> Tensor:
        """The second half: the network's outputs (1, 3, h, w) for `pending.inputs`, in order
        -> the stabilised frame (1, 3, H, W) in [0, 1]."""
        if pending.grey is None:
            return outputs[0]
        stylized = self._back(pending, outputs)
        renewed, carried = pending.renewed, pending.carried
        stream = stylized
        if carried is not None:
            moved = carried.result()
            if renewed and self.config.renewal.fade:
                self.fading, self.fading_weight, self.fade_step = moved.fading, moved.valid, 0
            else:
                stream = moved.blend(stylized, self.config)
                if self.fading is not None:
                    self.fading, self.fading_weight = moved.fading, moved.fading_weight
                    self.fade_step += 1
        output = stream
        if self.fading is not None and self.fade_step < len(self.config.renewal.fade):
            share = self.config.renewal.fade[self.fade_step] * self.fading_weight
            output = np.clip(mix(self.fading, stream, share, self.config), 0, 1)
        else:
            self.fading = self.fading_weight = None
        self.previous_grey, self.stream, self.previous_output = pending.grey, stream, output
        if premixes(self.config):
            # Made beside what follows (the encoding, the next frame's decoding).
            self.premixed = _BESIDE_NETWORK.submit(premix, stream, self.config)
        self.frames += 1
        return to_tensor(output, outputs[0].device)

    def _carry(
        self,
        flow: Flow,
        renewed: bool,
        residual: np.ndarray | None,
        deforming: bool,
        mixed_whole: bool,
    ) -> Carried:
        """The previous frames' images moved along the flow onto this frame, where they are
        valid (reliable flow, trusted less near the border), and the blend's weights;
        `deforming`: the deformation field is followed (`Blending.deforming_resample`);
        `mixed_whole`: the images may be mixed whole where the scene is rigid, though
        `Blending.rigid_mix_subpixel` is off."""
        blending = self.config.blending
        valid = flow.reliable.astype(np.float32)[..., None]
        size = (valid.shape[0], valid.shape[1])
        if blending.border_trust_px > 0:
            valid *= flow.maps.warp(border_trust(size, blending.border_trust_px))
        resample = blending.resample, blending.deforming_resample if deforming else None
        if renewed and self.config.renewal.fade:
            return Carried(valid, fading=flow.maps.warp(self.previous_output, *resample))
        if premixes(self.config):
            premixed = self.premixed.result() if self.premixed is not None else None
            if premixed is None:  # resumed from a state_dict
                premixed = premix(self.stream, self.config)
            moved = Carried(valid, premixed=flow.maps.warp(premixed, *resample))
        else:
            stream = flow.maps.warp(self.stream, *resample)
            weight = np.multiply(valid, np.float32(blending.weight))
            whole = mixed_whole or blending.rigid_mix_subpixel
            if blending.rigid_contrast_window > 0 and not deforming and whole:
                share = None if residual is None else _deforming_share(residual)
                moved = Carried(valid, stream, weight=weight, mean_contrast=share)  # mixed whole
            else:
                sigma = blending.detail_sigma
                moved = Carried(
                    valid,
                    stream,
                    low_pass(stream, sigma, banded=True) if sigma > 0 else stream,
                    weight,
                    np.multiply(valid, self._detail_share(residual)),
                )
        if self.fading is not None and self.fading_weight is not None:
            moved.fading = flow.maps.warp(self.fading, *resample)
            moved.fading_weight = flow.maps.warp(self.fading_weight) * valid
        return moved

    def _detail_share(self, residual: np.ndarray | None) -> np.ndarray | float:
        """The propagated output's share of the fine detail: `detail_weight` where the aligned
        motions explain the flow, rising to `nonrigid_detail_weight` where the scene deforms
        (`residual` (H, W): px per frame the flow departs from them; None: not tracked)."""
        blending = self.config.blending
        if residual is None or blending.nonrigid_detail_weight == blending.detail_weight:
            return blending.detail_weight
        rise = blending.nonrigid_detail_weight - blending.detail_weight
        return blending.detail_weight + rise * _deforming_share(residual)

    def _track(
        self, estimate: Flow, grey: np.ndarray
    ) -> tuple[np.ndarray | None, bool, np.ndarray | None, Flow]:
        """Follow the camera and, with two layers, a second motion; returns the second layer's
        pixels (H, W) bool, or None when there is no second motion, whether the reference
        was renewed, how far (px, (H, W)) the flow is from the nearest aligned motion
        (None where nothing uses it), and the flow the previous output moves along: with a
        moving object, the two motions' (`two_motion_flow`, `deforming_two_motion_flow` on a
        deforming scene), else `estimate`."""
        flow, reliable = estimate.flow, estimate.reliable
        size = (flow.shape[0], flow.shape[1])
        self.last_object_candidate, self.object_candidate = self.object_candidate, None
        if self.config.tracking.similarity:
            motion = fit_similarity(flow, reliable)
            if _corner_shift(motion[:, :2], size) < LINEAR_NOISE_PX:
                motion = _translation(median_motion(flow, reliable))
        else:
            motion = _translation(median_motion(flow, reliable))
        self.whole_pixel_motion = _moves_whole_pixels(motion, size)
        previous_camera = self.camera
        self.camera = _compose(self.camera, motion)
        renewed = self._renew_reference(size)
        layer, distance, second = self._layers(estimate, motion)
        increment = None
        if self.config.tracking.deforming:
            # The field follows what no layer explains: this frame's layer and the last one's
            # moved along the flow (a moving object is a layer of its own, not a deformation).
            excluded = layer
            if self.layer_pixels is not None:
                moved = estimate.maps.warp(self.layer_pixels.view(np.uint8), "nearest") > 0
                excluded = moved if layer is None else moved | layer
            renewed, increment = self._follow_deformation(
                estimate, excluded, motion, previous_camera, renewed
            )
            if layer is None and increment is not None:
                # Apart from the camera and the deformation, something may still move as one.
                layer, distance, second = self._layers(estimate, motion, increment)
        moved_by, object_pixels = estimate, layer
        if second is not None and layer is not None and self.previous_grey is not None:
            second = refine_translation(grey, self.previous_grey, layer, second)
            if self.deformation is None:
                moved_by, object_pixels = two_motion_flow(
                    grey, self.previous_grey, motion, second, self.layer_pixels
                )
            elif increment is not None:
                field_flow = _field_on_pixels(increment, size, _deformation_step(size))
                camera_x, camera_y = _affine_flow(motion, size)
                field_flow[..., 0] += camera_x
                field_flow[..., 1] += camera_y
                moved_by, object_pixels = deforming_two_motion_flow(
                    grey,
                    self.previous_grey,
                    estimate,
                    field_flow,
                    second,
                    (self.layer_pixels, layer),
                )
        # The object's own pixels where its motion matches them (DIS's layer widens it by
        # the band where the flow runs between the two motions).
        self.layer_pixels = object_pixels
        if second is None:
            self.second_layer = False
        else:
            if not self.second_layer:  # a new layer starts on the phase the frame had there
                self.layer_displacement = -_centre_translation(previous_camera, size)
                self.second_layer = True
            self.layer_displacement -= second
        return layer, renewed, distance, moved_by

    def _layers(
        self, estimate: Flow, motion: Tensor, deformation: np.ndarray | None = None
    ) -> tuple[np.ndarray | None, np.ndarray | None, Tensor | None]:
        """With two layers, a second motion's pixels (H, W) bool (None when there is none),
        how far (px, (H, W)) the flow is from the nearest aligned motion (None where nothing
        uses it) and the second motion's backward translation. The aligned motions: the
        camera's `motion`, with a deforming scene's increment of the frame (its field's grid,
        in the frame's axes) on top. Told apart on the flow's own samples (every
        `estimate.scale`-th pixel) and scaled up."""
        flow, reliable = estimate.flow, estimate.reliable
        size = (flow.shape[0], flow.shape[1])
        blending = self.config.blending
        if (
            self.config.tracking.motion_layers < 2
            and blending.nonrigid_detail_weight == blending.detail_weight
        ):
            return None, None, None  # the distance would go unused (`_detail_share`)
        k = int(estimate.scale)
        field_step = _deformation_step(size) / k
        layer, distance, second = self._sampled_layers(
            flow[::k, ::k], reliable[::k, ::k], motion, k, deformation, field_step
        )
        if k > 1:
            frame = (size[1], size[0])
            distance = cv2.resize(distance, frame, interpolation=cv2.INTER_LINEAR)
            if layer is not None:
                layer = cv2.resize(layer.view(np.uint8), frame, interpolation=cv2.INTER_NEAREST)
                layer = layer.view(bool)
        return layer, distance, second

    def _sampled_layers(
        self,
        flow: np.ndarray,
        reliable: np.ndarray,
        motion: Tensor,
        step: int,
        deformation: np.ndarray | None,
        field_step: float,
    ) -> tuple[np.ndarray | None, np.ndarray, Tensor | None]:
        """`_layers` on the frame's pixels `step` apart (the field's grid `field_step` of
        them apart)."""
        explained_x, explained_y = _affine_flow(motion, (flow.shape[0], flow.shape[1]), step)
        if deformation is not None:
            on_frame = _field_on_pixels(deformation, (flow.shape[0], flow.shape[1]), field_step)
            explained_x, explained_y = (
                explained_x + on_frame[..., 0],
                explained_y + on_frame[..., 1],
            )
        distance = cv2.magnitude(flow[..., 0] - explained_x, flow[..., 1] - explained_y)
        if self.config.tracking.motion_layers < 2:
            return None, distance, None
        apart = reliable & (distance > SECOND_LAYER_APART)
        if np.count_nonzero(apart) < SECOND_LAYER_SHARE * apart.size:
            return None, distance, None
        second = median_motion(flow, apart)
        closer = _distance_from(flow, second)
        if self.config.tracking.deforming and not _most_move_as_one(apart, closer):
            # Over a deforming scene an object's pixels may be fewer than the deforming ones
            # apart from the camera's motion, and the median of all then matches neither: the
            # most common motion may be an object's, told from a deformation by its edge.
            second = dominant_translation(flow, apart)
            closer = _distance_from(flow, second)
            if not _an_object_with_an_edge(apart, closer, reliable):
                # They deform: the deformation field follows them (`_follow_deformation`).
                return None, distance, None
            self.object_candidate, last = second, self.last_object_candidate
            steady = last is not None and float((second - last).norm()) < OBJECT_STEADY_PX
            if not (self.second_layer or steady):
                return None, distance, None
        return (closer < distance) & reliable, np.minimum(closer, distance), second

    def _follow_deformation(
        self,
        estimate: Flow,
        excluded: np.ndarray | None,
        motion: Tensor,
        previous_camera: Tensor,
        renewed: bool,
    ) -> tuple[bool, np.ndarray | None]:
        """Carry the deformation field along the flow and add this frame's: the part of the
        flow the camera's motion does not explain, smoothed where the flow is reliable (and
        not `excluded`: a layer's), in the reference's axes. A rigid scene leaves it None.
        Returns whether the reference is renewed (also when the field strains the strokes past
        `renewal.strain_range`: they are drawn afresh, the field starts again), and this
        frame's increment in the frame's axes while the field is followed (else None)."""
        if renewed:
            self.deformation = None
            return True, None
        flow, reliable = estimate.flow, estimate.reliable
        step = _deformation_step((flow.shape[0], flow.shape[1]))
        samples = flow[::step, ::step]
        trusted = reliable[::step, ::step]
        if excluded is not None:
            # With the band around the layer where DIS's flow runs between its motion and
            # the scene's (its windows straddle the edge).
            near = cv2.dilate(excluded[::step, ::step].view(np.uint8), _LAYER_MARGIN)
            trusted = trusted & (near == 0)
        camera_x, camera_y = _affine_flow(motion, samples.shape[:2], step)
        departure = cv2.merge([samples[..., 0] - camera_x, samples[..., 1] - camera_y])
        increment = _normalised_blur(departure, trusted.astype(np.float32))
        # DIS's noise is in the pixels of the frames it saw: scaled up with the flow.
        deforms = trusted & (
            cv2.magnitude(increment[..., 0], increment[..., 1]) >= NONRIGID_FROM_PX * estimate.scale
        )
        moving = np.count_nonzero(deforms) >= DEFORMING_SHARE * max(1, np.count_nonzero(trusted))
        if self.deformation is None and not moving:
            return False, None
        field = (
            np.zeros_like(increment)
            if self.deformation is None or self.deformation.shape != increment.shape
            else self._carried_deformation(samples, step)
        )
        if moving:
            # In the reference's axes: the camera's linear part before this frame's motion.
            field += cv2.transform(increment, np.asarray(previous_camera[:, :2], np.float32))
        else:
            increment[:] = 0
        if _field_strain(field, step) > self.config.renewal.strain_range:
            self.deformation = None
            return True, None
        self.deformation = field
        return False, increment

    def _carried_deformation(self, samples: np.ndarray, step: int) -> np.ndarray:
        """The field moved along the backward flow sampled on its grid (`samples`, px)."""
        assert self.deformation is not None
        grid = pixel_points(*samples.shape[:2])
        points = cv2.scaleAdd(samples, 1 / step, grid)
        return cv2.remap(
            self.deformation, points, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )

    def _renew_reference(self, size: tuple[int, int]) -> bool:
        """Past the scale or angle range the reference is renewed on the mirrored side (the
        same share of the range on the other side, a little inside it so that a zoom turning
        back does not renew it again at once): a steady zoom or rotation sweeps the whole
        range. The frame's centre keeps its place on the grid."""
        linear = self.camera[:, :2]
        (a, b), (c, d) = linear.tolist()
        # ln scale < 0: the frame is shrunk into the reference, the strokes magnified back.
        log_scale = 0.5 * math.log(abs(a * d - b * c))
        angle = math.atan2(c, a)
        magnify, minify = self.config.renewal.magnify_range, self.config.renewal.minify_range
        angle_range = self.config.renewal.angle_range
        if -magnify <= log_scale <= minify and abs(angle) <= angle_range:
            return False
        side, other = (magnify, minify) if log_scale < 0 else (minify, magnify)
        log_scale = -_mirrored_share(log_scale, side) * other
        angle = -_mirrored_share(angle, angle_range) * angle_range
        cos, sin = math.exp(log_scale) * math.cos(angle), math.exp(log_scale) * math.sin(angle)
        renewed = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64)
        centre = _centre(size)
        offset = linear @ centre + self.camera[:, 2]  # where the centre is now
        self.camera = torch.cat([renewed, (offset - renewed @ centre)[:, None]], dim=1)
        return True

    def _placement(self, size: tuple[int, int]) -> Placement:
        """Where the frame goes on the network's input so that the scene falls on the
        reference's grid: a whole-pixel shift while the camera is close enough to a whole-pixel
        translation, a resampling into the reference's grid otherwise."""
        if self.deformation is None:
            return self._rigid_placement(size, self.camera)
        canvas, to_canvas = self._canvas(
            size, self.camera, 3 + float(np.abs(self.deformation).max())
        )
        return self._dense_placement(size, canvas, to_canvas, _invert(to_canvas))

    def _rigid_placement(self, size: tuple[int, int], camera: Tensor) -> Placement:
        """The frame placed by an affine `camera` (frame -> reference) alone: a whole-pixel
        shift where it is close enough to one, else resampled (`Tracking.subpixel`)."""
        shift = -_centre_translation(camera, size)
        fraction = float((shift - torch.round(shift)).abs().max())
        whole = not self.config.tracking.subpixel or fraction < SUBPIXEL_TOLERANCE_PX
        if whole and _corner_shift(camera[:, :2], size) < INTEGER_TOLERANCE_PX:
            return Placement.shift(size, _phase(shift))
        canvas, to_canvas = self._canvas(size, camera, 3)
        return Placement(size, canvas, _invert(to_canvas), False)

    @staticmethod
    def _canvas(
        size: tuple[int, int], camera: Tensor, margin: float
    ) -> tuple[tuple[int, int], Tensor]:
        """The canvas (H, W) around the frame's footprint in the reference, its origin on a
        multiple of the stride (the reference's grid), `margin` px around it (the resampling
        taps of the way back, and as far as a deformation reaches), and the frame -> canvas map."""
        footprint = _frame_corners(size) @ camera.T  # the frame's corners in the reference
        low = torch.floor((footprint.amin(0) - margin) / FEATURE_STRIDE) * FEATURE_STRIDE
        high = torch.ceil(footprint.amax(0) + margin)
        canvas = (int(high[1] - low[1]) + 1, int(high[0] - low[0]) + 1)
        return canvas, camera - torch.cat([torch.zeros(2, 2, dtype=torch.float64), low[:, None]], 1)

    def _dense_placement(
        self, size: tuple[int, int], canvas: tuple[int, int], to_canvas: Tensor, to_frame: Tensor
    ) -> Placement:
        """The placement through the camera's map and the deformation field: frame pixel p lies
        at the canvas's to_canvas(p) + deformation(p); the way from the canvas to the frame
        inverts that by fixed-point steps (the field is smooth and displaces by a few px) on
        a grid of the canvas's points, and its displacement from to_frame is interpolated
        between them."""
        assert self.deformation is not None
        step = _deformation_step(size)
        field = self.deformation
        canvas_points = cv2.transform(pixel_points(*size), np.asarray(to_canvas, np.float32))
        canvas_points += _field_on_pixels(field, size, step)
        to_frame_map = np.asarray(to_frame, dtype=np.float32)
        spacing = _grid_spacing(step)
        start = cv2.transform(_grid_nodes(canvas, spacing), to_frame_map)
        inverse_linear = to_frame_map[:, :2]
        displacement = np.zeros_like(start)
        for _ in range(INVERSION_STEPS):
            points = cv2.add(start, displacement) * np.float32(1 / step)
            displaced = cv2.remap(
                field, points, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
            )
            displacement = -cv2.transform(displaced, inverse_linear)
        frame_points = cv2.transform(pixel_points(*canvas), to_frame_map)
        frame_points += _on_pixels(displacement, canvas, spacing)
        return Placement(size, canvas, to_frame, False, frame_points, canvas_points)

    def _network_inputs(
        self, frame: Tensor, layer: np.ndarray | None
    ) -> list[tuple[Tensor, Placement]]:
        """The frame (1, 3, H, W) placed on the aligned grid, and with a second motion layer on
        that layer's phase too (when it differs): the network's inputs."""
        size = (frame.shape[-2], frame.shape[-1])
        placement = (
            self._placement(size) if self.config.tracking.align_grid else Placement.identity(size)
        )
        resample = self.config.tracking.resample
        inputs = [(placement.place_frame(frame, resample), placement)]
        if layer is None:
            return inputs
        # The object's own motion is followed to the sub-pixel, as the camera's is.
        second = self._rigid_placement(size, _translation(-self.layer_displacement))
        if placement.frame_points is not None or not torch.equal(
            second.to_frame, placement.to_frame
        ):
            inputs.append((second.place_frame(frame, resample), second))
        return inputs

    def _back(self, pending: Pending, outputs: list[Tensor]) -> np.ndarray:
        """The network's outputs taken back onto the frame's pixels, as one (H, W, 3) array:
        the second layer's pixels from its own stylization (`Tracking.sharpen_back`)."""
        tracking = self.config.tracking

        def back(placement: Placement, output: Tensor) -> np.ndarray:
            resample = tracking.resample
            if resample == "lanczos" and tracking.sharpen_back and placement.canvas_points is None:
                resample = "sharp_lanczos"
            return placement.back_image(output, resample)

        stylized = back(pending.inputs[0][1], outputs[0])
        if len(outputs) > 1 and pending.layer is not None:
            restyled = back(pending.inputs[1][1], outputs[1])
            stylized[pending.layer] = restyled[pending.layer]
        return stylized

    def state_dict(self) -> dict[str, Tensor]:
        """Enough to resume after the last frame: the previous input (as DIS saw it), the
        previous output and what is propagated, the tracked camera and layer, a renewal's
        fading strokes, the count of the shot's frames, and the phase shots start at."""
        start_phase = torch.tensor(self.start_phase)
        if self.previous_grey is None or self.previous_output is None or self.stream is None:
            return {"frames": torch.tensor(self.frames), "start_phase": start_phase}
        state = {
            "frames": torch.tensor(self.frames),
            "start_phase": start_phase,
            "previous_grey": torch.from_numpy(self.previous_grey.copy()),
            "previous_output": to_tensor(self.previous_output.copy()),
            "stream": to_tensor(self.stream.copy()),
            "camera": self.camera.clone(),
            "layer_displacement": self.layer_displacement.clone(),
            "second_layer": torch.tensor(self.second_layer),
        }
        if self.deformation is not None:
            state["deformation"] = torch.from_numpy(self.deformation.copy())
        if self.layer_pixels is not None:
            state["layer_pixels"] = torch.from_numpy(self.layer_pixels.copy())
        if self.object_candidate is not None:
            state["object_candidate"] = self.object_candidate.clone()
        if self.fading is not None and self.fading_weight is not None:
            state["fading"] = to_tensor(self.fading.copy())
            state["fading_weight"] = to_tensor(self.fading_weight.copy())
            state["fade_step"] = torch.tensor(self.fade_step)
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if "start_phase" in state:  # absent from checkpoints of before the choice
            x, y = state["start_phase"].tolist()
            self.start_phase = (int(x), int(y))
        self.reset()
        self.frames = int(state["frames"])
        if "previous_output" in state:
            self.previous_grey = state["previous_grey"].numpy().copy()
            self.previous_output = to_image(state["previous_output"])
            # Checkpoints from before the renewal's fade propagated the output itself.
            self.stream = to_image(state.get("stream", state["previous_output"]))
            self.second_layer = bool(state["second_layer"])
            if "camera" in state:
                self.camera = state["camera"].clone().double()
                self.layer_displacement = state["layer_displacement"].clone().double()
            else:  # a checkpoint of the translation-only stabiliser: rows camera, layer
                displacement = state["displacement"].double()
                self.camera = _translation(-displacement[0])
                self.layer_displacement = displacement[1].clone()
        if "deformation" in state:
            self.deformation = state["deformation"].numpy().copy()
        if "layer_pixels" in state:
            self.layer_pixels = state["layer_pixels"].numpy().copy()
        if "object_candidate" in state:
            self.object_candidate = state["object_candidate"].clone().double()
        if "fading" in state:
            self.fading = to_image(state["fading"])
            self.fading_weight = to_image(state["fading_weight"])
            self.fade_step = int(state["fade_step"])


_IDENTITY = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)


def _deforming_share(residual: np.ndarray) -> np.ndarray:
    """(H, W, 1) float32 in [0, 1]: how far the scene deforms beyond the aligned motions at
    each pixel, from `residual` (H, W) px per frame (NONRIGID_FROM_PX .. NONRIGID_FULL_PX)."""
    ramp = (residual - NONRIGID_FROM_PX) / (NONRIGID_FULL_PX - NONRIGID_FROM_PX)
    return np.clip(ramp, 0, 1).astype(np.float32, copy=False)[..., None]


def _disc(radius: int) -> np.ndarray:
    """A disc of `radius` px: the structuring element that widens a mask by it."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


# The band kept out of the deformation field around a layer: 2 cells each way (on the
# frame's pixels, the band whose pixels the two motions let come from the object).
_LAYER_MARGIN = _disc(2)
_LAYER_EDGE = _disc(LAYER_EDGE_PX)
_DEFORMING_LAYER_EDGE = _disc(DEFORMING_LAYER_EDGE_PX)
_LAYER_BAND = _disc(LAYER_BAND_PX)


def _normalised_blur(values: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """`values` (h, w, 2) smoothed where `weight` (h, w) is 1 and filled in where it is 0
    (normalised convolution) over DEFORMATION_SIGMA_CELLS, a window four times wider taking
    over smoothly where that one holds too few weighted points (a large occluded or excluded
    region)."""
    weighted = values * weight[..., None]
    narrow, wide = DEFORMATION_SIGMA_CELLS, 4 * DEFORMATION_SIGMA_CELLS
    spread = gaussian_blur(weight, narrow) + WIDE_FILL_SHARE * gaussian_blur(weight, wide)
    total = gaussian_blur(weighted, narrow) + WIDE_FILL_SHARE * gaussian_blur(weighted, wide)
    return total / np.maximum(spread, 1e-6)[..., None]


def _distance_from(flow: np.ndarray, translation: Tensor) -> np.ndarray:
    """How far (px) the flow (H, W, 2) is from a translation (x, y), per pixel."""
    dx, dy = translation.tolist()
    return cv2.magnitude(flow[..., 0] - np.float32(dx), flow[..., 1] - np.float32(dy))


def _most_move_as_one(apart: np.ndarray, closer: np.ndarray) -> bool:
    """Whether most pixels apart from the aligned motions (`apart` (H, W) bool) move as one
    object (`closer`: px from its translation), not as a deformation."""
    fitting = np.count_nonzero(apart & (closer < RIGID_LAYER_PX))
    return fitting >= max(
        RIGID_LAYER_SHARE * np.count_nonzero(apart), RIGID_LAYER_MIN_SHARE * apart.size
    )


def _an_object_with_an_edge(apart: np.ndarray, closer: np.ndarray, reliable: np.ndarray) -> bool:
    """Whether one connected region of the pixels apart from the aligned motions moves as one
    object (`closer`: px from its translation; `reliable`: the pixels whose flow counts) and
    stops at an edge (OBJECT_EDGE_PX, OBJECT_GROWTH)."""
    fitting = (apart & (closer < RIGID_LAYER_PX)).view(np.uint8)
    regions, labels, stats, _ = cv2.connectedComponentsWithStats(fitting)
    if regions < 2:
        return False
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    area = int(stats[largest, cv2.CC_STAT_AREA])
    if area < RIGID_LAYER_MIN_SHARE * apart.size:
        return False
    wider = (reliable & (closer < OBJECT_EDGE_PX)).view(np.uint8)
    _, wider_labels, wider_stats, _ = cv2.connectedComponentsWithStats(wider)
    holding = wider_labels.reshape(-1)[int(np.argmax(labels.reshape(-1) == largest))]
    return int(wider_stats[holding, cv2.CC_STAT_AREA]) <= OBJECT_GROWTH * area


def _deformation_step(size: tuple[int, int]) -> int:
    """Frame pixels between two points of the deformation field's grid."""
    return max(1, min(size) // DEFORMATION_CELLS)


def _grid_spacing(step: float) -> float:
    """The spacing (px) of the grid on which a deformation field is resampled and inverted:
    INVERSE_GRID_SHARE times finer than the field's, no finer than the pixels."""
    return max(1.0, step / INVERSE_GRID_SHARE)


@lru_cache(maxsize=8)
def _grid_nodes(size: tuple[int, int], spacing: float) -> np.ndarray:
    """(x, y), (n, m, 2) float32, of a grid of points `spacing` px apart that covers `size`
    (H, W) and a little past it on every side, where `_on_pixels` interpolates between them:
    OpenCV's resize samples at pixel centres, node j at (j + 0.5) spacing - 0.5, here counted
    from `_grid_margin` px before the first pixel (so that no pixel falls past the nodes,
    where resize would hold the last value)."""
    margin = _grid_margin(spacing)
    height, width = size
    rows, columns = (math.ceil((side + margin) / spacing) + 1 for side in (height, width))
    xs = (np.arange(columns) + 0.5) * spacing - 0.5 - margin
    ys = (np.arange(rows) + 0.5) * spacing - 0.5 - margin
    grid = np.meshgrid(xs.astype(np.float32), ys.astype(np.float32))
    nodes = cv2.merge(grid)
    nodes.flags.writeable = False
    return nodes


def _grid_margin(spacing: float) -> int:
    return math.ceil(spacing / 2)


def _on_pixels(values: np.ndarray, size: tuple[int, int], spacing: float) -> np.ndarray:
    """`values` (n, m, 2) given at `_grid_nodes(size, spacing)`, at every pixel of `size`
    (H, W), bilinear: OpenCV's resize, several times faster than a warp or a remap."""
    height, width = size
    margin = _grid_margin(spacing)
    upsampled = cv2.resize(values, None, fx=spacing, fy=spacing, interpolation=cv2.INTER_LINEAR)
    return upsampled[margin : margin + height, margin : margin + width]


def _field_on_pixels(field: np.ndarray, size: tuple[int, int], step: float) -> np.ndarray:
    """A deformation field (or its increment) on its grid (points `step` px apart from the
    first pixel) at every pixel of `size` (H, W), bilinear."""
    spacing = _grid_spacing(step)
    nodes = _grid_nodes(size, spacing) * np.float32(1 / step)
    at_nodes = cv2.remap(field, nodes, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return _on_pixels(at_nodes, size, spacing)


def _field_strain(field: np.ndarray, step: int) -> float:
    """How far a deformation field strains the strokes (px per px): the largest of its four
    derivatives, on its grid, at the cells where all but STRAIN_OUTLIERS of them stay. A patch
    of wrong flow (DIS matching the wrong one of repeated letters) strains the field there,
    and must not redraw the whole frame's strokes."""
    if min(field.shape[:2]) < 2:
        return 0.0
    derivatives = [np.gradient(field[..., axis], axis=(0, 1)) for axis in range(2)]
    largest = np.max(np.abs([part for pair in derivatives for part in pair]), axis=0)
    return float(np.quantile(largest, 1 - STRAIN_OUTLIERS)) / step


def _mirrored_share(value: float, side: float) -> float:
    """Where `value` lies on its side of a range, as a share of the side, at most
    RENEWED_SHARE either way."""
    return max(-RENEWED_SHARE, min(RENEWED_SHARE, value / side))


def _stride_multiple(side: int) -> int:
    """The first multiple of the network's stride at or above `side`."""
    return -(-side // FEATURE_STRIDE) * FEATURE_STRIDE


def _phase(displacement: Tensor) -> tuple[int, int]:
    """The grid phase (x, y) in [0, 8) that puts a scene moved by `displacement` back."""
    shift = torch.round(displacement).long()
    return int(-shift[0]) % FEATURE_STRIDE, int(-shift[1]) % FEATURE_STRIDE


def _frame_corners(size: tuple[int, int]) -> Tensor:
    """The frame's corner pixels (4, 3) (x, y, 1) float64."""
    height, width = size
    return torch.tensor(
        [[0, 0, 1], [width - 1, 0, 1], [0, height - 1, 1], [width - 1, height - 1, 1]],
        dtype=torch.float64,
    )


def _centre(size: tuple[int, int]) -> Tensor:
    return torch.tensor([(size[1] - 1) / 2, (size[0] - 1) / 2], dtype=torch.float64)


def _centre_translation(affine: Tensor, size: tuple[int, int]) -> Tensor:
    """How far `affine` moves the frame's centre (x, y)."""
    centre = _centre(size)
    return affine[:, :2] @ centre + affine[:, 2] - centre


def _moves_whole_pixels(motion: Tensor, size: tuple[int, int]) -> bool:
    """Whether a frame-to-frame motion (2, 3) is a translation by whole pixels, to WHOLE_PIXEL_PX
    at the frame's corners."""
    if _corner_shift(motion[:, :2], size) > WHOLE_PIXEL_PX:
        return False
    return max(abs(offset - round(offset)) for offset in motion[:, 2].tolist()) <= WHOLE_PIXEL_PX


def _corner_shift(linear: Tensor, size: tuple[int, int]) -> float:
    """The most a linear part (2, 2) about the frame's centre moves a frame corner, px. On
    Python floats: torch's small operations cost far more than this arithmetic."""
    (a, b), (c, d) = linear.tolist()
    half_x, half_y = (size[1] - 1) / 2, (size[0] - 1) / 2
    return max(
        math.hypot((a - 1) * half_x + b * y, c * half_x + (d - 1) * y) for y in (half_y, -half_y)
    )


def _translation(shift: Tensor) -> Tensor:
    return torch.cat([torch.eye(2, dtype=torch.float64), shift.double()[:, None]], dim=1)


def _compose(outer: Tensor, inner: Tensor) -> Tensor:
    """The affine map (2, 3) p -> outer(inner(p))."""
    return torch.cat(
        [outer[:, :2] @ inner[:, :2], (outer[:, :2] @ inner[:, 2] + outer[:, 2])[:, None]], 1
    )


def _invert(affine: Tensor) -> Tensor:
    inverse = torch.linalg.inv(affine[:, :2])
    return torch.cat([inverse, (-inverse @ affine[:, 2])[:, None]], dim=1)


def _affine_flow(
    affine: Tensor, size: tuple[int, int], step: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """The backward flow (x, y), `size` float32 each, of a frame-to-previous-frame map at the
    frame's points `step` px apart (every pixel: 1); 0-d for a translation (the same
    everywhere: it broadcasts, without eight passes over the frame)."""
    a, b, c, d, e, f = np.asarray(affine, dtype=np.float32).reshape(-1)
    if a == 1 and b == 0 and d == 0 and e == 1:
        return np.full((), c, dtype=np.float32), np.full((), f, dtype=np.float32)
    xs, ys = pixel_grid(*size)
    if step > 1:
        xs, ys = xs * np.float32(step), ys * np.float32(step)
    return (a - 1) * xs + b * ys + c, d * xs + (e - 1) * ys + f


def fit_similarity(flow: np.ndarray, reliable: np.ndarray) -> Tensor:
    """The similarity (2, 3) float64 (scale, rotation, translation) from the current frame's
    pixels to the previous frame's that best explains the backward flow (H, W, 2) on the
    reliable pixels ((H, W) bool; every `step`-th row and column, about SIMILARITY_SAMPLES):
    least squares, refitted twice without the pixels it explains worst (a moving object), so
    the camera's motion is what it finds. Too few reliable pixels: the identity."""
    height, width = flow.shape[:2]
    step = max(4, int(math.sqrt(height * width / SIMILARITY_SAMPLES)))
    mask = reliable[::step, ::step].reshape(-1)
    if np.count_nonzero(mask) < 16:
        return _IDENTITY.clone()
    centre = _centre((height, width)).numpy()
    ys, xs = np.meshgrid(
        np.arange(0, height, step, dtype=np.float64),
        np.arange(0, width, step, dtype=np.float64),
        indexing="ij",
    )
    px, py = xs.reshape(-1) - centre[0], ys.reshape(-1) - centre[1]
    fx, fy = flow[::step, ::step, 0].reshape(-1), flow[::step, ::step, 1].reshape(-1)
    qx, qy = px + fx, py + fy
    ones, zeros = np.ones_like(px), np.zeros_like(px)
    # q = [[a, -b], [b, a]] p + t: unknowns (a, b, tx, ty).
    rows = np.concatenate([np.stack([px, -py, ones, zeros], 1), np.stack([py, px, zeros, ones], 1)])
    targets = np.concatenate([qx, qy])
    # The first fit takes the samples near the median motion: with a moving object covering up
    # to half the frame, least squares over every sample turn a pan into a zoom or a rotation.
    residual = np.hypot(fx - np.median(fx[mask]), fy - np.median(fy[mask]))
    inliers = mask & (residual <= max(0.5, 3 * float(np.median(residual[mask]))))
    for _ in range(3):
        keep = np.concatenate([inliers, inliers])
        a, b, tx, ty = np.linalg.lstsq(rows[keep], targets[keep], rcond=None)[0]
        residual = np.hypot(a * px - b * py + tx - qx, b * px + a * py + ty - qy)
        limit = max(0.5, 3 * float(np.median(residual[inliers])))
        inliers = mask & (residual <= limit)
        if np.count_nonzero(inliers) < 16:
            break
    linear = np.array([[a, -b], [b, a]])
    offset = np.array([tx, ty]) + centre - linear @ centre
    return torch.from_numpy(np.concatenate([linear, offset[:, None]], axis=1))


def median_motion(flow: np.ndarray, reliable: np.ndarray) -> Tensor:
    """The median backward flow (x, y) over the reliable pixels (every k-th row and column,
    about MEDIAN_SAMPLES): minus their motion."""
    step = max(1, int(math.sqrt(reliable.size / MEDIAN_SAMPLES)))
    reliable, flow = reliable[::step, ::step], flow[::step, ::step]
    if np.count_nonzero(reliable) < 16:
        return torch.zeros(2, dtype=torch.float64)
    return torch.from_numpy(np.median(flow[reliable], axis=0).astype(np.float64))


def dominant_translation(flow: np.ndarray, pixels: np.ndarray) -> Tensor:
    """The backward flow (x, y) most of `pixels` ((H, W) bool) share: the peak of their flow's
    histogram (DOMINANT_BIN_PX bins, summed over 3 x 3), refined to the median of the flow
    within 2 bins of it. Where a moving object's pixels are mixed with a deforming scene's,
    the median of all would lie between their motions, matching neither."""
    step = max(1, int(math.sqrt(pixels.size / MEDIAN_SAMPLES)))
    pixels, flow = pixels[::step, ::step], flow[::step, ::step]
    if np.count_nonzero(pixels) < 16:
        return torch.zeros(2, dtype=torch.float64)
    samples = flow[pixels]
    low = samples.min(axis=0)
    bins = np.minimum((samples - low) / DOMINANT_BIN_PX, DOMINANT_BINS - 1).astype(np.int64)
    shape = (int(bins[:, 1].max()) + 1, int(bins[:, 0].max()) + 1)
    counts = np.bincount(bins[:, 1] * shape[1] + bins[:, 0], minlength=shape[0] * shape[1])
    summed = cv2.boxFilter(counts.reshape(shape).astype(np.float32), -1, (3, 3), normalize=False)
    row, column = np.unravel_index(int(np.argmax(summed)), shape)
    peak = low + (np.array([column, row]) + 0.5) * DOMINANT_BIN_PX
    near = np.hypot(*(samples - peak).T) <= 2 * DOMINANT_BIN_PX
    found = np.median(samples[near], axis=0) if near.any() else peak
    return torch.from_numpy(found.astype(np.float64))


def propagate(
    stylized: np.ndarray,
    warped: np.ndarray,
    warped_smooth: np.ndarray | None,
    weight: np.ndarray,
    detail_weight: np.ndarray | None,
    config: StabilizerConfig,
    mean_contrast: np.ndarray | None = None,
) -> np.ndarray:
    """The new stylization with the propagated previous output `warped` (its low-pass band
    `warped_smooth`) blended in: on the low-pass band by `weight` (H, W, 1), keeping its
    contrast, on the finer detail by `detail_weight` (H, W, 1); `warped_smooth` None: the whole
    images by `weight`, keeping the contrast (`Blending.rigid_contrast_window`; the parts'
    mean contrast by the share `mean_contrast` (H, W, 1))."""
    if warped_smooth is None:
        output = contrast_preserving_mix(
            warped, stylized, weight, config.blending.rigid_contrast_window, mean_contrast
        )
        return np.clip(output, 0, 1, out=output)
    assert detail_weight is not None
    if config.blending.detail_sigma <= 0:
        return weight * warped + (1 - weight) * stylized
    smooth = low_pass(stylized, config.blending.detail_sigma)
    output = mix(warped_smooth, smooth, weight, config)
    # The inputs are left as they are: `in_bands` hands overlapping views to its threads.
    warped_detail = np.subtract(warped, warped_smooth)
    detail = np.subtract(stylized, smooth, out=smooth)
    output += linear_mix(warped_detail, detail, detail_weight)
    return np.clip(output, 0, 1, out=output)


def low_pass(image: np.ndarray, sigma: float, banded: bool = False) -> np.ndarray:
    """The blend's low-pass band (`Blending.detail_sigma`): a Gaussian reaching two sigmas
    (five taps at sigma 1 against seven at three: the live feed blurs twice a frame), which
    leaves out 5% of its weight."""
    return gaussian_blur(image, sigma, banded, reach=2)


def _propagation_reach(config: StabilizerConfig) -> int:
    """How many rows `propagate` reads on either side of a pixel: the detail's blur, the
    contrast's moments (their blurs, and the coarser grid's resizing: a few grid steps),
    with a margin."""
    blending = config.blending
    return math.ceil(3 * blending.detail_sigma + 3 * blending.contrast_window + 16)


def mix(
    first: np.ndarray, second: np.ndarray, weight: np.ndarray, config: StabilizerConfig
) -> np.ndarray:
    """weight * first + (1 - weight) * second, keeping the contrast (`contrast_window`)."""
    if config.blending.contrast_window > 0:
        return contrast_preserving_mix(first, second, weight, config.blending.contrast_window)
    return linear_mix(first, second, weight)


@lru_cache(maxsize=8)
def border_trust(size: tuple[int, int], reach: int) -> np.ndarray:
    """(H, W, 1) float32: 1 from `reach` px inside the frame, falling linearly to 1 / reach on
    its outermost pixels (read-only: shared between calls)."""
    height, width = size
    ys, xs = np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32)
    from_y = np.minimum(ys, height - 1 - ys)[:, None]
    from_x = np.minimum(xs, width - 1 - xs)[None]
    trust = np.minimum((np.minimum(from_y, from_x) + 1) / reach, 1)[..., None]
    trust.flags.writeable = False
    return trust
