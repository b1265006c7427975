# syntax=docker/dockerfile:1
# hostcp images. Targets: `api` (uvicorn) and `worker` (Celery). CPU PyTorch by default; for the
# GPU worker build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS base
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOSTCP_DATA_DIR=/data \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus
# torch first, from its own index, so that the project's dependencies never pull a CUDA build
RUN pip install "${TORCH_SPEC}" --index-url "${TORCH_INDEX}"
WORKDIR /srv/hostcp
COPY pyproject.toml README.md alembic.ini ./
COPY hostcp_core ./hostcp_core
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
COPY docker/entrypoint.sh /usr/local/bin/hostcp-entrypoint
# editable install: Alembic reads migrations/ from the source tree
RUN pip install -e ".[service]" \
    && chmod 0755 /usr/local/bin/hostcp-entrypoint \
    && useradd --create-home --uid 10001 hostcp \
    && mkdir -p /data && chown hostcp:hostcp /data
USER hostcp
VOLUME ["/data"]
ENTRYPOINT ["hostcp-entrypoint"]

FROM base AS api
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["python", "-m", "app.cli", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]

FROM base AS worker
CMD ["python", "-m", "app.cli", "worker", "--queue", "cpu", "--concurrency", "1"]
