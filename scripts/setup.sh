#!/usr/bin/env bash
# Installs what adain-serve needs on a fresh Debian machine. Idempotent: fast when done before.
#   scripts/setup.sh          the service (Python packages)
#   scripts/setup.sh --test   plus what the tests drive for real: redis-server, nginx, chromium
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--test" ]]; then
  packages=(redis-server nginx chromium)
  missing=()
  for package in "${packages[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
  done
  if ((${#missing[@]})); then
    sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  extras=".[dev]"
else
  extras="."
fi

python3 -m pip install -q --disable-pip-version-check -e "$extras"
