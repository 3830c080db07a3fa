# uniserve service image. CPU by default; the embedded default trains on the shipped sample at
# first start unless a model and index are mounted at /data (UNISERVE_DATA_DIR).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    UNISERVE_DATA_DIR=/data UNISERVE_HOST=0.0.0.0 UNISERVE_PORT=8000

WORKDIR /app
# torch first and pinned, so the project's range does not pull another build
ARG TORCH_VERSION=2.13.0
RUN pip install "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY service ./service
COPY models ./models
COPY index ./index
RUN pip install . && useradd --create-home --uid 10001 uniserve && mkdir -p /data && chown uniserve /data
USER uniserve
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz').status == 200 else 1)"
CMD ["uniserve", "serve"]
