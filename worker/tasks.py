"""Celery tasks: thin wrappers that only pass the job id to ``run_job``."""

from __future__ import annotations

from celery.signals import worker_process_init

from app.jobs import dispatch
from app.jobs.run_job import run_job
from app.jobs.shapley_chunks import run_helper_chunk
from worker.celery_app import celery_app


@celery_app.task(name=dispatch.RUN_JOB, ignore_result=True, acks_late=True)
def run_job_task(job_id: str) -> str:
    return run_job(job_id)


@celery_app.task(name=dispatch.SHAPLEY_CHUNK, ignore_result=True, acks_late=True)
def shapley_chunk_task(job_id: str, chunk_index: int, key: str, part: int | None = None) -> str:
    return run_helper_chunk(job_id, chunk_index, key, part)


@worker_process_init.connect
def _preload(**_kw) -> None:
    # in each pool process, not the parent (no torch state across fork): a chunk task on a
    # fresh process would otherwise spend seconds importing before it computes anything
    # (scikit-learn's linear models alone: ~1 s, paid by the first TMC utility fit)
    import sklearn.linear_model  # noqa: F401
    import sklearn.multiclass  # noqa: F401

    import hostcp_core.valuers.tmc_shapley  # noqa: F401
