"""What `make serve` prints first, in real processes: a line before each set-up step (minutes
of installing are not minutes of silence), then `adain serve`'s address to open once it
listens."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from devkit import REPO
from devkit.server import free_port
from service.server import page_address

BANNER_TIMEOUT_S = 180


def test_setup_says_what_it_installs() -> None:
    """Run again in this checkout (everything installed, so only pip's check runs): each
    step it takes is announced before it runs."""
    venv = Path(sys.executable).parent.parent
    result = subprocess.run(
        ["bash", "scripts/setup.sh"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "VENV": str(venv)},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"setup: installing adain-serve's Python packages into {venv} "
        "(a few minutes the first time: torch is large)"
    ), lines
    assert lines[-1] == "setup: done"


def stdout_lines(process: subprocess.Popen[str]) -> queue.Queue[str]:
    """The process's stdout, line by line, read by a thread (a blocking read has no timeout)."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_serve_prints_the_address_to_open_once_it_listens(
    reference_weights: tuple[Path, Path], tmp_path: Path
) -> None:
    encoder, decoder = reference_weights
    port = free_port()
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("ADAIN_")},
        "ADAIN_ENCODER_PATH": str(encoder),
        "ADAIN_DECODER_PATH": str(decoder),
        "ADAIN_STYLES_DIR": str(tmp_path / "styles"),
        "ADAIN_JOBS_DIR": str(tmp_path / "jobs"),
        "OMP_NUM_THREADS": "1",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            "cpu",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        lines = stdout_lines(process)
        deadline = time.monotonic() + BANNER_TIMEOUT_S
        printed: list[str] = []
        address = f"http://127.0.0.1:{port}/"
        while f"adain-serve on {address} (open it in a browser)" not in printed:
            remaining = deadline - time.monotonic()
            assert remaining > 0 and process.poll() is None, printed
            try:
                printed.append(lines.get(timeout=min(remaining, 1.0)))
            except queue.Empty:
                continue
        # Said once it listens: the address answers with the page at once.
        page = httpx.get(address, timeout=10)
        assert page.status_code == 200
        assert "text/html" in page.headers["content-type"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("0.0.0.0", "http://127.0.0.1:8000/"),
        ("::", "http://[::1]:8000/"),
        ("192.168.1.7", "http://192.168.1.7:8000/"),
    ],
)
def test_a_wildcard_address_is_opened_on_the_loopback(host: str, address: str) -> None:
    assert page_address(host, 8000) == address


def test_the_readme_says_what_to_open_and_lists_live() -> None:
    """The first screen says what to open after `make serve`; the API table and the
    documentation list name the live feed."""
    readme = (REPO / "README.md").read_text()
    set_up = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    assert "make serve" in set_up and "open **http://127.0.0.1:8000/**" in set_up
    for mode in ("image", "video", "live"):  # the page's screenshots (devkit/screenshots.py)
        link = f"docs/images/page-{mode}.jpg"
        assert f"]({link})" in set_up
        assert (REPO / link).stat().st_size < 300 * 1024
    api_table = readme.split("## HTTP API", 1)[1].split("\n## ", 1)[0]
    assert "| WebSocket `/live` |" in api_table
    documentation = readme.split("## Documentation", 1)[1]
    assert "- [docs/live.md](docs/live.md)" in documentation
