#!/usr/bin/env bash
# Installs what adain-serve needs on a fresh Debian machine. Idempotent: fast when done before.
#   scripts/setup.sh          the service, into the checkout's virtual environment
#   scripts/setup.sh --test   plus the test tools (Python) and what the tests drive for real:
#                             redis-server, nginx, chromium
# The Python packages go into $VENV (default .venv, inside the checkout and ignored by git),
# never into the system's Python: a second clone does not re-point another's `adain`.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"

# A line before each step, so that minutes of installing are not minutes of silence.
say() { printf 'setup: %s\n' "$*"; }

apt_install() {
  local missing=()
  for package in "$@"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
  done
  ((${#missing[@]})) || return 0
  say "installing the system packages ${missing[*]} (apt-get)"
  local sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

extras="."
if [[ "${1:-}" == "--test" ]]; then
  apt_install redis-server nginx chromium
  extras=".[dev]"
fi

if [[ ! -x "$venv/bin/python" ]]; then
  # Debian's python3 makes virtual environments only with python3-venv (ensurepip).
  python3 -c "import ensurepip" 2>/dev/null || apt_install python3-venv
  say "creating the virtual environment $venv"
  python3 -m venv "$venv"
fi
say "installing adain-serve's Python packages into $venv (a few minutes the first time: torch is large)"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$extras"
say "done"
