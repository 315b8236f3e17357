"""Past one GPU, on this machine: two real replicas behind a real nginx running docker/nginx.conf
(only the addresses rewritten), sharing one real redis-server."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import httpx

from devkit.images import encode, random_image
from devkit.server import free_port, running_redis, running_server, stop
from tests.docker.deployfiles import needs_nginx, nginx_config_for, running_nginx

SIZE = 32  # pixels: every model pass stays cheap


def stylize_form(style_id: str, seed: int) -> tuple[dict[str, str], dict[str, tuple]]:
    content = encode(random_image(SIZE, SIZE, seed=seed))
    data = {"style_id": style_id, "content_size": "0", "style_size": "0"}
    return data, {"content": ("content.png", content, "image/png")}


@needs_nginx
def test_replicas_share_redis_and_nginx_fails_over(
    reference_weights: tuple[Path, Path], tmp_path: Path
) -> None:
    encoder, decoder = reference_weights
    with running_redis() as redis_url:
        env = {
            "ADAIN_ENCODER_PATH": str(encoder),
            "ADAIN_DECODER_PATH": str(decoder),
            "ADAIN_REDIS_URL": redis_url,
            "ADAIN_DEVICE": "cpu",
            "ADAIN_STYLES_DIR": str(tmp_path / "unused-with-redis"),
        }
        with running_server(env) as first, running_server(env) as second:
            # A style registered on one replica is known to, and used by, the other.
            style = encode(random_image(SIZE, SIZE, seed=1))
            registered = httpx.post(f"{first.url}/styles",
                                    files={"file": ("style.png", style, "image/png")},
                                    timeout=60)
            assert registered.status_code == 201, registered.text
            style_id = registered.json()["id"]
            listed = httpx.get(f"{second.url}/styles", timeout=10).json()["styles"]
            assert [s["id"] for s in listed] == [style_id]
            data, files = stylize_form(style_id, seed=2)
            made = httpx.post(f"{second.url}/stylize", data=data, files=files, timeout=120)
            assert made.status_code == 200, made.text
            assert made.headers["content-type"] == "image/png"

            nginx_port = free_port()
            config = nginx_config_for([first.port, second.port], nginx_port)
            with running_nginx(config, tmp_path, nginx_port) as balancer:
                assert httpx.get(f"{balancer}/readyz", timeout=10).status_code == 200
                # The page nginx serves posts to its own origin: the replica must see that
                # origin as its own through the proxy (Host with the port), and others not.
                for origin, status in ((balancer, 200), ("http://evil.example", 403)):
                    own = httpx.post(f"{balancer}/styles", headers={"Origin": origin},
                                     files={"file": ("style.png", style, "image/png")},
                                     timeout=60)
                    assert own.status_code == status, (origin, own.text)
                # Stop one replica (SIGTERM, as docker stop / Kubernetes do) and wait until it
                # has exited: nginx still lists it; every request must reach the other one.
                # uvicorn re-raises SIGTERM after its graceful shutdown; SIGKILL would be -9.
                assert stop(first.process) in (0, -signal.SIGTERM)
                statuses = []
                for seed in range(3, 9):
                    data, files = stylize_form(style_id, seed)
                    response = httpx.post(f"{balancer}/stylize", data=data, files=files,
                                          timeout=120)
                    statuses.append(response.status_code)
                    assert response.headers["content-type"] == "image/png", response.text
                    statuses.append(httpx.get(f"{balancer}/styles/{style_id}",
                                              timeout=10).status_code)
                assert statuses == [200] * len(statuses)
                errors = (tmp_path / "error.log").read_text()
            # The failover was exercised: nginx found the stopped replica refusing connections.
            refused = rf"connect\(\) failed \(111: Connection refused\).*127\.0\.0\.1:{first.port}/"
            assert re.search(refused, errors), errors
