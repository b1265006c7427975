"""Progress and heartbeat for a running job.

A background thread writes the latest progress at most once per ``progress_interval_s``, extends
the lease (so a long step with no progress events does not look like a dead worker) and reads
the cancel flag; the valuer's progress callback raises ``Cancelled`` at its next event once the
flag is seen, once the lease is lost, or once the runner asks to stop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from app.core.config import Settings
from app.db.models import Job, JobStatus
from app.db.session import session_scope
from app.db.types import utcnow

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """The runner is shutting down: put the job back in the queue."""


class JobReporter:
    """Maps the phases of a job onto one 0–1 progress figure and keeps the lease alive."""

    # share of the overall progress per phase
    PHASES = {"loading": (0.0, 0.02), "valuing": (0.02, 0.8), "mislabels": (0.8, 0.85),
              "curves": (0.85, 0.99), "saving": (0.99, 1.0)}

    def __init__(self, *, job_id: str, worker_id: str, settings: Settings,
                 should_stop: Callable[[], bool] | None = None) -> None:
        self.job_id = job_id
        self.worker_id = worker_id
        self.settings = settings
        self.should_stop = should_stop
        self.stage = "loading"
        self.progress = 0.0
        self.message: str | None = None
        self.cancel_seen = False
        self.lease_lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- called from the job's thread --
    def phase(self, name: str, stage: str | None = None) -> None:
        self.stage = stage or name
        self.progress = max(self.progress, self.PHASES[name][0])
        self._phase = name
        self.check()

    def callback(self, event) -> None:
        """A hostcp_core ProgressCallback."""
        lo, hi = self.PHASES[getattr(self, "_phase", "valuing")]
        self.stage = f"{self._phase}:{event.stage}" if event.stage else self._phase
        if event.fraction is not None:
            self.progress = max(self.progress, lo + (hi - lo) * event.fraction)
        if event.message:
            self.message = event.message[:500]
        self.check()

    def rows_saved(self, done: int, total: int) -> None:
        """Progress of the saving phase, per batch of rows written; raises on a cancel."""
        lo, hi = self.PHASES["saving"]
        self.stage, self.message = "saving", f"{done} of {total} rows written"
        self.progress = max(self.progress, lo + (hi - lo) * done / max(total, 1))
        self.check()

    def check(self) -> None:
        from hostcp_core import Cancelled

        if self.should_stop is not None and self.should_stop():
            raise Interrupted("the runner is stopping")
        if self.cancel_seen:
            raise Cancelled("cancel requested")
        if self.lease_lost:
            raise Cancelled("lease lost: another worker owns this job")

    # -- heartbeat thread --
    def __enter__(self) -> JobReporter:
        self._thread = threading.Thread(target=self._beat_loop, name=f"heartbeat-{self.job_id}",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _beat_loop(self) -> None:
        interval = max(0.05, min(self.settings.progress_interval_s, self.settings.lease_s / 3))
        while not self._stop.wait(interval):
            self.beat_now()

    def beat_now(self) -> None:
        """One heartbeat now (the saving phase calls it: on SQLite no heartbeat can commit
        while the results are written, so the stage must be out before)."""
        try:
            self.beat()
        except Exception as exc:  # a failed heartbeat must not kill the job; the next retries
            # an unreachable database is expected during a restart: one line, no traceback
            log.warning("heartbeat for job %s failed: %s", self.job_id, type(exc).__name__,
                        exc_info=not isinstance(exc, OperationalError))

    def beat(self) -> None:
        now = utcnow()
        with session_scope(self.settings) as s:
            res = s.execute(
                update(Job)
                .where(Job.id == self.job_id, Job.lease_owner == self.worker_id,
                       Job.status == JobStatus.RUNNING)
                .values(stage=self.stage[:64], progress=round(self.progress, 4),
                        message=self.message, heartbeat_at=now, updated_at=now,
                        lease_expires_at=now + timedelta(seconds=self.settings.lease_s)))
            if res.rowcount == 0:
                self.lease_lost = True
                return
            if s.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)):
                self.cancel_seen = True
