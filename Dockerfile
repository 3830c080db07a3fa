# syntax=docker/dockerfile:1
# uniserve service image, two stages: a builder that installs torch and uniserve into a virtual
# environment, and a slim runtime that copies it and runs as a non-root user.
#
# CPU torch by default. For CUDA, take torch's CUDA wheels (they bring the CUDA runtime; the host
# needs the NVIDIA driver and container toolkit) and, if you like, a CUDA base image (a python3 of
# 3.11+ is installed when the base has none):
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#                --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 -t uniserve:cuda .
# Artifacts live under /data: the model in /data/model and the index versions in /data/indexes,
# both volumes (docker-compose.yml shares them with the batch rebuild).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
RUN command -v python3 >/dev/null || (apt-get update \
      && apt-get install -y --no-install-recommends python3 python3-venv \
      && rm -rf /var/lib/apt/lists/*)
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first and pinned, from the chosen index, so the project's range does not pull another build
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY models ./models
COPY index ./index
RUN pip install . && python -c "import service.api.app, faiss, torch"

FROM ${BASE_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
RUN command -v python3 >/dev/null || (apt-get update \
      && apt-get install -y --no-install-recommends python3 \
      && rm -rf /var/lib/apt/lists/*)
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    UNISERVE_DATA_DIR=/data UNISERVE_HOST=0.0.0.0 UNISERVE_PORT=8000
# Owned by the service user before they become volumes, so new named volumes inherit that owner.
RUN useradd --create-home --uid 10001 uniserve \
    && mkdir -p /data/model /data/indexes && chown -R uniserve /data
USER uniserve
WORKDIR /home/uniserve
VOLUME ["/data/model", "/data/indexes"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; url = 'http://127.0.0.1:%s/readyz' % os.environ.get('UNISERVE_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(url, timeout=2).status == 200 else 1)"]
CMD ["uniserve", "serve"]
