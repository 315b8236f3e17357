"""Batch image jobs (docs/jobs.md#batch-image-jobs) against real servers: real photos of the
shared datasets and PIL-made images in, a real ZIP out; each item compared with /stylize's
answer for the same image; a bad item named in the manifest while the others succeed; ZIP bombs
and unsafe paths refused before unpacking; a server SIGKILLed mid-job resumes without redoing
the items it had done; and the same job run by an `adain worker` over Redis."""

from __future__ import annotations

import io
import json
import os
import signal
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from devkit import DATASETS
from devkit.images import encode, random_image
from devkit.server import RunningServer, running_redis, running_server
from tests.service.test_queue import queue_env, wait_until, workers

PHOTOS = sorted((DATASETS / "content" / "train").glob("*.jpg"))[:4]
STYLE = encode(random_image(48, 48, seed=3201))
OTHER_STYLE = encode(random_image(40, 56, seed=3202))
FORM = {"style_size": "48", "content_size": "64"}
MAX_ITEMS = 5
MAX_BATCH_BYTES = 4 * 1024 * 1024
MAX_UPLOAD_BYTES = 2 * 1024 * 1024
MAX_DIFFERENCE = 2  # of 255: the job and /stylize run the same steps; floats may differ a little


def batch_env(server_env: dict[str, str], jobs_dir: Path) -> dict[str, str]:
    return {
        **server_env,
        "ADAIN_JOBS_DIR": str(jobs_dir),
        "ADAIN_MAX_BATCH_ITEMS": str(MAX_ITEMS),
        "ADAIN_MAX_BATCH_BYTES": str(MAX_BATCH_BYTES),
        "ADAIN_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "ADAIN_MAX_OUTPUT_PIXELS": "200000",
        "ADAIN_WARMUP": "false",
    }


@pytest.fixture(scope="module")
def jobs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("batch-jobs")


@pytest.fixture(scope="module")
def server(server_env: dict[str, str], jobs_dir: Path) -> Iterator[RunningServer]:
    with running_server(batch_env(server_env, jobs_dir)) as running:
        yield running


def submit(
    url: str,
    contents: list[tuple[str, bytes]],
    styles: tuple[bytes, ...] = (STYLE,),
    **form: str,
) -> httpx.Response:
    files = [("content", item) for item in contents]
    files += [("style", (f"s{i}.png", s)) for i, s in enumerate(styles)]
    return httpx.post(f"{url}/jobs", files=files, data={**FORM, **form}, timeout=60)


def accepted(url: str, contents: list[tuple[str, bytes]], **form: str) -> dict[str, Any]:
    response = submit(url, contents, **form)
    assert response.status_code == 202, response.text
    return response.json()


def wait_finished(url: str, job_id: str, timeout_s: float = 180) -> list[dict[str, Any]]:
    """Every state GET /jobs/{id} gave until the job finished."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = httpx.get(f"{url}/jobs/{job_id}", timeout=10).json()
        seen.append(state)
        if state["status"] in ("succeeded", "failed", "canceled"):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"job not finished after {timeout_s} s: {seen[-1:]}")


def result_zip(url: str, job_id: str) -> zipfile.ZipFile:
    response = httpx.get(f"{url}/jobs/{job_id}/result", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["content-disposition"].endswith('.zip"')
    return zipfile.ZipFile(io.BytesIO(response.content))


def stylized(url: str, content: bytes, styles: tuple[bytes, ...] = (STYLE,), **form: str) -> bytes:
    """/stylize's answer for one image."""
    files = [("content", ("c", content))]
    files += [("style", (f"s{i}.png", s)) for i, s in enumerate(styles)]
    response = httpx.post(f"{url}/stylize", files=files, data={**FORM, **form}, timeout=60)
    assert response.status_code == 200, response.text
    return response.content


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def assert_same_image(item: bytes, expected: bytes) -> None:
    one, other = pixels(item), pixels(expected)
    assert one.shape == other.shape
    assert np.abs(one - other).max() <= MAX_DIFFERENCE


def zipped(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            if name.endswith("/"):
                archive.mkdir(name.rstrip("/"))
            else:
                archive.writestr(name, data)
    return buffer.getvalue()


def refused(url: str, contents: list[tuple[str, bytes]], status: int, field: str) -> str:
    response = submit(url, contents)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field, body
    return body["detail"]


# --- the tests ---------------------------------------------------------------------------------


def test_each_image_equals_stylize_and_a_bad_item_fails_alone(server: RunningServer) -> None:
    photos = [(path.name, path.read_bytes()) for path in PHOTOS[:3]]
    contents = [photos[0], ("broken.png", b"this is not an image"), *photos[1:]]
    job = accepted(server.url, contents, format="png")
    assert (job["kind"], job["status"], job["items_total"], job["items_done"]) == (
        "batch",
        "queued",
        4,
        0,
    )
    states = wait_finished(server.url, job["id"])
    final = states[-1]
    assert final["status"] == "succeeded", final
    assert (final["items_done"], final["items_failed"], final["items_total"]) == (4, 1, 4)
    assert final["progress"] == 1.0
    done = [state["items_done"] for state in states]
    assert done == sorted(done)

    archive = result_zip(server.url, job["id"])
    manifest = json.loads(archive.read("manifest.json"))
    assert (manifest["succeeded"], manifest["failed"]) == (3, 1)
    assert [item["name"] for item in manifest["items"]] == [name for name, _ in contents]
    bad = manifest["items"][1]
    assert bad["output"] is None and bad["error"]["field"] == "content"
    assert bad["bytes"] == len(contents[1][1])
    # The error is /stylize's for the same upload.
    answer = httpx.post(
        f"{server.url}/stylize",
        files=[("content", contents[1]), ("style", ("s.png", STYLE))],
        data=FORM,
        timeout=30,
    )
    assert answer.status_code == 415
    assert answer.json() == bad["error"]
    listed = httpx.get(f"{server.url}/jobs/{job['id']}/items", timeout=10)
    assert listed.status_code == 200
    assert listed.json() == manifest

    for item, (_, content) in zip(manifest["items"], contents, strict=True):
        if item["error"] is not None:
            continue
        image = archive.read(item["output"])
        assert len(image) == item["output_bytes"]
        assert Image.open(io.BytesIO(image)).size == (item["width"], item["height"])
        assert min(item["width"], item["height"]) == 64
        assert_same_image(image, stylized(server.url, content))
        for reference in (str(item["index"]), item["output"]):
            alone = httpx.get(f"{server.url}/jobs/{job['id']}/items/{reference}", timeout=10)
            assert alone.status_code == 200, alone.text
            assert alone.headers["content-type"] == "image/png"
            assert alone.content == image

    failed_item = httpx.get(f"{server.url}/jobs/{job['id']}/items/1", timeout=10)
    assert failed_item.status_code == 404
    assert failed_item.json()["field"] == "item"
    assert "broken.png" in failed_item.json()["detail"]
    missing = httpx.get(f"{server.url}/jobs/{job['id']}/items/9", timeout=10)
    assert (missing.status_code, missing.json()["field"]) == (404, "item")


def test_a_zip_of_images_with_folders_two_styles_and_jpeg(server: RunningServer) -> None:
    grey = random_image(90, 70, seed=3203).convert("L")
    entries = {
        "photos/": b"",
        "photos/a.jpg": PHOTOS[3].read_bytes(),
        "photos/more/grey.png": encode(grey),
        "__MACOSX/photos/._a.jpg": b"resource fork",
        "photos/.DS_Store": b"finder",
        "photos/readme.txt": b"not a picture",
        "photos/huge.png": bytes(MAX_UPLOAD_BYTES + 1),  # over what /stylize takes: fails alone
    }
    form = {"format": "jpeg", "quality": "80", "weights": "1,3", "alpha": "0.7"}
    job = accepted(
        server.url,
        [("photos.zip", zipped(entries))],
        styles=(STYLE, OTHER_STYLE),
        **form,
    )
    assert job["items_total"] == 4  # folders, macOS's metadata and hidden files are skipped
    final = wait_finished(server.url, job["id"])[-1]
    assert final["status"] == "succeeded", final
    assert final["items_failed"] == 2
    archive = result_zip(server.url, job["id"])
    manifest = json.loads(archive.read("manifest.json"))
    names = [item["name"] for item in manifest["items"]]
    assert names == ["photos/a.jpg", "photos/more/grey.png", "photos/readme.txt", "photos/huge.png"]
    outputs = [item["output"] for item in manifest["items"]]
    assert outputs == ["0000-a.jpeg", "0001-grey.jpeg", None, None]
    assert manifest["items"][3]["error"]["field"] == "content"
    assert "ADAIN_MAX_UPLOAD_BYTES" in manifest["items"][3]["error"]["detail"]
    for name, output in zip(names[:2], outputs[:2], strict=True):
        expected = stylized(server.url, entries[name], styles=(STYLE, OTHER_STYLE), **FORM, **form)
        image = archive.read(str(output))
        assert image[:3] == b"\xff\xd8\xff"  # JPEG
        assert_same_image(image, expected)


def test_zip_bombs_and_unsafe_paths_are_refused_before_unpacking(
    server: RunningServer, jobs_dir: Path
) -> None:
    before = set(jobs_dir.iterdir())
    # 64 MiB of zeros deflate to about 64 KiB: refused from the sizes the directory declares.
    bomb = zipped({"zeros.png": bytes(64 * 1024 * 1024)})
    assert len(bomb) < 200_000
    start = time.monotonic()
    detail = refused(server.url, [("bomb.zip", bomb)], 413, "content")
    assert "ADAIN_MAX_BATCH_BYTES" in detail
    assert time.monotonic() - start < 5  # nothing inflated
    many = zipped({f"{i}.png": b"" for i in range(5000)}, zipfile.ZIP_STORED)
    assert "ADAIN_MAX_BATCH_ITEMS" in refused(server.url, [("many.zip", many)], 413, "content")
    # A directory of 300 entries whose end record claims 2: zipfile would read all 300.
    lying = bytearray(zipped({f"{i}.png": b"" for i in range(300)}, zipfile.ZIP_STORED))
    lying[-14:-10] = (2).to_bytes(2, "little") * 2  # the end record's two entry counts
    assert "directory" in refused(server.url, [("lying.zip", bytes(lying))], 422, "content")
    six = zipped({f"{i}.png": STYLE for i in range(MAX_ITEMS + 1)})
    assert "ADAIN_MAX_BATCH_ITEMS" in refused(server.url, [("six.zip", six)], 413, "content")
    for name in ("../evil.png", "/etc/evil.png", "C:/evil.png", "a/" * 12 + "deep.png"):
        detail = refused(server.url, [("slip.zip", zipped({name: STYLE}))], 422, "content")
        assert "path" in detail
    assert "no files" in refused(server.url, [("empty.zip", zipped({}))], 422, "content")
    assert "ZIP" in refused(server.url, [("cut.zip", bomb[: len(bomb) // 2])], 422, "content")
    files = [(f"{i}.png", STYLE) for i in range(MAX_ITEMS + 1)]
    assert "ADAIN_MAX_BATCH_ITEMS" in refused(server.url, files, 413, "content")
    assert set(jobs_dir.iterdir()) == before  # nothing of a refused upload is kept


def test_video_or_content_not_both_nor_neither(server: RunningServer) -> None:
    both = httpx.post(
        f"{server.url}/jobs",
        files=[("video", ("v.mp4", b"x")), ("content", ("c.png", STYLE)), ("style", STYLE)],
        data=FORM,
        timeout=30,
    )
    assert (both.status_code, both.json()["field"]) == (422, "content")
    neither = httpx.post(f"{server.url}/jobs", files=[("style", STYLE)], data=FORM, timeout=30)
    assert (neither.status_code, neither.json()["field"]) == (422, "video")
    bad_format = submit(server.url, [("c.png", STYLE)], format="gif")
    assert bad_format.status_code == 422
    assert "format" in bad_format.text


def test_a_batch_whose_every_item_fails_fails_naming_the_first(server: RunningServer) -> None:
    job = accepted(server.url, [("a.png", b"garbage"), ("b.png", b"more garbage")])
    final = wait_finished(server.url, job["id"])[-1]
    assert final["status"] == "failed", final
    assert final["error"]["field"] == "content"
    assert "'a.png'" in final["error"]["detail"]
    items = httpx.get(f"{server.url}/jobs/{job['id']}/items", timeout=10)
    assert items.status_code == 409


def test_items_done_before_a_kill_are_kept(server_env: dict[str, str], tmp_path: Path) -> None:
    env = batch_env(server_env, tmp_path / "jobs")
    contents = [(f"{i}.png", encode(random_image(400, 300, seed=3210 + i))) for i in range(5)]
    with running_server(env) as first:
        job_id = accepted(first.url, contents, content_size="288")["id"]
        deadline = time.monotonic() + 120
        while True:
            state = httpx.get(f"{first.url}/jobs/{job_id}", timeout=10).json()
            if state["items_done"] >= 2:
                break
            assert state["status"] in ("queued", "running"), state
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait()
    assert state["items_done"] < len(contents), "the job finished before the kill"
    # The first item's input gone: a restart that redid it would fail it.
    (tmp_path / "jobs" / job_id / "inputs" / "items" / "0").unlink()
    with running_server(env) as second:
        final = wait_finished(second.url, job_id)[-1]
        assert final["status"] == "succeeded", final
        assert (final["items_done"], final["items_failed"]) == (5, 0)
        manifest = json.loads(result_zip(second.url, job_id).read("manifest.json"))
        assert [item["error"] for item in manifest["items"]] == [None] * 5
        assert "resuming jobs" in second.logs()


def test_a_worker_runs_a_batch_job_with_the_same_images(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    contents = [(path.name, path.read_bytes()) for path in PHOTOS[:2]]
    with running_redis() as redis_url:
        env = {**queue_env(server_env, redis_url, tmp_path / "jobs"), "ADAIN_WARMUP": "false"}
        with (
            running_server({**env, "ADAIN_SERVE_RUNS_JOBS": "false"}) as service,
            workers(env, 1) as started,
        ):
            job = accepted(service.url, [*contents, ("bad.jpg", b"\xff\xd8 truncated")])
            final = wait_finished(service.url, job["id"])[-1]
            assert final["status"] == "succeeded", final
            assert (final["kind"], final["items_done"], final["items_failed"]) == ("batch", 3, 1)
            # Logged just after the record says so: the worker ran it, not the service.
            wait_until(lambda: "job succeeded" in started[0].logs(), 10, "the worker's log")
            for index, (_, content) in enumerate(contents):
                item = httpx.get(f"{service.url}/jobs/{job['id']}/items/{index}", timeout=10)
                assert item.status_code == 200
                assert_same_image(item.content, stylized(service.url, content))


def test_a_mask_and_colour_preservation_per_image_and_a_mask_that_does_not_fit(
    server: RunningServer,
) -> None:
    fitting = [(f"{i}.png", encode(random_image(80, 60, seed=3220 + i))) for i in range(2)]
    other_size = ("wide.png", encode(random_image(120, 60, seed=3222)))
    half = np.zeros((60, 80), np.uint8)
    half[:, :40] = 255
    mask = encode(Image.fromarray(half))
    form = {"preserve_color": "true", "content_size": "0"}
    files = [("content", item) for item in [*fitting, other_size]]
    files += [("style", ("a.png", STYLE)), ("style", ("b.png", OTHER_STYLE))]
    files.append(("mask", ("m.png", mask)))
    response = httpx.post(f"{server.url}/jobs", files=files, data={**FORM, **form}, timeout=60)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    final = wait_finished(server.url, job_id)[-1]
    assert (final["status"], final["items_failed"]) == ("succeeded", 1), final
    manifest = httpx.get(f"{server.url}/jobs/{job_id}/items", timeout=10).json()
    assert manifest["items"][2]["error"]["field"].startswith("mask")
    for index, (_, content) in enumerate(fitting):
        expected = httpx.post(
            f"{server.url}/stylize",
            files=[
                ("content", ("c.png", content)),
                ("style", ("a.png", STYLE)),
                ("style", ("b.png", OTHER_STYLE)),
                ("mask", ("m.png", mask)),
            ],
            data={**FORM, **form},
            timeout=60,
        )
        assert expected.status_code == 200, expected.text
        item = httpx.get(f"{server.url}/jobs/{job_id}/items/{index}", timeout=10)
        assert_same_image(item.content, expected.content)
    # The two halves took different styles: the mask was applied, not ignored.
    first = pixels(httpx.get(f"{server.url}/jobs/{job_id}/items/0", timeout=10).content)
    assert np.abs(first[:, :36].mean(axis=(0, 1)) - first[:, 44:].mean(axis=(0, 1))).max() > 1


def test_delete_cancels_a_running_batch_and_removes_its_files(
    server: RunningServer, jobs_dir: Path
) -> None:
    contents = [(f"{i}.png", encode(random_image(400, 300, seed=3230 + i))) for i in range(5)]
    job_id = accepted(server.url, contents, content_size="288")["id"]
    deadline = time.monotonic() + 60
    while httpx.get(f"{server.url}/jobs/{job_id}", timeout=10).json()["items_done"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert httpx.delete(f"{server.url}/jobs/{job_id}", timeout=10).status_code == 204
    final = wait_finished(server.url, job_id)[-1]
    assert final["status"] == "canceled", final
    assert final["items_done"] < len(contents)
    assert not (jobs_dir / job_id / "work").exists()
    assert not (jobs_dir / job_id / "inputs").exists()
    assert httpx.get(f"{server.url}/jobs/{job_id}/items/0", timeout=10).status_code == 409
