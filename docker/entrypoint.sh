#!/bin/sh
# Container entrypoint: a clean Prometheus multiprocess directory per start (stale files from a
# previous run would be summed into the metrics), then the command.
set -e
if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    rm -rf "${PROMETHEUS_MULTIPROC_DIR}"
    mkdir -p "${PROMETHEUS_MULTIPROC_DIR}"
fi
exec "$@"
