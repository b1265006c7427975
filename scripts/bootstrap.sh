#!/usr/bin/env bash
# Creates .venv and installs hostcp into it.  Usage: scripts/bootstrap.sh [--dev]
# CPU torch goes in first, pinned, so that resolving the rest never pulls a multi-GB CUDA build.
# Override with HOSTCP_TORCH_SPEC (e.g. a CUDA build on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="service"
[ "${1:-}" = "--dev" ] && extras="service,dev"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "${HOSTCP_TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install -q -e ".[${extras}]"
