"""Temporal stabilisation of stylized video: causal, so video jobs and the live feed share it.

Per-frame AdaIN flickers although the statistics barely change between frames: the encoder's
pools and the decoder's upsamplings have a stride of 8, so when the scene moves by a fraction
of 8 px the network sees it on another phase of its grid and draws the strokes elsewhere. Two
measures, both using only the frames seen so far:

1. Grid alignment. The scene's global motion since the first frame is tracked (the median of
   the optical flow), and each frame is padded so that the scene falls on the same phase of the
   stride-8 grid as in the first frame, then cropped back: an integer shift, no resampling, so
   nothing is blurred, and the network draws the same strokes at the same scene points.
2. Propagation. The previous output, moved along the optical flow (OpenCV's DIS on the input
   frames), is blended into the new stylization where the flow is reliable (forward-backward
   consistent, Sundaram et al. 2010 / Ruder et al. 2016), and the new stylization is taken as
   it is where the scene was occluded or the flow fails. Since aligned stylizations already
   agree, the blend removes the remaining jitter without averaging strokes that disagree.

`Stabilizer` takes a frame -> stylized frame callable, so every image control (alpha,
interpolation, colour preservation, masks) works unchanged: the caller closes over them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from models.video_metrics import backward_warp, lanczos_warp, luminance

STRIDE = 8  # the networks' total stride: 3 pools in the encoder, 3 upsamplings in the decoder

Stylize = Callable[[Tensor], Tensor]
# A second motion layer: reliable pixels moving this far (px per frame) from the dominant
# motion, covering at least this share of the frame.
SECOND_LAYER_APART = 1.0
SECOND_LAYER_SHARE = 0.02


@dataclass(frozen=True)
class StabilizerConfig:
    enabled: bool = True
    # Align the stride-8 grid to the scene's global motion (integer shifts of the input).
    align_grid: bool = True
    # Motions aligned: 1 the dominant one (camera), 2 also a second one (a moving object, for
    # which the frame is stylized a second time on that object's phase).
    motion_layers: int = 2
    # Weight of the propagated previous output where the flow is reliable (0: per-frame).
    blend: float = 0.8
    # Forward-backward check (Sundaram et al.): a pixel is occluded when
    # |f + b|^2 > consistency * (|f|^2 + |b|^2) + consistency_floor (px^2).
    consistency: float = 0.01
    consistency_floor: float = 0.5
    # Detail kept from the new stylization: the blend acts on the frames' low-pass part
    # (Gaussian of this sigma, px) and the finer detail comes from the new stylization alone,
    # so repeated resampling and slightly misaligned strokes cannot wash it out (0: blend all).
    detail_sigma: float = 1.0
    # Weight of the propagated previous output in that finer detail (lower than `blend`: each
    # resampling softens detail, and a short memory keeps it from accumulating).
    detail_blend: float = 0.15
    # Resampling of the previous output along the flow: "lanczos" (Lanczos-3) keeps strokes
    # sharper than "bicubic", and far sharper than "bilinear", as it is repeated every frame.
    resample: str = "lanczos"
    # OpenCV DIS preset: "ultrafast", "fast" or "medium".
    flow_preset: str = "medium"


# The live feed's form: the cheapest flow and one stylization per frame (frames must keep up
# with the camera).
LIVE = StabilizerConfig(flow_preset="ultrafast", motion_layers=1)

_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


def grey_uint8(frame: Tensor) -> np.ndarray:
    """(H, W) uint8 luminance of a frame (1, 3, H, W) in [0, 1]: what DIS takes."""
    grey = luminance(frame)[0, 0].clamp(0, 1).mul(255).round()
    return grey.to(torch.uint8).cpu().numpy()


class FlowEstimator:
    """Dense optical flow between consecutive frames (OpenCV DIS), with an occlusion mask."""

    def __init__(self, config: StabilizerConfig) -> None:
        self.config = config
        self.dis = cv2.DISOpticalFlow_create(_PRESETS[config.flow_preset])

    def backward(self, current: np.ndarray, previous: np.ndarray) -> tuple[Tensor, Tensor]:
        """(flow (1, 2, H, W), reliable (1, 1, H, W) bool): pixel p of `current` shows what
        `previous` shows at p + flow(p), reliably where the forward flow agrees."""
        back = torch.from_numpy(self.dis.calc(current, previous, None)).permute(2, 0, 1)[None]
        fwd = torch.from_numpy(self.dis.calc(previous, current, None)).permute(2, 0, 1)[None]
        fwd_at_match = backward_warp(fwd, back)
        mismatch = (back + fwd_at_match).pow(2).sum(1, keepdim=True)
        scale = back.pow(2).sum(1, keepdim=True) + fwd_at_match.pow(2).sum(1, keepdim=True)
        reliable = mismatch <= self.config.consistency * scale + self.config.consistency_floor
        height, width = current.shape
        ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        x, y = xs + back[0, 0], ys + back[0, 1]
        inside = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
        return back, reliable & inside[None, None]


def stylize_on_phase(stylize: Stylize, frame: Tensor, phase: tuple[int, int]) -> Tensor:
    """Stylize `frame` placed at offset phase = (x, y) in [0, 8) of the network's grid: reflect
    padding of `phase` before and 8 - phase after (always 8 px more per side in all, so the
    network's input size does not change between frames), the output cropped back."""
    ox, oy = phase
    height, width = frame.shape[-2:]
    padded = F.pad(frame, (ox, STRIDE - ox, oy, STRIDE - oy), mode="reflect")
    return stylize(padded)[..., oy : oy + height, ox : ox + width]


class Stabilizer:
    """Causal: uses only previous frames, so video jobs and the live feed share it."""

    def __init__(self, stylize: Stylize, config: StabilizerConfig = StabilizerConfig()) -> None:
        # stylize: one content frame (1, 3, H, W) float in [0, 1] -> stylized (1, 3, H, W) in
        # [0, 1] (the caller closes over style statistics, alpha, masks, colour preservation).
        self.stylize = stylize
        self.config = config
        self.flow = FlowEstimator(config)
        self.reset()

    def reset(self) -> None:
        """Forget the previous frames (a new clip, a cut)."""
        self.previous_grey: np.ndarray | None = None
        self.previous_output: Tensor | None = None
        # Displacement (x, y), px, of the dominant motion (row 0) and of a second moving layer
        # (row 1) since they were first seen: where the grid is aligned for each.
        self.displacement = torch.zeros(2, 2, dtype=torch.float64)
        self.second_layer = False
        self.frames = 0

    @torch.inference_mode()
    def __call__(self, frame: Tensor) -> Tensor:
        """(1, 3, H, W) in [0, 1] -> stylized (1, 3, H, W) in [0, 1]."""
        if not self.config.enabled:
            return self.stylize(frame)
        grey = grey_uint8(frame)
        if self.previous_grey is not None and self.previous_grey.shape != grey.shape:
            self.reset()  # a new size is a new clip
        flow = reliable = None
        layer = None
        if self.previous_grey is not None:
            flow, reliable = self.flow.backward(grey, self.previous_grey)
            if self.config.align_grid:
                layer = self._track(flow, reliable)
        stylized = self._stylize(frame, layer)
        output = stylized
        if flow is not None and self.previous_output is not None and self.config.blend > 0:
            warped = warp(self.previous_output, flow.to(stylized.device), self.config.resample)
            weight = self.config.blend * reliable.to(stylized.device, stylized.dtype)
            if self.config.detail_sigma > 0:
                smooth = gaussian_blur(stylized, self.config.detail_sigma)
                warped_smooth = gaussian_blur(warped, self.config.detail_sigma)
                coarse = weight * warped_smooth + (1 - weight) * smooth
                detail_weight = weight * (self.config.detail_blend / self.config.blend)
                detail = detail_weight * (warped - warped_smooth) + (1 - detail_weight) * (
                    stylized - smooth
                )
                output = (coarse + detail).clamp(0, 1)
            else:
                output = weight * warped + (1 - weight) * stylized
        self.previous_grey, self.previous_output = grey, output
        self.frames += 1
        return output

    def _track(self, flow: Tensor, reliable: Tensor) -> Tensor | None:
        """Follow the dominant motion and, with two layers, a second one; returns the second
        layer's pixels (1, 1, H, W) bool, or None when there is no second motion."""
        dominant = median_motion(flow, reliable)
        self.displacement[0] -= dominant
        if self.config.motion_layers < 2:
            return None
        distance = (flow - dominant.float().view(1, 2, 1, 1)).norm(dim=1, keepdim=True)
        apart = reliable & (distance > SECOND_LAYER_APART)
        if apart.float().mean() < SECOND_LAYER_SHARE:
            self.second_layer = False
            return None
        second = median_motion(flow, apart)
        if not self.second_layer:  # a new layer starts on the phase the frame had there
            self.displacement[1] = self.displacement[0] + dominant
            self.second_layer = True
        self.displacement[1] -= second
        closer = (flow - second.float().view(1, 2, 1, 1)).norm(dim=1, keepdim=True) < distance
        return closer & reliable

    def _phase(self, row: int) -> tuple[int, int]:
        shift = torch.round(self.displacement[row]).long()
        return int(-shift[0]) % STRIDE, int(-shift[1]) % STRIDE

    def _stylize(self, frame: Tensor, layer: Tensor | None) -> Tensor:
        if not self.config.align_grid:
            return self.stylize(frame)
        stylized = stylize_on_phase(self.stylize, frame, self._phase(0))
        if layer is None or self._phase(1) == self._phase(0):
            return stylized
        second = stylize_on_phase(self.stylize, frame, self._phase(1))
        return torch.where(layer.to(stylized.device), second, stylized)

    def state_dict(self) -> dict[str, Tensor]:
        """Enough to resume after the last frame: the previous input (as DIS saw it), the
        previous output, the tracked displacement and the frame count."""
        if self.previous_grey is None or self.previous_output is None:
            return {"frames": torch.tensor(self.frames)}
        return {
            "frames": torch.tensor(self.frames),
            "previous_grey": torch.from_numpy(self.previous_grey.copy()),
            "previous_output": self.previous_output.detach().cpu().clone(),
            "displacement": self.displacement.clone(),
            "second_layer": torch.tensor(self.second_layer),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.reset()
        self.frames = int(state["frames"])
        if "previous_output" in state:
            self.previous_grey = state["previous_grey"].numpy().copy()
            self.previous_output = state["previous_output"].clone()
            self.displacement = state["displacement"].clone().double()
            self.second_layer = bool(state["second_layer"])


def median_motion(flow: Tensor, reliable: Tensor) -> Tensor:
    """The median backward flow (x, y) over the reliable pixels: minus their motion."""
    mask = reliable[0, 0]
    if mask.sum() < 16:
        return torch.zeros(2, dtype=torch.float64)
    return torch.stack([flow[0, 0][mask].median(), flow[0, 1][mask].median()]).double()


def warp(image: Tensor, flow: Tensor, resample: str) -> Tensor:
    """`image` moved along the backward `flow` with `resample` (lanczos, bicubic, bilinear)."""
    if resample == "lanczos":
        return lanczos_warp(image, flow).clamp(0, 1)
    return backward_warp(image, flow, mode=resample).clamp(0, 1)


def gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (N, C, H, W), reflect-padded (3 sigma each side)."""
    radius = max(1, int(3 * sigma + 0.5))
    taps = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = image.shape[1]
    padded = F.pad(image, (radius, radius, radius, radius), mode="reflect")
    horizontal = F.conv2d(
        padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels
    )
    return F.conv2d(
        horizontal, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels
    )
