# LessIsMore Workbench images (docs/jetson.md). Two targets:
#
#   jetson (default): NVIDIA Jetson Orin, JetPack 6 / L4T r36, aarch64
#     docker build -t lessismore:jetson .
#     docker run --runtime nvidia -p 8501:8501 -v lim-data:/data lessismore:jetson
#   server: an x86-64 machine with a CUDA GPU
#     docker build --target server -t lessismore:server .
#     docker run --gpus all -p 8501:8501 -v lim-data:/data lessismore:server
#
# On a Jetson, torch and the packages compiled against it come from the L4T base image (PyPI has
# no CUDA build of them for JetPack) and bitsandbytes is compiled here for the Orin's GPU: the
# PyPI wheel is built for server ARM and fails at the first 4-bit kernel on a Jetson
# ("named symbol not found", bitsandbytes issue 1930). Everything else is requirements.txt as
# pinned, filtered by docker/image_requirements.py (tests/test_docker.py checks they agree).

# A jetson-containers PyTorch image of the device's L4T release (Ubuntu 24.04, Python 3.12,
# CUDA 12.8, torch 2.7). Its torch must be a CUDA build; the bitsandbytes build uses its nvcc.
ARG BASE_IMAGE=dustynv/pytorch:2.7-r36.4.0-cu128-24.04
ARG SERVER_BASE_IMAGE=python:3.12-slim-bookworm

# ---------------------------------------------------------------- bitsandbytes for the Orin
FROM ${BASE_IMAGE} AS bitsandbytes-builder
# 87: Orin (Nano, NX, AGX). The version is the one requirements.txt pins unless given here.
ARG CUDA_COMPUTE_CAPABILITY=87
ARG BITSANDBYTES_VERSION=
# build: compile the pinned version here. base: keep the base image's (e.g.
# BASE_IMAGE=dustynv/bitsandbytes:0.45.4-r36.4.0-cu128-24.04, whose version is not requirements.txt's).
ARG BITSANDBYTES_SOURCE=build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /build
COPY requirements.txt docker/image_requirements.py ./
# CMake writes the library into src/bitsandbytes/; the wheel then packages it (CMAKE_ARGS too, in
# case a version's build backend runs CMake itself). Git tags are the bare version numbers.
# Debian/Ubuntu package versions are the base image's release's (DL3008: not pinned one by one).
# hadolint ignore=DL3008
RUN mkdir -p /wheels \
    && if [ "${BITSANDBYTES_SOURCE}" = build ]; then \
         apt-get update \
         && apt-get install -y --no-install-recommends build-essential cmake git \
         && rm -rf /var/lib/apt/lists/* \
         && version="${BITSANDBYTES_VERSION:-$(python3 image_requirements.py requirements.txt --pin bitsandbytes)}" \
         && git clone --depth 1 --branch "${version}" \
              https://github.com/bitsandbytes-foundation/bitsandbytes.git src \
         && cmake -S src -B src/build -DCOMPUTE_BACKEND=cuda \
              -DCOMPUTE_CAPABILITY="${CUDA_COMPUTE_CAPABILITY}" -DCMAKE_BUILD_TYPE=Release \
         && cmake --build src/build -j "$(nproc)" \
         && CMAKE_ARGS="-DCOMPUTE_BACKEND=cuda -DCOMPUTE_CAPABILITY=${CUDA_COMPUTE_CAPABILITY}" \
              python3 -m pip wheel --no-cache-dir --no-deps -w /wheels ./src \
         && ls /wheels/bitsandbytes-"${version}"-*.whl; \
       fi

# ---------------------------------------------------------------- x86-64 CUDA server
# (Its last lines repeat the Jetson stage's: stages on different base images share no instructions.)
FROM ${SERVER_BASE_IMAGE} AS server
# Log-in on: the app listens on every interface of the container, so whoever reaches the
# published port must sign up (docs/jetson.md: make the admin first; LIM_AUTH=off for a
# port published on 127.0.0.1 only).
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 LIM_HOME=/data LIM_PROFILE=server-gpu LIM_AUTH=on
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libsndfile1 ffmpeg \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 lim \
    && mkdir -p /data && chown 10001 /data
WORKDIR /app
COPY requirements.txt .
# PyPI's torch and bitsandbytes wheels carry their CUDA libraries for x86-64: requirements.txt as is.
RUN python3 -m pip install --no-cache-dir -r requirements.txt
COPY --chown=10001 . .
RUN python3 -m pip install --no-cache-dir --no-deps -e .
USER 10001
VOLUME ["/data"]
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4)"]
ENTRYPOINT ["/app/docker/entrypoint.sh"]

# ---------------------------------------------------------------- Jetson Orin (default target)
FROM ${BASE_IMAGE} AS jetson
# Log-in on: the app listens on every interface of the container, so whoever reaches the
# published port must sign up (docs/jetson.md: make the admin first; LIM_AUTH=off for a
# port published on 127.0.0.1 only).
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 LIM_HOME=/data LIM_PROFILE=auto LIM_AUTH=on
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libsndfile1 ffmpeg \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 lim \
    && mkdir -p /data && chown 10001 /data
WORKDIR /app
COPY requirements.txt docker/image_requirements.py ./docker-setup/
COPY --from=bitsandbytes-builder /wheels /wheels
# The base image's torch stays: a constraint on its exact version makes pip fail rather than
# replace it with a CPU wheel from PyPI when some requirement wants another torch.
RUN python3 -m pip freeze | grep -iE '^(torch|torchaudio|torchcodec|bitsandbytes)==' > /tmp/base.txt || true; \
    python3 -c "import torch, sys; sys.exit(0 if torch.version.cuda else 'BASE_IMAGE has no CUDA build of torch')" \
    && python3 docker-setup/image_requirements.py docker-setup/requirements.txt \
         --from-base torch torchaudio torchcodec --built bitsandbytes > /tmp/requirements-image.txt \
    && python3 -m pip install --no-cache-dir -c /tmp/base.txt -r /tmp/requirements-image.txt \
    && if compgen -G "/wheels/*.whl" > /dev/null; then \
         python3 -m pip install --no-cache-dir --no-deps --force-reinstall /wheels/*.whl; fi \
    && python3 -c "import bitsandbytes" \
    && rm -rf /wheels docker-setup
COPY --chown=10001 . .
RUN python3 -m pip install --no-cache-dir --no-deps -e .
USER 10001
VOLUME ["/data"]
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4)"]
# The self-test (one 4-bit matmul on the GPU) runs first and stops the container with its
# message when the kernels cannot run; then the demo is added (idempotent) and the app starts.
ENTRYPOINT ["/app/docker/entrypoint.sh"]
