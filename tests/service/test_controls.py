"""Each control of the paper is checked in one place (`media.controls.check_controls`): a bad
value gets the same message and field through every entry point, the /stylize and /jobs forms
(a real server), the command, a live stream's settings, and a stored job's record."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from cli.app import app
from cli.common import ARGUMENTS, without_field_prefix
from devkit.images import encode, random_image
from devkit.live import LiveStream, live_connection
from devkit.server import RunningServer
from devkit.videos import make_video
from media.clip import ClipSettings, ModelBackend
from media.controls import check_controls
from media.imaging import ImageLimits, StyleInput
from media.video import VideoLimits
from models.config import ModelName, PipelineConfig, Precision
from models.errors import InvalidInputError
from models.pipeline import build_pipeline
from service.jobs.run import run_job
from service.jobs.store import JobRecord, JobStatus, JobStore
from service.jobs.submit import create_job

IMAGE = encode(random_image(40, 32, seed=5))
CLIP = make_video(frames=2, width=48, height=32, audio=False)
# (the bad value as each entry point sends it, as typed, the field at fault)
BAD = {
    "alpha over 1": ({"alpha": 1.5}, "alpha"),
    "alpha below 0": ({"alpha": -0.25}, "alpha"),
    "negative style_size": ({"style_size": -1}, "style_size"),
}


def expected_error(bad: dict[str, float]) -> tuple[str, str]:
    with pytest.raises(InvalidInputError) as raised:
        check_controls(styles=1, **bad)
    assert raised.value.field is not None
    return raised.value.detail, raised.value.field


@pytest.fixture(scope="module")
def lite_backend() -> ModelBackend:
    return ModelBackend(
        {"full": build_pipeline(PipelineConfig(precision=Precision.fp32, model=ModelName.lite))}
    )


@pytest.mark.parametrize("case", BAD)
def test_a_bad_control_is_refused_alike_everywhere(
    case: str, server: RunningServer, tmp_path: Path, lite_backend: ModelBackend
) -> None:
    bad, field = BAD[case]
    detail, checked_field = expected_error(bad)
    assert checked_field == field and detail.startswith(f"{field}: ")
    form = {name: str(value) for name, value in bad.items()}

    for route, upload in (("/stylize", ("content", IMAGE)), ("/jobs", ("video", CLIP))):
        response = httpx.post(
            f"{server.url}{route}",
            data=form,
            files=[(upload[0], ("input", upload[1])), ("style", ("s.png", IMAGE))],
            timeout=60,
        )
        assert response.status_code == 422, (route, response.text)
        assert (response.json()["detail"], response.json()["field"]) == (detail, field), route

    content, style = tmp_path / "content.png", tmp_path / "style.png"
    content.write_bytes(IMAGE)
    style.write_bytes(IMAGE)
    option = ARGUMENTS[field]
    command = CliRunner().invoke(
        app,
        ["stylize", str(content), str(style), "-o", str(tmp_path / "o.png"), option]
        + [str(value) for value in bad.values()],
    )
    assert command.exit_code == 2
    shown = " ".join(command.stderr.split())
    assert option in shown and without_field_prefix(detail, field) in shown, shown

    with live_connection(server.url) as connection:
        connection.send(json.dumps({"style_id": "any", **bad}))
        message = LiveStream(connection, {}).message(30)
    assert (message["detail"], message["field"]) == (detail, field)

    store = JobStore(tmp_path / "jobs", ttl_s=60)
    job_id, inputs = store.new_upload()
    (inputs / "video").write_bytes(CLIP)
    create_job(
        store,
        job_id,
        "me",
        [StyleInput(IMAGE, "style[0]")],
        [],
        check_controls(styles=1, content_size=0, style_size=0),
        stabilize=False,
        video_limits=VideoLimits(10, 10, 10**6, 10**12),
        limits=ImageLimits(10**6, 10**6),
    )

    def tamper(record: JobRecord) -> None:  # a record written by hand, or by an older version
        record.params.update(bad)

    store.update(job_id, tamper)
    failed = run_job(job_id, store, lite_backend, ClipSettings(preset="veryfast"))
    assert failed is not None and failed.status is JobStatus.failed
    assert failed.error == {"detail": detail, "field": field}
