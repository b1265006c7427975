"""One Settings object for the API, the worker and the CLI (environment prefix ``HOSTCP_``).

With no configuration at all the service runs embedded: a SQLite file and an in-process runner
(a spawned process) under ``~/.hostcp``. Setting ``HOSTCP_DATABASE_URL`` (Postgres) and
``HOSTCP_BROKER_URL`` (Redis) switches the same code to Postgres and Celery workers.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRET = "change-me"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HOSTCP_", env_file=".env", extra="ignore")

    env: Literal["dev", "test", "prod"] = "dev"
    data_dir: Path = Field(default_factory=lambda: Path.home() / ".hostcp")
    database_url: str | None = None  # None: SQLite file in data_dir
    storage_dir: Path | None = None  # None: data_dir / "storage"
    broker_url: str | None = None  # None: embedded in-process runner instead of Celery
    auth: Literal["enabled", "disabled"] = "enabled"
    auth_cache_s: float = 5.0  # a key found in the table is trusted this long per process; 0: off
    secret_key: str = PLACEHOLDER_SECRET  # signs page tokens
    auto_migrate: bool | None = None  # None: only for SQLite (the embedded default)

    max_upload_bytes: int = 256 * 1024 * 1024
    max_json_bytes: int = 1024 * 1024
    max_features: int = 10_000  # wider uploads are refused before parsing
    max_classes: int = 1_000
    page_size_default: int = 50
    page_size_max: int = 1000
    idempotency_ttl_s: int = 24 * 3600
    api_workers: int = 1  # `hostcp serve` processes (--workers overrides)

    # Job execution
    embedded_runner: bool = True  # start the spawned runner with the API when there is no broker
    runner_poll_s: float = 1.0
    lease_s: float = 120.0  # a running job whose lease is older than this is stale
    progress_interval_s: float = 1.0  # at most one progress write per interval
    max_attempts: int = 3
    requeue_after_s: float = 300.0  # re-enqueue queued jobs older than this (lost messages)
    reaper_interval_s: float = 60.0
    holdout_fraction: float = 0.3  # part of the test set kept to draw the curves
    curve_fractions: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
    curve_epochs: int = 30

    # Celery
    queue_cpu: str = "cpu"
    queue_gpu: str = "gpu"
    soft_time_limit_s: int = 6 * 3600
    time_limit_s: int = 6 * 3600 + 300
    gpu_max_tasks_per_child: int = 10

    @field_validator("database_url", "broker_url", mode="before")
    @classmethod
    def _blank_is_none(cls, v):
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("database_url")
    @classmethod
    def _normalise_db_url(cls, v: str | None) -> str | None:
        # A bare postgres:// URL (Heroku style) would pick psycopg2; we ship psycopg 3.
        if v is None:
            return v
        for prefix in ("postgres://", "postgresql://"):
            if v.startswith(prefix):
                return "postgresql+psycopg://" + v[len(prefix):]
        return v

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.env == "prod" and (self.secret_key == PLACEHOLDER_SECRET
                                   or len(self.secret_key) < 16):
            raise ValueError("HOSTCP_SECRET_KEY must be set (16+ characters) in prod")
        if self.auth == "disabled" and not self.embedded:
            raise ValueError("HOSTCP_AUTH=disabled is allowed only in embedded mode (no broker)")
        if self.time_limit_s <= self.soft_time_limit_s:
            raise ValueError("HOSTCP_TIME_LIMIT_S must exceed HOSTCP_SOFT_TIME_LIMIT_S")
        return self

    @property
    def embedded(self) -> bool:
        return self.broker_url is None

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'hostcp.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.db_url.startswith("sqlite")

    @property
    def storage_root(self) -> Path:
        return (self.storage_dir or self.data_dir / "storage").resolve()

    @property
    def should_auto_migrate(self) -> bool:
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate

    @property
    def visibility_timeout_s(self) -> int:
        # Redis redelivers unacked messages after this; it must exceed the hard limit or long
        # jobs run twice.
        return self.time_limit_s + 600

    def queue_for(self, device: str | None) -> str:
        return self.queue_gpu if device == "cuda" else self.queue_cpu


_override: Settings | None = None


@lru_cache
def _from_env() -> Settings:
    return Settings()


def get_settings() -> Settings:
    """The process-wide settings: those set by :func:`configure`, else read from the env."""
    return _override if _override is not None else _from_env()


def configure(settings: Settings | None) -> None:
    """Install explicit settings for this process (tests, the spawned runner); None resets."""
    global _override
    _override = settings
    _from_env.cache_clear()
