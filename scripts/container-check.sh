#!/usr/bin/env bash
# Builds the image with podman and runs it: Redis, the API and a worker in one pod; an image to
# /stylize and a short video to /jobs (scripts/container_smoke.py checks the answers).
#
# Where no registry is reachable (this project's machines), the base is made from Debian's
# packages with mmdebstrap (Debian's Python 3.11) and passed as BASE_IMAGE; the pinned torch
# comes from the local wheel folders named by the host's pip configuration, mounted read-only
# into the build. Run as root from the repository root:
#   bash scripts/container-check.sh            # build (if needed) and check
#   ADAIN_CHECK_REBUILD=1 bash scripts/container-check.sh
# Settings (environment): ADAIN_CHECK_DIR (work folder), ADAIN_CHECK_IMAGE, ADAIN_CHECK_PORT,
# ADAIN_CHECK_BASE (an existing base image to use instead of the Debian-made one),
# ADAIN_CHECK_REBUILD=1 (build even if the image exists), ADAIN_CHECK_KEEP=1 (leave the pod up).
# See docs/deployment.md, "Building and running the image here".
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${ADAIN_CHECK_DIR:-/var/tmp/adain-container-check}
IMAGE=${ADAIN_CHECK_IMAGE:-localhost/adain-serve:check}
PORT=${ADAIN_CHECK_PORT:-18080}
DEBIAN_BASE=localhost/bookworm-python:3.11
BASE=${ADAIN_CHECK_BASE:-$DEBIAN_BASE}
REDIS_IMAGE=localhost/bookworm-redis:7
POD=adain-check
# Builds share the machine: lowest priority.
NICE=(nice -n 19)

log() { printf '[container-check %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

mkdir -p "$WORK"

# --- podman, and the configuration this VM needs --------------------------------------------
if ! command -v podman >/dev/null || ! command -v runc >/dev/null \
    || ! command -v mmdebstrap >/dev/null; then
    log "installing podman, runc, mmdebstrap from Debian"
    apt-get install -y podman runc mmdebstrap >/dev/null
fi
# crun cannot set the shell's rlimits here, and the VM mixes cgroup v1 and v2: runc, and
# explicit ulimits.
cat >"$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$WORK/containers.conf"

has_image() { podman image exists "$1"; }

# --- bases from Debian's packages -----------------------------------------------------------
debian_rootfs_image() {  # NAME PACKAGES: a minbase bookworm with PACKAGES, imported as NAME
    local name=$1 packages=$2 tar="$WORK/rootfs-${1##*/}.tar"
    tar=${tar//:/-}
    log "mmdebstrap bookworm + $packages -> $name"
    "${NICE[@]}" mmdebstrap --quiet --variant=minbase --include="$packages" --format=tar \
        bookworm "$tar"
    podman import --quiet "$tar" "$name" >/dev/null
    rm -f "$tar"
}

if [[ $BASE == "$DEBIAN_BASE" ]] && ! has_image "$DEBIAN_BASE"; then
    debian_rootfs_image localhost/bookworm-rootfs:12 python3,python3-pip,python3-venv,ca-certificates
    # The python:3.11 images' conventions: `python` and `pip` on PATH, pip free to install
    # into the system Python (Debian marks it externally managed).
    cat >"$WORK/Containerfile.base" <<'EOF'
FROM localhost/bookworm-rootfs:12
RUN ln -s /usr/bin/python3 /usr/local/bin/python && ln -s /usr/bin/pip3 /usr/local/bin/pip \
    && rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED
ENV PIP_BREAK_SYSTEM_PACKAGES=1 LANG=C.UTF-8
CMD ["python"]
EOF
    podman build --quiet --format docker -t "$DEBIAN_BASE" -f "$WORK/Containerfile.base" "$WORK" \
        >/dev/null
fi
if ! has_image "$REDIS_IMAGE"; then
    debian_rootfs_image "$REDIS_IMAGE" redis-server
fi

# --- the image ------------------------------------------------------------------------------
# The host's pip configuration, folded into one file for the build, and every local folder it
# names (find-links, file:// indexes with the files they link to, the constraints file),
# mounted read-only at the same paths, so that torch and its CUDA wheels come from disk.
pip_mounts() {
    python3 - "$WORK/pip.conf" <<'EOF'
import subprocess, sys
from pathlib import Path
from urllib.parse import urlparse

values: dict[str, str] = {}
listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                         text=True, check=True).stdout
for line in listing.splitlines():
    key, _, value = line.partition("=")
    values[key.rsplit(".", 1)[-1]] = value.strip("'\"")
conf = ["[global]", "cert = /etc/ssl/certs/ca-certificates.crt"]
mounts: set[Path] = set()
if "find-links" in values:
    conf.append(f"find-links = {values['find-links']}")
    mounts.update(Path(p) for p in values["find-links"].split() if Path(p).is_dir())
indexes = [url for url in values.get("extra-index-url", "").split() if url]
if indexes:
    conf.append(f"extra-index-url = {' '.join(indexes)}")
    for url in indexes:
        if url.startswith("file://"):
            folder = Path(urlparse(url).path)
            # A "simple" index links to its files beside it (../../files/...).
            mounts.add(folder.parent if folder.name == "simple" else folder)
if "constraint" in values and Path(values["constraint"]).is_file():
    conf.append(f"constraint = {values['constraint']}")
    mounts.add(Path(values["constraint"]))
Path(sys.argv[1]).write_text("\n".join(conf) + "\n")
for path in sorted(mounts):
    print(f"-v={path}:{path}:ro")
EOF
}

if [[ ${ADAIN_CHECK_REBUILD:-0} == 1 ]] || ! has_image "$IMAGE"; then
    mapfile -t mounts < <(pip_mounts)
    log "building $IMAGE on $BASE (local pip folders: ${#mounts[@]})"
    start=$SECONDS
    "${NICE[@]}" podman build --format docker --build-arg "BASE_IMAGE=$BASE" \
        ${ADAIN_CHECK_TORCH_INDEX_URL:+--build-arg "TORCH_INDEX_URL=$ADAIN_CHECK_TORCH_INDEX_URL"} \
        -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
        -v "$WORK/pip.conf:/etc/pip.conf:ro" "${mounts[@]}" \
        -t "$IMAGE" -f "$REPO/Dockerfile" "$REPO" >"$WORK/build.log" 2>&1 \
        || { tail -40 "$WORK/build.log" >&2; exit 1; }
    log "built in $((SECONDS - start)) s (log: $WORK/build.log)"
fi
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
log "image $IMAGE: $((size / 1000000)) MB"
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
[[ ${user%%:*} =~ ^[0-9]+$ && ${user%%:*} != 0 ]] || { log "image user '$user' is not a non-root uid"; exit 1; }

# --- run: Redis, API, worker in one pod (they share its loopback) -----------------------------
cleanup() {
    if [[ ${ADAIN_CHECK_KEEP:-0} != 1 ]]; then
        podman pod rm -f "$POD" >/dev/null 2>&1 || true
        podman volume rm -f adain-check-jobs adain-check-styles >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT
cleanup
podman volume create adain-check-jobs >/dev/null
podman volume create adain-check-styles >/dev/null
podman pod create --name "$POD" -p "127.0.0.1:$PORT:8000" >/dev/null
podman run -d --pod "$POD" --name adain-check-redis "$REDIS_IMAGE" \
    redis-server --save "" --appendonly no --bind 127.0.0.1 >/dev/null
common=(--pod "$POD" -e ADAIN_DEVICE=cpu -e ADAIN_REDIS_URL=redis://127.0.0.1:6379/0
        -e ADAIN_LOG_LEVEL=info -v adain-check-jobs:/data/jobs -v adain-check-styles:/data/styles)
# The API hands every job to the workers; the worker runs them.
# (podman's complaint that without systemd it cannot schedule the HEALTHCHECK goes to a log.)
podman run -d --name adain-check-api "${common[@]}" -e ADAIN_SERVE_RUNS_JOBS=false "$IMAGE" \
    >/dev/null 2>>"$WORK/podman.log"
if podman run --rm --entrypoint adain "$IMAGE" worker --help >/dev/null 2>&1; then
    podman run -d --name adain-check-worker "${common[@]}" "$IMAGE" adain worker \
        >/dev/null 2>>"$WORK/podman.log"
    worker=1
else
    log "this image has no 'adain worker': checking /stylize only"
    worker=0
fi

log "waiting for /readyz on 127.0.0.1:$PORT"
smoke_args=("http://127.0.0.1:$PORT")
[[ $worker == 1 ]] || smoke_args+=(--no-jobs)
if ! python3 "$REPO/scripts/container_smoke.py" "${smoke_args[@]}"; then
    for name in adain-check-api adain-check-worker adain-check-redis; do
        log "--- logs of $name"
        podman logs --tail 30 "$name" 2>&1 || true
    done
    exit 1
fi
if [[ $worker == 1 ]]; then
    # The API queues jobs only (ADAIN_SERVE_RUNS_JOBS=false): the worker container ran it.
    podman logs adain-check-worker 2>&1 | grep -q '"job succeeded"' \
        || { log "the worker's log has no finished job"; exit 1; }
    log "the video job ran in the worker container"
fi
healthcheck=$(podman healthcheck run adain-check-api 2>&1 && echo healthy || echo unhealthy)
log "HEALTHCHECK (run by hand: podman schedules it only with systemd): $healthcheck"
uid=$(podman exec adain-check-api id -u)
log "API runs as uid $uid"
[[ $uid != 0 ]]
log "PASS"
