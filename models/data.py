"""Image folders for training and evaluation, with a fixed held-out split."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torchvision.transforms as T
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from models.images import to_rgb

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
HELD_OUT_ONE_IN = 20  # 5% of every folder is kept for `adain eval`, chosen by file name


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def is_held_out(path: Path) -> bool:
    """Stable across machines and runs: a hash of the file name, not a random draw."""
    return int(hashlib.sha1(path.name.encode()).hexdigest(), 16) % HELD_OUT_ONE_IN == 0


def split(folder: Path, held_out: bool) -> list[Path]:
    paths = [p for p in list_images(folder) if is_held_out(p) == held_out]
    if not paths:
        raise FileNotFoundError(f"{folder}: no images ({'held-out' if held_out else 'training'})")
    return paths


class RandomCrops(Dataset[Tensor]):
    """The reference training transform: shorter side resized, then a random square crop."""

    def __init__(self, paths: list[Path], resize: int, crop: int) -> None:
        self.paths = paths
        self.transform = T.Compose([T.Resize(resize), T.RandomCrop(crop), T.ToTensor()])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        with Image.open(self.paths[index]) as image:
            return self.transform(to_rgb(image))


def infinite_batches(
    dataset: RandomCrops, batch_size: int, seed: int, workers: int
) -> torch.utils.data.DataLoader[Tensor]:
    """A loader drawing with replacement forever.

    `seed` fixes the order; a resumed run passes seed + step.
    """
    generator = torch.Generator().manual_seed(seed)
    sampler = torch.utils.data.RandomSampler(
        dataset, replacement=True, num_samples=2**31 - 1, generator=generator
    )
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
        pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
        worker_init_fn=lambda worker: torch.manual_seed(seed * 1000 + worker),
    )
