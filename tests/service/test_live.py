"""WebSocket /live against a real uvicorn with a real WebSocket client (`websockets`): the
handshake and its refusals, the protocol, newest-frame dropping, settings changed mid-stream,
bad and oversized frames, the idle timeout."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise

import httpx
import numpy as np
import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection

from devkit.images import encode, random_image
from devkit.live import LiveStream, live_connection, live_stream
from devkit.server import RunningServer, running_server
from tests.service.conftest import SHARED_LIMITS

FRAME_SIZE = (96, 64)  # width, height of the camera's frames
SIZE = 48  # the shorter side the server works at
SEED_BASE = 8100  # images of their own: the shared server's cache and registry stay independent
LIMITED_KEY = "live-key-0123456789"
LIMITED_IDLE_S = 2.0
LIMITED_MAX_BYTES = 60_000
LIMITED_MAX_PIXELS = 500_000


def frame(seed: int, size: tuple[int, int] = FRAME_SIZE, fmt: str = "JPEG") -> bytes:
    return encode(random_image(*size, seed=SEED_BASE + seed), fmt)


def register_style(url: str, seed: int, headers: dict[str, str] | None = None) -> str:
    image = encode(random_image(64, 64, seed=SEED_BASE + seed))
    answer = httpx.post(
        url + "/styles",
        files={"file": (f"live-{seed}.png", image, "image/png")},
        headers=headers,
        timeout=60,
    )
    assert answer.status_code in (200, 201), answer.text
    return answer.json()["id"]


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64) / 255


def stylize_over_http(url: str, content: bytes, style_id: str, alpha: float) -> np.ndarray:
    answer = httpx.post(
        url + "/stylize",
        files={"content": ("frame.jpg", content, "image/jpeg")},
        data={
            "style_id": style_id,
            "alpha": str(alpha),
            "content_size": str(SIZE),
            "style_size": "0",
        },
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return pixels(answer.content)


def settings(style_id: str, **more: object) -> dict[str, object]:
    return {"style_id": style_id, "size": SIZE, "style_size": 0, "stabilize": False, **more}


def closed_with(stream: LiveStream | object, timeout_s: float = 30) -> tuple[dict, int]:
    """The error message the server sends last, and its close code."""
    connection = stream.connection if isinstance(stream, LiveStream) else stream
    message = LiveStream(connection, {}).message(timeout_s)
    with pytest.raises(ConnectionClosed) as closed:
        connection.recv(timeout_s)
    assert closed.value.rcvd is not None
    return message, closed.value.rcvd.code


@pytest.fixture(scope="module")
def style_ids(server: RunningServer) -> tuple[str, str]:
    return register_style(server.url, 1), register_style(server.url, 2)


# --- the protocol -------------------------------------------------------------------------------


def test_frames_come_back_stylized_as_post_stylize_makes_them(
    server: RunningServer, style_ids: tuple[str, str]
) -> None:
    content = frame(10)
    with live_stream(server.url, settings(style_ids[0], alpha=0.8)) as stream:
        assert stream.ready["settings"] == {
            "style_id": style_ids[0],
            "alpha": 0.8,
            "size": SIZE,
            "style_size": 0,
            "stabilize": False,
            "stability": 0.5,  # the default trade-off, kept for when `stabilize` comes on
            "format": "jpeg",
            "quality": 80,
            "model": "full",  # the service's default (ADAIN_MODEL)
        }
        stream.send_frame(content)
        header, image = stream.result()
    assert header["frame"] == 0 and header["dropped"] == 0 and header["model"] == "full"
    for timing in ("decode_ms", "network_ms", "encode_ms", "server_ms"):
        assert header[timing] >= 0
    assert image[:2] == b"\xff\xd8"  # JPEG
    live = pixels(image)
    assert live.shape == (SIZE, SIZE * 3 // 2, 3)
    expected = stylize_over_http(server.url, content, style_ids[0], 0.8)
    assert np.abs(live - expected).mean() < 0.03  # the same pixels up to JPEG
    camera = pixels(content)
    resized = (
        np.asarray(
            Image.fromarray((camera * 255).astype(np.uint8)).resize((SIZE * 3 // 2, SIZE)),
            dtype=np.float64,
        )
        / 255
    )
    assert np.abs(live - resized).mean() > 0.05  # stylized, not the camera's frame


def test_the_newest_frame_is_kept_and_the_late_ones_dropped(
    server: RunningServer, style_ids: tuple[str, str]
) -> None:
    sent = 12
    with live_stream(server.url, settings(style_ids[0])) as stream:
        for index in range(sent):  # all at once: far faster than the network
            stream.send_frame(frame(20 + index))
        processed = []
        while not processed or processed[-1]["frame"] != sent - 1:
            header, _ = stream.result()
            processed.append(header)
    indices = [header["frame"] for header in processed]
    assert indices == sorted(indices) and indices[0] == 0
    assert len(processed) < sent  # dropped, not queued
    assert processed[-1]["dropped"] == sent - len(processed)
    exported = httpx.get(server.url + "/metrics", timeout=30).text
    counts = {
        outcome: float(line.rsplit(" ", 1)[1])
        for line in exported.splitlines()
        for outcome in ("dropped", "stylized")
        if line.startswith(f'adain_live_frames_total{{outcome="{outcome}"}}')
    }
    assert counts["dropped"] >= sent - len(processed)
    assert counts["stylized"] >= len(processed)


def queue_depth(url: str) -> float:
    exported = httpx.get(url + "/metrics", timeout=30).text
    line = next(line for line in exported.splitlines() if line.startswith("adain_queue_depth "))
    return float(line.split()[1])


def test_a_flooding_stream_holds_one_place_in_the_engine_queue(
    server: RunningServer, style_ids: tuple[str, str]
) -> None:
    """Frames sent far faster than the network keeps up never queue in the engine, so
    /stylize and jobs keep their turn: the queue holds at most this stream's one frame."""
    depths = []
    with live_stream(server.url, settings(style_ids[0])) as stream:
        for index in range(30):
            stream.send_frame(frame(80 + index % 5))
            if index % 5 == 4:
                depths.append(queue_depth(server.url))
        while stream.result()[0]["frame"] != 29:
            pass
    assert max(depths) <= 1, depths
    answer = httpx.post(
        server.url + "/stylize",
        files={"content": ("frame.jpg", frame(90), "image/jpeg")},
        data={"style_id": style_ids[0], "content_size": str(SIZE), "style_size": "0"},
        timeout=60,
    )
    assert answer.status_code == 200


def test_settings_change_mid_stream(server: RunningServer, style_ids: tuple[str, str]) -> None:
    content = frame(40)
    with live_stream(server.url, settings(style_ids[0])) as stream:
        stream.send_frame(content)
        _, first = stream.result()
        stream.send_settings({"alpha": 0.0})
        changed = stream.message()
        assert changed["ready"] is True and changed["settings"]["alpha"] == 0.0
        stream.send_frame(content)
        _, no_style = stream.result()
        stream.send_settings({"style_id": style_ids[1], "alpha": 1.0})
        assert stream.message()["settings"]["style_id"] == style_ids[1]
        stream.send_frame(content)
        _, other_style = stream.result()
        # A bad change is refused with the field named; the settings stay.
        stream.send_settings({"alpha": 3})
        refused = stream.message()
        assert refused["status"] == 422 and refused["field"] == "alpha"
        stream.send_frame(content)
        header, still_other = stream.result()
    assert header["frame"] == 3
    expected = {
        "first": stylize_over_http(server.url, content, style_ids[0], 1.0),
        "no_style": stylize_over_http(server.url, content, style_ids[0], 0.0),
        "other": stylize_over_http(server.url, content, style_ids[1], 1.0),
    }
    for name, image in (
        ("first", first),
        ("no_style", no_style),
        ("other", other_style),
        ("other", still_other),
    ):
        errors = {key: np.abs(pixels(image) - value).mean() for key, value in expected.items()}
        assert min(errors, key=errors.get) == name, (name, errors)


def panning_frames(count: int, step: int = 3) -> list[bytes]:
    """Crops of one picture moving `step` px to the right per frame: known motion."""
    scene = random_image(FRAME_SIZE[0] + step * count, FRAME_SIZE[1], seed=SEED_BASE + 45)
    return [
        encode(
            scene.crop((step * (count - i), 0, step * (count - i) + FRAME_SIZE[0], FRAME_SIZE[1])),
            "PNG",
        )
        for i in range(count)
    ]


def flicker(frames: list[np.ndarray], shift: int, margin: int = 6) -> float:
    """Mean change between consecutive frames once the known motion (`shift` px to the right)
    is undone, away from the borders: what a viewer sees as flicker."""
    inner = slice(margin, -margin)
    return float(
        np.mean(
            [
                np.abs(
                    later[inner, shift + margin : -margin]
                    - earlier[inner, margin : -shift - margin]
                ).mean()
                for earlier, later in pairwise(frames)
            ]
        )
    )


def test_the_stabiliser_is_on_by_default_and_uses_the_previous_frames(
    server: RunningServer, style_ids: tuple[str, str]
) -> None:
    # 4 px a frame at 64 px high: 3 px at the SIZE = 48 the server works at.
    clip = panning_frames(6, step=4)
    outputs: dict[str, list[np.ndarray]] = {}
    runs = {"on": {}, "off": {"stabilize": False}, "stability 0": {"stability": 0}}
    for name, extra in runs.items():
        first = {"style_id": style_ids[0], "size": SIZE, "style_size": 0, **extra}
        with live_stream(server.url, first) as stream:
            assert stream.ready["settings"]["stabilize"] is (name != "off")
            outputs[name] = []
            for data in clip:  # closed loop: each frame is processed
                stream.send_frame(data)
                header, image = stream.result()
                assert header["dropped"] == 0
                outputs[name].append(pixels(image))
    assert all(image.shape == (SIZE, SIZE * 3 // 2, 3) for image in outputs["on"])
    # Later frames blend in the previous output moved along the flow: they flicker less.
    assert np.abs(outputs["on"][-1] - outputs["off"][-1]).mean() > 0.005
    assert flicker(outputs["on"], 3) < 0.8 * flicker(outputs["off"], 3)
    # Stability 0, the user's choice of detail over steadiness: each frame on its own.
    for own, alone in zip(outputs["stability 0"], outputs["off"], strict=True):
        assert np.abs(own - alone).mean() < 0.01


def test_a_frame_that_does_not_decode_gets_an_error_and_the_stream_goes_on(
    server: RunningServer, style_ids: tuple[str, str]
) -> None:
    with live_stream(server.url, settings(style_ids[0])) as stream:
        stream.send_frame(b"these are notes, not pixels")
        error = stream.message()
        assert error["status"] == 415 and error["field"] == "frame"
        assert error["failed_frame"] == 0
        stream.send_frame(frame(50, fmt="PNG"))
        header, image = stream.result()
    assert header["frame"] == 1
    assert pixels(image).shape[0] == SIZE


@pytest.mark.parametrize(
    ("first", "status", "field"),
    [
        ({"style_id": "0" * 64}, 404, "style_id"),
        ({"style_id": "x", "alpha": "strong"}, 422, "alpha"),
        ({"style_id": "x", "format": "png"}, 422, "format"),
        ({"alpha": 0.5}, 422, "style_id"),
        ({"style_id": "x", "size": 100_000}, 422, "size"),
        ({"style_id": "x", "stability": 1.5}, 422, "stability"),
        ("not json", 422, "settings"),
    ],
)
def test_bad_first_settings_are_refused_and_closed(
    server: RunningServer, first: dict[str, object] | str, status: int, field: str
) -> None:
    with live_connection(server.url) as connection:
        connection.send(first if isinstance(first, str) else json.dumps(first))
        message, code = closed_with(connection)
    assert message["status"] == status and message["field"] == field
    assert code == 4000 + status


def test_a_frame_before_the_settings_is_refused(server: RunningServer) -> None:
    with live_connection(server.url) as connection:
        connection.send(frame(60))
        message, code = closed_with(connection)
    assert code == 4422 and message["field"] == "settings"


# --- the handshake: origins, keys, the cap; the limits ------------------------------------------


def test_another_sites_page_cannot_open_a_stream(
    server: RunningServer, style_ids: tuple[str, str]
) -> None:
    with (
        pytest.raises(InvalidStatus) as refused,
        live_connection(server.url, origin="https://attacker.example"),
    ):
        pass
    assert refused.value.response.status_code == 403
    assert b"attacker.example" in refused.value.response.body
    # The service's own page may.
    with live_stream(server.url, settings(style_ids[0]), origin=server.url) as stream:
        assert stream.ready["ready"] is True


@dataclass
class LimitedServer:
    server: RunningServer
    style_id: str

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def limited(
    server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LimitedServer]:
    """Keys on, one live stream at a time, a short idle timeout, small frame limits."""
    env = {
        **server_env,
        **SHARED_LIMITS,
        "ADAIN_STYLES_DIR": str(tmp_path_factory.mktemp("live-styles")),
        "ADAIN_ADMIN_KEYS": LIMITED_KEY,
        "ADAIN_LIVE_MAX_SESSIONS": "1",
        "ADAIN_LIVE_IDLE_TIMEOUT_S": str(LIMITED_IDLE_S),
        "ADAIN_LIVE_MAX_FRAME_BYTES": str(LIMITED_MAX_BYTES),
        "ADAIN_LIVE_MAX_FRAME_PIXELS": str(LIMITED_MAX_PIXELS),
    }
    with running_server(env) as running:
        style = register_style(running.url, 3, {"X-API-Key": LIMITED_KEY})
        yield LimitedServer(running, style)


@contextmanager
def once_free(
    limited: LimitedServer, headers: dict[str, str] | None = None
) -> Iterator[ClientConnection]:
    """A connection to the limited server, once its one live place is free: the previous
    test's stream leaves it a moment after the client closed it."""
    deadline = time.monotonic() + 10
    while True:
        try:
            with live_connection(limited.url, headers=headers) as connection:
                yield connection
                return
        except InvalidStatus as refused:
            if refused.response.status_code != 503 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def limited_stream(limited: LimitedServer) -> Iterator[LiveStream]:
    with once_free(limited) as connection:
        connection.send(json.dumps(settings(limited.style_id, key=LIMITED_KEY)))
        stream = LiveStream(connection, {})
        stream.ready = stream.message()
        assert stream.ready["ready"] is True, stream.ready
        yield stream


def test_a_key_in_the_first_message(limited_stream: LiveStream) -> None:
    limited_stream.send_frame(frame(70))
    header, _ = limited_stream.result()
    assert header["frame"] == 0
    assert "key" not in limited_stream.ready["settings"]  # never echoed


@pytest.mark.parametrize("key", [None, "wrong-key-0123456789"])
def test_a_missing_or_wrong_key_in_the_first_message_is_refused(
    limited: LimitedServer, key: str | None
) -> None:
    with once_free(limited) as connection:
        connection.send(json.dumps(settings(limited.style_id, key=key)))
        message, code = closed_with(connection)
    assert message["status"] == 401 and code == 4401


def test_a_key_in_the_headers(limited: LimitedServer) -> None:
    # Checked at the handshake, before the cap: a wrong key never takes the place.
    with (
        pytest.raises(InvalidStatus) as refused,
        live_connection(limited.url, headers={"Authorization": "Bearer wrong-key-0123456789"}),
    ):
        pass
    assert refused.value.response.status_code == 401
    with once_free(limited, {"Authorization": f"Bearer {LIMITED_KEY}"}) as connection:
        stream = LiveStream(connection, {})
        stream.send_settings(settings(limited.style_id))
        assert stream.message()["ready"] is True
        stream.send_frame(frame(71))
        assert stream.result()[0]["frame"] == 0


def test_past_the_cap_the_handshake_is_refused_with_a_retry_hint(
    limited: LimitedServer, limited_stream: LiveStream
) -> None:
    with pytest.raises(InvalidStatus) as refused, live_connection(limited.url):
        pass
    response = refused.value.response
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) > 0
    assert b"ADAIN_LIVE_MAX_SESSIONS" in response.body
    # The open stream is unaffected.
    limited_stream.send_frame(frame(72))
    assert limited_stream.result()[0]["frame"] == 0


def test_an_oversized_frame_gets_an_error_and_the_stream_is_closed(
    limited_stream: LiveStream,
) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    too_many_bytes = encode(Image.fromarray(noise), "PNG")
    assert len(too_many_bytes) > LIMITED_MAX_BYTES
    limited_stream.send_frame(too_many_bytes)
    message, code = closed_with(limited_stream)
    assert message["status"] == 413 and "ADAIN_LIVE_MAX_FRAME_BYTES" in message["detail"]
    assert code == 4413


def test_a_frame_with_too_many_pixels_gets_an_error_and_the_stream_is_closed(
    limited_stream: LiveStream,
) -> None:
    flat = encode(Image.new("RGB", (1000, 1000), (90, 120, 150)), "PNG")  # few bytes
    assert len(flat) < LIMITED_MAX_BYTES
    limited_stream.send_frame(flat)
    message, code = closed_with(limited_stream)
    assert message["status"] == 413 and message["field"] == "frame"
    assert "ADAIN_LIVE_MAX_FRAME_PIXELS" in message["detail"]  # the limit applied here
    assert code == 4413


def test_an_idle_stream_is_closed(limited_stream: LiveStream) -> None:
    start = time.monotonic()
    message, code = closed_with(limited_stream, timeout_s=LIMITED_IDLE_S * 10)
    assert LIMITED_IDLE_S * 0.9 < time.monotonic() - start < LIMITED_IDLE_S * 5
    assert message["status"] == 408 and code == 4408
