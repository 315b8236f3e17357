# syntax=docker/dockerfile:1
# adain-serve: the HTTP service, on one GPU or on CPU. Build from the repository root:
#   docker build -t adain-serve:0.1.0 .
#
# Base image: plain Debian Python 3.11 (the version CI tests), not pytorch/pytorch or
# nvidia/cuda:*-runtime. The project pins torch==2.14.1, and that PyPI wheel is the CUDA 13.0
# build: it brings the CUDA runtime, cuBLAS, cuDNN and NCCL itself as nvidia-* wheels. A CUDA
# base image would carry a second, unused copy of those libraries (several GB), and
# pytorch/pytorch carries a torch of its own that pip would replace with the pinned one. The GPU
# driver comes from the host through the NVIDIA Container Toolkit (CUDA 13 needs driver >= 580).
# Nothing here needs a GPU to build; the same image runs on CPU (ADAIN_DEVICE=cpu).
#
# BASE_IMAGE: any Debian-like image whose `python` and `pip` are Python 3.11, e.g. one made
# from Debian's packages where no registry is reachable (scripts/container-check.sh).
# TORCH_INDEX_URL: empty = torch from PyPI (the CUDA build, ~2.9 GB with its nvidia wheels);
# https://download.pytorch.org/whl/cpu = the CPU-only build of the same version, for hosts
# without a GPU (docs/deployment.md, "A CPU-only image").
ARG BASE_IMAGE=python:3.11.11-slim-bookworm
FROM ${BASE_IMAGE}
ARG TORCH_INDEX_URL=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# Dependencies first, read from pyproject.toml, so that this multi-GB layer is rebuilt only
# when they change, not on every code change.
# With TORCH_INDEX_URL, torch and torchvision at their pinned versions come from that index
# first (`==2.14.1` accepts its `2.14.1+cpu`), and the second install finds them satisfied.
COPY pyproject.toml /src/
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && if [ -n "$TORCH_INDEX_URL" ]; then \
        grep -E '^torch(vision)?==' /tmp/requirements.txt > /tmp/torch.txt \
        && pip install --index-url "$TORCH_INDEX_URL" -r /tmp/torch.txt; \
    fi \
    && pip install -r /tmp/requirements.txt \
    && rm -f /tmp/requirements.txt /tmp/torch.txt

# The project from its own files. Not editable: the packages and their data (the embedded
# weights in models/weights/*.safetensors, the web page in service/static) go to site-packages.
COPY README.md /src/
COPY models/ /src/models/
COPY media/ /src/media/
COPY service/ /src/service/
COPY cli/ /src/cli/
RUN pip install --no-deps /src && rm -rf /src

# Non-root, by number so that Kubernetes' runAsNonRoot can check it. /data/styles is the style
# registry (a volume in compose; Redis past one replica); /data/jobs the video jobs' folder
# (a volume shared by the service and the workers); /weights is where the official
# vgg_normalised.pth and decoder.pth are mounted read-only.
RUN groupadd --system --gid 10001 adain \
    && useradd --system --uid 10001 --gid adain --home-dir /app --create-home \
        --shell /usr/sbin/nologin adain \
    && mkdir -p /data/styles /data/jobs /weights \
    && chown adain:adain /data/styles /data/jobs
USER 10001:10001
WORKDIR /app

# Empty weight paths = the embedded weights; to use the official ones:
#   -v /path/to/weights:/weights:ro -e ADAIN_ENCODER_PATH=/weights/vgg_normalised.pth
#   -e ADAIN_DECODER_PATH=/weights/decoder.pth
ENV ADAIN_HOST=0.0.0.0 \
    ADAIN_PORT=8000 \
    ADAIN_STYLES_DIR=/data/styles \
    ADAIN_JOBS_DIR=/data/jobs \
    ADAIN_ENCODER_PATH= \
    ADAIN_DECODER_PATH=

EXPOSE 8000

# Liveness only (/healthz): /readyz is for load balancers, it answers 503 while warming up.
# Python, because the slim image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ADAIN_PORT', '8000'), timeout=4)"]

CMD ["adain", "serve"]
