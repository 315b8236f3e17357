"""Shared fixtures (random weights in the reference layout) and the tests' torch thread count.

Helpers the benchmarks share live in `devkit/` (images, the reference port, servers)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from models.model import make_decoder, make_encoder

# Test images are tiny: intra-op threads only spin, and on a 2-core machine busy with other
# work they make each forward pass many times slower. ADAIN_TEST_THREADS=2 runs the float
# comparisons with other kernels' summation orders.
torch.set_num_threads(int(os.environ.get("ADAIN_TEST_THREADS", "1")))

# PyTorch's default conv init has a sixth of the variance a ReLU network needs (He init): random
# networks shrink activations ~2.4x per layer and decode a flat grey whatever the input, so no
# comparison of images could fail. Scaled by sqrt(6), every layer keeps the scale of its input.
ACTIVATION_GAIN = math.sqrt(6)
# The decoder's last conv: outputs with a standard deviation near 0.1 around 0.5, unclipped.
LAST_CONV_GAIN = 0.2


@pytest.fixture(scope="session")
def reference_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(vgg_normalised.pth, decoder.pth): seeded random state dicts in the reference layout,
    scaled so that outputs depend visibly on every input."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(1234)
    encoder, decoder = make_encoder(), make_decoder()
    with torch.no_grad():
        for net in (encoder, decoder):
            for layer in net:
                if isinstance(layer, torch.nn.Conv2d) and layer.kernel_size == (3, 3):
                    layer.weight.mul_(ACTIVATION_GAIN)
        decoder[-1].weight.mul_(LAST_CONV_GAIN)
        decoder[-1].bias.fill_(0.5)
    torch.save(encoder.state_dict(), folder / "vgg_normalised.pth")
    torch.save(decoder.state_dict(), folder / "decoder.pth")
    return folder / "vgg_normalised.pth", folder / "decoder.pth"
