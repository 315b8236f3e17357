"""WebSocket /live through a real nginx running docker/nginx.conf (only the addresses
rewritten): the upgrade reaches the replica, which compares the page's Origin with the Host
nginx passes on."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from devkit.images import encode, random_image
from devkit.live import live_connection, live_stream
from devkit.server import free_port, running_server
from tests.docker.deployfiles import (
    NGINX_CONF,
    needs_nginx,
    nginx_config_for,
    nginx_upstream_servers,
    running_nginx,
)


@needs_nginx
def test_a_live_stream_through_nginx(reference_weights: tuple[Path, Path], tmp_path: Path) -> None:
    encoder, decoder = reference_weights
    env = {
        "ADAIN_ENCODER_PATH": str(encoder),
        "ADAIN_DECODER_PATH": str(decoder),
        "ADAIN_DEVICE": "cpu",
        "ADAIN_STYLES_DIR": str(tmp_path / "styles"),
    }
    with running_server(env) as replica:
        style = encode(random_image(32, 32, seed=8500))
        answer = httpx.post(
            f"{replica.url}/styles", files={"file": ("style.png", style, "image/png")}, timeout=60
        )
        assert answer.status_code == 201, answer.text
        settings = {
            "style_id": answer.json()["id"],
            "size": 32,
            "style_size": 0,
            "stabilize": False,
        }
        # Every upstream line points at the one replica.
        upstreams = len(nginx_upstream_servers(NGINX_CONF.read_text()))
        port = free_port()
        config = nginx_config_for([replica.port] * upstreams, port)
        with running_nginx(config, tmp_path, port) as balancer:
            # The page nginx serves opens the stream from nginx's own origin.
            with live_stream(balancer, settings, origin=balancer) as stream:
                stream.send_frame(encode(random_image(48, 32, seed=8501), "JPEG"))
                header, image = stream.result()
            assert header["frame"] == 0 and image[:2] == b"\xff\xd8"
            with (
                pytest.raises(InvalidStatus) as refused,
                live_connection(balancer, origin="https://attacker.example"),
            ):
                pass
            assert refused.value.response.status_code == 403
