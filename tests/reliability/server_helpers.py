"""Server mode for the reliability tests: a fresh Postgres database, Redis, Celery workers that
can be killed, an API server process, and the DESIGN §7 commands that bring Redis and the
Postgres server back."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from app.core.config import Settings, configure

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


def _pg_cluster() -> list[str]:
    version = sorted(os.listdir("/etc/postgresql"))[-1]  # DESIGN §7: one cluster, "main"
    return [version, "main"]


def postgres_up(timeout: float = 1.0) -> bool:
    engine = create_engine(ADMIN_URL, connect_args={"connect_timeout": max(1, int(timeout))})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


def require_pg_ctl() -> None:
    """The server restart needs this machine's Postgres cluster (pg_ctlcluster, as root)."""
    if not Path("/etc/postgresql").is_dir() or subprocess.run(
            ["which", "pg_ctlcluster"], capture_output=True).returncode != 0:
        pytest.skip("no local Postgres cluster to restart (pg_ctlcluster)")
    if os.geteuid() != 0:
        pytest.skip("restarting the Postgres server needs root")


def start_postgres() -> None:
    """The DESIGN §7 command; harmless when the server already runs. Waits until it answers."""
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", *_pg_cluster(), "start"],
                   check=False, timeout=60, capture_output=True)
    deadline = time.monotonic() + 60
    while not postgres_up(1) and time.monotonic() < deadline:
        time.sleep(0.2)


def restart_postgres(down_s: float, during=None) -> None:
    """Stop the whole Postgres server (fast shutdown: sessions are terminated, new connections
    refused), run ``during`` while it is down, and always start it again."""
    try:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", "--mode", "fast",
                        *_pg_cluster(), "stop"], check=True, timeout=60, capture_output=True)
        assert not postgres_up(1), "Postgres did not stop"
        if during is not None:
            during()
        time.sleep(down_s)
    finally:
        start_postgres()
    assert postgres_up(2), "Postgres did not come back"


@contextlib.contextmanager
def server_mode(tmp_path: Path, **overrides) -> Iterator[tuple[Settings, list[CeleryWorker]]]:
    """Settings for a fresh database and per-run queues on Redis, with short lease and reaper
    periods (lost work is found within seconds); Celery workers appended to the list are
    stopped at the end and the database dropped."""
    from service_helpers import service_settings

    from app.db.migrate import upgrade
    from app.db.session import dispose_engines

    require_redis()
    url = create_database()
    tag = uuid.uuid4().hex[:8]
    options = dict(database_url=url, broker_url=REDIS_URL, queue_cpu=f"cpu-{tag}",
                   queue_gpu=f"gpu-{tag}", lease_s=2.0, reaper_interval_s=0.5,
                   requeue_after_s=2.0)
    s = service_settings(tmp_path / "data", **{**options, **overrides})
    upgrade(s)
    configure(s)
    workers: list[CeleryWorker] = []
    try:
        yield s, workers
    finally:
        for w in workers:
            w.stop()
        configure(None)
        dispose_engines()
        if postgres_up(2):  # a failed restart test must not hide its error behind this one
            drop_database(url)


def worker_env(s: Settings) -> dict[str, str]:
    return {**os.environ, "HOSTCP_ENV": "test", "HOSTCP_DATA_DIR": str(s.data_dir),
            "HOSTCP_DATABASE_URL": s.database_url, "HOSTCP_BROKER_URL": s.broker_url,
            "HOSTCP_QUEUE_CPU": s.queue_cpu, "HOSTCP_QUEUE_GPU": s.queue_gpu,
            "HOSTCP_SECRET_KEY": s.secret_key, "HOSTCP_LEASE_S": str(s.lease_s),
            "HOSTCP_PROGRESS_INTERVAL_S": str(s.progress_interval_s),
            "HOSTCP_REQUEUE_AFTER_S": str(s.requeue_after_s),
            "HOSTCP_MAX_ATTEMPTS": str(s.max_attempts),
            "HOSTCP_REAPER_INTERVAL_S": str(s.reaper_interval_s),
            "HOSTCP_AUTH_CACHE_S": str(s.auth_cache_s),
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


class ApiProcess:
    """`hostcp serve` (uvicorn) in its own process group, in server mode on the settings'
    database and broker (its reaper re-enqueues lost jobs)."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ApiProcess:
        import httpx

        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port",
             str(self.port)], env=worker_env(self.settings), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the API exited:\n{self.log()[-3000:]}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the API did not become ready:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
