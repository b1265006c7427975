"""Tables. Alembic (``migrations/``) is the only authority over the schema; keep both in step.

Per-point results and curves are plain rows so that a dashboard can query them with SQL, e.g.
``SELECT point_index, score FROM job_points WHERE job_id = ? AND selected``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.db.types import UTCDateTime, utcnow

# Named constraints make migrations reproducible (and batch mode on SQLite possible).
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class JobStatus:
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    TIMED_OUT = "timed_out"
    TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELED, TIMED_OUT})
    ALL = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED, TIMED_OUT)


class ApiKey(Base):
    """An API key: only its sha256 is stored; ``prefix`` (public) finds the row to compare."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DatasetRecord(Base):
    """An uploaded file: the original bytes and a canonical .npz sit in the storage directory."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("owner_id", "content_key"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"),
                                          index=True)
    name: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64))
    # sha256 of the bytes plus the parsing options: one dataset per (owner, content_key)
    content_key: Mapped[str] = mapped_column(String(64))
    label_column: Mapped[str | None] = mapped_column(String(255))
    id_column: Mapped[str | None] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(Integer)
    raw_path: Mapped[str] = mapped_column(String(500))
    array_path: Mapped[str] = mapped_column(String(500))
    n_rows: Mapped[int] = mapped_column(Integer)
    n_features: Mapped[int] = mapped_column(Integer)
    classes: Mapped[list] = mapped_column(JSON)
    class_counts: Mapped[list] = mapped_column(JSON)
    feature_names: Mapped[list | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Job(Base):
    """A valuation job. This row, not the broker, is the record of truth for its state."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_owner_created", "owner_id", "created_at"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    train_dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"))
    test_dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"))
    method: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    fraction: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    # comparison jobs (method "compare") only: the methods run, and the share of training labels
    # the job flips before valuing (None: none flipped)
    methods: Mapped[list | None] = mapped_column(JSON)
    inject_flips: Mapped[float | None] = mapped_column(Float)
    # how deeply the job evaluates its subset ("quick", "full", "none"; None: before the option
    # existed, evaluated in full), and the mislabel report's precision target (None: default)
    evaluation: Mapped[str | None] = mapped_column(String(8))
    flag_precision: Mapped[float | None] = mapped_column(Float)
    queue: Mapped[str] = mapped_column(String(64))

    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    stage: Mapped[str | None] = mapped_column(String(64))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[dict | None] = mapped_column(JSON)  # a problem+json object
    timings: Mapped[dict | None] = mapped_column(JSON)
    summary: Mapped[dict | None] = mapped_column(JSON)
    # the mislabel report's estimate of how many training labels are wrong (sum of the
    # calibrated per-point probabilities); a column so that reporting views need no JSON
    expected_label_errors: Mapped[float | None] = mapped_column(Float)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class PointResult(Base):
    """One training point's result in one job (value, subset membership, mislabel verdict)."""

    __tablename__ = "job_points"
    __table_args__ = (Index("ix_job_points_mislabel_rank", "job_id", "mislabel_rank"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"),
                                        primary_key=True)
    point_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    point_id: Mapped[str | None] = mapped_column(String(255))
    score: Mapped[float] = mapped_column(Float)
    rank: Mapped[int] = mapped_column(Integer)  # 1 = most valuable
    selected: Mapped[bool] = mapped_column(Boolean)
    given_label: Mapped[str] = mapped_column(String(255))
    suggested_label: Mapped[str | None] = mapped_column(String(255))
    suggested_prob: Mapped[float | None] = mapped_column(Float)  # P(suggested label)
    label_error_prob: Mapped[float | None] = mapped_column(Float)  # P(given label is wrong)
    mislabel_score: Mapped[float | None] = mapped_column(Float)
    mislabel_rank: Mapped[int | None] = mapped_column(Integer)  # 1 = most suspicious
    suspected_mislabel: Mapped[bool] = mapped_column(Boolean, default=False)


class CurvePoint(Base):
    """One point of an accuracy curve (e.g. ``addition``: train on the top fraction by value)."""

    __tablename__ = "job_curves"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"),
                                        primary_key=True)
    curve: Mapped[str] = mapped_column(String(64), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    fraction: Mapped[float] = mapped_column(Float)
    n_points: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)


class MethodPoint(Base):
    """One training point's value under one method of a comparison job (``job_points`` holds
    the first method's values, with its mislabel report)."""

    __tablename__ = "job_method_points"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"),
                                        primary_key=True)
    method: Mapped[str] = mapped_column(String(64), primary_key=True)
    point_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    score: Mapped[float] = mapped_column(Float)
    rank: Mapped[int] = mapped_column(Integer)  # 1 = most valuable
    selected: Mapped[bool] = mapped_column(Boolean)


class IdempotencyRecord(Base):
    """A creating POST's ``Idempotency-Key``: the stored response is replayed on a retry."""

    __tablename__ = "idempotency_keys"

    owner_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"),
                                          primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer)  # None while in flight
    response: Mapped[dict | None] = mapped_column(JSON)
    headers: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DashboardGrant(Base):
    """A database role allowed to read one API key's rows through the reporting views
    (``app/db/reporting.py``); Postgres only — SQLite has no roles."""

    __tablename__ = "dashboard_grants"

    role_name: Mapped[str] = mapped_column(String(63), primary_key=True)  # NAMEDATALEN - 1
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"),
                                        primary_key=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
