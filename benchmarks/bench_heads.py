"""A request head that never ends, sent to `adain serve`'s server (`python -m service.server`,
heads capped as they arrive) and to plain `uvicorn --factory` (httptools, no cap): the bytes the
server read before it answered, its resident memory growth, and how long /healthz took on
another connection meanwhile.

    python3 -m benchmarks.bench_heads [--megabytes 32]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from devkit import REPO
from devkit.server import free_port, stop, wait_until_ready

SERVERS = {
    "adain serve (capped)": [sys.executable, "-m", "service.server"],
    "plain uvicorn": [
        sys.executable,
        "-m",
        "uvicorn",
        "service.main:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
    ],
}


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def flood(port: int, megabytes: int) -> tuple[int, bytes, socket.socket]:
    """Sends a header of `megabytes` MiB that never ends; (bytes sent, the answer so far, the
    open connection)."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Flood: ")
    piece = b"a" * 65536
    sent = 0
    answer = b""
    try:
        while sent < megabytes * 1024 * 1024:
            connection.sendall(piece)
            sent += len(piece)
            if select.select([connection], [], [], 0)[0]:
                answer = connection.recv(4096)
                break
    except (BrokenPipeError, ConnectionResetError):  # closed by the server: its answer came
        with contextlib.suppress(OSError):
            answer = connection.recv(4096)
    return sent, answer, connection


def measure(name: str, command: list[str], megabytes: int) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAIN_")}
    env |= {
        "ADAIN_HOST": "127.0.0.1",
        "ADAIN_PORT": str(port),
        "ADAIN_DEVICE": "cpu",
        "ADAIN_WARMUP": "false",
    }
    with tempfile.NamedTemporaryFile(suffix=".log", delete=False) as log:
        process = subprocess.Popen(
            [*command, "--port", str(port)] if "uvicorn" in command else command,
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", process, 300, Path(log.name), ready=False)
        before = rss_mb(process.pid)
        slowest = [0.0]
        done = threading.Event()

        def probe() -> None:
            while not done.is_set():
                start = time.perf_counter()
                with contextlib.suppress(httpx.TimeoutException):  # counted as its wait
                    httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
                slowest[0] = max(slowest[0], time.perf_counter() - start)
                time.sleep(0.05)

        prober = threading.Thread(target=probe)
        prober.start()
        sent, answer, connection = flood(port, megabytes)
        time.sleep(0.5)  # the server has read what it will read
        grown = rss_mb(process.pid) - before
        done.set()
        prober.join()
        connection.close()
        status = answer.split(b" ", 2)[1].decode() if answer else "none yet"
        print(
            f"{name:>22}: sent {sent / 2**20:7.1f} MiB, answer {status}, "
            f"RSS +{grown:6.1f} MB with the connection open, /healthz slowest "
            f"{slowest[0] * 1000:6.1f} ms"
        )
    finally:
        stop(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=32)
    args = parser.parse_args()
    for name, command in SERVERS.items():
        measure(name, command, args.megabytes)


if __name__ == "__main__":
    main()
