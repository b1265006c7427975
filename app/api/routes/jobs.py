"""/v1/jobs: submit (202 + Location), read the status monitor, list, cancel."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from app.api.deps import PrincipalDep, SessionDep, SettingsDep
from app.api.idempotency import Idempotency, check_key
from app.api.pagination import clamp_page_size, decode_token, encode_token
from app.api.schemas import JobCreate, JobPublic, JobsPage
from app.core import problems
from app.core.problems import Problem
from app.db import repo
from app.db.models import DatasetRecord, Job, JobStatus
from app.jobs import dispatch
from app.jobs.methods import COMPARE, check_valuer, check_valuers
from hostcp_core import METHODS, check_feasible
from hostcp_core.catalogue import max_train
from hostcp_core.evaluation.depth import DEFAULT_DEPTH

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

RETRY_AFTER_S = "2"


def job_public(job: Job) -> JobPublic:
    out = JobPublic.model_validate(job)
    base = f"/v1/jobs/{job.id}"
    out.links = {"self": base, "cancel": f"{base}/cancel"}
    if job.status == JobStatus.SUCCEEDED:
        out.links.update({k: f"{base}/{k}" for k in ("subset", "values", "mislabels", "curves")})
        out.links["plots"] = f"{base}/plots/curves.png"  # also classes, mislabels; .svg
        if job.method == "hostcp":
            out.links["selector"] = f"/v1/selectors/{job.id}/select"
    return out


def owned_job(session: Session, principal_id: int, job_id: str) -> Job:
    job = repo.get_job(session, owner_id=principal_id, job_id=job_id)
    if job is None:  # also for another key's job: its existence is not disclosed
        raise Problem(problems.NOT_FOUND, f"no job {job_id}")
    return job


def _check_data(train: DatasetRecord, test: DatasetRecord) -> None:
    """The checks of ``hostcp_core.validate_train`` and ``check_compatible``, read from the
    datasets' records (their arrays were validated at upload): a submit never loads a
    dataset, whatever its size."""
    present = [c for c, k in zip(train.classes, train.class_counts, strict=True) if k > 0]
    if train.n_rows < 2:
        raise Problem(problems.INVALID_DATA, f"{train.name}: needs at least 2 rows, has "
                      f"{train.n_rows}")
    if len(present) < 2:
        raise Problem(problems.INVALID_DATA, f"{train.name}: a single class ({present[0]!r}); "
                      "valuation needs at least two")
    if test.n_features != train.n_features:
        raise Problem(problems.INVALID_DATA, f"{test.name}: {test.n_features} features, but "
                      f"the training set {train.name} has {train.n_features}")
    if train.feature_names and test.feature_names and train.feature_names != test.feature_names:
        diff = [f for f in test.feature_names if f not in set(train.feature_names)][:3]
        raise Problem(problems.INVALID_DATA, f"{test.name}: feature columns differ from the "
                      f"training set's (e.g. {', '.join(map(repr, diff)) or 'their order'})")
    unknown = [c for c in test.classes if c not in set(train.classes)]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5])
        raise Problem(problems.INVALID_DATA, f"{test.name}: labels not seen in the training "
                      f"set: {shown}")


def _validate(body: JobCreate, train_rec: DatasetRecord, test_rec: DatasetRecord) -> None:
    """Refuse a job that could only fail: unusable data, unknown method or parameter, or a
    training set larger than a method accepts (422 naming the limit and the methods that fit)."""
    _check_data(train_rec, test_rec)
    for method in body.methods if body.method == COMPARE else [body.method]:
        try:
            check_feasible(method, train_rec.n_rows, test_rec.n_rows)
        except ValueError as exc:
            if method not in METHODS:  # unknown: build_valuer below says so in its words
                break
            raise Problem(problems.TOO_LARGE_FOR_METHOD, str(exc), method=method,
                          max_train=max_train(method), n_train=train_rec.n_rows) from None
    try:
        if body.method == COMPARE:
            check_valuers(body.methods, fraction=body.fraction, seed=body.seed,
                          params=body.params)
        else:
            check_valuer(body.method, fraction=body.fraction, seed=body.seed, params=body.params)
    except ValueError as exc:
        raise Problem(problems.INVALID_PARAMETERS, str(exc)) from None
    n = train_rec.n_rows
    if body.inject_flips is not None and round(body.inject_flips * n) < 1:
        raise Problem(problems.INVALID_PARAMETERS, f"inject_flips={body.inject_flips} flips no "
                      f"label of {n} training points; ask for at least {1 / n:.3g}")


def _device(body: JobCreate) -> str | None:
    """The device that picks the queue; a comparison goes to the GPU queue when any of its
    methods asks for CUDA."""
    if body.method != COMPARE:
        return body.params.get("device")
    wanted = {p.get("device") for p in body.params.values()}
    return "cuda" if "cuda" in wanted else None


@router.post("", status_code=202, response_model=JobPublic)
def create_job(body: JobCreate, request: Request, session: SessionDep, settings: SettingsDep,
               principal: PrincipalDep,
               idempotency_key: Annotated[str | None, Header()] = None):
    """Queue a valuation job. The answer is a status monitor; poll its Location."""
    # exclude_none: a body without the comparison fields keeps the fingerprint it had before
    # they existed, so stored Idempotency-Keys still match
    fingerprint = hashlib.sha256(json.dumps(body.model_dump(mode="json", exclude_none=True),
                                            sort_keys=True).encode()).hexdigest()
    idem = Idempotency(request.app.state.sessionmaker, owner_id=principal.id,
                       key=check_key(idempotency_key), ttl_s=settings.idempotency_ttl_s)
    replay = idem.begin(fingerprint)
    if replay is not None:
        return replay
    try:
        recs = {}
        for field in ("train_dataset_id", "test_dataset_id"):
            ident = getattr(body, field)
            recs[field] = repo.get_dataset(session, owner_id=principal.id, dataset_id=ident)
            if recs[field] is None:
                raise Problem(problems.UNKNOWN_DATASET, f"{field}: no dataset {ident}")
        _validate(body, recs["train_dataset_id"], recs["test_dataset_id"])
        job = repo.create_job(session, owner_id=principal.id,
                              train_dataset_id=body.train_dataset_id,
                              test_dataset_id=body.test_dataset_id, method=body.method,
                              params=body.params, fraction=body.fraction, seed=body.seed,
                              methods=body.methods, inject_flips=body.inject_flips,
                              evaluation=body.evaluation or DEFAULT_DEPTH,
                              flag_precision=body.flag_precision,
                              queue=settings.queue_for(_device(body)),
                              max_attempts=settings.max_attempts)
        session.commit()  # the row exists before any worker can hear of it
        if dispatch.enqueue(job.id, job.queue):
            repo.mark_enqueued(session, job_id=job.id)
            session.commit()
        session.refresh(job)
        out = job_public(job).model_dump(mode="json")
        headers = {"Location": f"/v1/jobs/{job.id}", "Retry-After": RETRY_AFTER_S}
        idem.complete(202, out, headers)
        return JSONResponse(out, status_code=202, headers=headers)
    except BaseException:
        idem.abandon()
        raise


@router.get("", response_model=JobsPage)
def list_jobs(session: SessionDep, settings: SettingsDep, principal: PrincipalDep,
              status: Annotated[str | None, Query(description="filter by status")] = None,
              page_size: Annotated[int | None, Query()] = None,
              page_token: Annotated[str | None, Query()] = None) -> JobsPage:
    if status is not None and status not in JobStatus.ALL:
        raise Problem(problems.INVALID_REQUEST, f"status must be one of {', '.join(JobStatus.ALL)}")
    size = clamp_page_size(page_size, settings.page_size_default, settings.page_size_max)
    scope = f"jobs:{principal.id}:{status or ''}"
    after = None
    if page_token:
        ts, ident = decode_token(settings.secret_key, scope, page_token)
        after = (datetime.fromisoformat(ts), ident)
    rows = repo.list_jobs(session, owner_id=principal.id, after=after, limit=size + 1,
                          status=status)
    token = None
    if len(rows) > size:
        rows = rows[:size]
        token = encode_token(settings.secret_key, scope,
                             [rows[-1].created_at.isoformat(), rows[-1].id])
    return JobsPage(items=[job_public(j) for j in rows], next_page_token=token)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, session: SessionDep, principal: PrincipalDep):
    job = owned_job(session, principal.id, job_id)
    body = job_public(job).model_dump(mode="json")
    headers = {} if job.status in JobStatus.TERMINAL else {"Retry-After": RETRY_AFTER_S}
    return JSONResponse(body, headers=headers)


@router.post("/{job_id}/cancel", status_code=202, response_model=JobPublic)
def cancel_job(job_id: str, session: SessionDep, principal: PrincipalDep) -> JobPublic:
    """Queued jobs are canceled at once; running ones stop at their next progress event."""
    job = owned_job(session, principal.id, job_id)
    if job.status in JobStatus.TERMINAL:
        raise Problem(problems.JOB_FINISHED, f"job {job_id} is already {job.status}")
    job = repo.request_cancel(session, job=job)
    session.commit()
    return job_public(job)
