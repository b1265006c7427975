"""A short version of benchmarks/load_test.py: a real server process on loopback, status polls
and result downloads at a fixed rate from this process; no errors, bounded latency."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from load_test import load_test  # noqa: E402

pytestmark = pytest.mark.timeout(150)


@pytest.mark.parametrize("postgres", [False, pytest.param(True, marks=pytest.mark.postgres)],
                         ids=["sqlite", "postgres"])
def test_load_smoke(tmp_path, postgres):
    if postgres:
        from server_helpers import create_database, drop_database

        drop_database(create_database())  # skips here when Postgres is not reachable
    out = load_test(rate=30, duration=3, postgres=postgres, data_dir=tmp_path, threads=8)
    print(f"\nload smoke ({out['database']}): {out}")
    assert out["requests"] == 90 and out["server_alive"]
    assert out["errors"] == 0, out["error_kinds"]
    # generous: the bound is about hangs and timeouts, not speed on a shared CI machine
    assert out["p99_ms"] < 5000, out
