"""The dispatch interface: how the job domain and the API hand work to whatever runs it.

Only ids travel; the row was committed first, so the receiver always finds it. The transport is
installed by the process's composition root (the app factory, ``hostcp serve``/``worker``, the
Celery worker process): the embedded runner's wake-up (``worker.runner``) or Celery
(``worker.celery_app``). Nothing here knows which.
"""

from __future__ import annotations

import logging
from typing import Protocol

from app.core.config import Settings
from app.db import repo
from app.db.session import session_scope

log = logging.getLogger(__name__)

# the names the transports route on (Celery task names)
RUN_JOB = "hostcp.run_job"
SHAPLEY_CHUNK = "hostcp.shapley_chunk"


class Transport(Protocol):
    def send(self, task: str, args: list, *, queue: str, task_id: str | None = None) -> None:
        """Hand one message over; raise when it could not be."""


_transport: Transport | None = None


def install(transport: Transport | None) -> None:
    """Make ``transport`` this process's (None removes it)."""
    global _transport
    _transport = transport


def installed() -> Transport | None:
    return _transport


def send(task: str, args: list, *, queue: str, task_id: str | None = None) -> None:
    """Send through the installed transport; RuntimeError when none is installed."""
    if _transport is None:
        raise RuntimeError("no job transport installed in this process (the app factory, the "
                           "runner or the Celery worker installs one)")
    _transport.send(task, args, queue=queue, task_id=task_id)


def enqueue(job_id: str, queue: str) -> bool:
    """True when the job's message was handed over; False leaves the job for the reaper
    (queued jobs are re-enqueued on start-up and periodically)."""
    try:
        send(RUN_JOB, [job_id], queue=queue, task_id=job_id)
        return True
    except Exception:
        log.warning("could not enqueue job %s; the reaper will retry", job_id, exc_info=True)
        return False


def requeue_lost(settings: Settings) -> list[str]:
    """Re-enqueue jobs whose message may be lost (the reaper); returns their ids."""
    with session_scope(settings) as s:
        lost = repo.jobs_to_requeue(s, requeue_after_s=settings.requeue_after_s)
    sent = []
    for job_id, queue in lost:
        if enqueue(job_id, queue):
            with session_scope(settings) as s:
                repo.mark_enqueued(s, job_id=job_id)
            sent.append(job_id)
    if sent:
        log.info("re-enqueued %d job(s)", len(sent))
    return sent
