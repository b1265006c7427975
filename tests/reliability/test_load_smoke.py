"""A short version of benchmarks/load_test.py: a real server (one or two API processes) on
loopback, status polls and result downloads at a fixed rate from this process; no errors,
bounded latency. With two processes in embedded mode they share one runner, which still runs
the job the load reads."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from load_test import load_test  # noqa: E402

pytestmark = pytest.mark.timeout(150)


@pytest.mark.parametrize("postgres,workers", [
    (False, 1), (False, 2), pytest.param(True, 1, marks=pytest.mark.postgres)],
    ids=["sqlite", "sqlite-2-workers", "postgres"])
def test_load_smoke(tmp_path, postgres, workers):
    if postgres:
        from server_helpers import create_database, drop_database

        drop_database(create_database())  # skips here when Postgres is not reachable
    out = load_test(rate=30, duration=3, postgres=postgres, workers=workers, data_dir=tmp_path,
                    threads=8)
    print(f"\nload smoke ({out['database']}, {workers} worker(s)): {out}")
    assert out["requests"] == 90 and out["server_alive"]
    assert out["errors"] == 0, out["error_kinds"]
    # generous: the bound is about hangs and timeouts, not speed on a shared CI machine
    assert out["p99_ms"] < 5000, out
    if workers > 1:  # both API processes answered requests
        counts = [n for n in out["requests_by_pid"].values() if n > 0]
        assert len(counts) == workers, out["requests_by_pid"]
    if not postgres:  # several processes on one SQLite file: write-ahead log, not rollback
        import sqlite3
        from contextlib import closing

        with closing(sqlite3.connect(tmp_path / "hostcp.db")) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
