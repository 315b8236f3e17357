"""Issue 33's classes against a real server: video limits on every frame and every stream, an
allow-list of demuxers, races between a job's end, its result and DELETE, the contract of the
jobs' routes, and the cost of tiny inputs. The hostile files are made here, with PyAV and
Pillow."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit.hostile_videos import (
    FFCONCAT_SELF,
    big_screen_gif,
    growing_mjpeg,
    tiny_frames_gif,
    with_long_audio,
)
from devkit.images import encode, random_image
from devkit.server import RunningServer, running_server
from devkit.videos import make_video

STYLE = encode(random_image(48, 48, seed=3301))
SMALL = {"style_size": "48", "content_size": "0", "stabilize": "false"}
MAX_FRAME_PIXELS = 1_000_000
MAX_DURATION_S = 400
MAX_JOB_PIXELS = 100_000_000


@pytest.fixture(scope="module")
def jobs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trust-jobs")


@pytest.fixture(scope="module")
def server(server_env: dict[str, str], jobs_dir: Path) -> Iterator[RunningServer]:
    env = {
        **server_env,
        "ADAIN_JOBS_DIR": str(jobs_dir),
        "ADAIN_MAX_VIDEO_FRAME_PIXELS": str(MAX_FRAME_PIXELS),
        "ADAIN_MAX_VIDEO_DURATION_S": str(MAX_DURATION_S),
        "ADAIN_MAX_JOB_PIXELS": str(MAX_JOB_PIXELS),
        "ADAIN_VIDEO_PRESET": "veryfast",
        "ADAIN_WARMUP": "false",
    }
    with running_server(env) as running:
        yield running


# --- helpers ---------------------------------------------------------------------------------


def submit(
    server: RunningServer, video: bytes, name: str = "clip.mkv", **form: Any
) -> httpx.Response:
    files = [("video", (name, video)), ("style", ("s.png", STYLE))]
    return httpx.post(f"{server.url}/jobs", files=files, data={**SMALL, **form}, timeout=60)


def accepted(server: RunningServer, video: bytes, **form: Any) -> str:
    response = submit(server, video, **form)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def state(server: RunningServer, job_id: str) -> dict[str, Any]:
    return httpx.get(f"{server.url}/jobs/{job_id}", timeout=10).json()


def wait_until(server: RunningServer, job_id: str, done: Any, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        current = state(server, job_id)
        if done(current):
            return current
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached the state: {current}")


def finished(job: dict[str, Any]) -> bool:
    return job["status"] in ("succeeded", "failed", "canceled")


def rss_mb(server: RunningServer) -> float:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def refused(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == "video", body
    for word in words:
        assert word in body["detail"], (word, body)


def no_new_jobs(jobs_dir: Path, before: set[str]) -> None:
    assert {p.name for p in jobs_dir.iterdir()} == before, "a refused upload left files"


# --- 1. every frame and every stream within the limits -------------------------------------


def test_a_frame_larger_than_the_header_said_fails_the_job_naming_video(
    server: RunningServer,
) -> None:
    """64 x 48 in the header and the first frame, then 4000 x 4000 frames: the job fails at
    the first large one, whose pixels are never converted (memory stays near the limit)."""
    clip = growing_mjpeg([(64, 48), (64, 48)] + [(4000, 4000)] * 6)
    before = rss_mb(server)
    job_id = accepted(server, clip)
    final = wait_until(server, job_id, finished)
    assert final["status"] == "failed", final
    assert final["error"]["field"] == "video"
    assert "frame 2" in final["error"]["detail"]
    assert "ADAIN_MAX_VIDEO_FRAME_PIXELS" in final["error"]["detail"]
    assert rss_mb(server) - before < 100  # a 4000 x 4000 frame: 48 MB as RGB, 64 as a tensor


def test_frames_within_the_limit_still_pass(server: RunningServer) -> None:
    clip = growing_mjpeg([(64, 48)] * 3)
    final = wait_until(server, accepted(server, clip), finished)
    assert final["status"] == "succeeded", final
    assert final["frames_done"] == 3


@pytest.mark.parametrize(("container", "name"), [("mp4", "clip.mp4"), ("matroska", "clip.mkv")])
def test_audio_longer_than_the_limit_is_too_long(
    server: RunningServer, jobs_dir: Path, container: str, name: str
) -> None:
    """0.2 s of video, more than ADAIN_MAX_VIDEO_DURATION_S of audio: 413 "too long" (before:
    MP4 accepted and its output as long as the audio; Matroska 415 "truncated")."""
    before = {p.name for p in jobs_dir.iterdir()}
    clip = with_long_audio(container, "aac", MAX_DURATION_S + 100, 8000)
    refused(submit(server, clip, name=name), 413, "ADAIN_MAX_VIDEO_DURATION_S")
    no_new_jobs(jobs_dir, before)


def test_a_gif_with_a_huge_logical_screen_is_too_large(
    server: RunningServer, jobs_dir: Path
) -> None:
    before = {p.name for p in jobs_dir.iterdir()}
    refused(
        submit(server, big_screen_gif(20000, 20000), name="big.gif"),
        413,
        "20000 x 20000",
        "ADAIN_MAX_VIDEO_FRAME_PIXELS",
    )
    no_new_jobs(jobs_dir, before)


# --- 2. only the documented containers: nothing names another file -------------------------


@pytest.mark.parametrize(
    "upload",
    [
        FFCONCAT_SELF,
        b"ffconcat version 1.0\nfile /etc/passwd\n",
        b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n",
    ],
    ids=["ffconcat-self", "ffconcat-passwd", "hls"],
)
def test_formats_that_follow_names_are_refused(server: RunningServer, upload: bytes) -> None:
    refused(submit(server, upload, name="video.txt"), 415, "not a video")


def test_a_loop_of_self_naming_concat_lists_is_refused_fast_with_flat_memory(
    server: RunningServer,
) -> None:
    """Before: each opened itself until the open-files limit, 0.6 s and +200 MB each."""
    submit(server, FFCONCAT_SELF)  # the first request's one-off allocations
    before = rss_mb(server)
    started = time.monotonic()
    statuses = [submit(server, FFCONCAT_SELF).status_code for _ in range(20)]
    elapsed = time.monotonic() - started
    assert statuses == [415] * 20
    assert elapsed < 10
    assert rss_mb(server) - before < 50


@pytest.mark.parametrize("container", ["mp4", "mov", "webm", "gif"])
def test_the_documented_containers_are_read(server: RunningServer, container: str) -> None:
    clip = make_video(frames=2, width=32, height=32, container=container, audio=False)
    response = submit(server, clip, name=f"clip.{container}")
    assert response.status_code == 202, response.text
    assert wait_until(server, response.json()["id"], finished)["status"] == "succeeded"


# --- 3. races: never 500, a cancel that wins leaves nothing ---------------------------------


def test_a_delete_while_the_segments_are_joined_leaves_no_result(
    server: RunningServer, jobs_dir: Path
) -> None:
    """300 s of FLAC audio are re-encoded to AAC while the segments are joined: a window of
    a second or more once every frame is done."""
    clip = with_long_audio("matroska", "flac", 300, 48000)
    job_id = accepted(server, clip)
    joining = wait_until(
        server, job_id, lambda s: finished(s) or (s["frames_done"] == 2 and s["progress"] == 1)
    )
    assert joining["status"] == "running", "the join was over before the DELETE"
    assert httpx.delete(f"{server.url}/jobs/{job_id}", timeout=30).status_code == 204
    time.sleep(4)  # the join ends meanwhile
    assert state(server, job_id)["status"] == "canceled"
    assert not (jobs_dir / job_id / "result.mp4").exists()
    answer = httpx.get(f"{server.url}/jobs/{job_id}/result", timeout=10)
    assert answer.status_code == 409
    assert "canceled" in answer.json()["detail"] and "never" in answer.json()["detail"]


def test_reading_a_result_while_it_is_deleted_never_answers_500(server: RunningServer) -> None:
    """Each finished job: 8 GETs of its result and a DELETE at once; a GET answers the whole
    file (it was open before the answer started) or 404."""
    clip = make_video(frames=2, width=32, height=32, audio=False)
    job_ids = [accepted(server, clip) for _ in range(4)]
    sizes = []
    for job_id in job_ids:
        assert wait_until(server, job_id, finished)["status"] == "succeeded"
    for job_id in job_ids:
        url = f"{server.url}/jobs/{job_id}"
        with ThreadPoolExecutor(9) as pool:
            reads = [pool.submit(httpx.get, f"{url}/result", timeout=30) for _ in range(8)]
            deleted = pool.submit(httpx.delete, url, timeout=30)
            for read in reads:
                answer = read.result()
                assert answer.status_code in (200, 404), answer.text
                if answer.status_code == 200:
                    assert int(answer.headers["content-length"]) == len(answer.content)
                    sizes.append(len(answer.content))
            assert deleted.result().status_code == 204
    assert all(size > 0 for size in sizes)


def test_twelve_deletes_of_a_queued_job_never_answer_500(server: RunningServer) -> None:
    """The runner busy with a long job keeps the next ones queued; twelve DELETEs of each at
    once: one cancels, the others find it canceled (and remove it) or gone. Before: the lock
    file of a removed job gave some of them 500."""
    long_job = accepted(
        server, make_video(frames=60, width=96, height=64, audio=False), stabilize="true"
    )
    clip = make_video(frames=2, width=32, height=32, audio=False)
    queued = [accepted(server, clip) for _ in range(6)]
    statuses: list[int] = []
    try:
        for job_id in queued:
            assert state(server, job_id)["status"] == "queued"
            url = f"{server.url}/jobs/{job_id}"
            with ThreadPoolExecutor(12) as pool:
                answers = list(pool.map(partial(httpx.delete, timeout=30), [url] * 12))
            statuses += [answer.status_code for answer in answers]
            assert 204 in statuses[-12:]
            assert httpx.get(url, timeout=10).status_code in (200, 404)
        assert set(statuses) <= {204, 404}, statuses
    finally:
        httpx.delete(f"{server.url}/jobs/{long_job}", timeout=30)


# --- 5. the contract of the jobs' routes ----------------------------------------------------


def test_an_unknown_field_on_post_jobs_is_refused_like_on_stylize(server: RunningServer) -> None:
    clip = make_video(frames=2, width=32, height=32, audio=False)
    response = submit(server, clip, stabilise="false")
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "stabilise"
    assert "'stabilize'" in response.json()["detail"]  # the nearest known field


def test_a_json_body_on_post_jobs_is_415(server: RunningServer) -> None:
    response = httpx.post(f"{server.url}/jobs", json={"video": "clip.mp4"}, timeout=10)
    assert response.status_code == 415, response.text
    assert "multipart/form-data" in response.json()["detail"]


@pytest.fixture(scope="module")
def finished_job(server: RunningServer) -> tuple[str, bytes]:
    job_id = accepted(server, make_video(frames=2, width=32, height=32, audio=False))
    assert wait_until(server, job_id, finished)["status"] == "succeeded"
    whole = httpx.get(f"{server.url}/jobs/{job_id}/result", timeout=10)
    assert whole.status_code == 200
    return job_id, whole.content


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Range": "items=0-5"}, 200),  # an unknown unit: ignored (RFC 9110)
        ({"Range": "bytes=999999999-", "If-Range": '"not-its-etag"'}, 200),  # not this file
        ({"Range": "bytes=999999999-"}, 416),
        ({"Range": "bytes=0-9"}, 206),
        ({"Range": "bytes=0-9,20-29"}, 200),  # several ranges: the whole file
    ],
)
def test_ranges(
    server: RunningServer, finished_job: tuple[str, bytes], headers: dict[str, str], status: int
) -> None:
    job_id, whole = finished_job
    answer = httpx.get(f"{server.url}/jobs/{job_id}/result", headers=headers, timeout=10)
    assert answer.status_code == status, answer.text
    if status == 200:
        assert answer.content == whole
    if status == 206:
        assert answer.content == whole[:10]
        assert answer.headers["content-range"] == f"bytes 0-9/{len(whole)}"
    if status == 416:
        assert answer.headers["content-range"] == f"bytes */{len(whole)}"


def test_a_matching_if_range_keeps_the_range(
    server: RunningServer, finished_job: tuple[str, bytes]
) -> None:
    job_id, whole = finished_job
    url = f"{server.url}/jobs/{job_id}/result"
    etag = httpx.get(url, timeout=10).headers["etag"]
    answer = httpx.get(url, headers={"Range": "bytes=5-", "If-Range": etag}, timeout=10)
    assert answer.status_code == 206
    assert answer.content == whole[5:]


# --- 6. the cost of tiny inputs -------------------------------------------------------------


def test_thousands_of_tiny_frames_upscaled_are_refused_at_submission(
    server: RunningServer, jobs_dir: Path
) -> None:
    """3000 1 x 1 GIF frames at content_size 512: 3000 x 512 x 512 = 786 M pixels to
    stylize, over ADAIN_MAX_JOB_PIXELS; at content_size 0 (their own 1 x 1: too small for the
    networks) or fewer frames it is another answer."""
    gif = tiny_frames_gif(3000)
    assert len(gif) < 150_000  # a small upload
    before = {p.name for p in jobs_dir.iterdir()}
    response = submit(server, gif, name="tiny.gif", content_size="512")
    refused(response, 413, "3000 frames", "ADAIN_MAX_JOB_PIXELS")
    no_new_jobs(jobs_dir, before)
    # 300 frames at 256: 20 M pixels, within the limit
    small = submit(server, tiny_frames_gif(300), name="tiny.gif", content_size="256")
    assert small.status_code == 202, small.text
    httpx.delete(f"{server.url}/jobs/{small.json()['id']}", timeout=30)
