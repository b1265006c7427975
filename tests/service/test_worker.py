"""run_job under at-least-once delivery: idempotent, lease-safe, cancelable, bounded retries.
Runs in-process (no runner) with stand-in valuers where timing matters."""

from __future__ import annotations

import time
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import func, select, update

from app.db import repo
from app.db.migrate import upgrade
from app.db.models import Job, PointResult
from app.db.session import session_scope
from app.db.types import utcnow
from app.jobs import run_job as run_job_module
from app.jobs.run_job import run_job
from app.storage import Storage, dataset_arrays

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def job_id(settings) -> str:
    return _make_job(settings)


def _make_job(settings) -> str:
    from hostcp_core import make_synthetic

    upgrade(settings)
    train, test = make_synthetic(60, 30, seed=1, n_features=5, n_important=3)
    store = Storage(settings.storage_root)
    with session_scope(settings) as s:
        owner, _ = repo.create_api_key(s, name="w")
        ids = []
        for ds in (train, test):
            rec = repo.add_dataset(s, owner_id=owner.id, dataset=ds, name=ds.name,
                                   array_path=store.save_arrays(dataset_arrays(ds)))
            ids.append(rec.id)
        s.flush()
        job = repo.create_job(s, owner_id=owner.id, train_dataset_id=ids[0],
                              test_dataset_id=ids[1], method="random", params={},
                              fraction=0.25, seed=0, queue="cpu", max_attempts=3)
        return job.id


def _job(settings, job_id) -> Job:
    with session_scope(settings) as s:
        return s.get(Job, job_id)


def _n_points(settings, job_id) -> int:
    with session_scope(settings) as s:
        return s.scalar(select(func.count()).select_from(PointResult)
                        .where(PointResult.job_id == job_id))


def _set(settings, job_id, **values) -> None:
    with session_scope(settings) as s:
        s.execute(update(Job).where(Job.id == job_id).values(**values))


class _Scripted:
    """A stand-in valuer: reports progress ``steps`` times, running ``hook(i)`` at each step."""

    def __init__(self, steps=40, hook=None, delay=0.02):
        self.steps, self.hook, self.delay = steps, hook, delay

    def fit(self, train, test, *, progress=None):
        from hostcp_core import Progress, ValuationResult

        for i in range(self.steps):
            if self.hook:
                self.hook(i)
            time.sleep(self.delay)
            if progress:
                progress(Progress("scripted", i + 1, self.steps))
        return ValuationResult.from_values(np.arange(train.n, dtype=float), 0.25, "scripted")


def _use(monkeypatch, valuer):
    monkeypatch.setattr(run_job_module, "build_valuer", lambda *a, **k: valuer)


def test_run_twice_is_idempotent(settings, job_id):
    assert run_job(job_id, settings=settings) == "succeeded"
    first = _job(settings, job_id)
    assert first.status == "succeeded" and first.progress == 1.0 and first.attempts == 1
    assert _n_points(settings, job_id) == 60
    # a duplicate delivery of a finished job does nothing
    assert run_job(job_id, settings=settings) == "skipped"
    assert _n_points(settings, job_id) == 60 and _job(settings, job_id).attempts == 1


def test_redelivery_after_a_dead_worker_replaces_results(settings, job_id):
    assert run_job(job_id, settings=settings) == "succeeded"
    # as if the worker had died before acking: running, with an expired lease
    _set(settings, job_id, status="running", lease_owner="dead-worker",
         lease_expires_at=utcnow() - timedelta(seconds=1))
    assert run_job(job_id, settings=settings) == "succeeded"
    assert _job(settings, job_id).attempts == 2
    assert _n_points(settings, job_id) == 60  # replaced, not appended


def test_a_live_lease_is_not_stolen(settings, job_id):
    _set(settings, job_id, status="running", lease_owner="alive",
         lease_expires_at=utcnow() + timedelta(seconds=60))
    assert run_job(job_id, settings=settings) == "skipped"
    assert _job(settings, job_id).lease_owner == "alive"


def test_lost_lease_writes_nothing(settings, job_id, monkeypatch):
    def steal(i):
        if i == 3:  # another worker takes over mid-run
            _set(settings, job_id, lease_owner="thief")
    _use(monkeypatch, _Scripted(steps=30, hook=steal))
    assert run_job(job_id, settings=settings) == "skipped"
    job = _job(settings, job_id)
    assert job.status == "running" and job.lease_owner == "thief"
    assert _n_points(settings, job_id) == 0


def test_cancel_while_running(settings, job_id, monkeypatch):
    def cancel(i):
        if i == 2:
            with session_scope(settings) as s:
                repo.request_cancel(s, job=s.get(Job, job_id))
    _use(monkeypatch, _Scripted(steps=200, hook=cancel))
    t0 = time.monotonic()
    assert run_job(job_id, settings=settings) == "canceled"
    assert time.monotonic() - t0 < 3.5  # stopped early, not after all 200 steps (4 s)
    job = _job(settings, job_id)
    assert job.status == "canceled" and job.error["type"].endswith("/job-canceled")
    assert _n_points(settings, job_id) == 0


def test_progress_is_written_while_running(settings, job_id, monkeypatch):
    seen = []

    def watch(i):
        if i % 10 == 9:
            seen.append(_job(settings, job_id).progress)
    _use(monkeypatch, _Scripted(steps=60, hook=watch, delay=0.03))
    assert run_job(job_id, settings=settings) == "succeeded"
    assert any(0 < p < 1 for p in seen) and seen == sorted(seen)


def test_failure_is_a_problem_without_traceback(settings, job_id, monkeypatch):
    def boom(i):
        raise RuntimeError("valuer exploded")
    _use(monkeypatch, _Scripted(hook=boom))
    assert run_job(job_id, settings=settings) == "failed"
    err = _job(settings, job_id).error
    assert err["type"].endswith("/job-failed") and "valuer exploded" in err["detail"]
    assert "Traceback" not in str(err)


def test_max_attempts_is_the_dead_letter_state(settings, job_id):
    _set(settings, job_id, status="running", attempts=3, lease_owner="dead",
         lease_expires_at=utcnow() - timedelta(seconds=1))
    assert run_job(job_id, settings=settings) == "skipped"
    job = _job(settings, job_id)
    assert job.status == "failed" and job.error["type"].endswith("/max-attempts")


def test_reaper_finds_lost_and_stale_jobs(settings, job_id):
    with session_scope(settings) as s:
        assert [j for j, _ in repo.jobs_to_requeue(s, requeue_after_s=60)] == [job_id]
    _set(settings, job_id, enqueued_at=utcnow())
    with session_scope(settings) as s:
        assert repo.jobs_to_requeue(s, requeue_after_s=60) == []
    _set(settings, job_id, status="running", lease_expires_at=utcnow() - timedelta(seconds=1))
    with session_scope(settings) as s:
        assert [j for j, _ in repo.jobs_to_requeue(s, requeue_after_s=60)] == [job_id]


def _insert_in_small_batches(monkeypatch, on_first_batch):
    """Make the saving stage write job_points 10 rows a batch, running ``on_first_batch()``
    once the first batch is written (inside the saving transaction)."""
    real = run_job_module.insert_columns
    done = []

    def insert(session, table, columns, *, on_batch=None, **kw):
        def hook(rows, total):
            if not done:
                done.append(on_first_batch())
            if on_batch is not None:
                on_batch(rows, total)
        return real(session, table, columns, batch=10, on_batch=hook)

    monkeypatch.setattr(run_job_module, "insert_columns", insert)
    return done


def test_saving_reports_progress_per_batch_of_rows(settings, job_id, monkeypatch):
    seen = []
    real = run_job_module.JobReporter.rows_saved

    def rows_saved(self, done, total):
        seen.append((done, total, self.stage))
        real(self, done, total)

    monkeypatch.setattr(run_job_module.JobReporter, "rows_saved", rows_saved)
    # what a client polling the job reads while the rows are written
    stage_read = _insert_in_small_batches(monkeypatch, lambda: _job(settings, job_id).stage)
    assert run_job(job_id, settings=settings) == "succeeded"
    assert seen == [(r, 60, "saving") for r in (10, 20, 30, 40, 50, 60)]
    assert stage_read == ["saving"]
    assert _n_points(settings, job_id) == 60


@pytest.mark.postgres
def test_cancel_while_saving_on_postgres(tmp_path, pg_database, monkeypatch):
    """The rows go in before the job's row is touched: a cancel sent while they are written is
    recorded at once (nothing waits on a lock) and abandons the save; no row is left."""
    from service_helpers import service_settings

    settings = service_settings(tmp_path / "data", database_url=pg_database,
                                progress_interval_s=0.05)
    job = _make_job(settings)
    waited = []

    def cancel_and_wait_for_it():
        t0 = time.monotonic()
        with session_scope(settings) as s:
            repo.request_cancel(s, job=s.get(Job, job))
        waited.append(time.monotonic() - t0)
        time.sleep(0.5)  # several heartbeats: the worker reads the flag meanwhile

    _insert_in_small_batches(monkeypatch, cancel_and_wait_for_it)
    assert run_job(job, settings=settings) == "canceled"
    assert waited and waited[0] < 2.0  # the cancel request did not wait for the save
    assert _job(settings, job).status == "canceled"
    assert _n_points(settings, job) == 0
