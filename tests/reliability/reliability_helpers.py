"""Helpers for the reliability tests: slow jobs, waiting on conditions, counting result rows."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select

from app.core.config import Settings
from app.db import repo
from app.db.models import Job, PointResult
from app.db.session import session_scope

# tmc_shapley with a fixed permutation count: about 0.15 s per permutation on 80 points, one
# progress event (and so one cancel/stop check) per permutation
SLOW_PARAMS = {"max_permutations": 40, "check_every": 10, "err": 1e-9, "tolerance": 0.0,
               "device": "cpu"}


def slow_job_body(train: dict, test: dict, permutations: int = 40) -> dict:
    return {"train_dataset_id": train["id"], "test_dataset_id": test["id"],
            "method": "tmc_shapley", "fraction": 0.25,
            "params": {**SLOW_PARAMS, "max_permutations": permutations}}


def until(cond: Callable[[], object], timeout: float, what: str, every: float = 0.1):
    """Poll ``cond`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = cond()
        if out:
            return out
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def job_row(settings: Settings, job_id: str) -> Job:
    with session_scope(settings) as s:
        return s.get(Job, job_id)


def n_points(settings: Settings, job_id: str) -> int:
    with session_scope(settings) as s:
        return s.scalar(select(func.count()).select_from(PointResult)
                        .where(PointResult.job_id == job_id))


def sigkill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def storage_files(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).rglob("*") if p.is_file())


def make_key(settings: Settings, name: str) -> tuple[dict[str, str], str]:
    """Headers for a new API key, and the key itself."""
    with session_scope(settings) as s:
        _, token = repo.create_api_key(s, name=name)
    return {"Authorization": f"Bearer {token}"}, token
