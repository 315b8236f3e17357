"""`prepared_size` predicts `prepare`'s output size without decoding (for the pixel budget)."""

from __future__ import annotations

import pytest

from devkit.images import random_image
from models.images import prepare, prepared_size


@pytest.mark.parametrize(
    ("width", "height", "size", "crop"),
    [(40, 30, 0, False), (40, 30, 17, False), (30, 40, 17, False), (333, 97, 64, False),
     (97, 333, 64, False), (50, 50, 31, False), (81, 47, 20, True), (13, 200, 9, False)],
)
def test_prepared_size_matches_prepare(width: int, height: int, size: int, crop: bool) -> None:
    tensor = prepare(random_image(width, height), size, crop)
    assert tuple(tensor.shape[-2:]) == prepared_size(width, height, size, crop)
