"""Video jobs against real servers (docs/video.md): real encoded clips (devkit/videos.py) in,
real MP4s out; progress, events, cancel, ownership by key, bad input, a server SIGKILLed
mid-job and started again on the same ADAIN_JOBS_DIR."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from devkit.images import encode, psnr, random_image
from devkit.server import RunningServer, running_server
from devkit.videos import decode_frames, faststart, make_audio_only, make_video, truncated
from media.video import describe_output

USER_A, USER_B, USER_C = "jobs-user-a-0123456789", "jobs-user-b-0123456789", "jobs-user-c-01234"
ADMIN = "jobs-admin-0123456789"
RATE_LIMIT = 30
MAX_FRAMES = 60
STYLE = encode(random_image(48, 48, seed=1901))
OTHER_STYLE = encode(random_image(40, 40, seed=1902))
SMALL = {"style_size": "48", "content_size": "0", "stabilize": "false"}


def key(value: str) -> dict[str, str]:
    return {"X-API-Key": value}


def job_env(server_env: dict[str, str], jobs_dir: Path) -> dict[str, str]:
    return {
        **server_env,
        "ADAIN_JOBS_DIR": str(jobs_dir),
        "ADAIN_API_KEYS": f"{USER_A},{USER_B},{USER_C}",
        "ADAIN_ADMIN_KEYS": ADMIN,
        "ADAIN_RATE_LIMIT": str(RATE_LIMIT),
        "ADAIN_MAX_VIDEO_FRAMES": str(MAX_FRAMES),
        "ADAIN_MAX_OUTPUT_PIXELS": "65536",
        "ADAIN_JOB_CHECKPOINT_S": "0.3",
        "ADAIN_VIDEO_PRESET": "veryfast",
        "ADAIN_WARMUP": "false",
    }


@pytest.fixture(scope="module")
def jobs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("video-jobs")


@pytest.fixture(scope="module")
def server(server_env: dict[str, str], jobs_dir: Path) -> Iterator[RunningServer]:
    with running_server(job_env(server_env, jobs_dir)) as running:
        yield running


def submit(
    server: RunningServer,
    video: bytes,
    name: str = "clip.mp4",
    caller: str = USER_A,
    styles: tuple[bytes, ...] = (STYLE,),
    **form: Any,
) -> httpx.Response:
    files = [("video", (name, video)), *(("style", (f"s{i}.png", s)) for i, s in enumerate(styles))]
    for index, mask in enumerate(form.pop("masks", ())):
        files.append(("mask", (f"m{index}.png", mask)))
    return httpx.post(
        f"{server.url}/jobs", files=files, data={**SMALL, **form}, headers=key(caller), timeout=60
    )


def wait_for(
    server: RunningServer, job_id: str, caller: str = USER_A, timeout_s: float = 120
) -> list[dict[str, Any]]:
    """Polls GET /jobs/{id} until the job has finished; every state seen, in order."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = httpx.get(f"{server.url}/jobs/{job_id}", headers=key(caller), timeout=10).json()
        seen.append(state)
        if state["status"] in ("succeeded", "failed", "canceled"):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"job not finished after {timeout_s} s: {seen[-1:]}")


def result(server: RunningServer, job_id: str, caller: str = USER_A) -> bytes:
    response = httpx.get(f"{server.url}/jobs/{job_id}/result", headers=key(caller), timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "video/mp4"
    assert int(response.headers["content-length"]) == len(response.content)
    return response.content


def per_frame(
    server: RunningServer, frame: bytes, *styles: bytes, mask: bytes | None = None, **form: str
) -> np.ndarray:
    """/stylize's image of one frame, cut to even sides as the job's frames are."""
    files = [
        ("content", ("f.png", frame)),
        *(("style", (f"s{i}.png", s)) for i, s in enumerate(styles)),
    ]
    if mask is not None:
        files.append(("mask", ("m.png", mask)))
    response = httpx.post(
        f"{server.url}/stylize",
        headers=key(USER_A),
        timeout=60,
        files=files,
        data={"style_size": "48", "content_size": "0", **form},
    )
    assert response.status_code == 200, response.text
    image = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
    return image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2]


def describe(data: bytes, tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / f"out-{time.monotonic_ns()}.mp4"
    path.write_bytes(data)
    return describe_output(path)


def test_a_job_keeps_frames_size_rate_and_audio_and_equals_per_frame_stylize(
    server: RunningServer, tmp_path: Path
) -> None:
    clip = make_video(frames=10, width=97, height=65, container="mp4", rate=12)
    response = submit(server, clip)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert (job["status"], job["frames_total"], job["frames_done"]) == ("queued", 10, 0)
    states = wait_for(server, job["id"])
    final = states[-1]
    assert final["status"] == "succeeded", final
    assert (final["frames_done"], final["frames_total"], final["progress"]) == (10, 10, 1.0)
    progress = [state["progress"] for state in states]
    assert progress == sorted(progress)
    assert datetime.fromisoformat(final["expires"]).timestamp() > time.time()  # ISO 8601

    video = result(server, job["id"])
    out = describe(video, tmp_path)
    assert out["frames"] == 10
    assert (out["width"], out["height"]) == (96, 64)  # odd sides lose a column and a row
    assert out["rate"] == 12
    assert (out["codec"], out["pix_fmt"]) == ("h264", "yuv420p")
    assert out["audio_codec"] == "aac"
    assert abs(out["audio_duration_s"] - 10 / 12) < 0.05
    assert video.find(b"moov") < video.find(b"mdat")  # faststart

    # Without the stabiliser each frame is /stylize's image of that frame (after H.264): much
    # nearer to it than to the image of another frame.
    frames = decode_frames(video)
    sources = decode_frames(clip)
    same, other = (per_frame(server, encode(Image.fromarray(sources[i])), STYLE) for i in (7, 2))
    assert psnr(frames[7] / 255, same / 255) > 33  # 4:2:0 chroma and CRF 18 cost a little
    assert psnr(frames[7] / 255, same / 255) > psnr(frames[7] / 255, other / 255) + 4

    ranged = httpx.get(
        f"{server.url}/jobs/{job['id']}/result",
        timeout=30,
        headers={**key(USER_A), "Range": "bytes=100-199"},
    )
    assert ranged.status_code == 206
    assert ranged.headers["content-range"] == f"bytes 100-199/{len(video)}"
    assert ranged.content == video[100:200]
    beyond = httpx.get(
        f"{server.url}/jobs/{job['id']}/result",
        timeout=30,
        headers={**key(USER_A), "Range": f"bytes={len(video) + 10}-"},
    )
    assert beyond.status_code == 416
    assert beyond.json()["detail"]


def test_the_frames_metric_counts_the_frames_a_job_writes(server: RunningServer) -> None:
    """adain_job_frames_total counts a stabilised job's frames, not the network's passes (the
    clip's start phases add to those), in the process that runs it: here the service."""

    def frames_counted() -> float:
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        match = re.search(r"^adain_job_frames_total (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    before = frames_counted()
    clip = make_video(frames=12, width=96, height=64)
    # Another caller's submission: USER_A's fill the rate limit's minute in later tests.
    job_id = submit(server, clip, caller=USER_B, stabilize="true").json()["id"]
    assert wait_for(server, job_id, caller=USER_B)[-1]["status"] == "succeeded"
    assert frames_counted() - before == 12


@pytest.mark.parametrize(
    ("container", "rotation", "audio", "size"),
    [
        ("webm", 0, "aac", (96, 64)),  # VP9 + Opus in: the Opus track re-encoded to AAC
        ("gif", 0, None, (96, 64)),
        ("mov", 0, "aac", (96, 64)),
        ("mp4", 90, "aac", (64, 96)),  # a phone's portrait video: upright out
    ],
)
def test_formats_and_rotation(
    server: RunningServer,
    tmp_path: Path,
    container: str,
    rotation: int,
    audio: str | None,
    size: tuple[int, int],
) -> None:
    clip = make_video(frames=6, width=96, height=64, container=container, rotation=rotation)
    response = submit(server, clip, name=f"clip.{container}")
    assert response.status_code == 202, response.text
    assert wait_for(server, response.json()["id"])[-1]["status"] == "succeeded"
    out = describe(result(server, response.json()["id"]), tmp_path)
    assert out["frames"] == 6
    assert (out["width"], out["height"]) == size
    assert out["audio_codec"] == audio
    if rotation:
        # Turned upright: the display matrix turns the coded picture 90 degrees counter-clockwise
        # (its left edge to the bottom), so the first frame is /stylize's image of the coded
        # frame turned so; the other way round, or not turned, the pictures differ.
        first = decode_frames(result(server, response.json()["id"]))[0]
        coded = decode_frames(clip)[0]
        assert first.shape[:2] == (96, 64) and coded.shape[:2] == (64, 96)
        upright, clockwise = (
            per_frame(server, encode(Image.fromarray(np.rot90(coded, turns).copy())), STYLE)
            for turns in (1, -1)
        )
        assert psnr(first / 255, upright / 255) > 30
        assert psnr(first / 255, upright / 255) > psnr(first / 255, clockwise / 255) + 4


def test_content_size_resizes_the_frames(server: RunningServer, tmp_path: Path) -> None:
    response = submit(server, make_video(frames=4, width=128, height=96), content_size="50")
    assert response.status_code == 202, response.text
    assert wait_for(server, response.json()["id"])[-1]["status"] == "succeeded"
    out = describe(result(server, response.json()["id"]), tmp_path)
    assert (out["width"], out["height"]) == (66, 50)  # 50 x 66.67 -> 66, both even


def test_events_stream_the_state_and_end_with_the_final_one(server: RunningServer) -> None:
    response = submit(server, make_video(frames=12, width=96, height=64))
    job_id = response.json()["id"]
    states = []
    with httpx.stream(
        "GET", f"{server.url}/jobs/{job_id}/events", headers=key(USER_A), timeout=120
    ) as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        for line in events.iter_lines():
            if line.startswith("data: "):
                states.append(json.loads(line.removeprefix("data: ")))
    assert states[-1]["status"] == "succeeded"
    assert states[-1]["frames_done"] == 12
    assert len(states) >= 2
    progress = [state["progress"] for state in states]
    assert progress == sorted(progress)
    assert len({json.dumps(state) for state in states}) == len(states)  # only changes are sent


def test_cancel_stops_a_running_job_and_removes_its_output(
    server: RunningServer, jobs_dir: Path
) -> None:
    response = submit(server, make_video(frames=MAX_FRAMES, width=128, height=96))
    job_id = response.json()["id"]
    deadline = time.monotonic() + 60
    while httpx.get(f"{server.url}/jobs/{job_id}", headers=key(USER_A)).json()["frames_done"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    start = time.monotonic()
    deleted = httpx.delete(f"{server.url}/jobs/{job_id}", headers=key(USER_A), timeout=10)
    assert deleted.status_code == 204
    state = wait_for(server, job_id, timeout_s=5)[-1]
    assert state["status"] == "canceled"
    assert state["frames_done"] < MAX_FRAMES
    while (jobs_dir / job_id / "work").exists():
        assert time.monotonic() - start < 2.5, "partial output still there"
        time.sleep(0.05)
    assert not (jobs_dir / job_id / "inputs").exists()
    assert not (jobs_dir / job_id / "result.mp4").exists()
    time.sleep(0.5)
    again = httpx.get(f"{server.url}/jobs/{job_id}", headers=key(USER_A)).json()
    assert again["status"] == "canceled"  # a late frame does not bring it back
    pending = httpx.get(f"{server.url}/jobs/{job_id}/result", headers=key(USER_A))
    assert pending.status_code == 409
    assert pending.json()["field"] == "job_id"
    # A finished job's DELETE removes it altogether.
    assert httpx.delete(f"{server.url}/jobs/{job_id}", headers=key(USER_A)).status_code == 204
    assert httpx.get(f"{server.url}/jobs/{job_id}", headers=key(USER_A)).status_code == 404
    assert not (jobs_dir / job_id).exists()


def test_result_is_409_while_running(server: RunningServer) -> None:
    job_id = submit(server, make_video(frames=30, width=128, height=96)).json()["id"]
    early = httpx.get(f"{server.url}/jobs/{job_id}/result", headers=key(USER_A))
    assert early.status_code == 409, early.text
    httpx.delete(f"{server.url}/jobs/{job_id}", headers=key(USER_A))


def test_a_job_belongs_to_its_key(server: RunningServer) -> None:
    job_id = submit(server, make_video(frames=3, width=64, height=64), caller=USER_A).json()["id"]
    for path in ("", "/events", "/result"):
        other = httpx.get(f"{server.url}/jobs/{job_id}{path}", headers=key(USER_B), timeout=10)
        assert other.status_code == 404, path
        assert other.json()["field"] == "job_id"
    assert httpx.delete(f"{server.url}/jobs/{job_id}", headers=key(USER_B)).status_code == 404
    assert httpx.get(f"{server.url}/jobs/{job_id}").status_code == 401  # no key
    listed_b = httpx.get(f"{server.url}/jobs", headers=key(USER_B)).json()["jobs"]
    assert job_id not in [job["id"] for job in listed_b]
    listed_a = httpx.get(f"{server.url}/jobs", headers=key(USER_A)).json()["jobs"]
    assert job_id in [job["id"] for job in listed_a]
    listed_admin = httpx.get(f"{server.url}/jobs", headers=key(ADMIN)).json()["jobs"]
    assert job_id in [job["id"] for job in listed_admin]
    assert wait_for(server, job_id, caller=ADMIN)[-1]["status"] == "succeeded"
    assert result(server, job_id, caller=ADMIN)


def no_new_jobs(jobs_dir: Path, before: set[str]) -> None:
    assert {p.name for p in jobs_dir.iterdir()} == before, "a refused upload left files"


@pytest.mark.parametrize(
    ("make", "status", "words"),
    [
        (lambda: b"this is not a video at all" * 40, 415, "not a video"),
        (lambda: encode(random_image(64, 64)), 415, "still image"),
        (lambda: truncated(make_video(frames=12, width=96, height=64)), 415, "not a video"),
        (
            lambda: truncated(faststart(make_video(frames=12, width=96, height=64))),
            415,
            "truncated",
        ),
        (
            lambda: truncated(make_video(frames=12, width=96, height=64, container="webm")),
            415,
            "truncated",
        ),
        (make_audio_only, 415, "no video stream"),
        (
            lambda: make_video(frames=MAX_FRAMES + 1, width=32, height=32, audio=False),
            413,
            "ADAIN_MAX_VIDEO_FRAMES",
        ),
    ],
)
def test_bad_videos_are_refused_naming_the_field_and_nothing_is_stored(
    server: RunningServer, jobs_dir: Path, make: Any, status: int, words: str
) -> None:
    before = {p.name for p in jobs_dir.iterdir()}
    response = submit(server, make())
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == "video"
    assert words in body["detail"]
    no_new_jobs(jobs_dir, before)


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"styles": ()}, 422, "style"),
        ({"styles": (b"not an image",)}, 415, "style[0]"),
        ({"alpha": "2"}, 422, "alpha"),
        ({"content_size": "4"}, 422, "content_size"),
        ({"stability": "2"}, 422, "stability"),
        ({"masks": (encode(Image.new("L", (10, 10), 255)),)}, 422, "mask[0]"),  # not the frame size
    ],
)
def test_bad_style_fields_are_refused_as_for_stylize(
    server: RunningServer, jobs_dir: Path, change: dict[str, Any], status: int, field: str
) -> None:
    before = {p.name for p in jobs_dir.iterdir()}
    response = submit(server, make_video(frames=3, width=64, height=64), **change)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field
    no_new_jobs(jobs_dir, before)


def test_every_image_control_works_on_video(server: RunningServer) -> None:
    """Two styles with weights, a binary mask, alpha and colour preservation: each frame is
    /stylize's image of it with the same controls (nearer to it than to the plain one)."""
    clip = make_video(frames=4, width=64, height=48, audio=False)
    half = Image.new("L", (64, 48), 0)
    half.paste(255, (0, 0, 32, 48))
    controls = {"weights": "1,3", "alpha": "0.7", "preserve_color": "true"}
    mixed = submit(server, clip, styles=(STYLE, OTHER_STYLE), masks=(encode(half),), **controls)
    assert mixed.status_code == 202, mixed.text
    assert wait_for(server, mixed.json()["id"])[-1]["status"] == "succeeded"
    frames = decode_frames(result(server, mixed.json()["id"]))
    assert len(frames) == 4
    source = encode(Image.fromarray(decode_frames(clip)[3]))
    same = per_frame(server, source, STYLE, OTHER_STYLE, mask=encode(half), **controls)
    plain = per_frame(server, source, STYLE)
    assert psnr(frames[3] / 255, same / 255) > 33
    assert psnr(frames[3] / 255, same / 255) > psnr(frames[3] / 255, plain / 255) + 2


def test_rate_limit_counts_submissions_not_polls(server: RunningServer) -> None:
    """Polls past the limit are served; submissions are refused after RATE_LIMIT of them (a
    one-minute window may roll over once meanwhile: then after at most twice as many)."""
    for _ in range(RATE_LIMIT + 5):
        assert httpx.get(f"{server.url}/jobs", headers=key(USER_C)).status_code == 200
    statuses = []
    while 429 not in statuses and len(statuses) <= 2 * RATE_LIMIT + 1:
        statuses.append(submit(server, b"not a video", caller=USER_C).status_code)
    assert statuses[-1] == 429
    assert RATE_LIMIT <= statuses.index(429) <= 2 * RATE_LIMIT
    assert set(statuses[:-1]) == {415}


def test_a_server_killed_mid_job_finishes_it_after_a_restart(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    jobs_dir = tmp_path / "jobs"
    env = job_env(server_env, jobs_dir)
    frames = 40
    with running_server(env) as first:
        # Stabilised: its state must come back from the checkpoint too.
        clip = make_video(frames=frames, width=128, height=96)
        job_id = submit(first, clip, stabilize="true").json()["id"]
        deadline = time.monotonic() + 120
        seen = []
        while True:
            state = httpx.get(f"{first.url}/jobs/{job_id}", headers=key(USER_A)).json()
            seen.append(state)
            checkpoint = jobs_dir / job_id / "work" / "checkpoint.pt"
            if checkpoint.exists() and state["frames_done"] >= 8:
                break
            assert state["status"] in ("queued", "running"), state
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait()
    killed_at = seen[-1]["frames_done"]
    assert killed_at < frames
    with running_server(env) as second:
        states = wait_for(second, job_id)
        assert states[-1]["status"] == "succeeded", states[-1]
        assert states[-1]["frames_done"] == frames
        progress = [s["progress"] for s in seen + states]
        assert progress == sorted(progress)  # never goes back, even across the restart
        out = describe(result(second, job_id), tmp_path)
    assert out["frames"] == frames
    assert (out["width"], out["height"]) == (128, 96)
    assert out["audio_codec"] == "aac"
    assert "resuming jobs" in second.logs()
