"""Choosing the model: ADAIN_MODEL the default, the `model` field among the loaded models
(ADAIN_MODELS), style statistics cached per model, X-Adain-Model naming the one that answered."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from devkit.images import encode, random_image
from devkit.server import RunningServer, running_server
from models.config import ModelName
from service.settings import Settings


@pytest.fixture(scope="module")
def lite_server(server_env: dict[str, str]) -> Iterator[RunningServer]:
    """Both models loaded (the default), lite the default one."""
    with running_server({**server_env, "ADAIN_MODEL": "lite"}) as running:
        yield running


CONTENT = encode(random_image(48, 40, seed=1), "PNG")
STYLE = encode(random_image(40, 40, seed=2), "PNG")


def post(server: RunningServer, style: bytes = STYLE, **form: str) -> httpx.Response:
    files = [("content", ("c.png", CONTENT)), ("style", ("s.png", style))]
    return httpx.post(
        f"{server.url}/stylize",
        data={"content_size": "0", "style_size": "0", **form},
        files=files,
        timeout=120,
    )


def pixels(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def test_the_default_and_the_model_field_choose_and_the_answer_says_which(
    lite_server: RunningServer,
) -> None:
    default, lite, full = (
        post(lite_server),
        post(lite_server, model="lite"),
        post(lite_server, model="full"),
    )
    assert default.headers["X-Adain-Model"] == "lite"
    assert lite.headers["X-Adain-Model"] == "lite"
    assert full.headers["X-Adain-Model"] == "full"
    assert np.array_equal(pixels(default), pixels(lite))
    assert pixels(full).shape == pixels(lite).shape == (40, 48, 3)
    assert np.abs(pixels(full).astype(int) - pixels(lite).astype(int)).mean() > 5


def test_style_statistics_are_cached_per_model(lite_server: RunningServer) -> None:
    style = encode(random_image(40, 40, seed=99), "PNG")  # seen by no other test
    caches = [
        post(lite_server, style, model=model).headers["X-Style-Cache"]
        for model in ("lite", "lite", "full", "full", "lite")
    ]
    assert caches == ["miss", "hit", "miss", "hit", "hit"]


def test_a_model_not_loaded_is_refused_naming_the_field(lite_server: RunningServer) -> None:
    response = post(lite_server, model="medium")
    assert response.status_code == 422
    assert response.json()["field"] == "model"
    assert "full, lite" in response.json()["detail"] or "lite, full" in response.json()["detail"]


def test_the_settings_load_the_default_first_and_refuse_a_default_not_loaded() -> None:
    assert Settings(model="lite").model_list == [ModelName.lite, ModelName.full]
    assert Settings(models="lite", model="lite").model_list == [ModelName.lite]
    assert Settings().model_list == [ModelName.full, ModelName.lite]
    with pytest.raises(ValueError, match="ADAIN_MODEL=full is not among"):
        Settings(models="lite")
    with pytest.raises(ValueError, match="ADAIN_MODELS"):
        Settings(models="full,tiny")
