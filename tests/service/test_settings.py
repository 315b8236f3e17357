"""Each default is written once: what the service's settings default to is what the parts
built without them (the command's clip runner, an engine in a benchmark) take."""

from __future__ import annotations

import inspect
from typing import Any

from media.clip import ClipSettings
from media.imaging import ImageLimits
from service.engine import Engine
from service.settings import Settings


def default(name: str) -> Any:
    return Settings.model_fields[name].default


def test_the_clip_runner_defaults_to_the_settings() -> None:
    limits = ImageLimits(default("max_image_pixels"), default("max_output_pixels"))
    expected = ClipSettings(
        default("video_crf"), default("video_preset"), default("job_checkpoint_s"), limits
    )
    assert ClipSettings() == expected


def test_the_engine_defaults_to_the_settings() -> None:
    parameters = inspect.signature(Engine).parameters
    assert parameters["max_wait_ms"].default == default("max_wait_ms")
    assert parameters["queue_size"].default == default("queue_size")
    assert parameters["max_batch_size"].default == Settings.model_construct().batch_size_for("cuda")
