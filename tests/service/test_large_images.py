"""Large images over HTTP: tiled stylization gives the untiled pixels, the response says its
length, and uploads beyond the decode budget get 503 + Retry-After while the server serves on."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from devkit import REPO
from devkit.images import encode, random_image
from devkit.server import RunningServer, running_server

TILE_SIZE = 64  # a 203 x 157 content crosses 3 x 4 tiles
CONTENT = encode(random_image(157, 203, seed=40))
STYLES = [encode(random_image(64, 64, seed=41)), encode(random_image(48, 72, seed=42))]
# Noise PNGs of 1200 x 900: tens of milliseconds to decode, so that a burst overlaps.
BIG = [encode(random_image(1200, 900, seed=50 + i)) for i in range(2)]
DECODE_BUDGET = 1_000_000  # less than two BIG images
BURST = 12


@pytest.fixture(scope="module")
def tiled_server(server_env: dict[str, str]) -> Iterator[RunningServer]:
    env = {
        **server_env,
        "ADAIN_TILE_SIZE": str(TILE_SIZE),
        "ADAIN_DECODE_PIXEL_BUDGET": str(DECODE_BUDGET),
        "ADAIN_DECODE_WAIT_S": "0",
    }
    with running_server(env) as running:
        yield running


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def post(server: RunningServer, form: dict[str, str], files: list[tuple[str, tuple[str, bytes]]]
         ) -> httpx.Response:
    return httpx.post(f"{server.url}/stylize", data=form, files=files, timeout=300)


def test_tiled_output_is_the_untiled_cli_output(
    tiled_server: RunningServer, reference_weights: tuple[Path, Path], tmp_path: Path
) -> None:
    """Every control through tiles of 64 px, against `adain stylize --tile-size 0`: equal within
    one 8-bit level (float rounding may flip a pixel across a level), nearly all exactly."""
    mask = Image.new("L", (157, 203), 0)
    mask.paste(255, (0, 0, 70, 203))
    files = {"content.png": CONTENT, "a.png": STYLES[0], "b.png": STYLES[1],
             "mask.png": encode(mask)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    encoder, decoder = reference_weights
    subprocess.run(
        [sys.executable, "-m", "cli", "stylize", "content.png", "a.png", "b.png",
         "-o", "cli.png", "--encoder", str(encoder), "--decoder", str(decoder), "--device",
         "cpu", "--alpha", "0.8", "--weights", "1,3", "--mask", "mask.png",
         "--preserve-color", "--content-size", "0", "--style-size", "0", "--tile-size", "0",
         "--precision", "fp32"],  # as the test server (server_env)
        cwd=tmp_path, check=True, capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    form = {"alpha": "0.8", "weights": "1,3", "preserve_color": "true", "content_size": "0",
            "style_size": "0"}
    response = post(tiled_server, form, [
        ("content", ("content.png", CONTENT)), ("style", ("a.png", STYLES[0])),
        ("style", ("b.png", STYLES[1])), ("mask", ("mask.png", files["mask.png"])),
    ])
    assert response.status_code == 200, response.text
    assert int(response.headers["content-length"]) == len(response.content)
    expected, got = pixels((tmp_path / "cli.png").read_bytes()), pixels(response.content)
    assert got.shape == (203, 157, 3)
    assert expected.std() > 5  # a real image, not a flat grey
    difference = np.abs(got - expected)
    assert difference.max() <= 1
    assert (difference == 0).mean() > 0.99


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_every_format_says_its_length(tiled_server: RunningServer, fmt: str) -> None:
    response = post(tiled_server, {"content_size": "0", "style_size": "64", "format": fmt},
                    [("content", ("c.png", CONTENT)), ("style", ("s.png", STYLES[0]))])
    assert response.status_code == 200, response.text
    assert int(response.headers["content-length"]) == len(response.content) > 0


def test_uploads_over_the_decode_budget_get_503_and_the_server_serves_on(
    tiled_server: RunningServer,
) -> None:
    form = {"content_size": "32", "style_size": "32"}

    def send(index: int) -> httpx.Response:
        return post(tiled_server, form, [("content", ("c.png", BIG[index % 2])),
                                         ("style", ("s.png", STYLES[0]))])

    with ThreadPoolExecutor(BURST) as pool:
        responses = list(pool.map(send, range(BURST)))
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {200, 503}, [r.text for r in responses]
    refused = [response for response in responses if response.status_code == 503]
    assert refused, "no upload waited for the decode budget"
    assert 200 in statuses
    for response in refused:
        assert int(response.headers["retry-after"]) >= 1
        body = response.json()
        assert "ADAIN_DECODE_PIXEL_BUDGET" in body["detail"]
        assert body["field"] in ("content", "style[0]")
    assert send(0).status_code == 200  # the budget was given back
