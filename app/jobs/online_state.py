"""Where a finished HOST-CP job keeps its online selector (the learned model, embedding, config
and selected set), and the locked read-modify-write that grows the selected set."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.core.config import Settings
from app.storage import Storage


def selector_path(settings: Settings, job_id: str) -> Path:
    # keyed by job id, so a rerun of the job (at-least-once delivery) overwrites, never adds
    return Storage(settings.storage_root).path(f"selectors/{job_id}.npz")


def save_selector(settings: Settings, job_id: str, hostcp: Any, train: Any,
                  selected: Any) -> Path:
    """Persist a fitted HostCP's online selector for this job."""
    from hostcp_core.online import OnlineSelector

    path = selector_path(settings, job_id)
    OnlineSelector(hostcp).fit(train, selected).save(path)
    return path


def load_selector(settings: Settings, job_id: str):
    """The job's OnlineSelector, or None when it has none (not HOST-CP, or run before
    selectors were kept)."""
    from hostcp_core.online import OnlineSelector

    path = selector_path(settings, job_id)
    if not path.exists():
        return None
    return OnlineSelector.load(path)


@contextlib.contextmanager
def selector_lock(settings: Settings, job_id: str) -> Iterator[None]:
    """Serialise updates of one job's selected set (two concurrent adds must not lose rows)."""
    lock = selector_path(settings, job_id).with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
