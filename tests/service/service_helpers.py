"""Helpers shared by the service tests (a uniquely named module, so that imports never pick up
another directory's conftest)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from app.core.config import Settings

FAST_METHOD = "random"


def service_settings(data_dir: Path, **overrides) -> Settings:
    base = dict(env="test", data_dir=data_dir, database_url=None, broker_url=None,
                secret_key="test-secret", max_upload_bytes=200_000, progress_interval_s=0.2,
                runner_poll_s=0.2, lease_s=30, curve_fractions=(0.25, 0.5, 1.0),
                curve_epochs=3, auth="enabled")
    base.update(overrides)
    return Settings(**base)


def write_csv_pair(directory: Path, n_train: int = 80, n_test: int = 40, seed: int = 0,
                   n_features: int = 6) -> tuple[Path, Path]:
    from hostcp_core import make_synthetic

    train, test = make_synthetic(n_train, n_test, seed=seed, n_features=n_features,
                                 n_important=3)
    paths = []
    for ds, name in ((train, "train.csv"), (test, "test.csv")):
        frame = pd.DataFrame(ds.X, columns=[f"f{i}" for i in range(ds.n_features)])
        frame.insert(0, "row_id", [f"r{i}" for i in range(ds.n)])
        frame["label"] = np.where(ds.label_names() == ds.classes[0], "neg", "pos")
        path = directory / name
        frame.to_csv(path, index=False)
        paths.append(path)
    return paths[0], paths[1]


def upload(client, headers, path: Path, **form) -> dict:
    with open(path, "rb") as fh:
        r = client.post("/v1/datasets", headers=headers, files={"file": (path.name, fh)},
                        data=form)
    assert r.status_code in (200, 201), r.text
    return r.json()


def wait_for(client, headers, job_id: str, timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s: {job}")


def assert_problem(r, status: int, slug: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["type"] == f"https://hostcp.dev/problems/{slug}", body
    assert body["status"] == status and body["title"]
    assert "Traceback" not in r.text
    return body

