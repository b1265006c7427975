"""Celery configuration for server mode (Postgres + Redis). Settings as the conventions table
says: JSON only, late acks, prefetch 1, explicit time limits, a visibility timeout above the
hard limit, and declared queues only."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery
from celery.signals import worker_process_init, worker_ready
from kombu import Queue

from app.core.config import Settings, get_settings
from app.db.session import dispose_engines
from app.jobs import dispatch


def make_celery(settings: Settings) -> Celery:
    app = Celery("hostcp", broker=settings.broker_url, include=["worker.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=False,  # the DB reaper retries, with an attempts counter
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.soft_time_limit_s,
        task_time_limit=settings.time_limit_s,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        task_queues=[Queue(settings.queue_cpu), Queue(settings.queue_gpu)],
        task_default_queue=settings.queue_cpu,
        task_create_missing_queues=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


@lru_cache
def _celery_for(settings_json: str) -> Celery:
    return make_celery(Settings.model_validate_json(settings_json))


def get_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    return _celery_for(settings.model_dump_json())


class CeleryTransport:
    """The server-mode transport (``app.jobs.dispatch.Transport``): a Celery message on the
    job's queue, carrying only ids."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def send(self, task: str, args: list, *, queue: str, task_id: str | None = None) -> None:
        get_celery(self.settings).send_task(task, args=args, queue=queue, task_id=task_id,
                                            ignore_result=True)


# `celery -A worker.celery_app worker` finds this.
celery_app = get_celery()
app = celery_app


@worker_process_init.connect
def _fresh_connections(**_kw) -> None:
    # prefork children must not share the parent's database connections; they send through
    # Celery (a TMC-Shapley coordinator asks helpers for chunks)
    dispose_engines()
    dispatch.install(CeleryTransport(get_settings()))


@worker_ready.connect
def _reap_on_start(**_kw) -> None:
    dispatch.install(CeleryTransport(get_settings()))
    try:
        dispatch.requeue_lost(get_settings())
    except Exception:  # the API's reaper will try again
        pass
