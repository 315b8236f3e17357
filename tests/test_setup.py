"""The README's two set-up commands on a fresh checkout: they install into the checkout's own
virtual environment (not the system's Python) and run from it; what the service writes at run
time is ignored by git."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devkit import REPO

# The set-up installs the whole project into a new venv: over ten minutes on two busy cores.
# CI runs it anyway (`make test` on a fresh machine); here on request.
SETUP_TIMEOUT_S = 2400
FULL_SETUP = os.environ.get("ADAIN_TEST_SETUP") == "1"


def git(*arguments: str, cwd: Path = REPO) -> str:
    return subprocess.run(
        ["git", *arguments], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def test_what_the_service_writes_is_ignored_by_git() -> None:
    written = [
        "data/styles/0123.json",
        "data/styles/names/ab/cd",
        "data/jobs/j1/record.json",
        ".venv/bin/python",
    ]
    ignored = git("check-ignore", "--no-index", *written).split()
    assert ignored == written


def dry_run(target: str) -> list[list[str]]:
    """The commands `make target` would run, split into words."""
    output = subprocess.run(
        ["make", "--no-print-directory", "-n", target],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout
    return [shlex.split(line) for line in output.splitlines() if line.strip()]


@pytest.mark.parametrize("target", ["serve", "test"])
def test_make_runs_from_the_checkouts_venv(target: str) -> None:
    commands = dry_run(target)
    assert commands[0][:2] == ["bash", "scripts/setup.sh"]
    venv_bin = (REPO / ".venv" / "bin").resolve()
    for command in commands[1:]:
        assert Path(command[0]).parent == venv_bin, command  # never the system's python3


def checkout_copy(destination: Path) -> Path:
    """The files a fresh clone of this working tree has: tracked and new, none ignored."""
    files = git("ls-files", "--cached", "--others", "--exclude-standard", "-z").split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def test_the_suite_runs_from_the_venv_make_made() -> None:
    """Under `make test` (VIRTUAL_ENV set by the Makefile), this very interpreter and torch are
    the venv's: its dependencies were installed into it, not borrowed from the system."""
    venv = os.environ.get("VIRTUAL_ENV")
    if not venv:
        pytest.skip("not run by `make test`")
    import torch

    assert Path(sys.prefix).resolve() == Path(venv).resolve()
    assert Path(torch.__file__).resolve().is_relative_to(Path(venv).resolve()), torch.__file__


@pytest.mark.skipif(not FULL_SETUP, reason="minutes of installing: ADAIN_TEST_SETUP=1")
@pytest.mark.timeout(SETUP_TIMEOUT_S)
def test_setup_installs_into_the_checkouts_venv(tmp_path: Path) -> None:
    checkout = checkout_copy(tmp_path / "clone")
    system_adain = shutil.which("adain")
    before = Path(system_adain).read_text() if system_adain else None
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "VENV")}
    subprocess.run(
        ["bash", "scripts/setup.sh"], cwd=checkout, env=env, check=True, timeout=SETUP_TIMEOUT_S
    )

    python = checkout / ".venv" / "bin" / "python"
    where = subprocess.run(
        [
            str(python),
            "-c",
            "import sys, torch, fastapi, service.main; "
            "print(sys.prefix); print(torch.__file__); print(service.main.__file__)",
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    venv = (checkout / ".venv").resolve()
    assert Path(where[0]).resolve() == venv
    # The dependencies are in the venv itself (no --system-site-packages): a fresh CI machine
    # has nothing else to find them in.
    assert Path(where[1]).resolve().is_relative_to(venv), where[1]
    assert Path(where[2]).resolve().is_relative_to(checkout.resolve()), where[2]
    helped = subprocess.run(
        [str(checkout / ".venv" / "bin" / "adain"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert helped.returncode == 0, helped.stderr
    # The system's `adain` still belongs to whoever installed it.
    after = Path(system_adain).read_text() if system_adain else None
    assert after == before
