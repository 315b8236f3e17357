"""The preset gallery: public-domain artworks registered as named styles at start-up, in the
embedded registry (no Redis) and in Redis, idempotently; ADAIN_PRESETS=false leaves them out."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from redis.asyncio import Redis

from devkit.images import encode, random_image
from devkit.server import RunningServer, running_server
from service.gallery import PRESET_NAMES, PRESETS_DIR, register_presets
from service.registry import DiskRegistry, RedisRegistry, StyleRegistry, new_record

MAX_SIDE = 512
MAX_TOTAL_BYTES = 400 * 1024


@pytest.fixture(scope="module")
def gallery_server(
    server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    env = {
        **server_env,
        "ADAIN_STYLES_DIR": str(tmp_path_factory.mktemp("gallery-styles")),
        "ADAIN_PRESETS": "true",
    }
    with running_server(env) as running:
        yield running


def test_the_presets_are_small_and_their_sources_recorded() -> None:
    sources = (PRESETS_DIR / "SOURCES.md").read_text()
    files = sorted(path.name for path in PRESETS_DIR.glob("*.jpg"))
    assert files == sorted(f"{name}.jpg" for name in PRESET_NAMES)
    total = 0
    for name in files:
        assert f"| `{name}` |" in sources  # each file's artwork, artist and source
        total += (PRESETS_DIR / name).stat().st_size
        with Image.open(PRESETS_DIR / name) as image:
            assert image.format == "JPEG" and max(image.size) <= MAX_SIDE
    assert total <= MAX_TOTAL_BYTES
    assert "public domain" in sources


async def registered_twice(registry: StyleRegistry) -> tuple[list[str], list[str], list[str]]:
    first = await register_presets(registry)
    second = await register_presets(registry)
    names = [record.name for record in await registry.list()]
    return first, second, names


def test_registering_is_idempotent_on_disk(tmp_path: Path) -> None:
    first, second, names = asyncio.run(registered_twice(DiskRegistry(tmp_path)))
    assert first == list(PRESET_NAMES)
    assert second == []
    assert sorted(names) == sorted(PRESET_NAMES)


def test_registering_is_idempotent_in_redis(redis_server: str) -> None:
    async def run() -> tuple[list[str], list[str], list[str]]:
        redis = Redis.from_url(redis_server)
        try:
            return await registered_twice(RedisRegistry(redis))
        finally:
            await redis.aclose()

    first, second, names = asyncio.run(run())
    assert first == list(PRESET_NAMES) and second == []
    assert sorted(names) == sorted(PRESET_NAMES)


def test_a_taken_name_skips_that_preset_only(tmp_path: Path) -> None:
    """A user's own style already named like a preset keeps its name; the rest register."""

    async def run() -> tuple[list[str], list[str]]:
        registry = DiskRegistry(tmp_path)
        data = encode(random_image(32, 32, seed=5))
        await registry.add(new_record(data, "great-wave", 32, 32), data)
        registered = await register_presets(registry)
        return registered, [record.name for record in await registry.list()]

    registered, names = asyncio.run(run())
    assert registered == [name for name in PRESET_NAMES if name != "great-wave"]
    assert names.count("great-wave") == 1


def test_a_server_starts_with_the_gallery_and_uses_it(gallery_server: RunningServer) -> None:
    listed = httpx.get(gallery_server.url + "/styles", timeout=10).json()["styles"]
    assert [style["name"] for style in listed] == list(PRESET_NAMES)
    content = encode(random_image(64, 48, seed=9))
    answer = httpx.post(
        gallery_server.url + "/stylize",
        files={"content": ("photo.png", content, "image/png")},
        data={"style_id": "starry-night", "content_size": "0", "style_size": "256"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    with Image.open(io.BytesIO(answer.content)) as image:
        assert image.size == (64, 48)


def test_without_the_setting_the_registry_starts_empty(server: RunningServer) -> None:
    """The shared test server runs with ADAIN_PRESETS=false (devkit.server's default)."""
    answer = httpx.get(server.url + "/styles/starry-night", timeout=10)
    assert answer.status_code == 404
