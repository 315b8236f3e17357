"""scripts/container-check.sh, checked without running it (it builds a multi-GB image: run by
hand, docs/deployment.md): it lints clean, builds with the Dockerfile's build arguments, and
runs the containers the deployment files run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from devkit.server import running_server
from tests.docker.deployfiles import DOCKERFILE, REPO, dockerfile_instructions, installed_script

SCRIPT = REPO / "scripts" / "container-check.sh"


def dockerfile_args() -> set[str]:
    return {i.arguments.partition("=")[0] for i in dockerfile_instructions() if i.keyword == "ARG"}


def test_shellcheck_finds_nothing() -> None:
    shellcheck = installed_script("shellcheck")
    assert shellcheck, "shellcheck is not installed (pip install -e .[dev])"
    result = subprocess.run(
        [shellcheck, "--severity=style", str(SCRIPT)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_build_arguments_it_passes_are_the_dockerfiles() -> None:
    text = SCRIPT.read_text()
    passed = set(re.findall(r'--build-arg "([A-Z_]+)=', text))
    assert "BASE_IMAGE" in passed
    assert passed <= dockerfile_args(), passed - dockerfile_args()
    assert f'-f "$REPO/{DOCKERFILE.name}"' in text


def test_torch_index_selects_exactly_the_torch_pins() -> None:
    """With TORCH_INDEX_URL the Dockerfile installs the lines its grep picks from the project's
    dependencies first: torch and torchvision at their pins, nothing else."""
    import tomllib

    pattern = re.search(r"grep -E '([^']+)'", DOCKERFILE.read_text())
    assert pattern, "the Dockerfile no longer picks the torch pins with grep -E"
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    picked = [d for d in dependencies if re.search(pattern.group(1), d)]
    assert sorted(p.split("==")[0] for p in picked) == ["torch", "torchvision"]
    assert all("==" in p for p in picked), "pinned versions: the CPU index has the same ones"


def test_it_runs_api_worker_and_redis_and_checks_the_answers() -> None:
    text = SCRIPT.read_text()
    assert "adain worker" in text
    assert "redis-server" in text
    assert "ADAIN_REDIS_URL=redis://" in text
    assert "scripts/container_smoke.py" in text
    assert (REPO / "scripts" / "container_smoke.py").is_file()
    # The image's user is checked to be a non-root uid, the same way the tests read it.
    assert "{{.Config.User}}" in text
    # The workarounds this kind of VM needs (docs/deployment.md).
    assert 'runtime = "runc"' in text
    assert "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro" in text


def test_the_smoke_check_passes_against_a_real_service_and_fails_without_one(
    reference_weights: tuple[Path, Path], tmp_path: Path
) -> None:
    """scripts/container_smoke.py, what the script runs against the containers, run against a
    real uvicorn (one-machine mode: the service runs the video job itself)."""
    encoder, decoder = reference_weights
    env = {
        "ADAIN_ENCODER_PATH": str(encoder),
        "ADAIN_DECODER_PATH": str(decoder),
        "ADAIN_STYLES_DIR": str(tmp_path / "styles"),
        "ADAIN_JOBS_DIR": str(tmp_path / "jobs"),
        "ADAIN_DEVICE": "cpu",
        "ADAIN_VIDEO_PRESET": "veryfast",
    }
    smoke = [sys.executable, str(REPO / "scripts" / "container_smoke.py")]
    with running_server(env) as server:
        result = subprocess.run([*smoke, server.url], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "/stylize: " in result.stdout and "/jobs: 8 frames" in result.stdout
    refused = subprocess.run(
        [*smoke, server.url, "--ready-timeout", "2"], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0
