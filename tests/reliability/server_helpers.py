"""Server mode for the reliability tests: a fresh Postgres database, Redis, Celery workers that
can be killed, and the DESIGN §7 command that brings Redis back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from app.core.config import Settings

ADMIN_URL = os.environ.get("HOSTCP_TEST_POSTGRES_URL",
                           "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("HOSTCP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_START = ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port",
               "6379", "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
               "--logfile", "/var/log/redis/ci.log"]


def create_database() -> str:
    """A new empty database; skips the test when Postgres is not reachable."""
    name = f"hostcp_rel_{uuid.uuid4().hex[:12]}"
    engine = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.skip(f"Postgres not reachable at {ADMIN_URL}: {type(exc).__name__}")
    finally:
        engine.dispose()
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    engine = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def redis_up(timeout: float = 1.0) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=timeout).ping())
    except Exception:
        return False


def require_redis() -> None:
    if not redis_up(2):
        pytest.skip(f"Redis not reachable at {REDIS_URL}")


def restart_redis(down_s: float, during=None) -> None:
    """Stop Redis (nothing is kept on disk, so queued messages are lost), run ``during`` while
    it is down, and always start it again with the DESIGN §7 command."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL).shutdown(nosave=True)
    except redis.exceptions.ConnectionError:
        pass  # the server closes the connection as it goes down
    try:
        deadline = time.monotonic() + 10
        while redis_up(0.2) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not redis_up(0.2), "Redis did not stop"
        if during is not None:
            during()
        time.sleep(down_s)
    finally:
        subprocess.run(REDIS_START, check=False, timeout=30)
        deadline = time.monotonic() + 20
        while not redis_up(0.5) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert redis_up(1), "Redis did not come back"


def worker_env(s: Settings) -> dict[str, str]:
    return {**os.environ, "HOSTCP_ENV": "test", "HOSTCP_DATA_DIR": str(s.data_dir),
            "HOSTCP_DATABASE_URL": s.database_url, "HOSTCP_BROKER_URL": s.broker_url,
            "HOSTCP_QUEUE_CPU": s.queue_cpu, "HOSTCP_QUEUE_GPU": s.queue_gpu,
            "HOSTCP_SECRET_KEY": s.secret_key, "HOSTCP_LEASE_S": str(s.lease_s),
            "HOSTCP_PROGRESS_INTERVAL_S": str(s.progress_interval_s),
            "HOSTCP_REQUEUE_AFTER_S": str(s.requeue_after_s),
            "HOSTCP_MAX_ATTEMPTS": str(s.max_attempts),
            "HOSTCP_CURVE_FRACTIONS": "[0.25, 0.5, 1.0]", "HOSTCP_CURVE_EPOCHS": "3",
            "OMP_NUM_THREADS": "1"}


class CeleryWorker:
    """A `hostcp worker` process (Celery, prefork, one child) in its own process group."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> CeleryWorker:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--queue", "cpu", "--loglevel", "INFO"],
            env=worker_env(self.settings), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()
        return self

    def kill(self) -> None:
        """SIGKILL the whole group (main process and pool child): no clean-up, no ack."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # warm shutdown
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
