"""Fixtures for tests that talk to a real server: weights with visible outputs, a shared server
(session-scoped: each start loads the VGG), a throw-away Redis."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devkit.server import RunningServer, free_port, running_redis, running_server

# The shared server's limits: small, so that tests of them need only small images.
SHARED_LIMITS = {
    "ADAIN_MAX_UPLOAD_BYTES": str(2 * 1024 * 1024),
    "ADAIN_MAX_IMAGE_PIXELS": "200000",
    "ADAIN_MAX_OUTPUT_PIXELS": "65536",
}


@pytest.fixture(scope="session")
def server_env(reference_weights: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
               ) -> dict[str, str]:
    """The environment of a test server: test weights, a fresh styles folder without the preset
    gallery (servers started by hand share the folder, and tests count the styles they
    register), fp32 (whose outputs the tests compare with the reference port's and `adain
    stylize`'s)."""
    encoder, decoder = reference_weights
    return {
        "ADAIN_ENCODER_PATH": str(encoder),
        "ADAIN_DECODER_PATH": str(decoder),
        "ADAIN_STYLES_DIR": str(tmp_path_factory.mktemp("styles")),
        "ADAIN_JOBS_DIR": str(tmp_path_factory.mktemp("jobs")),
        "ADAIN_DEVICE": "cpu",
        "ADAIN_PRECISION": "fp32",
        "ADAIN_PRESETS": "false",
    }


@pytest.fixture(scope="session")
def server(server_env: dict[str, str]) -> Iterator[RunningServer]:
    """One server shared by the session's tests (with the small SHARED_LIMITS)."""
    # Batching explicitly on: on CPU the service's default is 1 (no batches).
    batching = {"ADAIN_MAX_BATCH_SIZE": "8", "ADAIN_MAX_WAIT_MS": "20"}
    with running_server({**server_env, **SHARED_LIMITS, **batching}) as running:
        yield running


# The keyed server's access control (test_security.py, test_page.py).
USER_KEYS = ("user-key-0123456789", "user-key-abcdefghij")
ADMIN_KEY = "admin-key-0123456789"
KEYED_BODY_TIMEOUT_S = 3.0


@dataclass
class KeyedServer:
    """A server with API keys on, and the other origin whose pages it lets in (CORS)."""

    server: RunningServer
    allowed_origin: str  # http://127.0.0.1:<port>, nothing listening there unless a test starts it

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="session")
def keyed_server(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[KeyedServer]:
    """Keys on (two user keys, one admin key), one other origin allowed, a short body timeout,
    debug logs (the keys must not show even there); its own styles folder."""
    allowed_origin = f"http://127.0.0.1:{free_port()}"
    env = {
        **server_env, **SHARED_LIMITS,
        "ADAIN_STYLES_DIR": str(tmp_path_factory.mktemp("keyed-styles")),
        "ADAIN_API_KEYS": ",".join(USER_KEYS),
        "ADAIN_ADMIN_KEYS": ADMIN_KEY,
        "ADAIN_CORS_ORIGINS": allowed_origin,
        "ADAIN_BODY_TIMEOUT_S": str(KEYED_BODY_TIMEOUT_S),
        "ADAIN_LOG_LEVEL": "debug",
    }
    with running_server(env) as running:
        yield KeyedServer(running, allowed_origin)


@pytest.fixture(scope="session")
def base_url(server: RunningServer) -> str:
    return server.url


@pytest.fixture
def redis_server() -> Iterator[str]:
    """A real `redis-server` on a free port, no persistence; yields its URL."""
    with running_redis() as url:
        yield url
