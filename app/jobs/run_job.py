"""``run_job(job_id)``: claim a job, value its data with hostcp_core, persist the results.

Safe under at-least-once delivery: the claim is one conditional UPDATE (queued, or running with
an expired lease), so two deliveries never run a job at once; results are replaced inside the
same transaction that marks the job succeeded, and only while this worker still holds the lease,
so running a job twice leaves one set of rows.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

import numpy as np
from sqlalchemy import delete, insert, update
from sqlalchemy.exc import DBAPIError, OperationalError

from app.core import problems
from app.core.config import Settings, get_settings
from app.db.bulk import insert_columns
from app.db.models import CurvePoint, DatasetRecord, Job, JobStatus, MethodPoint, PointResult
from app.db.session import session_scope
from app.db.types import utcnow
from app.jobs.comparison import run_comparison
from app.jobs.data import jsonable, load_job_data
from app.jobs.methods import COMPARE, build_valuer
from app.jobs.online_state import save_selector
from app.jobs.progress import Interrupted, JobReporter
from app.jobs.shapley_chunks import drop_if_finished, run_job_chunks

log = logging.getLogger(__name__)

PERSIST_RETRY_S = 60.0  # how long finished results wait for an unreachable database
SKIPPED = "skipped"  # not claimable: finished, canceled, or leased by another live worker


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def run_job(job_id: str, *, settings: Settings | None = None, worker_id: str | None = None,
            should_stop: Callable[[], bool] | None = None) -> str:
    """Run one job to a terminal state (or back to queued); returns its resulting status, or
    ``"skipped"`` when there was nothing to do."""
    settings = settings or get_settings()
    try:
        return _run_job(job_id, settings, worker_id or worker_identity(), should_stop)
    finally:
        # a TMC-Shapley job's chunk files live until it is terminal, whoever ended it (this run,
        # or _claim closing out a job with no attempts left); a retry keeps and reuses them
        drop_if_finished(settings, job_id)


def _run_job(job_id: str, settings: Settings, worker_id: str,
             should_stop: Callable[[], bool] | None) -> str:
    if not _claim(job_id, worker_id, settings):
        return SKIPPED
    reporter = JobReporter(job_id=job_id, worker_id=worker_id, settings=settings,
                           should_stop=should_stop)
    from hostcp_core import Cancelled, DataError

    t0 = time.perf_counter()
    try:
        with reporter:
            outcome = _execute(job_id, settings, reporter)
            reporter.phase("saving")
            reporter.beat_now()  # clients see "saving" (and a cancel is read) before the write
            reporter.check()
            return _persist_retrying(job_id, worker_id, settings, outcome,
                                     time.perf_counter() - t0, on_rows=reporter.rows_saved)
    except Cancelled as exc:
        if reporter.lease_lost:
            return SKIPPED
        return _finish(job_id, worker_id, settings, JobStatus.CANCELED,
                       problems.problem_dict(problems.JOB_CANCELED, str(exc)))
    except Interrupted:
        return _release(job_id, worker_id, settings)
    except DataError as exc:
        return _finish(job_id, worker_id, settings, JobStatus.FAILED,
                       problems.problem_dict(problems.INVALID_DATA, str(exc)))
    except Exception as exc:
        if type(exc).__name__ == "SoftTimeLimitExceeded":  # Celery's, without importing it
            return _finish(job_id, worker_id, settings, JobStatus.TIMED_OUT,
                           problems.problem_dict(problems.JOB_TIMED_OUT,
                                                 f"soft limit {settings.soft_time_limit_s} s"))
        if isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError)
                                                 and exc.connection_invalidated):
            log.warning("job %s: lost the database connection; releasing it", job_id)
            try:
                return _release(job_id, worker_id, settings)
            except DBAPIError:  # still down: the lease expires and the job is claimed again
                return SKIPPED
        log.exception("job %s failed", job_id)  # the traceback stays in the worker's log
        detail = f"{type(exc).__name__}: {exc}"[:1000]
        return _finish(job_id, worker_id, settings, JobStatus.FAILED,
                       problems.problem_dict(problems.JOB_FAILED, detail))


def _claim(job_id: str, worker_id: str, settings: Settings) -> bool:
    now = utcnow()
    claimable = ((Job.status == JobStatus.QUEUED)
                 | ((Job.status == JobStatus.RUNNING) & (Job.lease_expires_at < now)))
    with session_scope(settings) as s:
        res = s.execute(
            update(Job)
            .where(Job.id == job_id, claimable, Job.cancel_requested.is_(False),
                   Job.attempts < Job.max_attempts)
            .values(status=JobStatus.RUNNING, lease_owner=worker_id, heartbeat_at=now,
                    lease_expires_at=now + timedelta(seconds=settings.lease_s),
                    attempts=Job.attempts + 1, stage="loading", progress=0.0, error=None,
                    updated_at=now))
        if res.rowcount == 1:
            s.execute(update(Job).where(Job.id == job_id, Job.started_at.is_(None))
                      .values(started_at=now))
            return True
        # Not claimable: close out jobs that can never run (canceled while stale, no attempts
        # left) so they do not stay non-terminal forever.
        job = s.get(Job, job_id)
        if job is None or job.status in JobStatus.TERMINAL:
            return False
        stale = job.status == JobStatus.QUEUED or (job.lease_expires_at is not None
                                                   and job.lease_expires_at < now)
        if not stale:
            return False
        if job.cancel_requested:
            _set_final(s, job, JobStatus.CANCELED,
                       problems.problem_dict(problems.JOB_CANCELED, "cancel requested"))
        elif job.attempts >= job.max_attempts:
            _set_final(s, job, JobStatus.FAILED, problems.problem_dict(
                problems.MAX_ATTEMPTS, f"gave up after {job.attempts} attempt(s); the worker "
                "died or lost its lease each time"))
        return False


def _set_final(s, job: Job, status: str, error: dict | None) -> None:
    now = utcnow()
    job.status, job.error, job.stage = status, error, status
    job.finished_at, job.updated_at, job.lease_owner = now, now, None


class _Outcome:
    def __init__(self, **kw) -> None:
        self.__dict__.update(kw)


def _execute(job_id: str, settings: Settings, reporter: JobReporter) -> _Outcome:
    from hostcp_core import DataError, split_test
    from hostcp_core.evaluation import mislabel_report
    from hostcp_core.evaluation.depth import evaluate_subset

    reporter.phase("loading")
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        train_rec = s.get(DatasetRecord, job.train_dataset_id)
        test_rec = s.get(DatasetRecord, job.test_dataset_id)
        method, params = job.method, dict(job.params or {})
        fraction, seed = job.fraction, job.seed
        methods, inject_flips = job.methods, job.inject_flips
        # jobs from before the option existed were evaluated in full
        depth = job.evaluation or "full"
        flag_precision = job.flag_precision
        on_gpu = job.queue == settings.queue_gpu
    timings: dict[str, float] = {}
    t = time.perf_counter()
    train, test = load_job_data(settings, train_rec, test_rec)
    # Part of the test set drives valuation; a disjoint held-out part draws the curves, so the
    # curves do not measure subsets on the data that chose them.
    try:
        valuation_part, holdout = split_test(test, settings.holdout_fraction, seed=seed)
        holdout_note = "held-out part of the test set"
    except DataError:
        valuation_part, holdout = test, test
        holdout_note = "whole test set (too small to hold a part out)"
    timings["load_s"] = time.perf_counter() - t
    summary = {"n_train": train.n, "n_test": test.n, "n_valuation": valuation_part.n,
               "n_holdout": holdout.n, "curves_on": holdout_note}
    device = params.get("device", "cpu") if params.get("device") in ("cpu", "cuda") else "cpu"

    if method == COMPARE:  # several methods on the same data: app/jobs/comparison.py
        out = run_comparison(job_id, settings, reporter, train=train, valuation=valuation_part,
                             holdout=holdout, methods=methods, params=params, fraction=fraction,
                             seed=seed, inject_flips=inject_flips,
                             device="cuda" if on_gpu else "cpu", flag_precision=flag_precision,
                             depth=depth)
        return _Outcome(**{**out, "timings": {**timings, **out["timings"]},
                           "summary": {**summary, **out["summary"]}})

    reporter.phase("valuing")
    t = time.perf_counter()
    valuer = build_valuer(method, fraction=fraction, seed=seed, params=params)
    if method == "tmc_shapley":  # permutation chunks spread over workers
        result = run_job_chunks(job_id, settings, valuer, train, valuation_part,
                                reporter.callback)
    else:
        result = valuer.fit(train, valuation_part, progress=reporter.callback)
    timings["valuation_s"] = time.perf_counter() - t
    if method == "hostcp":  # keep what POST /v1/selectors/{job_id}/select needs
        save_selector(settings, job_id, valuer, train, result.selected)

    reporter.phase("mislabels")
    t = time.perf_counter()
    report = mislabel_report(train, result.values, seed=seed, flag_precision=flag_precision,
                             progress=reporter.callback)
    timings["mislabels_s"] = time.perf_counter() - t

    reporter.phase("curves")
    t = time.perf_counter()
    order = result.ranking()
    evaluation = evaluate_subset(
        train, holdout, order, result.selected, depth=depth,
        fractions=[f for f in settings.curve_fractions if 0 < f <= 1], seed=seed,
        device=device, epochs=settings.curve_epochs,  # quick: the most a fit may run
        progress=reporter.callback)
    timings["curves_s"] = time.perf_counter() - t

    summary.update({"n_selected": int(len(result.selected)),
                    "n_suspected": int(report["suspected"].sum()),
                    "mislabels": jsonable(report.attrs),
                    "evaluation": jsonable({**evaluation.sampling,
                                            "subset": evaluation.subset,
                                            "random_subset": evaluation.random_subset}),
                    "method_params": jsonable(result.params), "extra": jsonable(result.extra),
                    "method_timings": jsonable(result.timings)})
    return _Outcome(train=train, result=result, order=order, report=report,
                    # the random subset's accuracy is in the summary, not a curve of its own
                    curves=[c for c in evaluation.curve_points() if c["curve"] != "random_subset"],
                    timings=timings, summary=summary,
                    method_points=[])


def _point_columns(job_id: str, outcome: _Outcome) -> dict[str, np.ndarray | list]:
    """``job_points`` column-wise, in point order (no object per row: a million rows cost a
    few arrays)."""
    from hostcp_core.evaluation import positions

    train, result = outcome.train, outcome.result
    n = train.n
    report = outcome.report.sort_values("index", kind="stable")
    if not np.array_equal(report["index"].to_numpy(), np.arange(n)):
        raise ValueError("the mislabel report does not hold every training point once")

    def floats(name: str) -> np.ndarray | list:
        if name not in report:  # a report without the column: NULLs
            return [None] * n
        return report[name].to_numpy(dtype=np.float64)

    return {
        "job_id": [job_id] * n,
        "point_index": np.arange(n),
        "point_id": [None] * n if train.ids is None else [str(i) for i in train.ids],
        "score": np.asarray(result.values, dtype=np.float64),
        "rank": positions(outcome.order),
        "selected": result.selected_mask,
        "given_label": train.label_names().astype(str).tolist(),
        "suggested_label": report["suggested_label"].astype(str).tolist(),
        "suggested_prob": floats("suggested_prob"),
        "label_error_prob": floats("label_error_prob"),
        "mislabel_score": floats("score"),
        "mislabel_rank": report["rank"].to_numpy(dtype=np.int64),
        "suspected_mislabel": report["suspected"].to_numpy(dtype=bool),
    }


def _persist(job_id: str, worker_id: str, settings: Settings, outcome: _Outcome,
             total_s: float, on_rows: Callable[[int, int], None] | None = None) -> str:
    """All results and the final state in ONE transaction, only while we hold the lease.

    The rows go in first and the job's row is updated last, so the job's row is not locked
    while a million rows are written: a cancel (or a heartbeat) gets through meanwhile, and
    ``on_rows`` (called per batch) can abandon the save when it sees one. On SQLite the file's
    write lock is held throughout, so there a cancel waits for the save and finds the job
    finished."""
    points = _point_columns(job_id, outcome)
    expected_errors = outcome.report.attrs.get("expected_errors")
    with session_scope(settings) as s:
        # replace, never append: a rerun leaves exactly one set of rows
        s.execute(delete(PointResult).where(PointResult.job_id == job_id))
        s.execute(delete(CurvePoint).where(CurvePoint.job_id == job_id))
        s.execute(delete(MethodPoint).where(MethodPoint.job_id == job_id))
        insert_columns(s, PointResult.__table__, points, on_batch=on_rows)
        if outcome.curves:
            s.execute(insert(CurvePoint), [{"job_id": job_id, **c} for c in outcome.curves])
        if outcome.method_points:  # comparison jobs: every method's values
            s.execute(insert(MethodPoint), outcome.method_points)
        now = utcnow()
        res = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == worker_id,
                   Job.status == JobStatus.RUNNING, Job.cancel_requested.is_(False))
            .values(status=JobStatus.SUCCEEDED, stage="done", progress=1.0, finished_at=now,
                    updated_at=now, lease_owner=None, error=None,
                    timings={**outcome.timings, "total_s": total_s}, summary=outcome.summary,
                    expected_label_errors=None if expected_errors is None
                    else float(expected_errors)))
        if res.rowcount != 1:
            s.rollback()
            job = s.get(Job, job_id)
            if job is not None and job.cancel_requested and job.lease_owner == worker_id:
                _set_final(s, job, JobStatus.CANCELED,
                           problems.problem_dict(problems.JOB_CANCELED, "cancel requested"))
                return JobStatus.CANCELED
            return SKIPPED  # lease lost: the other run owns the job now
    return JobStatus.SUCCEEDED


def _persist_retrying(job_id: str, worker_id: str, settings: Settings, outcome: _Outcome,
                      total_s: float, on_rows: Callable[[int, int], None] | None = None) -> str:
    """``_persist``, retried while the database is unreachable (a restart, a failover), so that
    a finished computation is not thrown away. Bounded; safe because the write only happens
    while this worker still holds the lease."""
    delay, deadline = 0.25, time.monotonic() + PERSIST_RETRY_S
    while True:
        try:
            return _persist(job_id, worker_id, settings, outcome, total_s, on_rows)
        except OperationalError:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("job %s: database unavailable while saving; retrying in %.2f s",
                        job_id, delay)
            time.sleep(delay)
            delay = min(2 * delay, 5.0)


def _finish(job_id: str, worker_id: str, settings: Settings, status: str, error: dict) -> str:
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        if job is None or job.lease_owner != worker_id or job.status != JobStatus.RUNNING:
            return SKIPPED
        _set_final(s, job, status, error)
    return status


def _release(job_id: str, worker_id: str, settings: Settings) -> str:
    """Give the job back to the queue without counting this attempt."""
    with session_scope(settings) as s:
        s.execute(update(Job).where(Job.id == job_id, Job.lease_owner == worker_id,
                                    Job.status == JobStatus.RUNNING)
                  .values(status=JobStatus.QUEUED, lease_owner=None, lease_expires_at=None,
                          attempts=Job.attempts - 1, stage="queued", updated_at=utcnow()))
    return JobStatus.QUEUED
