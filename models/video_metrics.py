"""Temporal stability and sharpness of a stylized clip whose true motion is known.

Warping error (Lai et al., "Learning Blind Video Temporal Consistency", ECCV 2018): the mean
squared difference between output frame t + 1 and output frame t moved by the true motion, over
the pixels that have a visible match (occluded ones and an 8 px border left out), averaged over
the frame pairs. Sharpness: the variance of the Laplacian of the luminance, averaged over the
frames (blur and smearing lower it). Flows follow `devkit.clips`: `flows[t]` (2, H, W) is the
backward flow of frame t + 1 into frame t, in pixels (x, y).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BORDER = 8  # px left out on every side
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601


def backward_warp(image: Tensor, flow: Tensor, mode: str = "bilinear") -> Tensor:
    """image (N, C, H, W) sampled at p + flow(p), flow (N, 2, H, W): frame t seen from t + 1."""
    height, width = image.shape[-2:]
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=flow.dtype, device=flow.device),
        torch.arange(width, dtype=flow.dtype, device=flow.device),
        indexing="ij",
    )
    x = (xs + flow[:, 0]) * (2 / max(width - 1, 1)) - 1
    y = (ys + flow[:, 1]) * (2 / max(height - 1, 1)) - 1
    return F.grid_sample(
        image, torch.stack([x, y], dim=-1), mode=mode, padding_mode="border", align_corners=True
    )


def border_mask(height: int, width: int, border: int = BORDER) -> Tensor:
    mask = torch.zeros(1, 1, height, width, dtype=torch.bool)
    mask[..., border : height - border, border : width - border] = True
    return mask


def warping_errors(frames: Tensor, flows: Tensor, valid: Tensor) -> Tensor:
    """(T - 1,) warping error of each frame pair: frames (T, C, H, W), flows (T - 1, 2, H, W),
    valid (T - 1, 1, H, W) bool."""
    frames = frames.float()
    warped = backward_warp(frames[:-1], flows.float())
    mask = (valid & border_mask(*frames.shape[-2:])).float()
    squared = (frames[1:] - warped).pow(2).mean(dim=1, keepdim=True)
    return (squared * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp(min=1)


def warping_error(frames: Tensor, flows: Tensor, valid: Tensor) -> float:
    return warping_errors(frames, flows, valid).mean().item()


def luminance(frames: Tensor) -> Tensor:
    weights = torch.tensor(LUMA, dtype=torch.float32, device=frames.device).view(1, 3, 1, 1)
    return (frames.float() * weights).sum(dim=1, keepdim=True)


def sharpness(frames: Tensor) -> float:
    """Mean over frames (T, 3, H, W) of the variance of the Laplacian of the luminance (the
    4-neighbour kernel, on the interior: no padding enters)."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    laplacian = F.conv2d(luminance(frames), kernel.to(frames.device))
    return laplacian.flatten(1).var(dim=1).mean().item()
