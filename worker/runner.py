"""The embedded runner: a separate process (spawn context, like MLflow's job runner) that takes
jobs from the table and runs them one at a time. The API wakes it on submit; it also polls, which
makes it its own reaper (stale leases are picked up like queued jobs).

Spawn, not fork: the child starts a fresh interpreter, so no CUDA context, database connection
or thread state of the API process leaks into it.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Callable
from typing import Any

from app.core.config import Settings, configure
from app.db import repo
from app.db.session import session_scope
from app.jobs.run_job import run_job, worker_identity

log = logging.getLogger(__name__)


class RunnerWakeup:
    """The embedded transport (``app.jobs.dispatch.Transport``): a job message only wakes the
    runner, which reads the job table itself. With no runner in this process (``serve
    --workers``: one shared runner) it does nothing; the runner finds the job at its next poll."""

    def __init__(self, notify: Callable[[], None] | None = None) -> None:
        self.notify = notify

    def send(self, task: str, args: list, *, queue: str, task_id: str | None = None) -> None:
        if self.notify is not None:
            self.notify()


class InProcessRunner:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._proc = None
        self._wake = None
        self._stop = None

    def start(self) -> InProcessRunner:
        ctx = mp.get_context("spawn")
        self._wake, self._stop = ctx.Event(), ctx.Event()
        self._proc = ctx.Process(target=runner_main,
                                 args=(self.settings.model_dump(), self._wake, self._stop),
                                 name="hostcp-runner", daemon=True)
        self._proc.start()
        return self

    def notify(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the runner to stop; a running job goes back to the queue at its next progress
        event. Terminate it if it does not stop in time (the lease then expires)."""
        if self._proc is None:
            return
        self._stop.set()
        self._wake.set()
        self._proc.join(timeout)
        if self._proc.is_alive():
            log.warning("runner did not stop in %.0f s; terminating it", timeout)
            self._proc.terminate()
            self._proc.join(5)
        self._proc = None


def runner_main(settings_data: dict[str, Any], wake, stop) -> None:
    """The runner process's loop (also usable in the foreground: ``hostcp worker`` without a
    broker)."""
    settings = Settings(**settings_data)
    configure(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s runner %(levelname)s %(message)s")
    serve_forever(settings, wake_wait=wake.wait, clear=wake.clear, stopping=stop.is_set)


def serve_forever(settings: Settings, *, wake_wait, clear, stopping) -> None:
    worker_id = worker_identity()
    while not stopping():
        try:
            with session_scope(settings) as s:
                ids = repo.runnable_job_ids(s, limit=1)
        except Exception:
            log.warning("runner could not read the job table", exc_info=True)
            ids = []
        if ids:
            try:
                status = run_job(ids[0], settings=settings, worker_id=worker_id,
                                 should_stop=stopping)
            except Exception:  # e.g. the database went away: the runner must outlive it
                log.warning("job %s: run_job raised; its lease will expire and it is retried",
                            ids[0], exc_info=True)
                wake_wait(settings.runner_poll_s)
                continue
            log.info("job %s: %s", ids[0], status)
            continue
        wake_wait(settings.runner_poll_s)
        clear()
