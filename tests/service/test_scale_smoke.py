"""benchmarks/scale_job.py's smoke run: a small table through the embedded service (upload,
job, downloads) prints every column, with figures that are figures."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "scale_job.py"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _columns() -> list[str]:
    spec = importlib.util.spec_from_file_location("scale_job", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.COLUMNS


def test_smoke_run_prints_every_column(tmp_path):
    out = tmp_path / "rows.jsonl"
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--rows", "2000", "--test-rows", "200", "--methods",
         "knn_shapley", "--modes", "embedded", "--threads", "1", "--poll", "0.2",
         "--data-dir", str(tmp_path / "tables"), "--json", str(out), "--server-env",
         "HOSTCP_CURVE_FRACTIONS=[0.5, 1.0]", "HOSTCP_CURVE_EPOCHS=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=540)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    columns = _columns()
    lines = r.stdout.strip().splitlines()
    header, data = lines[-2].split(), lines[-1].split()
    assert header == columns and len(data) == len(columns)
    (row,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert row["status"] == "succeeded" and row["rows"] == 2000
    missing = [c for c in columns if row.get(c) is None]
    assert not missing, missing
    for c in columns:
        if c.endswith("_s") or c.endswith("_mb"):
            assert isinstance(row[c], float) and row[c] >= 0, (c, row[c])
    assert row["api_upload_mb"] > 0 and row["worker_peak_mb"] > 0
    # the whole job is its parts: end to end covers the upload, the job and a download
    assert row["end_to_end_s"] >= row["job_wall_s"] >= row["valuation_s"]
