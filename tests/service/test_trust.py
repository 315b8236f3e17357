"""Issue 24's classes against a real server (`python -m service.server`, what `adain serve`
runs): request heads capped as they arrive, Host names allowed (DNS rebinding), broken EXIF,
encoder limits, floods of form fields, local docs, page headers, MPO photos, forwarded headers
from named proxies only, no redirects and one Host."""

from __future__ import annotations

import io
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from devkit.images import encode, random_image
from devkit.server import RunningServer, running_server
from media.imaging import ENCODER_MAX_SIDE, check_encodable
from models.errors import InvalidInputError

MIB = 1024 * 1024
LIMITS = {
    "ADAIN_MAX_UPLOAD_BYTES": str(32 * MIB),
    "ADAIN_MAX_IMAGE_PIXELS": "1100000",
    "ADAIN_MAX_OUTPUT_PIXELS": "1100000",
    "ADAIN_MAX_HEADER_BYTES": str(32 * 1024),
    "ADAIN_MAX_REQUEST_LINE_BYTES": str(8 * 1024),
}
SMALL = {"content_size": "32", "style_size": "32"}
CONTENT = encode(random_image(64, 48, seed=2401))
STYLE = encode(random_image(48, 48, seed=2402))
REBIND = "rebind.attacker.example"


@pytest.fixture(scope="module")
def trust_server(
    server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    env = {**server_env, **LIMITS, "ADAIN_STYLES_DIR": str(tmp_path_factory.mktemp("trust"))}
    with running_server(env) as running:
        yield running


def stylize(
    server: RunningServer,
    files: list[tuple[str, tuple[str, bytes]]] | None = None,
    data: dict[str, str] | None = None,
    **kwargs: object,
) -> httpx.Response:
    files = files or [("content", ("c.png", CONTENT)), ("style", ("s.png", STYLE))]
    return httpx.post(
        f"{server.url}/stylize", files=files, data={**SMALL, **(data or {})}, timeout=120, **kwargs
    )  # type: ignore[arg-type]


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def raw_request(port: int, head: bytes, timeout: float = 10) -> bytes:
    """Sends `head` on a new connection and reads the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(head)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and b"connection: close" not in answer.lower():
                # keep-alive: the whole answer is there once its Content-Length has arrived
                head_part, _, body = answer.partition(b"\r\n\r\n")
                length = re.search(rb"content-length: (\d+)", head_part.lower())
                if length and len(body) >= int(length.group(1)):
                    break
        return answer


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def flood(port: int, start: bytes, filler: bytes, most_bytes: int) -> tuple[bytes, int]:
    """Sends `start`, then `filler` in 64 KiB pieces until the server answers or closes, or
    `most_bytes` are sent: (the answer, the bytes sent)."""
    sent = 0
    piece = filler * (65536 // len(filler))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(start)
        connection.settimeout(0.01)
        answer = b""
        try:
            while sent < most_bytes:
                connection.sendall(piece)
                sent += len(piece)
                try:
                    answer += connection.recv(65536)
                except TimeoutError:
                    continue
                if answer:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        connection.settimeout(5)
        try:
            while chunk := connection.recv(65536):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return answer, sent


# --- 1. the request head: capped as it arrives ---------------------------------------------


def test_a_huge_header_is_431_without_reading_the_rest(trust_server: RunningServer) -> None:
    before = rss_mb(trust_server.process.pid)
    answer, sent = flood(
        trust_server.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Flood: ", b"a", 64 * MIB
    )
    assert status_of(answer) == 431
    assert b"ADAIN_MAX_HEADER_BYTES" in answer and b"application/json" in answer
    assert sent < 4 * MIB  # answered at the limit, not after the 64 MiB the client had
    assert rss_mb(trust_server.process.pid) - before < 20


def test_a_huge_url_is_414_without_reading_the_rest(trust_server: RunningServer) -> None:
    before = rss_mb(trust_server.process.pid)
    answer, sent = flood(trust_server.port, b"GET /healthz?", b"q", 48 * MIB)
    assert status_of(answer) == 414
    assert b"ADAIN_MAX_REQUEST_LINE_BYTES" in answer
    assert sent < 4 * MIB
    assert rss_mb(trust_server.process.pid) - before < 20


def test_heads_within_the_limits_are_served(trust_server: RunningServer) -> None:
    headers = {f"x-fill-{i}": "v" * 1000 for i in range(24)}  # 24 KB of headers
    response = httpx.get(f"{trust_server.url}/healthz?{'q' * 6000}", headers=headers)
    assert response.status_code == 200


def test_many_small_headers_add_up_to_431(trust_server: RunningServer) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-A: b\r\n" * 8000 + b"\r\n"
    assert status_of(raw_request(trust_server.port, head)) == 431


# --- 2. DNS rebinding: only allowed host names ---------------------------------------------


def test_a_rebound_host_name_is_refused(trust_server: RunningServer) -> None:
    """A page at http://rebind.attacker.example whose name now resolves to 127.0.0.1: Host
    and Origin are both the attacker's; keys are off."""
    headers = {
        "Host": f"{REBIND}:{trust_server.port}",
        "Origin": f"http://{REBIND}:{trust_server.port}",
    }
    styles_before = httpx.get(f"{trust_server.url}/styles").json()
    registered = httpx.post(
        f"{trust_server.url}/styles", headers=headers, files={"file": ("s.png", STYLE)}
    )
    assert registered.status_code == 400
    assert registered.json()["detail"].endswith("(ADAIN_ALLOWED_HOSTS lists the names it does)")
    read = httpx.get(f"{trust_server.url}/styles", headers={"Host": REBIND})
    assert read.status_code == 400
    assert httpx.get(f"{trust_server.url}/styles").json() == styles_before  # nothing stored


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "LOCALHOST.", "[::1]"])
def test_local_names_and_addresses_are_served(trust_server: RunningServer, host: str) -> None:
    response = httpx.get(
        f"{trust_server.url}/healthz", headers={"Host": f"{host}:{trust_server.port}"}
    )
    assert response.status_code == 200


def test_the_origin_must_be_an_allowed_host(trust_server: RunningServer) -> None:
    """Even a request whose Host passed (an IP address) is refused when its Origin is the
    attacker's name; the server's own pages pass."""
    own = f"http://127.0.0.1:{trust_server.port}"
    refused = httpx.post(
        f"{trust_server.url}/styles",
        headers={"Origin": f"http://{REBIND}"},
        files={"file": ("s.png", STYLE)},
    )
    assert refused.status_code == 403
    same = httpx.post(
        f"{trust_server.url}/styles",
        headers={"Origin": own},
        files={"file": ("s.png", encode(random_image(40, 40, seed=2403)))},
    )
    assert same.status_code in (200, 201)


def test_allowed_hosts_is_a_setting(server_env: dict[str, str]) -> None:
    env = {
        **server_env,
        "ADAIN_ALLOWED_HOSTS": "adain.example.com, *.svc.example",
        "ADAIN_WARMUP": "false",
    }
    with running_server(env) as server:

        def status(host: str) -> int:
            return httpx.get(f"{server.url}/healthz", headers={"Host": host}).status_code

        assert status("adain.example.com") == 200
        assert status("adain.ns.svc.example:8000") == 200
        assert status("localhost") == 400  # the default's name, no longer listed
        assert status(REBIND) == 400
        assert status("10.1.2.3:8000") == 200  # probes by pod IP


# --- 3. broken EXIF is "no orientation" ----------------------------------------------------


def with_broken_exif(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    extra = {"lossless": True} if fmt == "WEBP" else {}
    image.save(buffer, format=fmt, exif=b"this is not a TIFF structure", **extra)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_broken_exif_means_no_orientation(trust_server: RunningServer, fmt: str) -> None:
    content = with_broken_exif(random_image(64, 48, seed=2404), fmt)
    style = with_broken_exif(random_image(48, 48, seed=2405), fmt)
    mask = with_broken_exif(Image.new("L", (64, 48), 255), fmt)
    response = stylize(
        trust_server,
        [
            ("content", ("c", content)),
            ("style", ("s", style)),
            ("style", ("t", STYLE)),
            ("mask", ("m", mask)),
        ],
        {"content_size": "0"},
    )
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).size == (64, 48)  # not rotated
    registered = httpx.post(f"{trust_server.url}/styles", files={"file": ("s", style)})
    assert registered.status_code in (200, 201), registered.text
    assert (registered.json()["width"], registered.json()["height"]) == (48, 48)


# --- 4. an output its encoder cannot write: 422 before any work ----------------------------


def batches_run(server: RunningServer) -> float:
    """Network passes so far, styles' statistics and stylizing together."""
    text = httpx.get(f"{server.url}/metrics").text
    return sum(
        map(float, re.findall(r"^adain_inference_seconds_count\{.*\} (\S+)$", text, re.MULTILINE))
    )


@pytest.mark.parametrize(("fmt", "width"), [("webp", 16400), ("jpeg", 65600)])
def test_an_output_past_the_encoders_limit_is_422_before_any_work(
    trust_server: RunningServer, fmt: str, width: int
) -> None:
    wide = encode(Image.new("RGB", (width, 16), (90, 120, 200)))
    before = batches_run(trust_server)
    response = stylize(
        trust_server,
        [("content", ("c.png", wide)), ("style", ("s.png", STYLE))],
        {"content_size": "0", "format": fmt},
    )
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "format"
    assert str(ENCODER_MAX_SIDE[fmt]) in response.json()["detail"]
    assert batches_run(trust_server) == before  # no network ran for it


def test_check_encodable_is_exact_at_the_limits() -> None:
    for name, limit in (("webp", 16383), ("jpeg", 65535)):
        check_encodable(limit, 9, name)
        check_encodable(9, limit, name)
        with pytest.raises(InvalidInputError, match=str(limit)):
            check_encodable(9, limit + 1, name)
    check_encodable(100_000, 9, "png")


# --- 5. floods of form fields --------------------------------------------------------------


def healthz_ms(server: RunningServer) -> float:
    start = time.perf_counter()
    assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200
    return (time.perf_counter() - start) * 1000


def test_a_flood_of_weights_is_refused_cheaply_and_briefly(trust_server: RunningServer) -> None:
    """18 fields of 1 MB of `1,` (the issue's probe): refused at the field size limit, the
    loop keeps serving, and no error repeats the input."""
    files = [("content", ("c.png", CONTENT)), ("style", ("s.png", STYLE))]
    files += [("weights", (None, b"1," * (MIB // 2)))] * 18  # type: ignore[list-item]
    slowest: list[float] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            slowest.append(healthz_ms(trust_server))
            time.sleep(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        response = httpx.post(f"{trust_server.url}/stylize", files=files, timeout=60)
    finally:
        done.set()
        prober.join()
    assert response.status_code == 400
    assert len(response.content) < 1000
    assert max(slowest) < 1000


@pytest.mark.parametrize("weights", ["1," * 4000, "x" * 10000, "1,2," + "y" * 9000])
def test_weights_errors_quote_little(trust_server: RunningServer, weights: str) -> None:
    response = stylize(trust_server, data={"weights": weights})
    assert response.status_code == 422
    assert response.json()["field"] == "weights"
    assert len(response.json()["detail"]) < 200


def test_a_text_field_over_the_limit_is_refused(trust_server: RunningServer) -> None:
    response = stylize(trust_server, data={"style_id": "a" * (17 * 1024)})
    assert response.status_code == 400
    assert "ADAIN_MAX_FIELD_BYTES" in response.json()["detail"]
    assert len(response.content) < 1000


# --- 6. and 7. the docs' assets are local; the pages' headers ----------------------------


def test_the_docs_load_nothing_from_other_origins(trust_server: RunningServer) -> None:
    page = httpx.get(f"{trust_server.url}/docs")
    assert page.status_code == 200
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert urls and all(url.startswith("/") and not url.startswith("//") for url in urls)
    for url in urls:
        asset = httpx.get(f"{trust_server.url}{url}")
        assert asset.status_code == 200, url
    assert "SwaggerUIBundle" in httpx.get(f"{trust_server.url}/docs/start.js").text


@pytest.mark.parametrize("path", ["/", "/docs", "/healthz", "/static/app.js", "/nowhere"])
def test_pages_cannot_be_framed_or_sniffed(trust_server: RunningServer, path: str) -> None:
    response = httpx.get(f"{trust_server.url}{path}", headers={"Host": "localhost"})
    assert response.status_code == (404 if path == "/nowhere" else 200)
    policy = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_the_middlewares_errors_carry_the_headers_too(trust_server: RunningServer) -> None:
    refused = httpx.get(f"{trust_server.url}/healthz", headers={"Host": REBIND})
    assert refused.status_code == 400
    assert refused.headers["x-content-type-options"] == "nosniff"
    assert "x-request-id" in refused.headers


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")
def test_the_docs_render_offline_under_the_policy(trust_server: RunningServer) -> None:
    """Chromium with every other origin unreachable: the docs list the operations, and the
    Content-Security-Policy blocked nothing."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"]
        )
        try:
            page = browser.new_page()
            foreign: list[str] = []
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.route(
                re.compile(r"^(?!http://127\.0\.0\.1)"),
                lambda route: (foreign.append(route.request.url), route.abort()),
            )
            page.goto(f"{trust_server.url}/docs")
            page.get_by_text("/stylize").first.wait_for(timeout=20000)
            assert page.locator(".opblock").count() >= 5
        finally:
            browser.close()
    assert not foreign
    assert not [p for p in problems if "Content Security Policy" in p]


# --- 8. MPO photos: the first picture ------------------------------------------------------


def test_an_mpo_photo_is_served_as_its_first_picture(trust_server: RunningServer) -> None:
    first = random_image(64, 48, seed=2406)
    second = Image.new("RGB", first.size, (30, 200, 60))  # a depth map or preview, say
    buffer = io.BytesIO()
    first.save(buffer, format="MPO", save_all=True, append_images=[second], quality=95)
    mpo = buffer.getvalue()
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    decoded_first = encode(Image.open(io.BytesIO(mpo)).convert("RGB"))  # frame 0, as PNG

    def output(content: bytes) -> np.ndarray:
        response = stylize(trust_server, [("content", ("c", content)), ("style", ("s", STYLE))])
        assert response.status_code == 200, response.text
        return np.asarray(Image.open(io.BytesIO(response.content)), dtype=np.int16)

    from_mpo, from_first = output(mpo), output(decoded_first)
    from_second = output(encode(second))
    assert np.abs(from_mpo - from_first).max() <= 2
    assert np.abs(from_mpo - from_second).max() > 8  # the tolerance tells the pictures apart
    registered = httpx.post(f"{trust_server.url}/styles", files={"file": ("p.mpo", mpo)})
    assert registered.status_code in (200, 201), registered.text


# --- 9. forwarded headers: only from the proxies named -------------------------------------


def over_the_limit(server: RunningServer, requests: int) -> list[int]:
    return [
        httpx.get(f"{server.url}/styles", headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code
        for i in range(requests)
    ]


def test_x_forwarded_for_does_not_move_the_rate_limit(server_env: dict[str, str]) -> None:
    env = {**server_env, "ADAIN_RATE_LIMIT": "3", "ADAIN_WARMUP": "false"}
    with running_server(env, ready=False) as server:
        assert 429 in over_the_limit(server, 6)


def test_the_named_proxies_forwarded_for_is_the_client(server_env: dict[str, str]) -> None:
    env = {
        **server_env,
        "ADAIN_RATE_LIMIT": "3",
        "ADAIN_WARMUP": "false",
        "ADAIN_FORWARDED_ALLOW_IPS": "127.0.0.1",
    }
    with running_server(env, ready=False) as server:
        assert over_the_limit(server, 6) == [200] * 6  # six clients behind the proxy


# --- 10. no redirects; one Host ------------------------------------------------------------


def test_no_redirect_echoes_the_host(trust_server: RunningServer) -> None:
    response = httpx.get(
        f"{trust_server.url}/healthz/", headers={"Host": f"localhost:{trust_server.port}"}
    )
    assert response.status_code == 404
    assert "location" not in response.headers
    assert (
        httpx.get(f"{trust_server.url}/healthz/", headers={"Host": "evil.example"}).status_code
        == 400
    )


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.0\r\n\r\n", 200),
        (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 200),
    ],
)
def test_one_host_header(trust_server: RunningServer, head: bytes, status: int) -> None:
    answer = raw_request(trust_server.port, head)
    assert status_of(answer) == status, answer[:300]
