"""Repository functions (keyword-only) shared by the API, the worker and the CLI."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

from sqlalchemy import Select, and_, case, func, or_, select, update
from sqlalchemy.orm import Session

from app.db.models import (
    ApiKey,
    CurvePoint,
    DatasetRecord,
    Job,
    JobStatus,
    MethodPoint,
    PointResult,
)
from app.db.types import utcnow

KEY_PREFIX = "hcp"
LOCAL_PRINCIPAL = "local (auth disabled)"


# --- API keys ---------------------------------------------------------------------------------

def _hash_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_api_key(session: Session, *, name: str) -> tuple[ApiKey, str]:
    """A new key; the plaintext is returned once and never stored."""
    prefix = secrets.token_hex(6)
    token = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey(name=name, prefix=prefix, key_hash=_hash_key(token))
    session.add(key)
    session.flush()
    return key, token


def key_prefix(token: str) -> str | None:
    """The public part of a token that finds its row; None for a malformed token."""
    parts = token.split("_", 2)
    return parts[1] if len(parts) == 3 and parts[0] == KEY_PREFIX else None


def token_matches(key_hash: str, token: str) -> bool:
    # compare_digest: the hash comparison takes the same time whatever the mismatch
    return hmac.compare_digest(key_hash, _hash_key(token))


def authenticate(session: Session, *, token: str) -> ApiKey | None:
    prefix = key_prefix(token)
    if prefix is None:
        return None
    key = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if key is None or key.revoked_at is not None:
        _hash_key(token)  # same work on the miss path
        return None
    return key if token_matches(key.key_hash, token) else None


def local_principal(session: Session) -> ApiKey:
    """The single owner used when auth is explicitly disabled (embedded mode only)."""
    key = session.scalar(select(ApiKey).where(ApiKey.name == LOCAL_PRINCIPAL))
    if key is None:
        key, _ = create_api_key(session, name=LOCAL_PRINCIPAL)
    return key


# --- datasets ---------------------------------------------------------------------------------

def add_dataset(session: Session, *, owner_id: int, dataset, array_path: str, name: str,
                fmt: str = "npz", sha256: str = "0" * 64, content_key: str | None = None,
                size_bytes: int = 1, raw_path: str = "-", label_column: str | None = None,
                id_column: str | None = None) -> DatasetRecord:
    """Record a validated ``hostcp_core.Dataset`` whose arrays are stored at ``array_path``;
    shape, classes and counts come from the dataset itself. Added to the session, not committed.
    The defaults describe a dataset made in-process (no uploaded file)."""
    import numpy as np

    rec = DatasetRecord(
        id=str(uuid.uuid4()), owner_id=owner_id, name=name, format=fmt, sha256=sha256,
        content_key=content_key or uuid.uuid4().hex, label_column=label_column,
        id_column=id_column, size_bytes=size_bytes, raw_path=raw_path, array_path=array_path,
        n_rows=dataset.n, n_features=dataset.n_features, classes=list(dataset.classes),
        class_counts=np.bincount(dataset.y, minlength=dataset.n_classes).tolist(),
        feature_names=None if dataset.feature_names is None else list(dataset.feature_names))
    session.add(rec)
    return rec


def get_dataset(session: Session, *, owner_id: int, dataset_id: str) -> DatasetRecord | None:
    return session.scalar(select(DatasetRecord).where(DatasetRecord.id == dataset_id,
                                                      DatasetRecord.owner_id == owner_id))


def find_dataset_by_content(session: Session, *, owner_id: int,
                            content_key: str) -> DatasetRecord | None:
    return session.scalar(select(DatasetRecord).where(DatasetRecord.owner_id == owner_id,
                                                      DatasetRecord.content_key == content_key))


def list_datasets(session: Session, *, owner_id: int, after: tuple[datetime, str] | None,
                  limit: int) -> Sequence[DatasetRecord]:
    q = select(DatasetRecord).where(DatasetRecord.owner_id == owner_id)
    if after is not None:
        q = q.where(_before(DatasetRecord.created_at, DatasetRecord.id, after))
    q = q.order_by(DatasetRecord.created_at.desc(), DatasetRecord.id.desc()).limit(limit)
    return session.scalars(q).all()


def _before(ts_col, id_col, after: tuple[datetime, str]):
    # keyset pagination, newest first
    ts, ident = after
    return or_(ts_col < ts, and_(ts_col == ts, id_col < ident))


# --- jobs -------------------------------------------------------------------------------------

def create_job(session: Session, *, owner_id: int, train_dataset_id: str, test_dataset_id: str,
               method: str, params: dict, fraction: float, seed: int, queue: str,
               max_attempts: int, methods: list[str] | None = None,
               inject_flips: float | None = None, evaluation: str | None = None,
               flag_precision: float | None = None) -> Job:
    job = Job(id=str(uuid.uuid4()), owner_id=owner_id, train_dataset_id=train_dataset_id,
              test_dataset_id=test_dataset_id, method=method, params=params, fraction=fraction,
              seed=seed, methods=methods, inject_flips=inject_flips, evaluation=evaluation,
              flag_precision=flag_precision, queue=queue,
              status=JobStatus.QUEUED, progress=0.0,
              cancel_requested=False, attempts=0, max_attempts=max_attempts, stage="queued")
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, *, owner_id: int, job_id: str) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id, Job.owner_id == owner_id))


def list_jobs(session: Session, *, owner_id: int, after: tuple[datetime, str] | None, limit: int,
              status: str | None = None) -> Sequence[Job]:
    q = select(Job).where(Job.owner_id == owner_id)
    if status:
        q = q.where(Job.status == status)
    if after is not None:
        q = q.where(_before(Job.created_at, Job.id, after))
    return session.scalars(q.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)).all()


def mark_enqueued(session: Session, *, job_id: str) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))


def request_cancel(session: Session, *, job: Job) -> Job:
    """Set the cancel flag; a queued job is canceled at once, a running one by its worker."""
    now = utcnow()
    session.execute(update(Job).where(Job.id == job.id, Job.status.notin_(JobStatus.TERMINAL))
                    .values(cancel_requested=True, updated_at=now))
    session.execute(update(Job).where(Job.id == job.id, Job.status == JobStatus.QUEUED)
                    .values(status=JobStatus.CANCELED, stage="canceled", finished_at=now,
                            updated_at=now))
    session.refresh(job)
    return job


def runnable_job_ids(session: Session, *, queues: Sequence[str] | None = None,
                     limit: int = 1) -> list[str]:
    """Oldest queued jobs, then running jobs whose lease has expired (their worker died)."""
    now = utcnow()
    cond = or_(Job.status == JobStatus.QUEUED,
               and_(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now))
    q = select(Job.id).where(cond)
    if queues:
        q = q.where(Job.queue.in_(list(queues)))
    return list(session.scalars(q.order_by(Job.created_at).limit(limit)))


def jobs_to_requeue(session: Session, *, requeue_after_s: float) -> list[tuple[str, str]]:
    """(job id, queue) of jobs whose message may be lost: queued for long, or a stale lease."""
    now = utcnow()
    old = now - timedelta(seconds=requeue_after_s)
    cond = or_(and_(Job.status == JobStatus.QUEUED,
                    or_(Job.enqueued_at.is_(None), Job.enqueued_at < old)),
               and_(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now))
    return [(r.id, r.queue) for r in session.execute(select(Job.id, Job.queue).where(cond))]


def count_jobs_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
    return {s: int(n) for s, n in rows}


# --- results ----------------------------------------------------------------------------------

def list_points(session: Session, *, job_id: str, order: str, after: int | None, limit: int | None,
                selected_only: bool = False,
                suspected_only: bool = False) -> Sequence[PointResult]:
    """Per-point rows ordered by ``order``: "index" or "mislabel_rank"; ``after`` is the last
    key of the previous page."""
    col = PointResult.point_index if order == "index" else PointResult.mislabel_rank
    q = select(PointResult).where(PointResult.job_id == job_id)
    if selected_only:
        q = q.where(PointResult.selected.is_(True))
    if suspected_only:
        q = q.where(PointResult.suspected_mislabel.is_(True))
    if after is not None:
        q = q.where(col > after)
    q = q.order_by(col)
    if limit is not None:
        q = q.limit(limit)
    return session.scalars(q).all()


def list_curves(session: Session, *, job_id: str, after: tuple[str, int] | None,
                limit: int | None) -> Sequence[CurvePoint]:
    q = select(CurvePoint).where(CurvePoint.job_id == job_id)
    if after is not None:
        curve, step = after
        q = q.where(or_(CurvePoint.curve > curve,
                        and_(CurvePoint.curve == curve, CurvePoint.step > step)))
    q = q.order_by(CurvePoint.curve, CurvePoint.step)
    if limit is not None:
        q = q.limit(limit)
    return session.scalars(q).all()


def list_method_points(session: Session, *, job_id: str, method: str, after: int | None,
                       limit: int | None, selected_only: bool = False) -> Sequence:
    """One compared method's per-point rows of a comparison job, in row order, with the point's
    id and label from ``job_points``; rows carry the attribute names of a ``PointResult``
    (point_index, point_id, score, rank, selected, given_label)."""
    q = method_points_query(job_id=job_id, method=method, selected_only=selected_only,
                            ordered=False)
    if after is not None:
        q = q.where(MethodPoint.point_index > after)
    q = q.order_by(MethodPoint.point_index)
    if limit is not None:
        q = q.limit(limit)
    return session.execute(q).all()


# --- result rows for downloads ----------------------------------------------------------------
# Plain column rows, no ORM objects. A JSON page is one keyset query (``key > last key ORDER BY
# key LIMIT n``); a file is one query read in batches through a server-side cursor, so its cost
# does not depend on the planner's statistics (a keyset batch on a freshly filled Postgres
# table, before ANALYZE, re-scans every later row: O(n²) over a file).

_POINT_COLUMNS = (PointResult.point_index, PointResult.point_id, PointResult.score,
                  PointResult.rank, PointResult.selected, PointResult.given_label,
                  PointResult.suggested_label, PointResult.suggested_prob,
                  PointResult.label_error_prob, PointResult.mislabel_score,
                  PointResult.mislabel_rank, PointResult.suspected_mislabel)


def point_rows_query(*, job_id: str, order: str, selected_only: bool = False,
                     suspected_only: bool = False) -> Select:
    """``job_points`` as column rows ordered by ``order`` ("index" or "mislabel_rank"), with
    ``list_points``'s filters. Column order (callers unpack by position): point_index,
    point_id, score, rank, selected, given_label, suggested_label, suggested_prob,
    label_error_prob, mislabel_score, mislabel_rank, suspected_mislabel."""
    col = PointResult.point_index if order == "index" else PointResult.mislabel_rank
    q = select(*_POINT_COLUMNS).where(PointResult.job_id == job_id)
    if selected_only:
        q = q.where(PointResult.selected.is_(True))
    if suspected_only:
        q = q.where(PointResult.suspected_mislabel.is_(True))
    return q.order_by(col)


def point_rows(session: Session, *, job_id: str, order: str, after: int | None, limit: int,
               selected_only: bool = False, suspected_only: bool = False) -> Sequence:
    """One keyset page of ``point_rows_query``: the rows after key ``after``."""
    col = PointResult.point_index if order == "index" else PointResult.mislabel_rank
    q = point_rows_query(job_id=job_id, order=order, selected_only=selected_only,
                         suspected_only=suspected_only)
    if after is not None:
        q = q.where(col > after)
    # Core execution: plain rows without the ORM's per-row result processing
    return session.connection().execute(q.limit(limit)).all()


def method_points_query(*, job_id: str, method: str, selected_only: bool = False,
                        ordered: bool = True) -> Select:
    """One compared method's rows as ``list_method_points`` returns them (point_index,
    point_id, score, rank, selected, given_label), in row order."""
    q = (select(MethodPoint.point_index, PointResult.point_id, MethodPoint.score,
                MethodPoint.rank, MethodPoint.selected, PointResult.given_label)
         .join(PointResult, and_(PointResult.job_id == MethodPoint.job_id,
                                 PointResult.point_index == MethodPoint.point_index))
         .where(MethodPoint.job_id == job_id, MethodPoint.method == method))
    if selected_only:
        q = q.where(MethodPoint.selected.is_(True))
    return q.order_by(MethodPoint.point_index) if ordered else q


def curve_rows_query(*, job_id: str) -> Select:
    """``job_curves`` as column rows (curve, step, fraction, n_points, value), in
    ``list_curves``'s order."""
    return (select(CurvePoint.curve, CurvePoint.step, CurvePoint.fraction, CurvePoint.n_points,
                   CurvePoint.value).where(CurvePoint.job_id == job_id)
            .order_by(CurvePoint.curve, CurvePoint.step))


def curve_rows(session: Session, *, job_id: str, after: tuple[str, int] | None,
               limit: int) -> Sequence:
    """One keyset page of ``curve_rows_query``: the rows after (curve, step) ``after``."""
    q = curve_rows_query(job_id=job_id)
    if after is not None:
        curve, step = after
        q = q.where(or_(CurvePoint.curve > curve,
                        and_(CurvePoint.curve == curve, CurvePoint.step > step)))
    return session.connection().execute(q.limit(limit)).all()


def iter_rows(session: Session, statement: Select, *, batch: int) -> Iterator[Sequence]:
    """The rows of ``statement`` in lists of at most ``batch``, read through a server-side
    cursor (Postgres; SQLite's cursor steps through the result as it is read): one query, and
    at most about one batch in memory at a time."""
    conn = session.connection().execution_options(stream_results=True, max_row_buffer=batch)
    yield from conn.execute(statement).partitions(batch)


def class_counts(session: Session, *, job_id: str, top_k: int) -> dict[str, dict[str, int]]:
    """Per given label: how many points the job has, how many it selected and how many rank in
    its top ``top_k`` by value (aggregated in the database: a plot of a million-point job reads
    a few rows)."""
    label = PointResult.given_label
    top = case((PointResult.rank <= top_k, 1), else_=0)
    sel = case((PointResult.selected.is_(True), 1), else_=0)
    rows = session.execute(select(label, func.count(), func.sum(sel), func.sum(top))
                           .where(PointResult.job_id == job_id).group_by(label)).all()
    return {"all": {r[0]: int(r[1]) for r in rows}, "selected": {r[0]: int(r[2]) for r in rows},
            "top": {r[0]: int(r[3]) for r in rows}}


def mislabel_profile(session: Session, *, job_id: str, max_points: int = 5000) -> tuple[
        list[tuple[int, float | None, bool]], int]:
    """(rank, score, suspected) for at most about ``max_points`` points evenly spread over the
    mislabel ranks (every point when there are fewer), and the number of suspects."""
    n, suspects = session.execute(
        select(func.count(), func.sum(case((PointResult.suspected_mislabel.is_(True), 1),
                                           else_=0)))
        .where(PointResult.job_id == job_id)).one()
    step = max(1, -(-int(n) // max_points))
    q = (select(PointResult.mislabel_rank, PointResult.mislabel_score,
                PointResult.suspected_mislabel)
         .where(PointResult.job_id == job_id, (PointResult.mislabel_rank - 1) % step == 0)
         .order_by(PointResult.mislabel_rank))
    return [tuple(r) for r in session.execute(q).all()], int(suspects or 0)


def point_indices_by_mislabel_rank(session: Session, *, job_id: str) -> list[int]:
    """The job's point indices, most suspect first (one column, no ORM objects)."""
    return list(session.scalars(select(PointResult.point_index)
                                .where(PointResult.job_id == job_id)
                                .order_by(PointResult.mislabel_rank)))
