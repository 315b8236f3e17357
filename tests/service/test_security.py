"""Access control against real servers (docs/security.md): API keys and roles, the Origin guard
and CORS, rate limits shared through a real Redis, and the body timeout for stalled uploads."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from redis.asyncio import Redis

from devkit import REPO
from devkit.images import encode, random_image
from devkit.server import (
    RunningServer,
    free_port,
    running_redis,
    running_server,
    stop,
    wait_until_ready,
)
from service.security import RateLimitedError, RateLimiter
from tests.service.conftest import (
    ADMIN_KEY,
    KEYED_BODY_TIMEOUT_S,
    SHARED_LIMITS,
    USER_KEYS,
    KeyedServer,
)

CONTENT = encode(random_image(40, 32, seed=4101))
STYLE = encode(random_image(32, 32, seed=4102))
SMALL = {"content_size": "32", "style_size": "32"}
WRONG_KEY = "not-a-key-0123456789"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def api_key(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


HeaderForm = Callable[[str], dict[str, str]]
HEADER_FORMS: list[HeaderForm] = [bearer, api_key]


def register(url: str, headers: dict[str, str], seed: int) -> httpx.Response:
    data = encode(random_image(24, 24, seed=seed))
    return httpx.post(f"{url}/styles", files={"file": ("s.png", data)}, headers=headers, timeout=30)


def stylize(url: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        f"{url}/stylize",
        data=SMALL,
        headers=headers,
        timeout=60,
        files=[("content", ("c.png", CONTENT)), ("style", ("s.png", STYLE))],
    )


def style_names(url: str) -> list[str]:
    answer = httpx.get(f"{url}/styles", headers=bearer(ADMIN_KEY), timeout=10)
    return [style["name"] for style in answer.json()["styles"]]


def assert_error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"detail", "field"} and body["detail"]
    return body


# --- keys and roles ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, bearer(WRONG_KEY), api_key(WRONG_KEY), {"Authorization": f"Basic {USER_KEYS[0]}"}],
    ids=["none", "bearer-wrong", "x-api-key-wrong", "basic-scheme"],
)
def test_without_a_valid_key_every_guarded_operation_is_401(
    keyed_server: KeyedServer, headers: dict[str, str]
) -> None:
    url = keyed_server.url
    answers = [
        httpx.get(f"{url}/styles", headers=headers),
        httpx.get(f"{url}/styles/{'0' * 64}", headers=headers),
        httpx.delete(f"{url}/styles/{'0' * 64}", headers=headers),
        register(url, headers, seed=4103),
        stylize(url, headers),
    ]
    for answer in answers:
        assert_error(answer, 401)
        assert answer.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("form", HEADER_FORMS, ids=["bearer", "x-api-key"])
@pytest.mark.parametrize("key", USER_KEYS)
def test_a_user_key_stylizes_and_reads_but_may_not_change_the_registry(
    keyed_server: KeyedServer, form: HeaderForm, key: str
) -> None:
    url = keyed_server.url
    headers = form(key)
    styled = stylize(url, headers)
    assert styled.status_code == 200, styled.text
    assert styled.headers["content-type"] == "image/png"
    assert httpx.get(f"{url}/styles", headers=headers).status_code == 200
    assert_error(httpx.get(f"{url}/styles/{'0' * 64}", headers=headers), 404)
    before = style_names(url)
    refused = assert_error(register(url, headers, seed=4104), 403)
    assert "ADAIN_ADMIN_KEYS" in str(refused["detail"])
    assert_error(httpx.delete(f"{url}/styles/{'0' * 64}", headers=headers), 403)
    assert style_names(url) == before


@pytest.mark.parametrize("form", HEADER_FORMS, ids=["bearer", "x-api-key"])
def test_an_admin_key_registers_and_deletes(keyed_server: KeyedServer, form: HeaderForm) -> None:
    url = keyed_server.url
    headers = form(ADMIN_KEY)
    created = register(url, headers, seed=4105)
    assert created.status_code in (200, 201), created.text
    style_id = created.json()["id"]
    assert httpx.get(f"{url}/styles/{style_id}", headers=headers).status_code == 200
    assert stylize(url, headers).status_code == 200
    assert httpx.delete(f"{url}/styles/{style_id}", headers=headers).status_code == 204
    assert_error(httpx.get(f"{url}/styles/{style_id}", headers=headers), 404)


@pytest.mark.parametrize(
    "path", ["/healthz", "/readyz", "/", "/docs", "/openapi.json", "/metrics", "/static/app.js"]
)
def test_probes_page_docs_and_metrics_need_no_key(keyed_server: KeyedServer, path: str) -> None:
    assert httpx.get(keyed_server.url + path).status_code == 200


def test_the_description_requires_a_key_where_the_server_does(keyed_server: KeyedServer) -> None:
    document = httpx.get(f"{keyed_server.url}/openapi.json").json()
    required = [{"bearerKey": []}, {"apiKeyHeader": []}]
    guarded = [
        ("/stylize", "post"),
        ("/styles", "get"),
        ("/styles", "post"),
        ("/styles/{style_id}", "get"),
        ("/styles/{style_id}", "delete"),
    ]
    for path, method in guarded:
        operation = document["paths"][path][method]
        assert operation["security"] == required, (method, path)
        assert "401" in operation["responses"] and "429" in operation["responses"]
    for path in ("/healthz", "/readyz", "/metrics"):
        assert document["paths"][path]["get"]["security"] == []


def test_keys_never_reach_the_logs(keyed_server: KeyedServer) -> None:
    """Every key, valid or not, in both header forms, on success and failure (debug level)."""
    url = keyed_server.url
    for key in (*USER_KEYS, ADMIN_KEY, WRONG_KEY):
        for form in HEADER_FORMS:
            httpx.get(f"{url}/styles", headers=form(key))
            register(url, form(key), seed=4106)
    time.sleep(0.5)  # the access log line is written after the response
    logs = keyed_server.server.logs()
    assert "GET /styles 401" in logs and "GET /styles 200" in logs  # the requests were logged
    for key in (*USER_KEYS, ADMIN_KEY, WRONG_KEY):
        assert key not in logs


# --- cross-site requests ----------------------------------------------------------------------


def test_a_foreign_origin_may_not_change_anything_keys_or_not(
    server: RunningServer, keyed_server: KeyedServer
) -> None:
    foreign = {"Origin": "http://evil.example"}
    for url, headers in ((server.url, {}), (keyed_server.url, bearer(ADMIN_KEY))):
        before = httpx.get(f"{url}/styles", headers=headers).json()
        refused = assert_error(register(url, {**headers, **foreign}, seed=4107), 403)
        assert "ADAIN_CORS_ORIGINS" in str(refused["detail"])
        assert_error(stylize(url, {**headers, **foreign}), 403)
        assert_error(httpx.delete(f"{url}/styles/{'0' * 64}", headers={**headers, **foreign}), 403)
        # Same host, other port or scheme: another origin too; `null` (sandboxed pages) as well.
        port = int(url.rsplit(":", 1)[1])
        for other in (f"http://127.0.0.1:{port + 1}", f"https://127.0.0.1:{port}", "null"):
            assert_error(register(url, {**headers, "Origin": other}, seed=4107), 403)
        assert httpx.get(f"{url}/styles", headers=headers).json() == before
        # Reading is not refused (the browser keeps the answer from a foreign page: no CORS).
        read = httpx.get(f"{url}/styles", headers={**headers, **foreign})
        assert read.status_code == 200
        assert "access-control-allow-origin" not in read.headers


def test_the_own_origin_the_listed_origin_and_no_origin_are_served(
    keyed_server: KeyedServer,
) -> None:
    url = keyed_server.url
    headers = bearer(ADMIN_KEY)
    for seed, origin in ((4108, url), (4109, keyed_server.allowed_origin), (4110, None)):
        sent = {**headers, "Origin": origin} if origin else headers
        created = register(url, sent, seed=seed)
        assert created.status_code == 201, (origin, created.text)
    listed = register(url, {**headers, "Origin": keyed_server.allowed_origin}, seed=4109)
    assert listed.headers["access-control-allow-origin"] == keyed_server.allowed_origin
    exposed = listed.headers["access-control-expose-headers"].lower()
    for name in (
        "x-style-cache",
        "x-inference-time-ms",
        "x-batch-size",
        "server-timing",
        "retry-after",
    ):
        assert name in exposed


def test_preflight_allows_the_key_headers_for_the_listed_origin_only(
    keyed_server: KeyedServer,
) -> None:
    def preflight(origin: str) -> httpx.Response:
        return httpx.options(
            f"{keyed_server.url}/stylize",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, x-api-key",
            },
        )

    allowed = preflight(keyed_server.allowed_origin)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == keyed_server.allowed_origin
    headers = allowed.headers["access-control-allow-headers"].lower()
    assert "authorization" in headers and "x-api-key" in headers
    refused = preflight("http://evil.example")
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers


# --- rate limits ------------------------------------------------------------------------------

RATE_LIMIT = 3


def wait_for_a_fresh_minute_if_near_its_end(margin_s: float = 20) -> None:
    """The limit counts in fixed minutes: a test must not straddle two."""
    into = time.time() % 60
    if into > 60 - margin_s:
        time.sleep(60 - into + 0.5)


@pytest.fixture(scope="module")
def limited_pair(
    server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, RunningServer]]:
    """Two replicas with keys and ADAIN_RATE_LIMIT, sharing one real redis-server."""
    with running_redis() as redis_url:
        env = {
            **server_env,
            **SHARED_LIMITS,
            "ADAIN_REDIS_URL": redis_url,
            "ADAIN_STYLES_DIR": str(tmp_path_factory.mktemp("limited")),
            "ADAIN_API_KEYS": ",".join(USER_KEYS),
            "ADAIN_RATE_LIMIT": str(RATE_LIMIT),
        }
        with running_server(env) as first, running_server(env) as second:
            yield first, second


def test_the_rate_limit_is_per_key_and_shared_by_the_replicas(
    limited_pair: tuple[RunningServer, RunningServer],
) -> None:
    first, second = limited_pair
    wait_for_a_fresh_minute_if_near_its_end()
    key, other_key = USER_KEYS
    served = [
        httpx.get(f"{server.url}/styles", headers=bearer(key)) for server in (first, second, first)
    ]
    assert [answer.status_code for answer in served] == [200] * RATE_LIMIT
    # The fourth request of the minute, on the replica that has seen only one.
    limited = httpx.get(f"{second.url}/styles", headers=bearer(key))
    assert_error(limited, 429)
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert "ADAIN_RATE_LIMIT" in limited.json()["detail"]
    # Another key has its own count; probes are never limited.
    assert httpx.get(f"{second.url}/styles", headers=api_key(other_key)).status_code == 200
    assert httpx.get(f"{second.url}/healthz").status_code == 200
    assert httpx.get(f"{second.url}/readyz").status_code == 200
    # Requests without a valid key count per address: guessing keys is limited too.
    guesses = [
        httpx.get(f"{server.url}/styles", headers=bearer(f"guess-{index}"))
        for index, server in enumerate((first, second, first, second))
    ]
    assert [answer.status_code for answer in guesses] == [401] * RATE_LIMIT + [429]


def test_without_redis_the_limiter_counts_in_process_instead_of_failing() -> None:
    """A real client to a port where Redis has gone: the limit still holds, no error escapes."""

    async def scenario() -> list[int | None]:
        with running_redis() as url:
            pass  # started and stopped: nothing listens there now
        redis = Redis.from_url(url, socket_connect_timeout=1)
        limiter = RateLimiter(2, redis)
        retry_after: list[int | None] = []
        for _ in range(3):
            try:
                await limiter.check("key:abc")
                retry_after.append(None)
            except RateLimitedError as error:
                retry_after.append(error.retry_after_s)
        await redis.aclose()
        return retry_after

    wait_for_a_fresh_minute_if_near_its_end(margin_s=5)
    first, second, third = asyncio.run(scenario())
    assert first is None and second is None
    assert third is not None and 1 <= third <= 60


# --- slow clients -----------------------------------------------------------------------------


def test_a_stalled_upload_gets_408_and_its_connection_closed_while_others_are_served(
    keyed_server: KeyedServer,
) -> None:
    port = int(keyed_server.url.rsplit(":", 1)[1])
    boundary = "stall"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="content"; '
        f'filename="c.png"\r\nContent-Type: image/png\r\n\r\n'
    ).encode() + CONTENT[:100]
    request = (
        f"POST /stylize HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"X-API-Key: {USER_KEYS[0]}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(head) + 5000}\r\n\r\n"
    ).encode() + head
    answer = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=KEYED_BODY_TIMEOUT_S + 30) as sock:
        started = time.monotonic()
        sock.sendall(request)  # ... and then nothing more: the client stalls mid-upload

        # Meanwhile another client is served, in full.
        others: list[int] = []
        other = threading.Thread(
            target=lambda: others.append(
                stylize(keyed_server.url, api_key(USER_KEYS[1])).status_code
            )
        )
        other.start()
        while chunk := sock.recv(65536):  # until the server closes the connection
            answer += chunk
        elapsed = time.monotonic() - started
        other.join(60)
    status_line, _, rest = bytes(answer).partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 408"), bytes(answer)
    assert b"ADAIN_BODY_TIMEOUT_S" in rest
    assert b"connection: close" in rest.lower()
    assert KEYED_BODY_TIMEOUT_S - 0.5 <= elapsed < KEYED_BODY_TIMEOUT_S + 10
    assert others == [200]


def test_adain_serve_gives_uvicorn_the_connection_cap_and_keep_alive(
    server_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """`adain serve` passes ADAIN_MAX_CONNECTIONS to uvicorn's limit_concurrency (past it, 503
    at once, but for the health probes) and ADAIN_KEEP_ALIVE_S to its timeout_keep_alive."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("capped") / "server.log"
    env = {
        **server_env,
        "ADAIN_PORT": str(port),
        "ADAIN_HOST": "127.0.0.1",
        "ADAIN_MAX_CONNECTIONS": "2",
        "ADAIN_KEEP_ALIVE_S": "2",
        "ADAIN_WARMUP": "false",
    }
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ADAIN_")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve"],
            cwd=REPO,
            env={**clean, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, 180, log_path)
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        try:
            capped = httpx.get(f"{url}/models", timeout=10)
            assert capped.status_code == 503
            # The health probes are answered past the cap: a busy replica is not a dead one.
            assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        finally:
            for connection in idle:
                connection.close()
        time.sleep(0.5)
        # An idle keep-alive connection is closed after ADAIN_KEEP_ALIVE_S.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as kept:
            kept.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            response = b""
            while not response.endswith(b"}"):  # the JSON body, after the headers
                response += kept.recv(65536)
            assert response.startswith(b"HTTP/1.1 200")
            idle_since = time.monotonic()
            assert kept.recv(65536) == b""  # closed by the server
            assert 1.5 <= time.monotonic() - idle_since < 10
    finally:
        stop(process)
