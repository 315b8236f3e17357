"""The style registry: CRUD, persistence across a restart, and shared Redis between replicas."""

from __future__ import annotations

import hashlib
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import redis
from PIL import Image

from devkit.images import encode, random_image
from devkit.server import RunningServer, running_server

CONTENT = encode(random_image(48, 32, seed=21))
SMALL = {"content_size": "32", "style_size": "32"}


def register(url: str, data: bytes, name: str | None = None) -> httpx.Response:
    form = {"name": name} if name is not None else {}
    return httpx.post(f"{url}/styles", data=form, files={"file": ("wave.png", data)}, timeout=30)


def stylize_with_id(url: str, id_: str) -> httpx.Response:
    return httpx.post(f"{url}/stylize", data={**SMALL, "style_id": id_},
                      files={"content": ("c.png", CONTENT)}, timeout=60)


def test_register_list_get_delete(server: RunningServer) -> None:
    data = encode(random_image(60, 40, seed=22))
    created = register(server.url, data, "Great wave")
    assert created.status_code == 201, created.text
    style = created.json()
    assert style["id"] == hashlib.sha256(data).hexdigest()
    assert (style["name"], style["width"], style["height"]) == ("Great wave", 60, 40)
    again = register(server.url, data, "Great wave")
    assert again.status_code == 200  # idempotent: the existing style, unchanged
    renamed = register(server.url, data, "another name")  # not dropped without a word
    assert renamed.status_code == 409 and renamed.json()["field"] == "name"
    assert "'Great wave'" in renamed.json()["detail"]
    assert again.json() == style
    unnamed = register(server.url, encode(random_image(30, 30, seed=23)))
    assert unnamed.json()["name"] == "wave"  # the file name without extension

    listed = httpx.get(f"{server.url}/styles").json()["styles"]
    assert style in listed and unnamed.json() in listed
    assert httpx.get(f"{server.url}/styles/{style['id']}").json() == style
    assert stylize_with_id(server.url, style["id"]).status_code == 200

    assert httpx.delete(f"{server.url}/styles/{style['id']}").status_code == 204
    assert httpx.get(f"{server.url}/styles/{style['id']}").status_code == 404
    assert style not in httpx.get(f"{server.url}/styles").json()["styles"]
    assert stylize_with_id(server.url, style["id"]).status_code == 404
    assert httpx.delete(f"{server.url}/styles/{style['id']}").status_code == 404


def register_concurrently(urls: list[str], data: bytes, clients: int = 20) -> list[httpx.Response]:
    """`clients` threads register the same file (and name) at once, spread over `urls`
    (replicas)."""
    with ThreadPoolExecutor(clients) as pool:
        return list(
            pool.map(lambda i: register(urls[i % len(urls)], data, "shared"), range(clients))
        )


def assert_one_created(responses: list[httpx.Response]) -> None:
    """Exactly one 201; the 200s carry the stored record (same id, name, created time)."""
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] * (len(responses) - 1) + [201], statuses
    created = next(r.json() for r in responses if r.status_code == 201)
    assert all(response.json() == created for response in responses)


def test_the_same_file_registered_concurrently_is_created_once(server: RunningServer) -> None:
    data = encode(random_image(44, 36, seed=26))
    assert_one_created(register_concurrently([server.url], data))
    listed = httpx.get(f"{server.url}/styles").json()["styles"]
    assert sum(style["id"] == hashlib.sha256(data).hexdigest() for style in listed) == 1


def test_registry_survives_a_restart(server_env: dict[str, str], tmp_path: Path) -> None:
    env = {**server_env, "ADAIN_STYLES_DIR": str(tmp_path / "styles"), "ADAIN_WARMUP": "false"}
    data = encode(random_image(50, 50, seed=24))
    with running_server(env) as first:
        style = register(first.url, data, "kept").json()
        before = stylize_with_id(first.url, style["id"])
    stored = json.loads((tmp_path / "styles" / f"{style['id']}.json").read_text())
    assert stored == style
    assert (tmp_path / "styles" / f"{style['id']}.image").read_bytes() == data
    with running_server(env) as second:
        assert httpx.get(f"{second.url}/styles").json()["styles"] == [style]
        after = stylize_with_id(second.url, style["id"])
    assert before.status_code == after.status_code == 200
    assert before.content == after.content


def test_two_replicas_share_registry_and_cache_in_redis(
    server_env: dict[str, str], redis_server: str
) -> None:
    env = {**server_env, "ADAIN_REDIS_URL": redis_server, "ADAIN_CACHE_TTL_S": "600",
           "ADAIN_WARMUP": "false"}
    data = encode(random_image(56, 40, seed=25))
    with running_server(env) as one, running_server(env) as two:
        responses = register_concurrently([one.url, two.url], data)
        assert_one_created(responses)
        style = responses[0].json()
        assert httpx.get(f"{two.url}/styles/{style['id']}").json() == style
        first = stylize_with_id(two.url, style["id"])
        assert first.headers["x-style-cache"] == "miss"
        second = stylize_with_id(one.url, style["id"])  # the statistics two computed
        assert second.headers["x-style-cache"] == "hit"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(first.content))),
                              np.asarray(Image.open(io.BytesIO(second.content))))
        client = redis.Redis.from_url(redis_server)
        stats_keys = client.keys("adain:stats:*")
        assert len(stats_keys) == 1
        assert 0 < client.ttl(stats_keys[0]) <= 600  # bounded: entries expire
        assert len(client.get(stats_keys[0])) == 2 * 512 * 4  # mean and std, float32
        assert httpx.delete(f"{two.url}/styles/{style['id']}").status_code == 204
        assert httpx.get(f"{one.url}/styles/{style['id']}").status_code == 404
    # Nothing on disk in Redis mode.
    assert not any(Path(server_env["ADAIN_STYLES_DIR"]).glob(f"{style['id']}*"))
