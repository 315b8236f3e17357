"""Registered styles by name (unique per owner, on disk and in Redis), their images and
thumbnails, and the paginated list."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from devkit.images import encode, random_image
from devkit.live import live_connection, live_stream
from devkit.server import RunningServer, running_server

CONTENT = encode(random_image(40, 32, seed=8201))
SMALL = {"content_size": "32", "style_size": "32"}
ADMIN_A, ADMIN_B, USER = "admin-a-0123456789", "admin-b-0123456789", "user-0123456789"


def image(seed: int, size: tuple[int, int] = (30, 24)) -> bytes:
    return encode(random_image(*size, seed=8200 + seed))


def register(
    url: str,
    data: bytes,
    name: str | None = None,
    file_name: str = "s.png",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    form = {"name": name} if name is not None else {}
    return httpx.post(
        f"{url}/styles", data=form, files={"file": (file_name, data)}, headers=headers, timeout=30
    )


def stylize(url: str, reference: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        f"{url}/stylize",
        data={**SMALL, "style_id": reference},
        headers=headers,
        files={"content": ("c.png", CONTENT)},
        timeout=60,
    )


def key(value: str) -> dict[str, str]:
    return {"X-API-Key": value}


@pytest.fixture(scope="module")
def fresh(
    server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A server whose registry only this module fills (its list is known exactly)."""
    env = {
        **server_env,
        "ADAIN_STYLES_DIR": str(tmp_path_factory.mktemp("named")),
        "ADAIN_WARMUP": "false",
    }
    with running_server(env) as running:
        yield running


def assert_names_work(url: str) -> None:
    """Named, used by name (the same pixels as by id), unique, released when deleted."""
    data = image(1)
    style = register(url, data, "Candy").json()
    assert style["name"] == "Candy"
    by_id, by_name = stylize(url, style["id"]), stylize(url, "candy")  # case is ignored
    assert by_id.status_code == by_name.status_code == 200, by_name.text
    assert by_id.content == by_name.content
    assert httpx.get(f"{url}/styles/CANDY").json() == style

    taken = register(url, image(2), "candy")
    assert taken.status_code == 409, taken.text
    assert taken.json()["field"] == "name"
    assert style["id"][:12] in taken.json()["detail"]
    assert register(url, data, "CANDY").json() == style  # the same file: the same style
    renamed = register(url, data, "another")  # a second name is not dropped without a word
    assert renamed.status_code == 409 and "'Candy'" in renamed.json()["detail"]

    assert httpx.delete(f"{url}/styles/Candy").status_code == 204
    assert stylize(url, "candy").status_code == 404
    reused = register(url, image(2), "candy")  # the name is free again
    assert reused.status_code == 201, reused.text
    assert httpx.get(f"{url}/styles/candy").json()["id"] == reused.json()["id"]


def test_a_style_named_at_registration_is_used_by_its_name(fresh: RunningServer) -> None:
    assert_names_work(fresh.url)


def test_names_in_redis(server_env: dict[str, str], redis_server: str) -> None:
    env = {**server_env, "ADAIN_REDIS_URL": redis_server, "ADAIN_WARMUP": "false"}
    with running_server(env) as one, running_server(env) as two:
        assert_names_work(one.url)
        # A replica sees the other's names, and their uniqueness holds across replicas.
        assert httpx.get(f"{two.url}/styles/candy").status_code == 200
        assert register(two.url, image(3), "Candy").status_code == 409
        assert_one_wins_a_name([one.url, two.url], "raced")


def assert_one_wins_a_name(urls: list[str], name: str, clients: int = 12) -> None:
    """Different files claiming one name at once: one 201, the others 409."""
    with ThreadPoolExecutor(clients) as pool:
        responses = list(
            pool.map(lambda i: register(urls[i % len(urls)], image(100 + i), name), range(clients))
        )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] + [409] * (clients - 1), statuses
    winner = next(r.json() for r in responses if r.status_code == 201)
    assert httpx.get(f"{urls[0]}/styles/{name}").json() == winner


def test_one_of_concurrent_registrations_gets_a_name(fresh: RunningServer) -> None:
    assert_one_wins_a_name([fresh.url], "contested")


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("a/b", "'/'"),
        ("ab\x07c", "control characters"),
        ("f" * 64, "64 hex digits"),
        ("x" * 201, "the limit is 200"),
    ],
)
def test_invalid_names_are_refused(fresh: RunningServer, name: str, problem: str) -> None:
    answer = register(fresh.url, image(4), name)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == "name"
    assert problem in answer.json()["detail"]


def test_a_name_taken_from_the_file_name_gives_way(fresh: RunningServer) -> None:
    first = register(fresh.url, image(5), file_name="sunset.png").json()
    second = register(fresh.url, image(6), file_name="sunset.png").json()
    assert first["name"] == "sunset"
    assert second["name"] == f"sunset-{second['id'][:8]}"
    assert stylize(fresh.url, second["name"]).status_code == 200


def test_names_are_per_owner_when_keys_are_on(server_env: dict[str, str], tmp_path: Path) -> None:
    env = {
        **server_env,
        "ADAIN_STYLES_DIR": str(tmp_path),
        "ADAIN_WARMUP": "false",
        "ADAIN_API_KEYS": USER,
        "ADAIN_ADMIN_KEYS": f"{ADMIN_A},{ADMIN_B}",
    }
    with running_server(env) as server:
        mine = register(server.url, image(7), "wave", headers=key(ADMIN_A))
        theirs = register(server.url, image(8), "wave", headers=key(ADMIN_B))
        assert mine.status_code == theirs.status_code == 201, theirs.text
        assert register(server.url, image(9), "wave", headers=key(ADMIN_A)).status_code == 409
        for admin, style in ((ADMIN_A, mine), (ADMIN_B, theirs)):
            found = httpx.get(f"{server.url}/styles/wave", headers=key(admin)).json()
            assert found["id"] == style.json()["id"]
        # A user owns no styles: two owners' "wave" is ambiguous, one owner's is not.
        ambiguous = stylize(server.url, "wave", headers=key(USER))
        assert ambiguous.status_code == 422 and ambiguous.json()["field"] == "style_id"
        # The live feed looks names up as its caller, whether the key came in the handshake's
        # headers or in the first message.
        settings = {"style_id": "wave", "size": 32, "style_size": 0, "stabilize": False}
        with live_stream(server.url, {**settings, "key": ADMIN_A}) as stream:
            assert stream.ready["settings"]["style_id"] == "wave"  # type: ignore[index]
        with live_stream(server.url, settings, headers=key(ADMIN_B)) as stream:
            assert stream.ready["settings"]["style_id"] == "wave"  # type: ignore[index]
        with live_connection(server.url, headers=key(USER)) as connection:
            connection.send(json.dumps(settings))
            refused = json.loads(connection.recv(30))
        assert refused["field"] == "style_id" and "other owners" in refused["detail"]
        deleted = httpx.delete(f"{server.url}/styles/wave", headers=key(ADMIN_B))
        assert deleted.status_code == 204
        assert stylize(server.url, "wave", headers=key(USER)).status_code == 200
        assert (
            httpx.get(f"{server.url}/styles/wave", headers=key(USER)).json()["id"]
            == (mine.json()["id"])
        )
        # Names are no way around the keys: unauthenticated, a name is 401 like an id.
        assert httpx.get(f"{server.url}/styles/wave").status_code == 401


def test_the_image_and_its_thumbnail(fresh: RunningServer) -> None:
    data = image(10, (90, 60))
    style = register(fresh.url, data, "big-one").json()
    original = httpx.get(f"{fresh.url}/styles/{style['id']}/image")
    assert original.status_code == 200
    assert original.content == data and original.headers["content-type"] == "image/png"
    assert "immutable" in original.headers["cache-control"]

    thumb = httpx.get(f"{fresh.url}/styles/big-one/image", params={"size": 30})
    assert thumb.status_code == 200, thumb.text
    assert thumb.headers["content-type"] == "image/jpeg"
    assert "immutable" not in thumb.headers["cache-control"]  # a name can move to another
    with Image.open(io.BytesIO(thumb.content)) as small:
        assert small.size == (30, 20)  # longer side 30, the aspect ratio kept
    again = httpx.get(
        f"{fresh.url}/styles/big-one/image",
        params={"size": 30},
        headers={"If-None-Match": thumb.headers["etag"]},
    )
    assert again.status_code == 304

    too_small = httpx.get(f"{fresh.url}/styles/big-one/image", params={"size": 4})
    assert too_small.status_code == 422 and too_small.json()["field"] == "size"
    missing = httpx.get(f"{fresh.url}/styles/nothing-here/image")
    assert missing.status_code == 404 and missing.json()["field"] == "style_id"


def test_the_list_comes_in_pages(server_env: dict[str, str], tmp_path: Path) -> None:
    env = {**server_env, "ADAIN_STYLES_DIR": str(tmp_path), "ADAIN_WARMUP": "false"}
    with running_server(env) as server:
        with ThreadPoolExecutor(4) as pool:
            registered = list(
                pool.map(
                    lambda i: register(server.url, image(300 + i, (16, 16)), f"s{i}").json(),
                    range(105),
                )
            )
        first = httpx.get(f"{server.url}/styles").json()
        assert len(first["styles"]) == 100  # the default page size
        assert first["next_cursor"]
        rest = httpx.get(f"{server.url}/styles", params={"cursor": first["next_cursor"]}).json()
        assert len(rest["styles"]) == 5 and rest["next_cursor"] is None
        assert {s["id"] for s in first["styles"] + rest["styles"]} == {s["id"] for s in registered}

        pages, cursor = [], None
        while True:
            params = {"limit": 40, **({"cursor": cursor} if cursor else {})}
            page = httpx.get(f"{server.url}/styles", params=params).json()
            pages.append(page["styles"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert [len(p) for p in pages] == [40, 40, 25]
        assert [s for p in pages for s in p] == first["styles"] + rest["styles"]  # oldest first

        for params, field in (
            ({"cursor": "not-a-cursor"}, "cursor"),
            ({"limit": 0}, "limit"),
            ({"limit": 100_000}, "limit"),
        ):
            refused = httpx.get(f"{server.url}/styles", params=params)
            assert refused.status_code == 422, refused.text
            assert refused.json()["field"] == field
