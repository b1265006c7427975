"""Hand a committed job to its transport: the embedded runner or Celery. Only the job id
travels; the row was committed first, so the worker always finds it."""

from __future__ import annotations

import logging
from collections.abc import Callable

from app.core.config import Settings

log = logging.getLogger(__name__)

# In embedded mode the API's lifespan registers the runner's wake-up here.
_embedded_notify: Callable[[], None] | None = None


def set_embedded_notifier(fn: Callable[[], None] | None) -> None:
    global _embedded_notify
    _embedded_notify = fn


def enqueue(job_id: str, queue: str, settings: Settings) -> bool:
    """True when the message was handed over; False leaves the job for the reaper (queued jobs
    are re-enqueued on start-up and periodically)."""
    if settings.embedded:
        if _embedded_notify is not None:
            _embedded_notify()
        return True  # the runner polls the table, so a missed wake-up only adds latency
    try:
        from worker.celery_app import get_celery

        get_celery(settings).send_task("hostcp.run_job", args=[job_id], queue=queue,
                                       task_id=job_id, ignore_result=True)
        return True
    except Exception:
        log.warning("could not enqueue job %s; the reaper will retry", job_id, exc_info=True)
        return False


def requeue_lost(settings: Settings) -> list[str]:
    """Re-enqueue jobs whose message may be lost (the reaper); returns their ids."""
    from app.db import repo
    from app.db.session import session_scope

    with session_scope(settings) as s:
        lost = repo.jobs_to_requeue(s, requeue_after_s=settings.requeue_after_s)
    sent = []
    for job_id, queue in lost:
        if enqueue(job_id, queue, settings):
            with session_scope(settings) as s:
                repo.mark_enqueued(s, job_id=job_id)
            sent.append(job_id)
    if sent:
        log.info("re-enqueued %d job(s)", len(sent))
    return sent
