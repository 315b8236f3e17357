"""Fixtures for tests that talk to a real server: weights with visible outputs, a shared server
(session-scoped: each start loads the VGG), a throw-away Redis."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.service.server import RunningServer, running_redis, running_server

# PyTorch's default conv init has a third of the weight variance He init has, a sixth with the
# ReLU: random networks shrink activations ~2.4x per layer and decode a flat grey. Scaling
# every 3x3 conv by sqrt(6) keeps the scale, so outputs depend visibly on every input.
ACTIVATION_GAIN = math.sqrt(6)
# The `reference_weights` decoder's last conv is scaled by 0.05: this makes it 0.2 overall,
# outputs with a standard deviation near 0.1 around the bias 0.5 and no clipping.
LAST_CONV_GAIN = 4.0

# The shared server's limits: small, so that tests of them need only small images.
SHARED_LIMITS = {
    "ADAIN_MAX_UPLOAD_BYTES": str(2 * 1024 * 1024),
    "ADAIN_MAX_IMAGE_PIXELS": "200000",
    "ADAIN_MAX_OUTPUT_PIXELS": "65536",
}


def scaled(source: Path, target: Path, last_gain: float) -> Path:
    state = torch.load(source, weights_only=True)
    convs = [k for k, v in state.items() if k.endswith(".weight") and v.shape[-1] == 3]
    for key in convs:
        state[key] = state[key] * ACTIVATION_GAIN
    state[convs[-1]] = state[convs[-1]] * last_gain
    torch.save(state, target)
    return target


@pytest.fixture(scope="session")
def service_weights(
    reference_weights: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """(encoder, decoder) paths: `reference_weights` rescaled to give non-flat images."""
    folder = tmp_path_factory.mktemp("service_weights")
    encoder, decoder = reference_weights
    return (
        scaled(encoder, folder / "vgg_normalised.pth", 1.0),
        scaled(decoder, folder / "decoder.pth", LAST_CONV_GAIN),
    )


@pytest.fixture(scope="session")
def server_env(service_weights: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
               ) -> dict[str, str]:
    """The environment of a test server: test weights and a fresh styles folder."""
    encoder, decoder = service_weights
    return {
        "ADAIN_ENCODER_PATH": str(encoder),
        "ADAIN_DECODER_PATH": str(decoder),
        "ADAIN_STYLES_DIR": str(tmp_path_factory.mktemp("styles")),
        "ADAIN_DEVICE": "cpu",
    }


@pytest.fixture(scope="session")
def server(server_env: dict[str, str]) -> Iterator[RunningServer]:
    """One server shared by the session's tests (with the small SHARED_LIMITS)."""
    with running_server({**server_env, **SHARED_LIMITS, "ADAIN_MAX_WAIT_MS": "20"}) as running:
        yield running


@pytest.fixture(scope="session")
def base_url(server: RunningServer) -> str:
    return server.url


@pytest.fixture
def redis_server() -> Iterator[str]:
    """A real `redis-server` on a free port, no persistence; yields its URL."""
    with running_redis() as url:
        yield url
