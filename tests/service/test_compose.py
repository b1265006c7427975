"""docker-compose.yml as Debian's docker-compose reads it (no Docker engine needed): valid with
and without the gpu profile, worker replicas taken from HOSTCP_WORKERS. CI's own check is the
step in .ci/run; this test runs the same command where the binary exists."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("docker-compose") is None,
                                reason="docker-compose is not installed (CI installs it)")


def _config(*args: str, quiet: bool = True, **env: str) -> subprocess.CompletedProcess:
    """``docker-compose config`` (the resolved file on stdout unless ``quiet``)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("HOSTCP_", "COMPOSE_"))}
    full.update({"HOSTCP_SECRET_KEY": "compose-test", **env})
    return subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), *args,
                           "config", *(["-q"] if quiet else [])],
                          cwd=ROOT, env=full, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("profile", [[], ["--profile", "gpu"]], ids=["default", "gpu"])
def test_compose_file_validates(profile):
    r = _config(*profile)
    assert r.returncode == 0, r.stderr


def test_worker_replicas_come_from_the_environment():
    r = _config(quiet=False, HOSTCP_WORKERS="3")
    assert r.returncode == 0, r.stderr
    worker = r.stdout.split("\n  worker:\n", 1)[1].split("\nvolumes:", 1)[0]
    assert "replicas: 3" in worker and "- cpu" in worker
    bad = _config(HOSTCP_WORKERS="many")
    assert bad.returncode != 0 and "replicas" in bad.stderr


def test_gpu_worker_reserves_a_gpu_in_its_profile():
    r = _config("--profile", "gpu", quiet=False)
    assert r.returncode == 0, r.stderr
    gpu = r.stdout.split("\n  gpu-worker:\n", 1)[1].split("\n  migrate:\n", 1)[0]
    assert "profiles:" in gpu and "- gpu" in gpu
    assert "driver: nvidia" in gpu and "replicas: 1" in gpu and "--queue" in gpu


def test_a_secret_key_is_required():
    full = {k: v for k, v in os.environ.items() if not k.startswith(("HOSTCP_", "COMPOSE_"))}
    r = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config",
                        "-q"], cwd=ROOT, env=full, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "HOSTCP_SECRET_KEY" in r.stderr
