"""Operations: health, readiness, metrics, JSON logs, the full queue, graceful shutdown,
and `adain serve`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from devkit import REPO
from devkit.images import encode, random_image
from devkit.server import free_port, running_server, stop, wait_until_ready

CONTENT = encode(random_image(48, 32, seed=31))
STYLE = encode(random_image(40, 40, seed=32))
SMALL = {"content_size": "32", "style_size": "32"}


def stylize(url: str) -> httpx.Response:
    return httpx.post(f"{url}/stylize", data=SMALL, timeout=60,
                      files=[("content", ("c.png", CONTENT)), ("style", ("s.png", STYLE))])


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$"
    values = [float(v) for v in re.findall(pattern, text, re.MULTILINE)]
    return sum(values)


def test_health_ready_metrics_and_json_logs(server: object) -> None:
    url = server.url  # type: ignore[attr-defined]
    health = httpx.get(f"{url}/healthz").json()
    assert health == {"status": "ok", "pid": server.process.pid}  # type: ignore[attr-defined]
    assert httpx.get(f"{url}/readyz").json() == {"status": "ready"}
    before = httpx.get(f"{url}/metrics").text
    response = httpx.post(f"{url}/stylize", data=SMALL, timeout=60,
                          headers={"x-request-id": "trace-me-123"},
                          files=[("content", ("c.png", CONTENT)), ("style", ("s.png", STYLE))])
    assert response.headers["x-request-id"] == "trace-me-123"
    after = httpx.get(f"{url}/metrics").text
    ok = '{method="POST",route="/stylize",status="200"}'
    assert metric(after, "adain_requests_total", ok) == metric(before, "adain_requests_total",
                                                               ok) + 1
    assert metric(after, "adain_request_duration_seconds_count", ok) > 0
    assert metric(after, "adain_batch_size_count") > metric(before, "adain_batch_size_count")
    assert metric(after, "adain_inference_seconds_count", '{kind="stylize"}') > 0
    assert "adain_queue_depth" in after
    hits = '{result="hit"}'
    misses = '{result="miss"}'
    assert (metric(after, "adain_style_cache_total", hits)
            + metric(after, "adain_style_cache_total", misses)) > (
        metric(before, "adain_style_cache_total", hits)
        + metric(before, "adain_style_cache_total", misses))
    # Route templates, not raw paths, label the metrics.
    httpx.get(f"{url}/styles/{'0' * 64}")
    assert 'route="/styles/{style_id}"' in httpx.get(f"{url}/metrics").text

    records = [json.loads(line) for line in server.logs().splitlines()  # type: ignore[attr-defined]
               if line.startswith("{")]
    mine = [r for r in records if r.get("request_id") == "trace-me-123"]
    assert any(r["message"] == "POST /stylize 200" and r["duration_ms"] > 0 for r in mine)
    # Ready only after the warm-up pass: no 200 from /readyz is logged before it.
    messages = [r["message"] for r in records]
    assert messages.index("warmed up") < messages.index("GET /readyz 200")


def test_serve_full_queue_503_and_graceful_shutdown(
    reference_weights: tuple[Path, Path], tmp_path: Path
) -> None:
    """`adain serve` with a one-job queue and a long batching window: concurrent requests
    beyond the queue get 503 + Retry-After; SIGTERM lets the request in flight finish."""
    encoder, decoder = reference_weights
    port = free_port()
    # The batching window (on only with batches: CPU's default is 1) holds the job queued.
    env = {"ADAIN_QUEUE_SIZE": "1", "ADAIN_MAX_BATCH_SIZE": "8", "ADAIN_MAX_WAIT_MS": "1500",
           "ADAIN_STYLES_DIR": str(tmp_path / "styles"), "PATH": "/usr/bin:/bin"}
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--encoder", str(encoder), "--decoder", str(decoder),
             "--device", "cpu"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, 180, log_path)
        assert stylize(url).status_code == 200  # the style's statistics are cached now
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: stylize(url), range(4)))
        statuses = sorted(a.status_code for a in answers)
        assert 200 in statuses and 503 in statuses, statuses
        for busy in (a for a in answers if a.status_code == 503):
            assert busy.headers["retry-after"] == "1"
            assert "ADAIN_QUEUE_SIZE=1" in busy.json()["detail"]

        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(stylize, url)
            deadline = time.monotonic() + 30
            while metric(httpx.get(f"{url}/metrics").text, "adain_queue_depth") < 1:
                assert time.monotonic() < deadline, "the request never reached the engine"
                time.sleep(0.02)
            process.terminate()  # SIGTERM while the job waits in the engine
            assert in_flight.result().status_code == 200
        assert process.wait(60) == 0  # a clean stop
    finally:
        stop(process)
    messages = [json.loads(line)["message"] for line in log_path.read_text().splitlines()
                if line.startswith("{")]
    # The lifespan's shutdown ran (the engine drained) after the last request was answered.
    last_answer = len(messages) - 1 - messages[::-1].index("POST /stylize 200")
    assert messages.index("stopped") > last_answer


def test_precision_and_compile_settings_reach_the_networks(server_env: dict[str, str]) -> None:
    """ADAIN_PRECISION=bf16 runs bf16 networks (the shared server pins fp32); with
    ADAIN_COMPILE=on and no C++ compiler on the PATH the server says so and runs eager."""
    env = {**server_env, "ADAIN_PRECISION": "bf16", "ADAIN_COMPILE": "on", "PATH": "/nowhere"}
    with running_server(env) as server:
        assert stylize(server.url).status_code == 200
        records = [json.loads(line) for line in server.logs().splitlines()
                   if line.startswith("{")]
    loaded = next(r for r in records if r["message"] == "networks loaded")
    assert loaded["dtype"] == "torch.bfloat16" and loaded["compiled"] is False
    assert any("no C/C++ compiler found" in r["message"] for r in records)
