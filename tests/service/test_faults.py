"""Faults of the stores, for real: a redis-server stopped and started again under a running
uvicorn, a Redis that is not there at start, a styles folder that cannot exist (its parent is a
file), a full disk (a tiny tmpfs), corrupt record files. Each is a temporary answer (503 +
Retry-After naming the store, 507 for a full disk) that heals without a restart, and what was
stored is still there afterwards."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from devkit.images import encode, random_image
from devkit.server import RedisServer, free_port, running_server

SMALL = {"content_size": "32", "style_size": "32"}
CONTENT = encode(random_image(40, 32, seed=71))


def register(url: str, data: bytes, name: str = "style") -> httpx.Response:
    return httpx.post(
        f"{url}/styles", data={"name": name}, files={"file": ("s.png", data)}, timeout=30
    )


def stylize_upload(url: str, style: bytes) -> httpx.Response:
    return httpx.post(
        f"{url}/stylize",
        data=SMALL,
        timeout=60,
        files={"content": ("c.png", CONTENT), "style": ("s.png", style)},
    )


def stylize_id(url: str, id_: str) -> httpx.Response:
    return httpx.post(
        f"{url}/stylize",
        data={**SMALL, "style_id": id_},
        timeout=60,
        files={"content": ("c.png", CONTENT)},
    )


def assert_temporary(response: httpx.Response, status: int, naming: str) -> None:
    """A temporary fault: the status, Retry-After, the error shape naming the store."""
    assert response.status_code == status, response.text
    assert int(response.headers["retry-after"]) > 0
    body = response.json()
    assert set(body) == {"detail", "field"} and body["field"] is None
    assert naming in body["detail"], body


def wait_for(url: str, status: int, timeout_s: float = 20) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        response = httpx.get(url, timeout=5)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def redis_errors(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith('adain_dependency_errors_total{dependency="redis"}'):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture
def redis_later(tmp_path: Path) -> Iterator[RedisServer]:
    """A persistent redis-server on a reserved port, not started yet."""
    redis = RedisServer(free_port(), tmp_path / "redis")
    redis.data_dir.mkdir()
    try:
        yield redis
    finally:
        redis.stop()


def test_redis_absent_at_start_lost_and_back(
    server_env: dict[str, str], redis_later: RedisServer
) -> None:
    env = {**server_env, "ADAIN_REDIS_URL": redis_later.url, "ADAIN_WARMUP": "false"}
    style, other = encode(random_image(36, 36, seed=72)), encode(random_image(30, 40, seed=73))
    with running_server(env, ready=False) as server:
        # Redis not there at start: alive, not ready, the registry 503, uploads served.
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        assert_temporary(httpx.get(f"{server.url}/readyz"), 503, "redis")
        assert_temporary(register(server.url, style), 503, "Redis")
        assert stylize_upload(server.url, style).status_code == 200

        redis_later.start()
        assert wait_for(f"{server.url}/readyz", 200).status_code == 200
        created = register(server.url, style, "kept")
        assert created.status_code == 201, created.text
        kept = created.json()
        assert stylize_upload(server.url, other).headers["x-style-cache"] == "miss"
        assert stylize_upload(server.url, other).headers["x-style-cache"] == "hit"

        redis_later.stop()  # lost at run time
        errors_before = redis_errors(server.url)
        assert_temporary(httpx.get(f"{server.url}/readyz"), 503, "redis")
        assert_temporary(httpx.get(f"{server.url}/styles"), 503, "Redis")
        assert_temporary(httpx.get(f"{server.url}/styles/{kept['id']}"), 503, "Redis")
        assert_temporary(httpx.delete(f"{server.url}/styles/{kept['id']}"), 503, "Redis")
        assert_temporary(register(server.url, other), 503, "Redis")
        assert_temporary(stylize_id(server.url, kept["id"]), 503, "Redis")
        # The statistics cache is skipped: uploads are computed, every time.
        for _ in range(2):
            served = stylize_upload(server.url, other)
            assert served.status_code == 200, served.text
            assert served.headers["x-style-cache"] == "miss"
        assert redis_errors(server.url) >= errors_before + 2
        assert "style cache skipped" in server.logs()

        redis_later.start()  # back, same port and data: no restart of the service
        assert wait_for(f"{server.url}/readyz", 200).status_code == 200
        assert httpx.get(f"{server.url}/styles").json()["styles"] == [kept]
        assert stylize_id(server.url, kept["id"]).status_code == 200
        assert stylize_upload(server.url, other).headers["x-style-cache"] == "hit"

        redis_later.pause()  # stalled: connections accepted, never answered
        started = time.monotonic()
        assert_temporary(httpx.get(f"{server.url}/styles"), 503, "Redis")
        assert time.monotonic() - started < 5  # timeouts, not a hung request
        stalled = stylize_upload(server.url, other)
        assert stalled.status_code == 200 and stalled.headers["x-style-cache"] == "miss"
        redis_later.resume()
        assert httpx.get(f"{server.url}/styles").json()["styles"] == [kept]
        assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_styles_folder_unavailable_then_back(server_env: dict[str, str], tmp_path: Path) -> None:
    blocker = tmp_path / "volume"
    blocker.write_text("a file where the styles folder's parent should be")
    styles_dir = blocker / "styles"
    env = {**server_env, "ADAIN_STYLES_DIR": str(styles_dir), "ADAIN_WARMUP": "false"}
    style = encode(random_image(36, 36, seed=74))
    with running_server(env) as server:  # starts, and is ready: uploads need no registry
        assert_temporary(httpx.get(f"{server.url}/styles"), 503, "ADAIN_STYLES_DIR")
        assert_temporary(register(server.url, style), 503, "Not a directory")
        assert_temporary(httpx.get(f"{server.url}/styles/{'a' * 64}"), 503, "ADAIN_STYLES_DIR")
        assert_temporary(stylize_id(server.url, "a" * 64), 503, "ADAIN_STYLES_DIR")
        assert stylize_upload(server.url, style).status_code == 200

        blocker.unlink()  # the volume is back
        created = register(server.url, style, "after")
        assert created.status_code == 201, created.text
        assert httpx.get(f"{server.url}/styles").json()["styles"] == [created.json()]


def test_corrupt_records_are_skipped_and_repaired(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    styles_dir = tmp_path / "styles"
    env = {**server_env, "ADAIN_STYLES_DIR": str(styles_dir), "ADAIN_WARMUP": "false"}
    good, broken = encode(random_image(36, 36, seed=75)), encode(random_image(30, 30, seed=76))
    with running_server(env) as server:
        kept = register(server.url, good, "good").json()
        damaged = register(server.url, broken, "broken").json()
        record = styles_dir / f"{damaged['id']}.json"
        for corrupt in (b'{"id": "trunc', b"[1, 2]", json.dumps({"id": "x"}).encode(), b"\xff"):
            record.write_bytes(corrupt)
            listed = httpx.get(f"{server.url}/styles")
            assert listed.status_code == 200
            assert listed.json()["styles"] == [kept]
            assert httpx.get(f"{server.url}/styles/{damaged['id']}").status_code == 404
        assert "skipped a corrupt style record" in server.logs()
        # Registering the file again replaces the corrupt record; its image was kept.
        repaired = register(server.url, broken, "again")
        assert repaired.status_code == 201
        assert stylize_id(server.url, repaired.json()["id"]).status_code == 200
        assert {s["id"] for s in httpx.get(f"{server.url}/styles").json()["styles"]} == {
            kept["id"],
            damaged["id"],
        }


@contextmanager
def tiny_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real full disk: a tmpfs of `size`. Needs the right to mount (root); else skipped."""
    where.mkdir()
    mounted = (
        shutil.which("mount")
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
        ).returncode
        == 0
    )
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (needs root): no real full disk to test")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_a_full_disk_is_507_and_loses_nothing(server_env: dict[str, str], tmp_path: Path) -> None:
    with tiny_tmpfs(tmp_path / "disk", "64k") as disk:
        env = {**server_env, "ADAIN_STYLES_DIR": str(disk), "ADAIN_WARMUP": "false"}
        small = encode(random_image(24, 24, seed=77))
        large = encode(random_image(320, 320, seed=78))  # over the whole disk
        assert len(large) > 64 * 1024
        with running_server(env) as server:
            kept = register(server.url, small, "small").json()
            full = register(server.url, large, "large")
            assert_temporary(full, 507, "disk is full")
            assert httpx.get(f"{server.url}/styles").json()["styles"] == [kept]
            assert stylize_id(server.url, kept["id"]).status_code == 200
            assert stylize_upload(server.url, large).status_code == 200
        # Nothing half-written is left behind: the kept style's two files and its name only.
        assert sorted(p.name for p in disk.iterdir()) == sorted(
            [f"{kept['id']}.image", f"{kept['id']}.json", "names"]
        )
        claims = [p for p in (disk / "names").rglob("*") if p.is_file()]
        assert [claim.read_text() for claim in claims] == [kept["id"]]
