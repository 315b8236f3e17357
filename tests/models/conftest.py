"""Fixtures of the model-library tests: weights whose outputs depend visibly on the inputs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

# Test images are tiny: intra-op threads only spin, and on a 2-core machine busy with other
# work they make each forward pass many times slower.
torch.set_num_threads(1)

# PyTorch's default conv init has a sixth of the variance a ReLU network needs (He init), so
# the random `reference_weights` decode a flat grey whatever the input; no comparison of
# images could fail on that. Scaled by sqrt(6), every layer keeps the scale of its input.
ACTIVATION_GAIN = math.sqrt(6)
# With the fixture's 0.05 on the last conv: outputs with a standard deviation near 0.1
# around the bias 0.5, unclipped.
LAST_CONV_GAIN = 4.0


@pytest.fixture(scope="session")
def visible_weights(
    reference_weights: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """(vgg_normalised.pth, decoder.pth): `reference_weights` with every 3x3 conv rescaled."""
    folder = tmp_path_factory.mktemp("visible_weights")
    paths = []
    for source, last_gain in zip(reference_weights, (1.0, LAST_CONV_GAIN), strict=True):
        state = torch.load(source, weights_only=True)
        convs = [key for key, value in state.items() if value.shape[-2:] == (3, 3)]
        for key in convs:
            state[key] = state[key] * ACTIVATION_GAIN
        state[convs[-1]] = state[convs[-1]] * last_gain
        torch.save(state, folder / source.name)
        paths.append(folder / source.name)
    return paths[0], paths[1]
