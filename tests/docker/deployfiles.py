"""Reading the deployment files (Dockerfile, compose, nginx, k8s) the way the tests need them."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
NGINX_CONF = DOCKER / "nginx.conf"
K8S = DOCKER / "k8s"
COMPOSE_FILES = sorted(DOCKER.glob("compose*.yaml"))
K8S_FILES = sorted(K8S.glob("*.yaml"))
# The image's name in the compose files and the k8s manifests.
IMAGE = "adain-serve"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
needs_nginx = pytest.mark.skipif(
    not Path(NGINX).exists(), reason="needs Debian's nginx (scripts/setup.sh --test)"
)


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, COPY, ...
    arguments: str  # continuation lines joined


def installed_script(name: str) -> str | None:
    """A console script or binary installed by pip: beside this interpreter (pyenv's shims may
    not know a new one yet), else on PATH."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """Instructions in order; comments dropped, backslash continuations joined."""
    instructions: list[Instruction] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def copy_sources(instructions: list[Instruction]) -> list[str]:
    """Build-context paths of every COPY/ADD (no multi-stage `--from` copies here)."""
    sources: list[str] = []
    for instruction in instructions:
        if instruction.keyword in ("COPY", "ADD"):
            words = [w for w in shlex.split(instruction.arguments) if not w.startswith("--")]
            sources.extend(words[:-1])
    return sources


def dockerfile_env(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            for pair in shlex.split(instruction.arguments):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def load_compose(name: str) -> dict[str, Any]:
    """A compose file with its YAML anchors and merge keys resolved."""
    (document,) = load_yaml_documents(DOCKER / name)
    return document


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every manifest object by (kind, name)."""
    return {
        (doc["kind"], doc["metadata"]["name"]): doc
        for path in K8S_FILES
        for doc in load_yaml_documents(path)
    }


def settings_env_names() -> set[str]:
    return {f"ADAIN_{name.upper()}" for name in Settings.model_fields}


# The object store's address and keys, as every S3 client reads them (service.jobs.blobs).
S3_ADDRESS_ENV = {"AWS_ENDPOINT_URL", "AWS_REGION"}
S3_CREDENTIAL_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def compose_default(value: str | int, shell: Mapping[str, str] | None = None) -> str:
    """A compose value as compose makes it from the `shell`'s variables (by default none set):
    `${NAME:-x}` is NAME, or x where NAME is unset or empty; `${NAME-x}` x only where unset;
    `${NAME}` NAME or nothing."""
    shell = shell or {}

    def substitute(match: re.Match[str]) -> str:
        name, colon, default = match.group(1), match.group(2) == ":", match.group(3) or ""
        if name not in shell or (colon and not shell[name]):
            return default
        return shell[name]

    variable = r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?)-([^}]*))?\}"
    return re.sub(variable, substitute, str(value))


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes quantity with a binary suffix (`8Gi`, `512Mi`) or none, in bytes."""
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", quantity)
    assert match, f"not a binary quantity: {quantity}"
    scale = {None: 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}[match.group(2)]
    return int(match.group(1)) * scale


def seaweedfs_image_version(image: str) -> str:
    """`chrislusf/seaweedfs:4.48` -> 4.48."""
    repository, _, tag = image.partition(":")
    assert repository == "chrislusf/seaweedfs", image
    return tag


def nginx_upstream_servers(text: str) -> list[str]:
    """`host:port` of each `server` line in `upstream adain { ... }`."""
    block = re.search(r"upstream adain \{(.*?)\}", text, re.S)
    assert block, "docker/nginx.conf has no `upstream adain` block"
    return re.findall(r"^\s*server\s+(\S+?)[\s;]", block.group(1), re.M)


def nginx_size_bytes(text: str, directive: str) -> int:
    """A size directive (`20m`, `512k`, `1024`) in bytes."""
    match = re.search(rf"^\s*{directive}\s+(\d+)([kKmMgG]?);", text, re.M)
    assert match, f"docker/nginx.conf sets no {directive}"
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]
    return int(match.group(1)) * scale


def nginx_config_for(backends: list[int], listen_port: int, text: str | None = None) -> str:
    """docker/nginx.conf with its replicas on 127.0.0.1 ports and a loopback listener.

    Only addresses change: every other setting (balancing, retries, limits, timeouts) is the
    real file's.
    """
    text = NGINX_CONF.read_text() if text is None else text
    servers = nginx_upstream_servers(text)
    assert len(servers) == len(backends), f"{len(servers)} upstream servers, {len(backends)} ports"
    for server, port in zip(servers, backends, strict=True):
        text = re.sub(rf"(\bserver\s+){re.escape(server)}\b", rf"\g<1>127.0.0.1:{port}", text)
    text, listens = re.subn(
        r"^(\s*)listen\s+\S+;", rf"\g<1>listen 127.0.0.1:{listen_port};", text, flags=re.M
    )
    assert listens == 1, "docker/nginx.conf should have exactly one listen directive"
    return text


@contextmanager
def running_nginx(config: str, folder: Path, port: int) -> Iterator[str]:
    """Debian's nginx in the foreground on `config`, everything it writes under `folder`;
    yields its URL once it answers. Its error log (stderr) is `folder / "error.log"`."""
    (folder / "nginx.conf").write_text(config)
    url = f"http://127.0.0.1:{port}"
    with (folder / "error.log").open("wb") as error_log:
        process = subprocess.Popen(
            [
                NGINX,
                "-e",
                "stderr",
                "-p",
                str(folder),
                "-c",
                str(folder / "nginx.conf"),
                "-g",
                f"pid {folder / 'nginx.pid'}; daemon off;",
            ],
            stdout=subprocess.DEVNULL,
            stderr=error_log,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"nginx exited: {(folder / 'error.log').read_text()}")
                try:
                    if httpx.get(f"{url}/nginx-healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.1)
            yield url
        finally:
            process.terminate()
            process.wait(20)
