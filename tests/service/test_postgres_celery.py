"""The same flow on the real servers: Postgres (a fresh database per run, migrated by Alembic),
Redis, and a real Celery worker process started here (`python -m app.cli worker`). Queue names
are unique per run so that no other worker on this Redis can take these jobs."""

from __future__ import annotations

import io
import math
import os
import signal
import subprocess
import sys
import uuid

import pandas as pd
import pytest
from service_helpers import FAST_METHOD, service_settings, upload, wait_for
from sqlalchemy import func, select, text

from app.client import HostcpClient
from app.core.config import configure
from app.db.migrate import upgrade
from app.db.models import PointResult
from app.db.session import session_scope

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]

REDIS_URL = os.environ.get("HOSTCP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

@pytest.fixture
def redis_url():
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {type(exc).__name__}")
    return REDIS_URL


@pytest.fixture
def server_settings(tmp_path, pg_database, redis_url):
    tag = uuid.uuid4().hex[:8]
    s = service_settings(tmp_path / "data", database_url=pg_database, broker_url=redis_url,
                         queue_cpu=f"cpu-{tag}", queue_gpu=f"gpu-{tag}")
    upgrade(s)  # what the compose `migrate` service does before the API starts
    configure(s)
    yield s
    configure(None)


@pytest.fixture
def celery_worker(server_settings, tmp_path):
    s = server_settings
    env = {**os.environ, "HOSTCP_ENV": "test", "HOSTCP_DATA_DIR": str(s.data_dir),
           "HOSTCP_DATABASE_URL": s.database_url, "HOSTCP_BROKER_URL": s.broker_url,
           "HOSTCP_QUEUE_CPU": s.queue_cpu, "HOSTCP_QUEUE_GPU": s.queue_gpu,
           "HOSTCP_SECRET_KEY": s.secret_key, "HOSTCP_PROGRESS_INTERVAL_S": "0.2",
           "HOSTCP_CURVE_FRACTIONS": "[0.25, 0.5, 1.0]", "HOSTCP_CURVE_EPOCHS": "3",
           "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "worker.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--queue", "cpu",
                             "--loglevel", "INFO"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    yield proc
    proc.send_signal(signal.SIGTERM)  # warm shutdown
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    log.close()


def test_flow_on_postgres_redis_and_a_celery_worker(server_settings, celery_worker, csv_pair,
                                                    tmp_path):
    from fastapi.testclient import TestClient

    from app.db import repo
    from app.main import create_app

    s = server_settings
    with session_scope(s) as sess:
        _, token = repo.create_api_key(sess, name="pg")
    h = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(s)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        train = upload(client, h, csv_pair[0], id_column="row_id")
        test = upload(client, h, csv_pair[1], id_column="row_id")
        r = client.post("/v1/jobs", headers=h, json={
            "train_dataset_id": train["id"], "test_dataset_id": test["id"],
            "method": FAST_METHOD, "fraction": 0.3})
        assert r.status_code == 202, r.text
        assert r.json()["queue"] == s.queue_cpu
        job = wait_for(client, h, r.json()["id"], timeout=180)
        log = (tmp_path / "worker.log").read_text(errors="replace")
        assert job["status"] == "succeeded", (job, log[-3000:])
        assert celery_worker.poll() is None  # the worker is still up
        assert f"hostcp.run_job[{job['id']}]" in log  # it ran there, through the broker
        n = train["n_rows"]

        # the client library against the same app (httpx transport into the ASGI app)
        c = HostcpClient("http://testserver", api_key=token, transport=client._transport)
        values = c.results(job["id"], "values")
        subset = c.results(job["id"], "subset")
        assert len(values) == n and sorted(values["rank"]) == list(range(1, n + 1))
        assert len(subset) == math.ceil(0.3 * n)
        assert set(subset["index"]) == set(values.loc[values["selected"], "index"])
        mis = pd.read_csv(io.BytesIO(c.download(job["id"], "mislabels", format="csv")))
        assert mis["rank"].tolist() == list(range(1, n + 1))
        curves = client.get(f"/v1/jobs/{job['id']}/curves", headers=h).json()["items"]
        assert {x["curve"] for x in curves} == {"addition", "random", "subset"}

    # plain SQL, as a dashboard would, sees exactly one row per point
    with session_scope(s) as sess:
        count = sess.scalar(select(func.count()).select_from(PointResult)
                            .where(PointResult.job_id == job["id"]))
        selected = sess.scalar(text("SELECT count(*) FROM job_points WHERE job_id = :j AND "
                                    "selected"), {"j": job["id"]})
    assert count == n and selected == len(subset)


def test_postgres_migration_has_no_autogenerate_diff(pg_database, tmp_path):
    from test_migrations import autogenerate_diff

    s = service_settings(tmp_path / "data", database_url=pg_database)
    upgrade(s)
    assert autogenerate_diff(s) == []
